"""int8 with one quantization scale per token row, so a text's vector does not depend on its batch.

onnxruntime's ``quantize_dynamic`` quantizes each MatMul's input with one scale for the whole tensor,
computed at run time: the widest activation in the batch (another text's, or a padding row's) sets every
row's step, so the same text came out different alone, in a batch, or beside a long passage (cosine
0.947 on the probe texts, docs/benchmarks.md). Here every row (token) of a MatMul's input gets its own
range, computed from that row only, so a row's result depends on nothing else in the batch:

    s = (max(x) - min(x)) / 255 per row, q = round((x - min(x)) / s) as uint8      (asymmetric rows)
    y = MatMulIntegerToFloat(q, W_int8, 1, w_scale) * s + min(x) * column_sums(W)

or, for the attention output projection, where it lost nothing, the cheaper symmetric form ``s = max|x| / 127``, ``q = round(x / s) + 128``
(zero point 128, no offset term). Weights are int8 with one scale per output column. onnxruntime's own
operators do the work (MatMulIntegerToFloat runs its int8 GEMM); only per-row scales are ours.

A fused self-attention (``attention_fusion``'s ``Attention``) becomes the same per-row projection of Q, K
and V followed by onnxruntime's ``MultiHeadAttention``, so the attention projections are int8 too.

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
    "ef_rowq_255": np.array(255.0, np.float32),
    "ef_rowq_127": np.array(127.0, np.float32),
    "ef_rowq_128": np.array(128.0, np.float32),
    "ef_rowq_one": np.array(1.0, np.float32),
    "ef_rowq_zero_point": np.array(128, np.uint8),
}
#: inputs quantized symmetrically (no offset term): where it cost nothing measurable. Symmetric rows doubled
#: the error of the Q/K/V and feed-forward inputs (docs/benchmarks.md, ONNX export), so those stay asymmetric.
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

    def constant(self, name: str, value: np.ndarray) -> str:
        self.initializers.append(numpy_helper.from_array(value, name))
        return name

    def _reduce(self, op: str, x: str, out: str) -> onnx.NodeProto:
        if self.opset >= 18:  # axes became an input in opset 18
            axes = f"{out}_axes"
            self.constant(axes, np.array([-1], np.int64))
            return _node(op, [x, axes], [out], keepdims=1)
        return _node(op, [x], [out], axes=[-1], keepdims=1)

    def _weight(self, weight: np.ndarray, p: str) -> np.ndarray:
        """int8 weights, one scale per output column; returns the dequantized weights."""
        scale = np.maximum(np.abs(weight).max(axis=0), 1e-12) / 127.0
        q = np.clip(np.round(weight / scale), -127, 127).astype(np.int8)
        self.constant(f"{p}_w", q)
        self.constant(f"{p}_w_scale", scale.astype(np.float32))
        return q.astype(np.float32) * scale

    def matmul(self, x: str, weight: np.ndarray, out: str, symmetric: bool) -> None:
        """``out = x @ weight`` with ``x`` quantized per row (the last axis) and ``weight`` per column."""
        p = f"ef_rowq{self.count}"
        self.count += 1
        dequantized = self._weight(weight.astype(np.float32), p)
        if symmetric:
            self.nodes += [
                _node("Abs", [x], [f"{p}_abs"]),
                self._reduce("ReduceMax", f"{p}_abs", f"{p}_max"),
                _node("Max", [f"{p}_max", "ef_rowq_eps"], [f"{p}_max_eps"]),
                _node("Div", [f"{p}_max_eps", "ef_rowq_127"], [f"{p}_s"]),
                _node("Div", [x, f"{p}_s"], [f"{p}_xs"]),
                _node("Round", [f"{p}_xs"], [f"{p}_xr"]),
                _node("Add", [f"{p}_xr", "ef_rowq_128"], [f"{p}_xo"]),
                _node("Cast", [f"{p}_xo"], [f"{p}_q"], to=TensorProto.UINT8),
                _node(
                    "MatMulIntegerToFloat",
                    [f"{p}_q", f"{p}_w", "ef_rowq_one", f"{p}_w_scale", "ef_rowq_zero_point"],
                    [f"{p}_y"],
                ),
                _node("Mul", [f"{p}_y", f"{p}_s"], [out]),
            ]
            return
        self.constant(f"{p}_w_sum", dequantized.sum(axis=0).astype(np.float32))
        self.nodes += [
            self._reduce("ReduceMax", x, f"{p}_max"),
            self._reduce("ReduceMin", x, f"{p}_min"),
            _node("Sub", [f"{p}_max", f"{p}_min"], [f"{p}_range"]),
            _node("Max", [f"{p}_range", "ef_rowq_eps"], [f"{p}_range_eps"]),
            _node("Div", [f"{p}_range_eps", "ef_rowq_255"], [f"{p}_s"]),
            _node("Sub", [x, f"{p}_min"], [f"{p}_xm"]),
            _node("Div", [f"{p}_xm", f"{p}_s"], [f"{p}_xs"]),
            _node("Round", [f"{p}_xs"], [f"{p}_xr"]),
            _node("Cast", [f"{p}_xr"], [f"{p}_q"], to=TensorProto.UINT8),
            _node("MatMulIntegerToFloat", [f"{p}_q", f"{p}_w", "ef_rowq_one", f"{p}_w_scale"], [f"{p}_y"]),
            _node("Mul", [f"{p}_y", f"{p}_s"], [f"{p}_ys"]),
            _node("Mul", [f"{p}_min", f"{p}_w_sum"], [f"{p}_offset"]),
            _node("Add", [f"{p}_ys", f"{p}_offset"], [out]),
        ]

    def attention(self, node: onnx.NodeProto, weight: np.ndarray) -> None:
        """A fused ``Attention`` -> per-row int8 Q/K/V projection + ``MultiHeadAttention`` (same mask, scale)."""
        p = f"ef_rowq_attention{self.count}"
        hidden = weight.shape[1] // 3
        self.matmul(node.input[0], weight, f"{p}_qkv", symmetric="qkv" in SYMMETRIC_KINDS)
        split = self.constant(f"{p}_split", np.array([hidden] * 3, np.int64))
        attrs = {
            a.name: helper.get_attribute_value(a) for a in node.attribute if a.name in ("num_heads", "scale")
        }
        self.nodes += [
            _node("Split", [f"{p}_qkv", split], [f"{p}_q", f"{p}_k", f"{p}_v"], axis=-1),
            _node(
                "MultiHeadAttention",
                [f"{p}_q", f"{p}_k", f"{p}_v", node.input[2], node.input[3]],
                list(node.output),
                **attrs,
            ),
        ]


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
