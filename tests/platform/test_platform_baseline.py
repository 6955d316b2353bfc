"""An evaluation against a baseline: one job scores two deployed models (two tiny BERTs of different
seeds) on the same task; its result carries the target's scores in NeMo's shape, the baseline's, and a
paired comparison of every metric that matches what each model scores alone and the paired test computed
from those separate runs' per-query scores."""

from __future__ import annotations

import json

import httpx
import pytest
from tutorial import NS, client_for, retriever_target, wait_deployment, wait_evaluation

from embedforge.measures.significance import paired_comparison

METRICS = ("ndcg_cut_5", "recall_5")
WORDS = ["the cat", "a dog", "the bird", "a fish", "the cow", "a bee", "the fox", "a yak", "the hen", "a gnu"]


@pytest.fixture(scope="module")
def plat(platform_factory, tiny_model, tmp_path_factory):
    from tiny_models import tiny_bert

    other = tiny_bert(tmp_path_factory.mktemp("models") / "tiny-other", seed=1)
    proc = platform_factory("sqlite", base_models=[tiny_model, other]).start()
    client = client_for(proc.url)
    for name, model in (("tiny", "local/tiny-bert"), ("other", "local/tiny-other")):
        client.deployment.model_deployments.create(name=name, namespace=NS, config={"model": model})
    for name in ("tiny", "other"):
        assert wait_deployment(proc.url, name)["status_details"]["status"] == "ready"
    beir = proc.data_dir / "beir" / "animals"
    (beir / "qrels").mkdir(parents=True)
    corpus = [{"_id": f"d{i}", "text": f"{text} sat by {WORDS[-1 - i]}"} for i, text in enumerate(WORDS)]
    (beir / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in corpus))
    queries = [{"_id": f"q{i}", "text": text.split()[1]} for i, text in enumerate(WORDS)]
    (beir / "queries.jsonl").write_text("".join(json.dumps(q) + "\n" for q in queries))
    qrels = "".join(f"q{i}\td{i}\t1\n" for i in range(len(WORDS)))
    (beir / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" + qrels)
    return proc


CONFIG = {
    "type": "retriever",
    "tasks": {
        "animals": {
            "type": "beir",
            "dataset": {"files_url": "file://animals/"},
            "metrics": {m: {"type": m} for m in METRICS},
        }
    },
}


def _run(plat, model: str, baseline: str | None = None):
    client = client_for(plat.url)
    extra = {"baseline_target": retriever_target(plat.url, baseline)} if baseline else None
    job = client.evaluation.jobs.create(
        namespace=NS, config=CONFIG, target=retriever_target(plat.url, model), extra_body=extra
    )
    job = wait_evaluation(client, job.id)
    assert job.status == "completed", job.status_details
    return job, client.evaluation.jobs.results(job.id).to_dict()


def _value(result: dict, metric: str) -> float:
    return result["tasks"]["animals"]["metrics"][f"retriever.{metric}"]["scores"][metric]["value"]


def _per_query(plat, job_id: str) -> dict:
    return httpx.get(f"{plat.url}/v1/evaluation/jobs/{job_id}/per-query-scores").json()["tasks"]["animals"]


def test_a_job_with_a_baseline_compares_the_two_models_paired(plat):
    compared_job, compared = _run(plat, "local/tiny-bert", baseline="local/tiny-other")
    alone_job, alone = _run(plat, "local/tiny-bert")
    base_job, base = _run(plat, "local/tiny-other")
    assert compared_job.to_dict()["baseline_target"]["retriever"]["pipeline"]["top_k"] == 10
    assert compared["baseline"]["target"] == compared_job.to_dict()["baseline_target"]["id"]
    model_scores, base_scores = _per_query(plat, alone_job.id), _per_query(plat, base_job.id)
    differ = False
    for metric in METRICS:
        assert _value(compared, metric) == pytest.approx(_value(alone, metric))
        assert _value(compared["baseline"], metric) == pytest.approx(_value(base, metric))
        got = compared["comparison"]["animals"][f"retriever.{metric}"]
        expected = paired_comparison(base_scores[metric], model_scores[metric])
        assert (got["n"], got["better"], got["worse"]) == (len(WORDS), expected["better"], expected["worse"])
        assert got["baseline"] == pytest.approx(_value(base, metric))
        assert got["value"] == pytest.approx(_value(alone, metric))
        assert got["difference"] == pytest.approx(got["value"] - got["baseline"])
        assert got["difference_ci95"] == pytest.approx(expected["ci95"])
        assert got["p_value"] == pytest.approx(expected["p"])
        if got["baseline"]:
            assert got["relative_change"] == pytest.approx(got["difference"] / got["baseline"])
        differ |= got["difference"] != 0
    assert differ, "two random models should not score alike on every metric: the check would be empty"


def test_a_missing_baseline_target_is_refused_naming_the_field(plat):
    body = {
        "namespace": NS,
        "config": CONFIG,
        "target": retriever_target(plat.url, "local/tiny-bert"),
        "baseline_target": f"{NS}/no-such-target",
    }
    r = httpx.post(f"{plat.url}/v1/evaluation/jobs", json=body)
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "baseline_target"]
