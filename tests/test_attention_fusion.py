"""The int8 export's attention fusion: it finds every layer, and the fused graph computes what the plain one does."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnxruntime.transformers.onnx_model import OnnxModel
from transformers import AutoTokenizer

from embedforge.export import export_onnx
from embedforge.export.attention_fusion import fuse_attention
from embedforge.models.bi_encoder import BiEncoder
from tiny_models import tiny_bert

TEXTS = ["a", "the cat sat on the mat and the dog sat by the door", "x y z", "the"]


def _run(model_bytes: bytes, feed: dict) -> np.ndarray:
    session = ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
    return session.run(["embeddings"], feed)[0]


@pytest.mark.parametrize("side", ["right", "left"])
def test_fused_tiny_bert_matches_the_plain_graph_on_padded_batches(tmp_path, side):
    enc = BiEncoder.load(tiny_bert(tmp_path / "bert"), max_seq_length=48)  # 2 layers, 2 heads of 16
    enc.model[0].tokenizer.padding_side = side
    export_onnx(enc, tmp_path / "onnx", speed=False)
    plain = onnx.load(str(tmp_path / "onnx/model.onnx"))
    model = OnnxModel(onnx.load(str(tmp_path / "onnx/model.onnx")))
    assert fuse_attention(model) == 2
    ops = [n.op_type for n in model.model.graph.node]
    assert ops.count("Attention") == 2 and "Softmax" not in ops
    attention = [n for n in model.model.graph.node if n.op_type == "Attention"]
    assert {
        helper.get_attribute_value(a) for n in attention for a in n.attribute if a.name == "num_heads"
    } == {2}

    tokens = AutoTokenizer.from_pretrained(str(tmp_path / "onnx"))(TEXTS, padding=True, return_tensors="np")
    assert tokens["attention_mask"].min() == 0  # the batch really is padded
    feed = {k: tokens[k].astype(np.int64) for k in ("input_ids", "attention_mask")}
    expected = _run(plain.SerializeToString(), feed)
    got = _run(model.model.SerializeToString(), feed)
    assert np.abs(got - expected).max() < 1e-5
    # each text alone (no padding at all) gives what the plain graph gives; with right padding BERT's
    # positions do not move, so it is also the text's batched vector (the mask hides the padding)
    for ids, mask, batched in zip(feed["input_ids"], feed["attention_mask"], got, strict=True):
        keep = mask == 1
        one = {"input_ids": ids[None, keep], "attention_mask": mask[None, keep]}
        alone = _run(model.model.SerializeToString(), one)[0]
        assert np.abs(alone - _run(plain.SerializeToString(), one)[0]).max() < 1e-5
        if side == "right":
            assert np.abs(alone - batched).max() < 1e-5


def test_a_graph_without_self_attention_is_left_unchanged():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", 4])
    w = numpy_helper.from_array(np.eye(4, dtype=np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Softmax", ["h"], ["y"], axis=-1)],
        "g",
        [x],
        [y],
        [w],
    )
    model = OnnxModel(helper.make_model(graph))
    before = model.model.SerializeToString()
    assert fuse_attention(model) == 0
    assert model.model.SerializeToString() == before
