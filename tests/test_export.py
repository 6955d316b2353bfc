"""ONNX export: parity with PyTorch, the folder contract, prompts, int8 quality, atomic failure, pooling modes."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import onnx as onnx_lib
import onnxruntime as ort
import pytest
import torch
from sentence_transformers.sentence_transformer.modules import Pooling
from transformers import AutoTokenizer

from embedforge import export as ex
from embedforge.cli import main as cli_main
from embedforge.data.formats import BeirDataset, passage_text, read_beir, write_beir
from embedforge.evaluate.retrieval import evaluate_encoder
from embedforge.export import ExportError, OnnxEncoder, export_onnx
from embedforge.export.graph import convert_opset, opset_of
from embedforge.models.bi_encoder import POOLING_MODES, BiEncoder
from embedforge.models.encoder import Encoder
from tiny_models import tiny_bert

MIXED = [
    "a",
    "How do I reclaim disk space after deleting many rows in a PostgreSQL table?",
    "ok",
    " ".join(["VACUUM FULL rewrites the table and returns the space to the operating system."] * 40),
    "Replication",
    "The write-ahead log records every change before it reaches the data files, so a crash loses nothing.",
]

CORPUS = {
    "d-vacuum": {"title": "VACUUM", "text": "VACUUM reclaims storage occupied by dead tuples in PostgreSQL."},
    "d-index": {"title": "Indexes", "text": "A B-tree index speeds up lookups and range scans on a column."},
    "d-wal": {"title": "", "text": "The write-ahead log records every change before it reaches data files."},
    "d-bread": {
        "title": "Sourdough",
        "text": "Sourdough bread rises with wild yeast and lactic acid bacteria.",
    },
    "d-tides": {"title": "Tides", "text": "Ocean tides are caused by the gravitational pull of the moon."},
    "d-tea": {"title": "Tea", "text": "Green tea is brewed with water below boiling, around 80 degrees."},
}
QUERIES = {
    "q1": "how do I free space taken by deleted rows in postgres?",
    "q2": "what makes sourdough rise?",
    "q3": "why does the sea level go up and down every day?",
    "q4": "what temperature should water be for green tea?",
}
QRELS = {"q1": {"d-vacuum": 1}, "q2": {"d-bread": 1}, "q3": {"d-tides": 1}, "q4": {"d-tea": 1}}


# ------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def prompted() -> BiEncoder:
    """The real MiniLM with asymmetric prompts, so query and passage vectors differ."""
    return BiEncoder.load(
        "minilm", query_prompt="query: ", passage_prompt="passage: ", name="minilm-prompted"
    )


@pytest.fixture(scope="module")
def beir_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("beir") / "beir"
    write_beir(BeirDataset(CORPUS, QUERIES, QRELS), folder)
    return folder


@pytest.fixture(scope="module")
def minilm_export(prompted, beir_dir, tmp_path_factory):
    """One real export of MiniLM (fp32 + int8, BEIR delta) shared by the main checks."""
    out = tmp_path_factory.mktemp("export") / "minilm-onnx"
    report = export_onnx(prompted, out, quantize="int8", beir=str(beir_dir), speed=False)
    return out, report


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    return tiny_bert(tmp_path_factory.mktemp("tiny") / "bert")


def _tiny_encoder(folder, pooling="avg", padding_side="right") -> BiEncoder:
    enc = BiEncoder.load(folder, pooling=pooling, max_seq_length=48, query_prompt="the ", passage_prompt="a ")
    enc.model[0].tokenizer.padding_side = padding_side
    return enc


def _leftovers(parent):
    return [p.name for p in parent.iterdir() if p.name.startswith(".")]


# ---------------------------------------------------------------------------------------- the contract


def test_folder_contract_and_graph_signature(minilm_export):
    out, report = minilm_export
    info = json.loads((out / ex.EXPORT_FILE).read_text())
    assert info == json.loads(json.dumps(report, default=str))
    assert info["files"] == {"fp32": "model.onnx", "int8": "model_int8.onnx"}
    for name in ["model.onnx", "model_int8.onnx", "tokenizer.json", "tokenizer_config.json"]:
        assert (out / name).is_file(), name
    assert info["prompts"] == {"query": "query: ", "passage": "passage: "}
    assert [info[k] for k in ("dimension", "max_seq_length", "pooling", "opset")] == [384, 256, "avg", 17]
    assert info["matryoshka_dims"] == [32, 64, 128, 256, 384]
    assert info["source_model"] == "minilm-prompted" and info["model_name"] == "minilm-prompted"
    assert info["config"]["quantize"] == "int8" and info["config"]["opset"] == 17
    assert info["parity"]["passed"] and info["parity"]["max_abs_diff"] <= 1e-4
    assert set(info["parity"]["by_dimension"]) == {"384", "128", "32"}
    parity = info["parity"]
    assert set(parity["by_batch_size"]) == {"1", str(len(ex.PARITY_TEXTS))}
    assert parity["kinds"] == ["query", "passage"]
    assert max(info["parity"]["token_lengths"]) == 256 and min(info["parity"]["token_lengths"]) <= 4
    assert info["embedforge_version"]
    assert _leftovers(out.parent) == []  # the temp build folder was renamed, nothing else left

    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    inputs = {i.name: (i.type, i.shape) for i in session.get_inputs()}
    assert inputs == {
        "input_ids": ("tensor(int64)", ["batch", "seq"]),
        "attention_mask": ("tensor(int64)", ["batch", "seq"]),
    }
    optional = {i.name: (i.type, i.shape) for i in session.get_overridable_initializers()}
    assert optional == {"dimensions": ("tensor(int64)", [])}
    (output,) = session.get_outputs()
    assert (output.name, output.type, output.shape) == ("embeddings", "tensor(float)", ["batch", "dim_out"])


def test_fp32_parity_with_pytorch_at_several_dimensions(minilm_export, prompted):
    out, _ = minilm_export
    onnx = OnnxEncoder(out)
    assert isinstance(onnx, Encoder)  # eval, mining and verify take it as they take the checkpoint
    for kind, torch_encode in [("query", prompted.encode_queries), ("passage", prompted.encode_passages)]:
        for dim in [384, 256, 64, 32]:
            arg = None if dim == 384 else dim
            expected = torch_encode(MIXED, dimensions=arg)
            # short and long texts padded together in the given order; one at a time at the full size
            for batch_size in [len(MIXED), 1] if dim == 384 else [len(MIXED)]:
                got = onnx.encode(
                    MIXED, onnx.prompts[kind], batch_size=batch_size, dimensions=arg, sort_by_length=False
                )
                assert got.shape == (len(MIXED), dim) and got.dtype == np.float32
                assert np.abs(got - expected).max() <= 1e-4, (dim, kind, batch_size)
                np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)


def test_graph_truncates_then_normalises_and_dimensions_is_optional(minilm_export):
    out, _ = minilm_export
    onnx = OnnxEncoder(out)
    tokens = onnx.tokenizer(MIXED, padding=True, truncation=True, max_length=256, return_tensors="np")
    ids, mask = tokens["input_ids"], tokens["attention_mask"]
    full = onnx.run(ids, mask)  # `dimensions` left out: the default is the full size
    assert full.shape == (len(MIXED), 384)
    expected = full[:, :64] / np.linalg.norm(full[:, :64], axis=1, keepdims=True)
    for value in [np.array(64), np.array([64])]:  # a scalar and a shape-[1] array both work
        feed = {"input_ids": ids, "attention_mask": mask, "dimensions": value.astype(np.int64)}
        got = onnx.session.run(["embeddings"], feed)[0]
        np.testing.assert_allclose(got, expected, atol=1e-6)
    np.testing.assert_allclose(onnx.run(ids, mask, 10_000), full, atol=1e-7)  # clipped to the full size
    with pytest.raises(ValueError, match="dimensions"):
        onnx.encode_queries(["x"], dimensions=385)


def test_exported_folder_is_self_contained_and_applies_prompts(minilm_export, prompted, tmp_path):
    out, _ = minilm_export
    moved = tmp_path / "elsewhere"
    shutil.copytree(out, moved)  # a fresh copy: nothing may point back at the source model
    onnx = OnnxEncoder(moved)
    assert onnx.name == "minilm-prompted" and onnx.dimension == 384 and onnx.prompts["query"] == "query: "
    texts = ["how do I vacuum a table?", "reclaiming space"]
    queries, passages = onnx.encode_queries(texts), onnx.encode_passages(texts)
    assert np.abs(queries - passages).max() > 1e-2  # different prompts, different vectors
    np.testing.assert_allclose(queries, onnx.encode(["query: " + t for t in texts]), atol=1e-6)
    np.testing.assert_allclose(passages, prompted.encode_passages(texts), atol=1e-4)
    int8 = OnnxEncoder(moved, "int8")
    assert int8.name == "minilm-prompted-int8" and int8.encode_queries(texts).shape == (2, 384)
    with pytest.raises(ValueError, match="no 'fp16' model"):
        OnnxEncoder(moved, "fp16")


def test_int8_quality_is_as_reported_and_recomputes(minilm_export, beir_dir):
    out, report = minilm_export
    quality = report["quantization_report"]["int8"]
    assert quality["file"] == "model_int8.onnx" and quality["probe_texts"] == 32
    assert quality["mean_cosine_to_fp32"] >= 0.995 and quality["min_cosine_to_fp32"] > 0.98
    assert quality["file_mb"]["int8"] < 0.75 * quality["file_mb"]["fp32"]
    # one quantization range per token row: the same text alone and batched gives the same vector
    assert quality["min_cosine_alone_vs_batched"] >= 0.99999
    # int8 is built from the fused graph (12 SkipLayerNorm = 2 per layer, one Attention per layer), checked
    # against fp32; each attention's Q, K and V projections are int8 too, feeding MultiHeadAttention
    fusion = quality["fusion"]
    assert fusion["used"] and fusion["max_abs_diff_vs_fp32"] <= 1e-4
    assert fusion["fused_ops"]["SkipLayerNormalization"] == 12 and fusion["fused_ops"]["BiasGelu"] == 6
    assert fusion["fused_ops"]["Attention"] == 6
    int8_ops = [n.op_type for n in onnx_lib.load(str(out / "model_int8.onnx")).graph.node]
    assert int8_ops.count("MultiHeadAttention") == 6 and "Softmax" not in int8_ops
    # Q, K and V are three int8 projections of one quantized input: 6 x 3 + 18, from 24 quantized inputs
    assert int8_ops.count("MatMulIntegerToFloat") == 36 and "MatMul" not in int8_ops
    assert int8_ops.count("QuantizeLinear") == 24
    assert quality["quantized_ops"] == {"MatMul": 18, "Attention": 6}
    assert not list(out.glob("*fused*")), "the fused fp32 intermediate is not left in the export"
    assert report["exporter"]["attn_implementation"] == "eager"
    fp32, int8 = OnnxEncoder(out), OnnxEncoder(out, "int8")
    assert quality["by_dimension"]["128"]["mean_cosine_to_fp32"] >= 0.98
    again = ex.quality_vs_fp32(fp32, int8)
    assert again["mean_cosine_to_fp32"] == pytest.approx(quality["mean_cosine_to_fp32"], abs=1e-5)
    assert again["min_cosine_to_fp32"] == pytest.approx(quality["min_cosine_to_fp32"], abs=1e-5)
    # on texts the report never saw (the BEIR corpus), int8 stays as close to fp32
    texts = [passage_text(doc) for doc in CORPUS.values()]
    cosines = (int8.encode_passages(texts) * fp32.encode_passages(texts)).sum(axis=1)
    assert cosines.mean() >= 0.98

    beir = quality["beir"]
    dataset = read_beir(beir_dir)
    for encoder, key in [(fp32, "fp32"), (int8, "int8")]:
        metrics = evaluate_encoder(
            encoder, dataset.corpus, dataset.queries, dataset.qrels, ks=(1, 5, 10), progress=False
        )
        for metric in ["ndcg@10", "recall@10"]:
            assert beir[key][metric] == pytest.approx(metrics["metrics"][metric], abs=1e-9)
    paired = beir["paired_ndcg@10"]  # the per-query difference, judged by its CI, not by the delta alone
    assert paired["n"] == len(dataset.qrels) and paired["diff"] == pytest.approx(beir["delta"]["ndcg@10"])
    assert paired["ci95"][0] <= paired["diff"] <= paired["ci95"][1] and paired["tolerance"] == 0.01
    # int8 ranks each of the 4 queries as fp32 does: every difference is 0, so the CI is [0, 0], inside +-0.01
    assert paired["verdict"] == "within" and paired["why"].startswith("the 95% CI [+0.0000, +0.0000]")
    for metric in ["ndcg@10", "recall@10"]:
        assert beir["delta"][metric] == pytest.approx(beir["int8"][metric] - beir["fp32"][metric])
        assert beir["fp32"][metric] > 0.7 and abs(beir["delta"][metric]) <= 0.1


# -------------------------------------------------------------------------------- failure is atomic


def test_failed_parity_leaves_no_output_and_keeps_an_older_export(tiny_folder, tmp_path, monkeypatch):
    enc = _tiny_encoder(tiny_folder)
    out = tmp_path / "tiny-onnx"
    real_run = OnnxEncoder.run

    def drifting(self, input_ids, attention_mask, dimensions=None):
        vectors = real_run(self, input_ids, attention_mask, dimensions)
        return vectors + 1e-3  # a runtime that disagrees with PyTorch

    monkeypatch.setattr(OnnxEncoder, "run", drifting)
    with pytest.raises(ExportError, match="parity check failed") as failure:
        export_onnx(enc, out)
    assert not out.exists() and _leftovers(tmp_path) == []
    assert failure.value.report["parity"]["passed"] is False
    assert failure.value.report["parity"]["max_abs_diff"] > 1e-4

    out.mkdir()  # an older export in place must survive a failed new one
    (out / ex.EXPORT_FILE).write_text('{"model_name": "older"}')
    (out / "model.onnx").write_bytes(b"older graph")
    with pytest.raises(ExportError):
        export_onnx(enc, out)
    assert (out / ex.EXPORT_FILE).read_text() == '{"model_name": "older"}'
    assert (out / "model.onnx").read_bytes() == b"older graph"
    assert _leftovers(tmp_path) == []


def test_refuses_to_replace_a_folder_that_is_not_an_export(tiny_folder, tmp_path):
    out = tmp_path / "precious"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(ExportError, match=f"{out} exists and is not an embedforge export folder"):
        export_onnx(_tiny_encoder(tiny_folder), out)
    assert (out / "notes.txt").read_text() == "keep me"
    assert _leftovers(tmp_path) == []


def test_cli_export_onto_a_folder_that_is_not_an_export_is_one_line_and_exit_2(tiny_folder, tmp_path):
    out = tmp_path / "precious"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    command = [sys.executable, "-m", "embedforge.cli", "export", str(tiny_folder), str(out)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr and "Traceback" not in done.stdout
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert errors == [
        f"error: {out} exists and is not an embedforge export folder (no {ex.EXPORT_FILE}); not replaced"
    ]
    assert (out / "notes.txt").read_text() == "keep me" and sorted(p.name for p in out.iterdir()) == [
        "notes.txt"
    ]


def test_cli_exit_codes_and_summary(tiny_folder, tmp_path, capsys):
    out = tmp_path / "cli-onnx"
    assert cli_main(["export", str(tiny_folder), str(out), "parity_tolerance=-1"]) == 1  # can never pass
    captured = capsys.readouterr()
    assert "FAILED" in captured.out and "export failed" in captured.err and not out.exists()
    assert cli_main(["export", str(tiny_folder), str(out), "speed=false", "--fp16"]) == 0
    captured = capsys.readouterr()
    assert (
        "parity fp32 vs PyTorch" in captured.out
        and "PASSED" in captured.out
        and "fp16: mean cosine" in captured.out
    )
    info = json.loads((out / ex.EXPORT_FILE).read_text())
    assert info["files"] == {"fp32": "model.onnx", "fp16": "model_fp16.onnx"} and info["model_name"] == "bert"
    assert info["parity"]["fp16"]["passed"] and info["parity"]["fp16"]["tolerance"] == ex.FP16_TOLERANCE
    assert info["quantization_report"]["fp16"]["mean_cosine_to_fp32"] > 0.999
    assert info["quantization_report"]["fp16"]["min_cosine_alone_vs_batched"] > 0.999
    assert info["config"]["fp16"] is True and info["config"]["model"] == str(tiny_folder)


# ------------------------------------------------------------------------------------------- pooling


@pytest.mark.parametrize("mode", sorted(POOLING_MODES))
@pytest.mark.parametrize("side", ["right", "left"])
def test_pool_matches_sentence_transformers(mode, side):
    torch.manual_seed(0)
    lengths = [1, 5, 3, 7]
    tokens = torch.randn(len(lengths), 7, 16)
    mask = torch.zeros(len(lengths), 7, dtype=torch.int64)
    for row, n in enumerate(lengths):
        if side == "right":
            mask[row, :n] = 1
        else:
            mask[row, 7 - n :] = 1
    reference = Pooling(16, pooling_mode=POOLING_MODES[mode])(
        {"token_embeddings": tokens, "attention_mask": mask}
    )["sentence_embedding"]
    torch.testing.assert_close(ex.pool(tokens, mask, mode), reference, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize(("pooling", "side"), [("cls", "right"), ("last", "right"), ("last", "left")])
def test_tiny_bert_with_cls_and_last_pooling_passes_parity(tiny_folder, tmp_path, pooling, side):
    enc = _tiny_encoder(tiny_folder, pooling=pooling, padding_side=side)
    report = export_onnx(enc, tmp_path / "onnx", matryoshka_dims=[8, 16], speed=False)
    assert report["pooling"] == pooling and report["padding_side"] == side
    assert report["matryoshka_dims"] == [8, 16, 32] and set(report["parity"]["by_dimension"]) == {
        "32",
        "16",
        "8",
    }
    assert report["parity"]["passed"] and report["parity"]["max_abs_diff"] <= 1e-4
    onnx = OnnxEncoder(tmp_path / "onnx")
    reloaded = AutoTokenizer.from_pretrained(str(tmp_path / "onnx"))  # as a server would load it
    first_mask = reloaded(["a", "the cat sat"], padding=True)["attention_mask"][0]
    assert reloaded.padding_side == onnx.tokenizer.padding_side == side
    assert first_mask[0 if side == "left" else -1] == 0  # the short text really is padded on that side
    texts = ["a", "the cat sat on the mat and the dog sat by the door", "x y z"]
    expected = enc.encode_queries(texts, dimensions=16)
    got = onnx.encode(texts, "the ", batch_size=3, dimensions=16, sort_by_length=False)
    assert np.abs(got - expected).max() <= 1e-4


def test_default_matryoshka_dims():
    assert ex.default_matryoshka_dims(384) == [32, 64, 128, 256, 384]
    assert ex.default_matryoshka_dims(2048) == [32, 64, 128, 256, 512, 1024, 2048]
    assert ex.default_matryoshka_dims(32) == [32] and ex.default_matryoshka_dims(16) == [16]


def test_opset_18_reduce_ops_convert_down_to_17():
    """The dynamo exporter emits opset 18 and its own down-conversion gives up on Llama graphs (ReduceMean)."""
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", 1])
    axes = helper.make_tensor("axes", TensorProto.INT64, [1], [1])
    node = helper.make_node("ReduceMean", ["x", "axes"], ["y"], keepdims=1)
    graph = helper.make_graph([node], "g", [x], [y], initializer=[axes])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    converted = convert_opset(model, 17)
    assert opset_of(converted) == 17
    session = ort.InferenceSession(converted.SerializeToString(), providers=["CPUExecutionProvider"])
    data = np.arange(8, dtype=np.float32).reshape(2, 4)
    np.testing.assert_allclose(session.run(None, {"x": data})[0], data.mean(axis=1, keepdims=True))
