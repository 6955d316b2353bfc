"""`embedforge run --ray`: on a real Ray cluster (the session's two nodes on loopback, tests/ray_cluster.py)
a run keeps the same questions, mines the same negatives and computes the same vectors as a local run with the
same seed; nothing it starts listens beyond loopback; an unreachable cluster is a one-line error naming it,
with nothing written; the single-machine path never imports Ray."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from embedforge.cli import main
from embedforge.pipeline.run import run_pipeline
from sdg_stub import StubServer
from test_pipeline import DOCS
from tiny_models import tiny_bert

ray = pytest.importorskip("ray", reason="the ray extra: pip install 'embedforge[ray]'")

# A tiny random BERT embeds (its rankings are arbitrary, so the round trip drops questions and mining has
# real choices to make); the stub chat server writes the questions.
RECIPE = """\
name: ray-run-test
sdg:
  backend: openai
  model: stub-model
  base_url: {url}
  api_key_env: EMBEDFORGE_RAY_TEST_NO_KEY
  concurrency: 2
  timeout: 10.0
  max_retries: 1
  questions_per_passage: 3
  judge: false
  roundtrip_top_k: 7
  dedup_threshold: 1.0
  embed_model: {model}
prep:
  num_negatives: 2
  margin: 1.0  # the tiny model scores every passage alike: 0.95 x the positive leaves no candidate
  candidate_pool: 8
  test_fraction: 0.34
  batch_size: 16
finetune:
  base_model: {model}
"""


@pytest.fixture(scope="module")
def cluster(ray_cluster):
    """This process joins the session's two-node loopback cluster (tests/ray_cluster.py) as its driver, as
    ``embedforge run --ray`` does; leaving disconnects the driver and stops its actors, not the cluster."""
    ray.init(address=ray_cluster.cluster.address, logging_level="ERROR", log_to_driver=False)
    yield ray_cluster
    ray.shutdown()


@pytest.fixture(scope="module")
def runs(tmp_path_factory, cluster):
    """The same recipe and seed run locally and on the cluster (sdg and prep); returns (local, on_ray, printed)."""
    root = tmp_path_factory.mktemp("rayrun")
    corpus = root / "corpus"
    corpus.mkdir()
    for name, text in DOCS.items():
        (corpus / name).write_text(text)
    model = tiny_bert(root / "tiny")
    server = StubServer().start()
    server.state["down"] = False
    recipe = root / "recipe.yaml"
    recipe.write_text(RECIPE.format(url=server.url, model=model))
    try:
        run_pipeline(str(corpus), str(root / "local"), str(recipe), stages=["sdg", "prep"])
        on_ray = run_pipeline(str(corpus), str(root / "ray"), str(recipe), stages=["sdg", "prep"], ray="auto")
    finally:
        server.stop()
    return root / "local", root / "ray", on_ray, model


def test_the_cluster_and_its_driver_listen_on_loopback_only(runs, cluster):
    """After a run: the nodes' processes (the workers that ran the actors among them) and this process,
    the driver, listen on 127.0.0.0/8 only."""
    import psutil

    listening = cluster.listeners() + sorted(
        f"{c.laddr.ip}:{c.laddr.port}"
        for c in psutil.Process().net_connections("inet")
        if c.status == "LISTEN"
    )
    assert listening, "no listening socket found for the cluster's processes"
    assert all(a.removeprefix("::ffff:").startswith("127.") for a in listening), listening


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_a_ray_run_keeps_the_same_questions_as_a_local_run(runs):
    local, on_ray, _, _ = runs
    kept = _jsonl(local / "sdg" / "pairs.jsonl")
    assert kept and kept == _jsonl(on_ray / "sdg" / "pairs.jsonl")
    reports = [json.loads((run / "sdg" / "sdg_report.json").read_text()) for run in (local, on_ray)]
    removed = [r["removed"] for r in reports]
    assert removed[0] == removed[1] and removed[0]["roundtrip"] > 0, removed  # the filter had work to do


def _mined(run: Path) -> list[tuple]:
    """Each training row's question, positive and mined negatives (ids), and the mining scores."""
    rows = json.loads((run / "prep" / "train.json").read_text())["data"]
    ids = [(r["question_id"], [p["id"] for p in r["pos_doc"]], [n["id"] for n in r["neg_doc"]]) for r in rows]
    scores = [p["score"] for r in rows for p in r["pos_doc"] + r["neg_doc"]]
    return ids, np.array(scores)


def test_a_ray_run_mines_the_same_negatives_as_a_local_run(runs):
    local, on_ray, _, _ = runs
    (ids, scores), (ray_ids, ray_scores) = _mined(local), _mined(on_ray)
    assert ids and any(negatives for _, _, negatives in ids)  # mining found negatives to compare
    assert ids == ray_ids
    assert np.abs(scores - ray_scores).max() < 1e-4  # scores are rounded: one last digit may differ


def test_the_clusters_passage_and_query_vectors_match_one_process(runs):
    from embedforge.models.bi_encoder import BiEncoder
    from embedforge.pipeline.ray_backend import RayEncoder

    local, _, _, model = runs
    texts = [p["text"] for p in _jsonl(local / "sdg" / "passages.jsonl")]
    questions = [p["question"] for p in _jsonl(local / "sdg" / "pairs.jsonl")]
    here = BiEncoder.load(str(model))
    spread = RayEncoder(str(model), 2, query_pool_min=0)
    assert np.abs(spread.encode_passages(texts) - here.encode_passages(texts)).max() < 1e-5
    assert np.abs(spread.encode_queries(questions) - here.encode_queries(questions)).max() < 1e-5


def test_an_unreachable_cluster_is_one_error_naming_it_and_nothing_is_written(tmp_path, capsys):
    corpus, out = tmp_path / "corpus", tmp_path / "run"
    corpus.mkdir()
    (corpus / "violin.txt").write_text(DOCS["violin.txt"])
    code = main(["run", "--corpus", str(corpus), "--out", str(out), "--ray", "127.0.0.1:9"])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and "cannot reach the Ray cluster at '127.0.0.1:9'" in lines[-1]
    assert not out.exists()


def test_a_recipes_ray_key_must_be_an_address(tmp_path, capsys):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("ray: [1, 2]\n")
    (tmp_path / "corpus").mkdir()
    corpus, out = tmp_path / "corpus", tmp_path / "run"
    assert main(["run", "--corpus", str(corpus), "--out", str(out), "--config", str(recipe)]) == 2
    assert f"{recipe}: ray: must be auto or a cluster address" in capsys.readouterr().err


def test_the_single_machine_path_never_imports_ray():
    code = (
        "import sys, embedforge.pipeline.run, embedforge.cli, embedforge.sdg, embedforge.evaluate.retrieval, embedforge.prep.run;"
        "print('ray' in sys.modules)"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    assert out.stdout.strip() == "False"
