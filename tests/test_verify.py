"""`embedforge verify`: served-vs-offline retrieval metrics with NVIDIA's tolerances, through real servers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import BertConfig, BertModel

from domain_fixture import make_domain_fixture
from embedforge.cli import main
from embedforge.config import VerifyConfig
from embedforge.data.formats import read_beir
from embedforge.evaluate.retrieval import compare_models, evaluate_dataset
from embedforge.models.bi_encoder import BiEncoder
from embedforge.models.encoder import Encoder
from embedforge.models.vector_memo import MemoEncoder
from embedforge.serve import TorchRuntime
from embedforge.serve.app import create_app
from embedforge.serve.server import ServerThread
from embedforge.verify import EmbeddingsClient, ServedEncoder, load_reference, tolerance_for, verify


def _verify(url, beir, reference, **settings) -> dict:
    """``verify`` with a config of these settings (the rest at their defaults)."""
    return verify(VerifyConfig(url=url, beir=str(beir), reference=str(reference), **settings))


@pytest.fixture(scope="module")
def beir(tmp_path_factory) -> Path:
    """48 look-alike maintenance passages and 40 queries (tests/domain_fixture.py)."""
    paths = make_domain_fixture(tmp_path_factory.mktemp("domain"), test_machines=3, test_queries=40)
    return paths["test_beir"]


@pytest.fixture(scope="module")
def random_model_dir(tmp_path_factory, minilm) -> Path:
    """A BERT with random weights, minilm's tokenizer and size: a model that serves fine but retrieves badly."""
    folder = tmp_path_factory.mktemp("random") / "model"
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=minilm.model.tokenizer.vocab_size,
        hidden_size=384,
        num_hidden_layers=1,
        num_attention_heads=4,
        intermediate_size=256,
        max_position_embeddings=512,
    )
    BertModel(config).save_pretrained(folder)
    minilm.model.tokenizer.save_pretrained(folder)
    BiEncoder.load(folder, max_seq_length=256).save(folder)
    return folder


@pytest.fixture(scope="module")
def reference(tmp_path_factory, beir, minilm, random_model_dir) -> Path:
    """eval_results.json from the offline eval: the random model first (baseline), minilm last."""
    out = tmp_path_factory.mktemp("eval")
    models = {"random": BiEncoder.load(random_model_dir, name="random"), "minilm": minilm}
    compare_models(models, beir, out, dimensions=[128], progress=False)
    return out / "eval_results.json"


@pytest.fixture(scope="module")
def minilm_server():
    with ServerThread(create_app(TorchRuntime("minilm"), {})) as server:
        yield server


@pytest.fixture(scope="module")
def random_server(random_model_dir):
    # served under minilm's name: only the numbers can tell it apart
    with ServerThread(create_app(TorchRuntime(random_model_dir), {"served_model_name": "minilm"})) as server:
        yield server


def test_eval_scores_a_served_model_through_the_encoder_protocol_as_it_scores_the_checkpoint(
    minilm_server, beir, minilm
):
    client = EmbeddingsClient(minilm_server.url, "minilm", None, 60.0, "float")
    served = ServedEncoder(client, concurrency=2)
    for encoder in (minilm, served, MemoEncoder(lambda: minilm, "memo")):
        assert isinstance(encoder, Encoder)
    texts = ["how do I reset the pump?", "the valve leaks after a restart"]
    cosines = (served.encode_queries(texts) * minilm.encode_queries(texts)).sum(1)
    assert cosines.min() > 0.999 and served.dimension == minilm.dimension == 384
    dataset = read_beir(beir)
    local = evaluate_dataset(minilm, dataset, progress=False)
    remote = evaluate_dataset(served, dataset, batch_size=16, progress=False)
    assert remote["model"] == "minilm" and remote["num_queries"] == local["num_queries"] == 40
    for metric in ("ndcg@10", "recall@10", "mrr@10"):
        assert abs(remote["metrics"][metric] - local["metrics"][metric]) < 0.01, metric
    assert client.requests > 48 // 16 and not client.index_problems and client.nonfinite == 0
    client.close()


def test_tolerances_are_nvidias():
    assert tolerance_for(1) == tolerance_for(4) == 0.03
    assert tolerance_for(5) == tolerance_for(10) == tolerance_for(100) == 0.01


def test_verify_passes_for_the_same_model(minilm_server, beir, reference, tmp_path):
    out = tmp_path / "verify.json"
    report = _verify(minilm_server.url, beir, reference, batch_size=16, concurrency=3, out=out)
    assert report["passed"], report["table"]
    assert report["model"] == "minilm" and report["reference"]["name"] == "minilm"  # default: the last model
    assert {c["name"]: c["ok"] for c in report["checks"]} == {
        "health": True,
        "prompts": True,
        "requests": True,
        "model name": True,
        "indices": True,
        "finite": True,
        "dimension": True,
    }
    assert [r["metric"] for r in report["metrics"]] == [
        f"{m}@{k}" for m in ("ndcg", "recall") for k in (1, 5, 10, 100)
    ]
    offline = json.loads(reference.read_text())["models"]["minilm"]["metrics"]
    for row in report["metrics"]:
        assert row["tolerance"] == (0.03 if row["k"] < 5 else 0.01)
        assert row["reference"] == pytest.approx(offline[row["metric"]])
        assert row["diff"] < 1e-3  # same model, same texts: only float noise
    assert 0 < report["served_metrics"]["ndcg@10"] < 1
    # the same model per query: every difference is 0, so the paired CI decides, on 40 queries
    assert report["paired"]["verdict"] == "within" and report["paired"]["queries"] == 40
    assert report["paired"]["metrics"]["ndcg@10"]["ci95"] == pytest.approx([0.0, 0.0], abs=1e-6)
    assert report["decided_by"] == "the paired 95% CI over 40 queries (inside the tolerance)"
    assert "VERIFY PASSED" in report["table"]
    written = json.loads(out.read_text())
    assert written["passed"] is True and written["metrics"] == report["metrics"]


def test_verify_matryoshka_dimension_and_base64(minilm_server, beir, reference):
    report = _verify(minilm_server.url + "/v1", beir, reference, dimensions=128, encoding_format="base64")
    assert report["passed"], report["table"]
    offline = json.loads(reference.read_text())["models"]["minilm"]["per_dimension"]["128"]
    assert report["metrics"][2]["reference"] == pytest.approx(offline["ndcg@10"])
    assert "128 dims" in report["table"]


def test_verify_fails_for_a_different_model(random_server, beir, reference, tmp_path):
    report = _verify(random_server.url, beir, reference, out=tmp_path / "r.json")
    assert not report["passed"]
    checks = {c["name"]: c["ok"] for c in report["checks"]}
    assert checks["model name"] and checks["dimension"] and checks["indices"] and checks["finite"]
    drifted = [r for r in report["metrics"] if not r["ok"]]
    assert drifted and all(r["diff"] >= r["tolerance"] for r in drifted)
    assert any(r["metric"] == "ndcg@10" for r in drifted)
    assert "VERIFY FAILED" in report["table"] and "DRIFT" in report["table"]
    # per query the random model is not shown to be worse on 40 look-alike queries (its CI is wider than
    # the band): the point differences decided, and the report says so
    assert report["paired"]["verdict"] == "undecided"
    assert report["decided_by"].startswith("NVIDIA's point tolerances: the paired CI over 40 queries")
    assert json.loads((tmp_path / "r.json").read_text())["passed"] is False


def test_verify_says_when_its_queries_are_too_few_to_decide(minilm_server, beir, reference, tmp_path):
    # a reference whose per-query nDCG@10 is moved +-0.3 (half the queries up, half down): its means are
    # minilm's, its per-query differences are wide, so 40 queries cannot put the CI inside +-0.01
    results = json.loads(reference.read_text())
    per_query = results["models"]["minilm"]["per_query"]
    for i, query in enumerate(sorted(per_query, key=lambda q: per_query[q]["ndcg@10"])):
        per_query[query]["ndcg@10"] += 0.3 if i % 2 else -0.3
    moved = tmp_path / "eval_results.json"
    moved.write_text(json.dumps(results))
    report = _verify(minilm_server.url, beir, moved)
    ndcg = report["paired"]["metrics"]["ndcg@10"]
    assert report["paired"]["verdict"] == ndcg["verdict"] == "undecided"
    assert ndcg["why"].startswith("too few queries to decide: 40 give a 95% CI")
    assert ndcg["ci95"][1] - ndcg["ci95"][0] > 0.02
    # the CI could not decide, so NVIDIA's point tolerances did (the means are unchanged: passed), and the
    # report says which evidence decided
    assert report["passed"], report["table"]
    assert report["decided_by"].startswith("NVIDIA's point tolerances: the paired CI over 40 queries")
    assert "too few queries to decide" in report["table"] and "decided by NVIDIA's point" in report["table"]


def test_verify_picks_the_reference_model(minilm_server, random_server, beir, reference):
    # the minilm server against the random model's offline numbers drifts ...
    assert not _verify(minilm_server.url, beir, reference, reference_model="random")["passed"]
    # ... and the random server matches them
    report = _verify(random_server.url, beir, reference, reference_model="random")
    assert report["passed"], report["table"]
    with pytest.raises(ValueError, match=r"no model 'nope'; it has \['random', 'minilm'\]"):
        load_reference(reference, "nope")
    with pytest.raises(ValueError, match="not evaluated at 64 dimensions"):
        load_reference(reference, dimensions=64)


def test_verify_reports_a_server_that_rejects_requests(minilm_server, beir, reference):
    report = _verify(minilm_server.url, beir, reference, model="not-served")
    assert not report["passed"]
    failed = [c for c in report["checks"] if c["ok"] is False]
    assert failed[0]["name"] == "requests" and "404" in failed[0]["detail"]
    assert report["metrics"] == []


def test_cli_exit_codes(minilm_server, random_server, beir, reference, tmp_path, capsys):
    common = ["--beir", str(beir), "--reference", str(reference)]
    out = tmp_path / "cli.json"
    assert main(["verify", "--url", minilm_server.url, *common, "--out", str(out), "concurrency=2"]) == 0
    assert "VERIFY PASSED" in capsys.readouterr().out
    assert json.loads(out.read_text())["passed"] is True
    assert main(["verify", "--url", random_server.url, *common]) == 1
    printed = capsys.readouterr().out
    assert "VERIFY FAILED" in printed and "DRIFT" in printed
    assert main(["verify", "--url", minilm_server.url, *common, "--reference-model", "random"]) == 1
