"""Is a model's gain over the baseline real? Paired tests over per-query scores.

Both models answer the same queries, so the test works on the per-query differences ``d_i = model_i -
base_i`` (the paired design of Sakai 2014 and of MTEB/BEIR comparisons):

- a 95% confidence interval of the mean difference by the percentile bootstrap: resample queries with
  replacement, seeded, 10,000 times (Efron & Tibshirani 1993);
- a two-sided p-value by the paired permutation (sign-flip) test: under "no difference" each ``d_i`` is
  as likely to be ``-d_i``; exact over all ``2^n`` sign patterns up to 16 queries, else 10,000 random flips
  with the (b + 1) / (m + 1) estimate that never reports p = 0 (Phipson & Smyth 2010).

A gain is called significant when p < 0.05 and the interval excludes 0 (they agree except at the edge).
A difference that is not significant is "within noise" when the interval is narrow (it rules out a change
of ``TELL_WIDTH`` either way) and "too few questions to tell" when it is wider: a few dozen queries cannot
tell a real +0.04 from nothing, and the verdict says so instead of reading as "no change".
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from typing import Any

import numpy as np

RESAMPLES = 10_000
SEED = 0
ALPHA = 0.05
EXACT_MAX_QUERIES = 16  # 65,536 sign patterns: cheap to enumerate
TELL_WIDTH = 0.03  # half-width of the 95% CI above which "not significant" is "too few questions to tell"


def bootstrap_ci(
    diffs, resamples: int = RESAMPLES, seed: int = SEED, confidence: float = 1 - ALPHA
) -> tuple[float, float]:
    """Percentile-bootstrap interval of the mean of ``diffs`` (queries resampled with replacement)."""
    d = np.asarray(diffs, dtype=np.float64)
    if d.size == 0:
        raise ValueError("no paired scores to compare")
    rng = np.random.default_rng(seed)
    means = np.empty(resamples)
    for start in range(0, resamples, 1000):  # bounded memory for large query sets
        rows = min(1000, resamples - start)
        means[start : start + rows] = d[rng.integers(0, d.size, size=(rows, d.size))].mean(axis=1)
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(low), float(high)


def sign_flip_p(diffs, resamples: int = RESAMPLES, seed: int = SEED) -> float:
    """Two-sided paired permutation p-value of ``mean(diffs) = 0`` (exact up to 16 queries)."""
    d = np.asarray(diffs, dtype=np.float64)
    if d.size == 0:
        raise ValueError("no paired scores to compare")
    observed = abs(d.mean()) - 1e-12  # float noise must not turn a tie into a miss
    if d.size <= EXACT_MAX_QUERIES:
        signs = np.array(list(itertools.product((1.0, -1.0), repeat=d.size)))
        return float(np.mean(np.abs(signs @ d / d.size) >= observed))
    rng = np.random.default_rng(seed)
    hits = 0
    for start in range(0, resamples, 1000):
        rows = min(1000, resamples - start)
        signs = rng.choice((-1.0, 1.0), size=(rows, d.size))
        hits += int(np.sum(np.abs(signs @ d / d.size) >= observed))
    return (hits + 1) / (resamples + 1)


def paired_comparison(
    base: Mapping[str, float],
    model: Mapping[str, float],
    resamples: int = RESAMPLES,
    seed: int = SEED,
) -> dict[str, Any]:
    """Compare per-query scores (``{query_id: score}``) of a model against the baseline on shared queries.

    Returns ``{"n", "base", "model", "diff", "rel", "ci95": [lo, hi], "p", "better", "worse", "tied",
    "significant", "resamples", "seed"}``; ``rel`` is None when the baseline mean is 0.
    """
    queries = sorted(set(base) & set(model))
    if not queries:
        raise ValueError("the two models share no scored query")
    b = np.array([base[q] for q in queries], dtype=np.float64)
    m = np.array([model[q] for q in queries], dtype=np.float64)
    d = m - b
    low, high = bootstrap_ci(d, resamples, seed)
    p = sign_flip_p(d, resamples, seed)
    return {
        "n": len(queries),
        "base": float(b.mean()),
        "model": float(m.mean()),
        "diff": float(d.mean()),
        "rel": float(d.mean() / b.mean()) if b.mean() else None,
        "ci95": [low, high],
        "p": p,
        "better": int(np.sum(d > 1e-12)),
        "worse": int(np.sum(d < -1e-12)),
        "tied": int(np.sum(np.abs(d) <= 1e-12)),
        "significant": bool(p < ALPHA and (low > 0 or high < 0)),
        "resamples": resamples,
        "seed": seed,
    }


def verdict(name: str, baseline: str, result: Mapping[str, Any], metric: str = "nDCG@10") -> str:
    """One line saying whether ``name`` beats ``baseline``, with the numbers behind it."""
    low, high = result["ci95"]
    rel = "" if result["rel"] is None else f" ({result['rel'] * 100:+.1f}%)"
    if result["significant"]:
        word = "significant gain" if result["diff"] > 0 else "significant loss"
    elif (high - low) / 2 > TELL_WIDTH:
        word = f"too few questions to tell (the 95% CI spans ±{(high - low) / 2:.3f}; not significant)"
    else:
        word = "within noise (not significant)"
    return (
        f"{name} vs {baseline}: {metric} {result['diff']:+.4f}{rel}, 95% CI [{low:+.4f}, {high:+.4f}], "
        f"p {result['p']:.3g}, {result['better']} queries better / {result['worse']} worse of "
        f"{result['n']}: {word}"
    )


def within_tolerance(result: Mapping[str, Any], tolerance: float) -> dict[str, Any]:
    """Is the per-query difference within ``+-tolerance``, judged by its 95% CI rather than its mean?

    ``within``: the whole interval is inside the band; ``beyond``: the whole interval is outside it (a
    difference larger than the tolerance is shown); ``undecided``: the interval crosses a bound of the band,
    and when it is wider than the band itself the queries are too few to decide either way.
    """
    low, high = result["ci95"]
    if -tolerance <= low and high <= tolerance:
        verdict, why = "within", f"the 95% CI [{low:+.4f}, {high:+.4f}] lies inside +-{tolerance}"
    elif high < -tolerance or low > tolerance:
        verdict, why = "beyond", f"the 95% CI [{low:+.4f}, {high:+.4f}] lies outside +-{tolerance}"
    elif high - low > 2 * tolerance:
        verdict = "undecided"
        why = (
            f"too few queries to decide: {result['n']} give a 95% CI [{low:+.4f}, {high:+.4f}], "
            f"wider than the +-{tolerance} band"
        )
    else:
        verdict, why = "undecided", f"the 95% CI [{low:+.4f}, {high:+.4f}] crosses a bound of +-{tolerance}"
    return {"verdict": verdict, "tolerance": tolerance, "why": why}
