"""Tests for the eval stage: metrics against pytrec_eval and by hand, exact retrieval, Matryoshka, reports."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import pytrec_eval

from embedforge.evaluate import retrieval as ev
from embedforge.evaluate.report import format_table
from embedforge.evaluate.retrieval import (
    compare_models,
    compute_metrics,
    evaluate_encoder,
    passage_text,
    per_query_metrics,
    retrieve,
    run_eval,
)
from embedforge.models.matryoshka import unit_truncate

# ------------------------------------------------------------------------------------------- tiny data

CORPUS = {
    "d-vacuum": {
        "title": "VACUUM",
        "text": "VACUUM reclaims storage occupied by dead tuples in PostgreSQL tables.",
    },
    "d-index": {"title": "Indexes", "text": "A B-tree index speeds up lookups and range scans on a column."},
    "d-wal": {
        "title": "",
        "text": "The write-ahead log records every change before it reaches the data files.",
    },
    "d-repl": {
        "title": "Replication",
        "text": "Streaming replication ships WAL records to a standby server.",
    },
    "d-bread": {
        "title": "Sourdough",
        "text": "Sourdough bread rises with wild yeast and lactic acid bacteria.",
    },
    "d-pasta": {"title": "Pasta", "text": "Boil pasta in salted water until al dente, then drain it."},
    "d-tides": {"title": "Tides", "text": "Ocean tides are caused by the gravitational pull of the moon."},
    "d-stars": {"title": "Stars", "text": "Stars fuse hydrogen into helium in their cores."},
    "d-bikes": {"title": "Bicycles", "text": "Lubricate a bicycle chain every few hundred kilometres."},
    "d-tea": {"title": "Tea", "text": "Green tea is brewed with water below boiling, around 80 degrees."},
}
QUERIES = {
    "q-vacuum": "how do I free space taken by deleted rows in postgres?",
    "q-bread": "what makes sourdough rise?",
    "q-moon": "why does the sea level go up and down every day?",
    "q-wal": "how does a standby database get changes from the primary?",
    "q-tea": "what temperature should water be for green tea?",
    "q-unjudged": "this query has no qrels and is not evaluated",
}
QRELS = {
    "q-vacuum": {"d-vacuum": 1},
    "q-bread": {"d-bread": 2, "d-pasta": 0},
    "q-moon": {"d-tides": 1},
    "q-wal": {"d-repl": 2, "d-wal": 1},
    "q-tea": {"d-tea": 1},
}


@pytest.fixture(scope="module")
def minilm():
    from embedforge.models.bi_encoder import BiEncoder

    return BiEncoder.load("minilm")


# --------------------------------------------------------------------------------------------- metrics


def test_passage_text_joins_title_and_text_like_beir():
    assert passage_text({"title": "Tides", "text": "Caused by the moon."}) == "Tides Caused by the moon."
    assert passage_text({"title": "", "text": "Only text."}) == "Only text."
    assert passage_text({"text": " No title key. "}) == "No title key."
    assert passage_text({"title": "Only title", "text": ""}) == "Only title"


def test_hand_checked_values():
    # the only relevant document sits at rank 2
    qrels = {"q": {"rel": 1}}
    run = {"q": {"miss": 0.9, "rel": 0.8, "other": 0.1}}
    m = compute_metrics(qrels, run, ks=(1, 5, 10))
    assert m["mrr@10"] == pytest.approx(0.5)
    assert m["recall@1"] == 0.0
    assert m["recall@5"] == 1.0
    assert m["precision@1"] == 0.0
    assert m["precision@5"] == pytest.approx(1 / 5)
    assert m["ndcg@10"] == pytest.approx(1 / math.log2(3))
    assert m["map@10"] == pytest.approx(0.5)


def test_graded_relevance_ndcg_by_hand():
    # grades 2 and 1 retrieved in the wrong order: DCG = 1/log2(2) + 2/log2(3), ideal = 2/log2(2) + 1/log2(3)
    qrels = {"q": {"a": 2, "b": 1, "z": 0}}
    run = {"q": {"b": 0.9, "a": 0.8, "z": 0.7}}
    expected = (1 + 2 / math.log2(3)) / (2 + 1 / math.log2(3))
    assert compute_metrics(qrels, run)["ndcg@10"] == pytest.approx(expected)


def test_missing_and_relevance_zero_queries_count_as_zero():
    qrels = {"found": {"a": 1}, "absent": {"b": 1}, "only-zero": {"c": 0}, "unjudged": {}}
    run = {"found": {"a": 1.0}, "only-zero": {"c": 1.0}, "not-in-qrels": {"a": 1.0}}
    m = compute_metrics(qrels, run, ks=(1,))
    # three judged queries (the empty one is left out, as trec_eval does); only "found" scores
    assert m["ndcg@1"] == pytest.approx(1 / 3)
    assert m["mrr@10"] == pytest.approx(1 / 3)
    assert set(per_query_metrics(qrels, run, ks=(1,))) == {"found", "absent", "only-zero"}


def test_matches_independent_pytrec_eval():
    rng = np.random.default_rng(0)
    docs = [f"d{i}" for i in range(40)]
    qrels, run = {}, {}
    for q in range(12):
        rel_docs = rng.choice(docs, size=rng.integers(1, 5), replace=False)
        qrels[f"q{q}"] = {d: int(rng.integers(0, 3)) for d in rel_docs}
        retrieved = rng.choice(docs, size=rng.integers(5, 30), replace=False)
        run[f"q{q}"] = {d: float(rng.random()) for d in retrieved}
    qrels["q0"]["d1"] = 1  # make sure some query has a relevant doc
    run["q0"]["d1"] = 0.5
    # a tie so the MRR cut must follow trec_eval's tie order (doc id descending)
    run["q1"].update({"d0": 2.0, "d9": 2.0})
    ks = (1, 5, 10, 100)

    ours = compute_metrics(qrels, run, ks)

    evaluator = pytrec_eval.RelevanceEvaluator(
        qrels, {"ndcg_cut.1,5,10,100", "map_cut.1,5,10,100", "recall.1,5,10,100", "P.1,5,10,100"}
    )
    scores = evaluator.evaluate(run)
    cut = {
        q: dict(sorted(docs.items(), key=lambda x: (x[1], x[0]), reverse=True)[:10])
        for q, docs in run.items()
    }
    rr = pytrec_eval.RelevanceEvaluator(qrels, {"recip_rank"}).evaluate(cut)
    for k in ks:
        for measure, name in [
            ("ndcg_cut", "ndcg"),
            ("map_cut", "map"),
            ("recall", "recall"),
            ("P", "precision"),
        ]:
            expected = np.mean([scores[q][f"{measure}_{k}"] for q in qrels])
            assert ours[f"{name}@{k}"] == pytest.approx(expected), f"{name}@{k}"
    assert ours["mrr@10"] == pytest.approx(np.mean([rr[q]["recip_rank"] for q in qrels]))
    assert 0 < ours["ndcg@10"] < 1
    expected_keys = {f"{n}@{k}" for n in ("ndcg", "map", "recall", "precision") for k in ks} | {"mrr@10"}
    assert set(ours) == expected_keys


# ------------------------------------------------------------------------------------------- retrieval


def _unit(rng, n, d):
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_retrieve_matches_brute_force_sort():
    rng = np.random.default_rng(1)
    queries, passages = _unit(rng, 7, 16), _unit(rng, 60, 16)
    pids, qids = [f"p{i}" for i in range(60)], [f"q{i}" for i in range(7)]
    run = retrieve(queries, passages, pids, qids, top_k=10, batch_size=3)
    assert list(run) == qids
    for i, q in enumerate(qids):
        scores = passages @ queries[i]
        best = np.argsort(-scores)[:10]
        assert list(run[q]) == [pids[j] for j in best]  # in rank order
        assert list(run[q].values()) == pytest.approx(scores[best].tolist(), abs=1e-6)
    # top_k beyond the corpus returns the whole corpus
    assert all(len(docs) == 60 for docs in retrieve(queries, passages, pids, qids, top_k=500).values())


def test_faiss_path_equals_numpy_path():
    rng = np.random.default_rng(2)
    queries, passages = _unit(rng, 9, 32), _unit(rng, 300, 32)
    pids, qids = [f"p{i}" for i in range(300)], [f"q{i}" for i in range(9)]
    with_numpy = retrieve(queries, passages, pids, qids, top_k=20, batch_size=4, faiss_threshold=10**9)
    with_faiss = retrieve(queries, passages, pids, qids, top_k=20, batch_size=4, faiss_threshold=0)
    for q in qids:
        assert list(with_faiss[q]) == list(with_numpy[q])
        assert list(with_faiss[q].values()) == pytest.approx(list(with_numpy[q].values()), abs=1e-5)


def test_retrieve_with_an_empty_corpus_returns_an_empty_list_per_query():
    queries = _unit(np.random.default_rng(4), 2, 8)
    assert retrieve(queries, np.zeros((0, 8), np.float32), [], ["q1", "q2"]) == {"q1": {}, "q2": {}}


def test_retrieve_rejects_mismatched_shapes():
    rng = np.random.default_rng(3)
    with pytest.raises(ValueError):
        retrieve(_unit(rng, 2, 8), _unit(rng, 5, 4), list("abcde"), ["q1", "q2"])
    with pytest.raises(ValueError):
        retrieve(_unit(rng, 2, 8), _unit(rng, 5, 8), list("abc"), ["q1", "q2"])


# ------------------------------------------------------------------------------------ encoder + reports


def test_matryoshka_dimensions_equal_direct_encoding(minilm):
    dims = (64, 128, 384)
    result = evaluate_encoder(minilm, CORPUS, QUERIES, QRELS, ks=(1, 5, 10), dimensions=dims, progress=False)
    assert result["num_queries"] == len(QRELS) and result["num_passages"] == len(CORPUS)
    assert result["per_dimension"][384] == result["metrics"]
    assert result["metrics"]["ndcg@10"] > 0.8  # the tiny set is easy for a real model

    doc_ids, query_ids = list(CORPUS), list(QRELS)
    texts = [passage_text(CORPUS[d]) for d in doc_ids]
    full_p = minilm.encode_passages(texts)
    for dim in (64, 128):
        p = minilm.encode_passages(texts, dimensions=dim)
        q = minilm.encode_queries([QUERIES[i] for i in query_ids], dimensions=dim)
        np.testing.assert_allclose(unit_truncate(full_p, dim), p, atol=1e-5)
        direct = compute_metrics(QRELS, retrieve(q, p, doc_ids, query_ids, top_k=10), ks=(1, 5, 10))
        assert result["per_dimension"][dim] == pytest.approx(direct)
    with pytest.raises(ValueError):
        evaluate_encoder(minilm, CORPUS, QUERIES, QRELS, dimensions=(1000,), progress=False)


def _write_beir(folder: Path) -> None:
    folder.mkdir()
    with open(folder / "corpus.jsonl", "w") as f:
        for doc_id, doc in CORPUS.items():
            f.write(json.dumps({"_id": doc_id, "title": doc["title"], "text": doc["text"]}) + "\n")
    with open(folder / "queries.jsonl", "w") as f:
        for qid, text in QUERIES.items():
            f.write(json.dumps({"_id": qid, "text": text}) + "\n")
    (folder / "qrels").mkdir()
    with open(folder / "qrels" / "test.tsv", "w") as f:
        f.write("query-id\tcorpus-id\tscore\n")
        for qid, docs in QRELS.items():
            for doc_id, grade in docs.items():
                f.write(f"{qid}\t{doc_id}\t{grade}\n")


def test_compare_models_writes_reports(minilm, tmp_path):
    from embedforge.models.bi_encoder import BiEncoder

    beir = tmp_path / "beir"
    _write_beir(beir)
    out = tmp_path / "eval"

    # the same weights twice: "minilm" loaded from its short name, and the fixture's model renamed
    copy = BiEncoder(minilm.model, name="minilm-copy")
    results = compare_models(["minilm", copy], beir, out, dimensions=(128,))

    assert results["baseline"] == "minilm"
    assert list(results["models"]) == ["minilm", "minilm-copy"]
    base, tuned = (results["models"][n]["metrics"] for n in ("minilm", "minilm-copy"))
    assert tuned == pytest.approx(base)
    for delta in results["deltas"]["minilm-copy"].values():
        assert delta["abs"] == pytest.approx(0, abs=1e-9)
        assert delta["rel"] is None or delta["rel"] == pytest.approx(0, abs=1e-9)
    assert results["per_dimension_deltas"]["minilm-copy"][128]["ndcg@10"]["abs"] == pytest.approx(0, abs=1e-9)

    saved = json.loads((out / "eval_results.json").read_text())
    assert {"baseline", "models", "deltas", "per_dimension_deltas", "config"} <= set(saved)
    assert {"dataset", "split", "ks", "dimensions", "models", "num_queries", "num_passages"} <= set(
        saved["config"]
    )
    assert saved["config"]["ks"] == [1, 5, 10, 100] and saved["config"]["dimensions"] == [128]
    assert saved["config"]["num_queries"] == len(QRELS)
    model_keys = {"model", "metrics", "per_dimension", "num_queries", "num_passages", "seconds"}
    assert model_keys <= set(saved["models"]["minilm"])
    assert "ndcg@10" in saved["models"]["minilm"]["per_dimension"]["128"]
    assert set(saved["deltas"]["minilm-copy"]["ndcg@10"]) == {"abs", "rel"}

    png = (out / "eval_chart.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 1000

    report = (out / "eval_report.md").read_text()
    table = format_table(results)
    assert table in report
    assert format_table(saved) == table  # the JSON read back renders the same table
    lines = table.splitlines()
    assert lines[0] == "| metric | minilm | minilm-copy | Δ minilm-copy | Δ% minilm-copy |"
    ndcg_row = next(line for line in lines if line.startswith("| ndcg@10 |"))
    assert ndcg_row.endswith("| +0.0000 | +0.0% |")
    assert any(line.startswith("| ndcg@10 @ 128d |") for line in lines)
    assert any(line.startswith("| mrr@10 |") for line in lines)
    assert not list(out.glob(".*.tmp"))  # no temp files left behind


def test_relative_delta_is_none_when_baseline_is_zero():
    metrics = {"ndcg@10": 0.0, "recall@10": 0.5}
    results = {
        "baseline": "a",
        "models": {"a": {"metrics": metrics}, "b": {"metrics": {"ndcg@10": 0.2, "recall@10": 0.6}}},
        "config": {"ks": [10]},
    }
    assert ev._deltas(results["models"]["b"]["metrics"], metrics)["ndcg@10"]["rel"] is None
    assert ev._deltas(results["models"]["b"]["metrics"], metrics)["recall@10"]["rel"] == pytest.approx(0.2)
    table = format_table(results)
    assert "| ndcg@10 | 0.0000 | 0.2000 | +0.2000 | n/a |" in table
    assert "| recall@10 | 0.5000 | 0.6000 | +0.1000 | +20.0% |" in table


def test_run_eval_applies_config_overrides(tmp_path):
    from embedforge.config import load_config

    _write_beir(tmp_path / "beir")
    config = load_config("eval", beir=str(tmp_path / "beir"), models=["minilm"], out=str(tmp_path / "out"))
    config.ks, config.query_prompt = [1, 10], "query: "
    results = run_eval(config)
    assert results["models"]["minilm"]["prompts"]["query"] == "query: "
    assert results["config"]["load_options"] == {"query_prompt": "query: "}
    assert results["table"].startswith("| metric | minilm |")
    assert "| ndcg@10 |" in results["table"] and "ndcg@100" not in results["table"]
    assert (tmp_path / "out" / "eval_report.md").is_file()
