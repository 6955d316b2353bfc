"""Fuse the self-attention of an exported encoder into onnxruntime's ``Attention`` op, for the int8 copy.

onnxruntime's own transformer optimizer fuses LayerNorm and Gelu in our dynamo-exported graphs but not the
attention: its patterns expect the masks of older exporters, and ours is a ``Where`` over a 4-D boolean mask.
Left unfused, each layer materialises ``batch x heads x seq x seq`` scores and runs Mul, Add, Softmax and
two MatMuls over them one after the other; on a 2-core CPU that was about 40% of the int8 graph's time.
The fused op computes Q, K and V in one projection (``rowwise_int8`` then makes it an int8 projection
feeding ``MultiHeadAttention``) and the scores per head, where they stay in cache: the int8 MiniLM export embeds
1.1-1.2x more texts per second (``benchmarks/batch_budget.py``; docs/benchmarks.md, serving).

The pattern matched, per layer (what ``torch.onnx.export(dynamo=True)`` writes for eager BERT attention)::

    Q = Transpose(Reshape(Add(MatMul(x, Wq), bq)), perm 0213)      K: perm 0231, V: perm 0213
    context = MatMul(Softmax(Add(Mul(MatMul(Q, K), scale), mask)), V)
    out = Reshape(Transpose(context, perm 0213))

It is replaced by ``Attention(x, [Wq Wk Wv], [bq bk bv], attention_mask as int32)``. The rewrite assumes the
mask is the padding mask of ``attention_mask``; the export checks the fused graph against the plain one on
mixed-length batches and keeps it only when they agree, so a model whose mask means something else is
caught there, not here.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

MASK_INDEX = "ef_attention_mask_int32"
_Q_PERM, _K_PERM = [0, 2, 1, 3], [0, 2, 3, 1]


def _perm(node) -> list[int] | None:
    for attr in node.attribute:
        if attr.name == "perm":
            return list(helper.get_attribute_value(attr))
    return None


def _constant(model, name: str) -> np.ndarray | None:
    value = model.get_constant_value(name)
    return None if value is None else np.asarray(value)


def _projection(model, transpose, out_map) -> tuple[str, np.ndarray, np.ndarray, int, list] | None:
    """``(x, W, b, head_size, nodes)`` for ``Transpose(Reshape(Add(MatMul(x, W), b)))``, else None."""
    path = model.match_parent_path(transpose, ["Reshape", "Add", "MatMul"], [0, 0, 0], out_map)
    if path is None:
        return None
    reshape, add, matmul = path
    weight = _constant(model, matmul.input[1])
    bias = next((b for b in (_constant(model, i) for i in add.input) if b is not None), None)
    shape = out_map.get(reshape.input[1])
    if shape is not None and shape.op_type == "Concat":  # (batch, seq, heads or -1, head_size)
        last = _constant(model, shape.input[-1])
        head_size = int(last.reshape(-1)[-1]) if last is not None and last.size else None
    else:
        static = _constant(model, reshape.input[1])
        head_size = int(static[-1]) if static is not None and static.size == 4 else None
    if weight is None or bias is None or weight.ndim != 2 or head_size is None or head_size < 1:
        return None
    return matmul.input[0], weight, bias.reshape(-1), head_size, path


@dataclass
class _Layer:
    """One matched self-attention block: what the fused node needs and the nodes it replaces."""

    x: str
    q: tuple
    k: tuple
    v: tuple
    scale: float
    num_heads: int
    output: str
    nodes: list


def _match_layer(model, softmax, out_map, in_map) -> _Layer | None:
    """The attention block around ``softmax`` when it has exactly the pattern above, else None."""
    scores = model.match_parent_path(softmax, ["Add", "Mul", "MatMul"], [0, None, None], out_map)
    consumers = in_map.get(softmax.output[0], [])
    if scores is None or len(consumers) != 1 or consumers[0].op_type != "MatMul":
        return None
    add, mul, qk = scores
    scale = next((s for s in (_constant(model, i) for i in mul.input) if s is not None), None)
    context = consumers[0]
    q_t = model.match_parent(qk, "Transpose", 0, out_map)
    k_t = model.match_parent(qk, "Transpose", 1, out_map)
    v_t = model.match_parent(context, "Transpose", 1, out_map)
    tail = model.match_child_path(context, ["Transpose", "Reshape"])
    if scale is None or scale.size != 1 or None in (q_t, k_t, v_t, tail):
        return None
    if [_perm(q_t), _perm(k_t), _perm(v_t), _perm(tail[0])] != [_Q_PERM, _K_PERM, _Q_PERM, _Q_PERM]:
        return None
    q, k, v = (_projection(model, t, out_map) for t in (q_t, k_t, v_t))
    if q is None or k is None or v is None or not q[0] == k[0] == v[0]:
        return None
    hidden, head_size = q[1].shape[1], q[3]
    if k[1].shape[1] != hidden or v[1].shape[1] != hidden or hidden % head_size or k[3] != head_size:
        return None
    nodes = [softmax, add, mul, qk, q_t, k_t, v_t, context, *tail, *q[4], *k[4], *v[4]]
    return _Layer(q[0], q, k, v, float(scale.reshape(-1)[0]), hidden // head_size, tail[1].output[0], nodes)


def _add_mask_cast(model, attention_mask: str) -> None:
    """``Attention`` takes the padding mask as int32; one cast serves every layer."""
    model.add_node(
        helper.make_node(
            "Cast", [attention_mask], [MASK_INDEX], to=onnx.TensorProto.INT32, name="ef_mask_int32"
        )
    )


def _add_attention(model, layer: _Layer, name: str) -> None:
    """One ``Attention`` node with Q, K and V packed into a single weight and bias, writing the block's output."""
    weight = np.concatenate([layer.q[1], layer.k[1], layer.v[1]], axis=1).astype(np.float32)
    bias = np.concatenate([layer.q[2], layer.k[2], layer.v[2]]).astype(np.float32)
    model.add_initializer(numpy_helper.from_array(weight, f"{name}_qkv_weight"))
    model.add_initializer(numpy_helper.from_array(bias, f"{name}_qkv_bias"))
    model.add_node(
        helper.make_node(
            "Attention",
            [layer.x, f"{name}_qkv_weight", f"{name}_qkv_bias", MASK_INDEX],
            [layer.output],
            name=name,
            domain="com.microsoft",
            num_heads=layer.num_heads,
            scale=layer.scale,
        )
    )


def _drop_replaced(model, dead: list) -> None:
    model.remove_nodes(dead)
    model.prune_graph()  # the 4-D mask subgraph and the separate Q/K/V weights are now unused
    if not any(op.domain == "com.microsoft" for op in model.model.opset_import):
        model.model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    model.topological_sort()


def fuse_attention(model, attention_mask: str = "attention_mask") -> int:
    """Rewrite every matching self-attention block of ``model`` (an onnxruntime ``OnnxModel``) in place.

    Returns how many layers were fused (0 when the pattern is not found; the graph is then unchanged).
    """
    out_map = model.output_name_to_node()
    in_map = model.input_name_to_nodes()
    fused, dead = 0, []
    for softmax in model.get_nodes_by_op_type("Softmax"):
        layer = _match_layer(model, softmax, out_map, in_map)
        if layer is None:
            continue
        if fused == 0:
            _add_mask_cast(model, attention_mask)
        _add_attention(model, layer, f"ef_attention_{fused}")
        dead += layer.nodes
        fused += 1
    if fused:
        _drop_replaced(model, dead)
    return fused
