"""int8 with one quantization range per token row, so a text's vector does not depend on its batch.

onnxruntime's ``quantize_dynamic`` quantizes each MatMul's input with one range for the whole tensor,
computed at run time: the widest activation in the batch (another text's, or a padding row's) sets every
row's step, so the same text came out different alone, in a batch, or beside a long passage (cosine
0.947 on the probe texts, docs/benchmarks.md). Here every row (token) of a MatMul's input gets its own
range, from that row only, so a row's result depends on nothing else in the batch. For a row ``x``:

    lo, hi = min(min(x), 0), max(max(x), 0);  s = (hi - lo) / 255;  z = round(-lo / s)   (asymmetric)
    q = QuantizeLinear(x, s, z)                               uint8, one (s, z) per row (axis 0 of a 2-D view)
    y = MatMulIntegerToFloat(q, W_int8, s, w_scale) - (s * z) * column_sums(W)

which is ``s * (q - z) @ W``: onnxruntime's kernels do the work (QuantizeLinear, and MatMulIntegerToFloat's
int8 GEMM, which applies the per-column weight scales and, given a ``[rows, 1]`` scale, the row's own), and
only the row's zero point is a pass of ours (a rank-1 correction: the kernel takes one zero point per
tensor). For the attention output projection, where the zero point cost nothing measurable, the
symmetric form with the fixed zero point 128 (``s = max(hi / 127, -lo / 128)``) leaves even that out.
Weights are int8 with one scale per output column.

A fused self-attention (``attention_fusion``'s ``Attention``) becomes three per-row int8 projections (Q, K
and V, sharing one quantized input) followed by onnxruntime's ``MultiHeadAttention``.

What it does not do: quantize the embedding tables, the attention scores, or anything without a constant
2-D weight; calibrate (there is nothing to calibrate: every scale comes from the row itself).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from embedforge.export.attention_fusion import MASK_INDEX

_CONSTANTS = {  # shared scalars, added once
    "ef_rowq_eps": np.array(1e-8, np.float32),
    "ef_rowq_zero": np.array(0.0, np.float32),
    "ef_rowq_255th": np.array(1 / 255, np.float32),
    "ef_rowq_127th": np.array(1 / 127, np.float32),
    "ef_rowq_neg_128th": np.array(-1 / 128, np.float32),
    "ef_rowq_neg_one": np.array(-1.0, np.float32),
    "ef_rowq_zp128": np.array(128, np.uint8),
    "ef_rowq_axis1": np.array([1], np.int64),
}
#: inputs quantized symmetrically (fixed zero point, no correction pass): where it cost nothing measurable.
#: A fixed zero point tripled the Q/K/V projections' error (the [CLS] rows are lopsided), so those and the
#: feed-forward inputs keep their own zero point.
SYMMETRIC_KINDS = frozenset({"attention_output"})
KINDS = frozenset({"qkv", "attention_output", "ffn_input", "ffn_output"})


def _node(op: str, inputs: list[str], outputs: list[str], **attrs) -> onnx.NodeProto:
    domain = "com.microsoft" if op in ("MatMulIntegerToFloat", "MultiHeadAttention") else ""
    return helper.make_node(op, inputs, outputs, domain=domain, **attrs)


class _Rewriter:
    """Builds the replacement nodes and initializers of one graph."""

    def __init__(self, opset: int):
        self.opset = opset
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.count = 0
        self.shapes: set[str] = set()

    def constant(self, name: str, value: np.ndarray) -> str:
        self.initializers.append(numpy_helper.from_array(value, name))
        return name

    def _reduce(self, op: str, x: str, out: str) -> onnx.NodeProto:
        """``op`` over each row of a 2-D tensor, one value per row."""
        if self.opset >= 18:  # axes became an input in opset 18
            return _node(op, [x, "ef_rowq_axis1"], [out], keepdims=0)
        return _node(op, [x], [out], axes=[1], keepdims=0)

    def quantize_rows(self, x: str, k: int, symmetric: bool) -> tuple[str, str, str]:
        """``x`` (``[..., k]``) as uint8 rows: returns the quantized ``[rows, k]``, the ``[rows, 1]`` scales
        and the zero points (``[rows, 1]`` float for the correction, or the shared 128 when symmetric)."""
        p = f"ef_rowq{self.count}"
        self.count += 1
        rows = self.constant(f"{p}_rows", np.array([-1, k], np.int64))
        self.nodes += [
            _node("Reshape", [x, rows], [f"{p}_x"]),
            self._reduce("ReduceMax", f"{p}_x", f"{p}_max"),
            self._reduce("ReduceMin", f"{p}_x", f"{p}_min"),
        ]
        if symmetric:
            self.nodes += [
                _node("Mul", [f"{p}_max", "ef_rowq_127th"], [f"{p}_s_hi"]),
                _node("Mul", [f"{p}_min", "ef_rowq_neg_128th"], [f"{p}_s_lo"]),
                _node("Max", [f"{p}_s_hi", f"{p}_s_lo", "ef_rowq_eps"], [f"{p}_s"]),
                _node("Shape", [f"{p}_s"], [f"{p}_n_rows"]),
                _node("Expand", ["ef_rowq_zp128", f"{p}_n_rows"], [f"{p}_zp"]),
            ]
            zero_point = "ef_rowq_zp128"
        else:
            self.nodes += [
                _node("Max", [f"{p}_max", "ef_rowq_zero"], [f"{p}_hi"]),
                _node("Min", [f"{p}_min", "ef_rowq_zero"], [f"{p}_lo"]),
                _node("Sub", [f"{p}_hi", f"{p}_lo"], [f"{p}_range"]),
                _node("Mul", [f"{p}_range", "ef_rowq_255th"], [f"{p}_s_raw"]),
                _node("Max", [f"{p}_s_raw", "ef_rowq_eps"], [f"{p}_s"]),
                _node("Div", [f"{p}_lo", f"{p}_s"], [f"{p}_lo_steps"]),
                _node("Mul", [f"{p}_lo_steps", "ef_rowq_neg_one"], [f"{p}_zp_raw"]),
                _node("Round", [f"{p}_zp_raw"], [f"{p}_zp_float"]),
                _node("Cast", [f"{p}_zp_float"], [f"{p}_zp"], to=TensorProto.UINT8),
                _node("Mul", [f"{p}_s", f"{p}_zp_float"], [f"{p}_offset"]),
                _node("Unsqueeze", [f"{p}_offset", "ef_rowq_axis1"], [f"{p}_offset_col"]),
            ]
            zero_point = f"{p}_offset_col"
        self.nodes += [
            _node("QuantizeLinear", [f"{p}_x", f"{p}_s", f"{p}_zp"], [f"{p}_q"], axis=0),
            _node("Unsqueeze", [f"{p}_s", "ef_rowq_axis1"], [f"{p}_s_col"]),
        ]
        return f"{p}_q", f"{p}_s_col", zero_point

    def project(self, quantized: tuple[str, str, str], x: str, weight: np.ndarray, out: str) -> None:
        """``out = x @ weight`` (shape ``[..., n]``) from ``quantize_rows(x)``; weights int8 per column."""
        q, scale, zero_point = quantized
        p = f"ef_rowq{self.count}"
        self.count += 1
        w_scale = np.maximum(np.abs(weight).max(axis=0), 1e-12) / 127.0
        w_int8 = np.clip(np.round(weight / w_scale), -127, 127).astype(np.int8)
        self.constant(f"{p}_w", w_int8)
        self.constant(f"{p}_w_scale", w_scale.astype(np.float32))
        symmetric = zero_point == "ef_rowq_zp128"
        inputs = [q, f"{p}_w", scale, f"{p}_w_scale"] + ([zero_point] if symmetric else [])
        self.nodes.append(_node("MatMulIntegerToFloat", inputs, [f"{p}_y" if symmetric else f"{p}_yq"]))
        if not symmetric:  # s * (q - z) @ W = s * q @ W - (s * z) * column_sums(W): one Gemm, K = 1
            sums = (w_int8.astype(np.float32) * w_scale).sum(axis=0)
            self.constant(f"{p}_w_sum_neg", -sums[None, :].astype(np.float32))
            self.nodes.append(_node("Gemm", [zero_point, f"{p}_w_sum_neg", f"{p}_yq"], [f"{p}_y"]))
        self.nodes.append(_node("Reshape", [f"{p}_y", self._output_shape(x, weight.shape[1])], [out]))

    def _output_shape(self, x: str, n: int) -> str:
        """``x``'s shape with its last axis ``n``, built once per input and width."""
        shape = f"{x}_ef_rowq_shape_{n}"
        if shape not in self.shapes:
            self.shapes.add(shape)
            width = self.constant(f"{shape}_n", np.array([n], np.int64))
            self.nodes += [
                _node("Shape", [x], [f"{shape}_lead"], end=-1),
                _node("Concat", [f"{shape}_lead", width], [shape], axis=0),
            ]
        return shape

    def matmul(self, x: str, weight: np.ndarray, out: str, symmetric: bool) -> None:
        """``out = x @ weight`` with ``x`` quantized per row (the last axis) and ``weight`` per column."""
        weight = weight.astype(np.float32)
        self.project(self.quantize_rows(x, weight.shape[0], symmetric), x, weight, out)

    def attention(self, node: onnx.NodeProto, weight: np.ndarray) -> None:
        """A fused ``Attention`` -> per-row int8 Q, K and V projections of one quantized input, then
        ``MultiHeadAttention`` (same bias, mask, heads and scale)."""
        p = f"ef_rowq_attention{self.count}"
        weight = weight.astype(np.float32)
        quantized = self.quantize_rows(node.input[0], weight.shape[0], "qkv" in SYMMETRIC_KINDS)
        for part, columns in zip("qkv", np.split(weight, 3, axis=1), strict=True):
            self.project(quantized, node.input[0], columns, f"{p}_{part}")
        attrs = {
            a.name: helper.get_attribute_value(a) for a in node.attribute if a.name in ("num_heads", "scale")
        }
        mha_inputs = [f"{p}_q", f"{p}_k", f"{p}_v", node.input[2], node.input[3]]
        self.nodes.append(_node("MultiHeadAttention", mha_inputs, list(node.output), **attrs))


def _kind(node: onnx.NodeProto, producers: dict[str, onnx.NodeProto]) -> str:
    """What a MatMul computes in a BERT layer, told by what feeds it (fused graph)."""
    source = producers.get(node.input[0])
    op = source.op_type if source is not None else ""
    return {"Attention": "attention_output", "BiasGelu": "ffn_output"}.get(op, "ffn_input")


def _opset(model: onnx.ModelProto) -> int:
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


def quantize_rowwise(src: Path, dst: Path, external: bool, kinds: frozenset[str] = KINDS) -> dict[str, int]:
    """Write ``src`` with every constant-weight MatMul and fused Attention in per-row int8 to ``dst``.

    ``kinds``: which projections to quantize (all by default; one at a time shows where the error comes
    from). Returns how many MatMuls and Attention ops were rewritten.
    """
    model = onnx.load(str(src))
    graph = model.graph
    weights = {i.name: i for i in graph.initializer}
    producers = {out: n for n in graph.node for out in n.output}
    rewriter = _Rewriter(_opset(model))
    counts = {"MatMul": 0, "Attention": 0}
    for node in graph.node:
        weight = weights.get(node.input[1]) if len(node.input) > 1 else None
        attention = node.op_type == "Attention" and node.input[3:] == [MASK_INDEX]
        matmul = node.op_type == "MatMul" and weight is not None and len(weight.dims) == 2
        if attention and weight is not None and "qkv" in kinds:
            rewriter.attention(node, numpy_helper.to_array(weight))
            counts["Attention"] += 1
        elif matmul and _kind(node, producers) in kinds:
            symmetric = _kind(node, producers) in SYMMETRIC_KINDS
            rewriter.matmul(node.input[0], numpy_helper.to_array(weight), node.output[0], symmetric)
            counts["MatMul"] += 1
        else:
            rewriter.nodes.append(node)
    for name, value in _CONSTANTS.items():
        rewriter.constant(name, value)
    used = {name for n in rewriter.nodes for name in n.input}
    kept = [i for i in graph.initializer if i.name in used]
    del graph.node[:], graph.initializer[:]
    graph.node.extend(rewriter.nodes)
    graph.initializer.extend(kept + rewriter.initializers)
    if not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    onnx.save(model, str(dst), save_as_external_data=external, location=dst.name + ".data")
    return counts
