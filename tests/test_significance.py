"""Paired bootstrap CI and sign-flip p-value, checked against independent computations."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
from scipy import stats

from embedforge.data.formats import BeirDataset, DataFormatError
from embedforge.evaluate.report import format_table
from embedforge.evaluate.retrieval import compare_models
from embedforge.measures.significance import (
    bootstrap_ci,
    paired_comparison,
    sign_flip_p,
    verdict,
    within_tolerance,
)

# nDCG@10 of 8 hand-made queries for a baseline and a tuned model
BASE = {"q1": 0.50, "q2": 0.63, "q3": 1.00, "q4": 0.00, "q5": 0.39, "q6": 0.43, "q7": 1.00, "q8": 0.30}
TUNED = {"q1": 0.63, "q2": 1.00, "q3": 1.00, "q4": 0.50, "q5": 0.43, "q6": 0.39, "q7": 1.00, "q8": 0.63}


def test_sign_flip_p_equals_exact_enumeration_on_8_queries():
    d = np.array([TUNED[q] - BASE[q] for q in sorted(BASE)])
    observed = abs(d.mean())
    extreme = sum(
        abs(sum(s * x for s, x in zip(signs, d, strict=True)) / len(d)) >= observed - 1e-12
        for signs in itertools.product((1, -1), repeat=len(d))
    )
    # 2 zero differences: every flip of them ties, so the count is a multiple of 4
    assert extreme == 24  # counted by hand: |sum| >= 1.33 over the 64 patterns of the 6 non-zero diffs, x4
    assert sign_flip_p(d) == pytest.approx(extreme / 256, abs=1e-15)


def test_sign_flip_p_matches_scipy_permutation_test_on_40_queries():
    rng = np.random.default_rng(3)
    d = rng.normal(0.03, 0.1, size=40)
    reference = stats.permutation_test(
        (d,), np.mean, permutation_type="samples", n_resamples=50_000, alternative="two-sided", random_state=1
    ).pvalue
    assert 0.005 < reference < 0.2  # a borderline case, where a wrong test would show
    assert sign_flip_p(d, resamples=20_000) == pytest.approx(reference, abs=0.01)


def test_bootstrap_ci_matches_scipy_percentile_bootstrap():
    rng = np.random.default_rng(5)
    d = rng.normal(0.02, 0.15, size=120)
    reference = stats.bootstrap(
        (d,), np.mean, n_resamples=20_000, method="percentile", confidence_level=0.95, random_state=2
    ).confidence_interval
    low, high = bootstrap_ci(d, resamples=20_000, seed=0)
    assert low == pytest.approx(reference.low, abs=0.003)
    assert high == pytest.approx(reference.high, abs=0.003)
    assert low < d.mean() < high
    assert bootstrap_ci(d, seed=0) == bootstrap_ci(d, seed=0)  # seeded: the same report every time


def test_paired_comparison_counts_and_verdicts():
    result = paired_comparison(BASE, TUNED)
    assert result["n"] == 8
    assert result["diff"] == pytest.approx(0.16625)
    assert result["rel"] == pytest.approx(0.16625 / 0.53125)
    assert (result["better"], result["worse"], result["tied"]) == (5, 1, 2)
    assert result["p"] == pytest.approx(24 / 256)
    assert result["ci95"][0] > 0  # the interval excludes 0 but p = 0.094: not called significant
    assert not result["significant"]
    assert verdict("tuned", "base", result).endswith(
        "too few questions to tell (the 95% CI spans ±0.130; not significant)"
    )
    # many queries, a tiny difference either way: a narrow interval around 0 is "within noise"
    flat = paired_comparison(
        {f"q{i}": 0.5 for i in range(400)}, {f"q{i}": 0.5 + (0.01 if i % 2 else -0.01) for i in range(400)}
    )
    assert not flat["significant"] and verdict("tuned", "base", flat).endswith(
        "within noise (not significant)"
    )

    strong = paired_comparison(
        {f"q{i}": 0.2 for i in range(60)}, {f"q{i}": 0.2 + 0.01 * (i % 7) for i in range(60)}
    )
    assert strong["significant"] and strong["p"] < 0.001
    assert "significant gain" in verdict("tuned", "base", strong)
    with pytest.raises(ValueError, match="share no"):
        paired_comparison({"a": 1.0}, {"b": 1.0})


class _Lookup:
    """An encoder that embeds texts by a fixed table: retrieval results are known in advance."""

    def __init__(self, name, vectors):
        self.name, self.vectors, self.dimension = name, vectors, 2
        self.prompts = {"query": "", "passage": ""}

    def encode_queries(self, texts, batch_size=64, progress=False):
        return np.array([self.vectors[t] for t in texts], dtype=np.float32)

    encode_passages = encode_queries


def test_within_tolerance_needs_enough_queries_to_say_so():
    # the same spread of per-query differences (+-0.2 around a mean of 0): 8 queries cannot tell whether the
    # mean difference is within +-0.01; 4,000 can
    rng = np.random.default_rng(1)
    for n, expected in [(8, "undecided"), (4000, "within")]:
        diffs = rng.choice([-0.2, 0.2], size=n)
        diffs -= diffs.mean()
        base = {f"q{i}": 0.5 for i in range(n)}
        model = {f"q{i}": 0.5 + d for i, d in enumerate(diffs)}
        judged = within_tolerance(paired_comparison(base, model), 0.01)
        assert judged["verdict"] == expected, judged
    assert judged["why"].startswith("the 95% CI") and "inside +-0.01" in judged["why"]
    few = within_tolerance({"n": 8, "ci95": [-0.12, 0.12]}, 0.01)
    assert few["why"].startswith("too few queries to decide: 8 give a 95% CI [-0.1200, +0.1200]")
    assert within_tolerance({"n": 300, "ci95": [-0.05, -0.02]}, 0.01)["verdict"] == "beyond"
    crossing = within_tolerance({"n": 300, "ci95": [-0.015, -0.005]}, 0.01)  # narrow, but over the bound
    assert crossing["verdict"] == "undecided" and "crosses a bound" in crossing["why"]


def test_compare_models_reports_ci_and_p_in_json_and_table(tmp_path):
    # 12 queries; the baseline ranks the right document first for 4, the tuned model for 12.
    corpus, queries, qrels, base_vecs, tuned_vecs = {}, {}, {}, {}, {}
    for i in range(12):
        angle = i * np.pi / 24
        right, wrong = f"doc {i}", f"decoy {i}"
        corpus[f"d{i}"], corpus[f"x{i}"] = {"text": right}, {"text": wrong}
        queries[f"q{i}"], qrels[f"q{i}"] = f"question {i}", {f"d{i}": 1}
        here = np.array([np.cos(angle), np.sin(angle)])
        near = np.array([np.cos(angle + 0.01), np.sin(angle + 0.01)])
        tuned_vecs |= {f"question {i}": here, right: here, wrong: near}
        base_vecs |= {f"question {i}": here, right: here if i < 4 else near, wrong: near if i < 4 else here}
    dataset = BeirDataset(corpus, queries, qrels)
    results = compare_models(
        {"base": _Lookup("base", base_vecs), "tuned": _Lookup("tuned", tuned_vecs)},
        dataset,
        tmp_path,
        progress=False,
    )
    expected = paired_comparison(
        {q: v["ndcg@10"] for q, v in results["models"]["base"]["per_query"].items()},
        {q: v["ndcg@10"] for q, v in results["models"]["tuned"]["per_query"].items()},
    )
    saved = json.loads((tmp_path / "eval_results.json").read_text())
    assert saved["significance"]["tuned"]["ndcg@10"] == expected  # floats survive JSON exactly
    assert saved["significance"]["tuned"]["ndcg@10"]["better"] == 8
    assert saved["significance"]["tuned"]["ndcg@10"]["worse"] == 0
    assert saved["significance"]["tuned"]["ndcg@10"]["p"] == pytest.approx(2 / 256)  # only all-+ and all--
    table = format_table(saved)
    assert "95% CI (bootstrap)" in table and "| tuned | ndcg@10 |" in table
    assert "tuned vs base: nDCG@10" in table and "significant gain" in table
    assert "significant gain" in (tmp_path / "eval_report.md").read_text()


def test_compare_models_reuses_an_earlier_result_and_refuses_one_from_another_set(tmp_path):
    vectors = {"q": np.array([1.0, 0.0]), "right": np.array([1.0, 0.0]), "wrong": np.array([0.0, 1.0])}
    dataset = BeirDataset({"d": {"text": "right"}, "x": {"text": "wrong"}}, {"q1": "q"}, {"q1": {"d": 1}})
    first = compare_models({"base": _Lookup("base", vectors)}, dataset, tmp_path / "a", progress=False)
    earlier = json.loads((tmp_path / "a" / "eval_results.json").read_text())["models"]

    class _NeverEncode(_Lookup):
        def encode_queries(self, texts, batch_size=64, progress=False):
            raise AssertionError("a reused model must not be encoded again")

    again = compare_models(
        {"base": _NeverEncode("base", vectors), "tuned": _Lookup("tuned", vectors)},
        dataset,
        tmp_path / "b",
        progress=False,
        reuse=earlier,
    )
    assert again["models"]["base"]["metrics"] == first["models"]["base"]["metrics"]
    assert again["significance"]["tuned"]["ndcg@10"]["tied"] == 1
    other = BeirDataset(dataset.corpus, {"q2": "q"}, {"q2": {"d": 1}})
    with pytest.raises(DataFormatError, match="not on this BEIR set"):
        compare_models(
            {"base": _NeverEncode("base", vectors)}, other, tmp_path / "c", progress=False, reuse=earlier
        )
