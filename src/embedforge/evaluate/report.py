"""The eval stage's reports: the Markdown comparison table, the full ``eval_report.md`` and the PNG chart.

``evaluate`` computes the numbers; this module only formats them, from the dict ``compare_models`` returns
or from ``eval_results.json`` read back.
"""

from __future__ import annotations

import io
import json
from collections.abc import Mapping
from typing import Any

import numpy as np

from embedforge.measures.metrics import DEFAULT_KS, PRIMARY_METRIC, SIGNIFICANCE_METRICS, delta, metric_names
from embedforge.measures.significance import verdict

REPORT_FILE, CHART_FILE = "eval_report.md", "eval_chart.png"
CHART_METRICS = ("ndcg@10", "recall@10", "map@10", "mrr@10")
DIMENSION_METRICS = ("ndcg@10", "recall@10")


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|")


def _fmt_abs(value: float) -> str:
    return f"{value:+.4f}"


def _fmt_rel(value: float | None) -> str:
    return "n/a" if value is None else f"{value * 100:+.1f}%"


def _table(
    rows: list[str], values: Mapping[str, Mapping[str, float]], names: list[str], label: str
) -> list[str]:
    """Rows x models with, for each non-baseline model, its absolute and relative delta vs the first."""
    base, others = names[0], names[1:]
    header = [label, *names] + [h for n in others for h in (f"Δ {n}", f"Δ% {n}")]
    lines = ["| " + " | ".join(_cell(h) for h in header) + " |", "|---" + "|---:" * (len(header) - 1) + "|"]
    for row in rows:
        cells = [row] + [f"{values[n][row]:.4f}" for n in names]
        for n in others:
            change = delta(values[n][row], values[base][row])
            cells += [_fmt_abs(change["abs"]), _fmt_rel(change["rel"])]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def format_table(results: Mapping[str, Any]) -> str:
    """The Markdown comparison table (metric rows x model columns, deltas vs the first model).

    With Matryoshka dimensions, a second table gives nDCG@10 and Recall@10 per dimension. Works on the
    dict ``compare_models`` returns and on ``eval_results.json`` read back.
    """
    models = results["models"]
    names = list(models)
    ks = results.get("config", {}).get("ks") or DEFAULT_KS
    metrics = {n: models[n]["metrics"] for n in names}
    rows = [m for m in metric_names(ks) if all(m in metrics[n] for n in names)]
    lines = _table(rows, metrics, names, "metric")

    per_dim = {n: {int(d): v for d, v in models[n].get("per_dimension", {}).items()} for n in names}
    dims = sorted(set.intersection(*(set(p) for p in per_dim.values())))
    if dims:
        values = {
            n: {f"{m} @ {d}d": per_dim[n][d][m] for d in dims for m in DIMENSION_METRICS} for n in names
        }
        lines += ["", *_table(list(values[names[0]]), values, names, "metric @ dimension")]
    significance = results.get("significance") or {}
    rows = [
        (n, m, significance[n][m])
        for n in names[1:]
        for m in SIGNIFICANCE_METRICS
        if m in significance.get(n, {})
    ]
    if rows:
        lines += [
            "",
            f"| paired test vs {_cell(names[0])} | metric | Δ | 95% CI (bootstrap) | p (sign flip) | better / worse / tied | significant |",
            "|---|---|---:|---:|---:|---:|---|",
        ]
        for n, m, r in rows:
            lines.append(
                f"| {_cell(n)} | {m} | {_fmt_abs(r['diff'])} | [{r['ci95'][0]:+.4f}, {r['ci95'][1]:+.4f}] | "
                f"{r['p']:.3g} | {r['better']} / {r['worse']} / {r['tied']} | {'yes' if r['significant'] else 'no'} |"
            )
        lines += [""] + [
            "- " + verdict(n, names[0], significance[n][PRIMARY_METRIC]) + "."
            for n in names[1:]
            if PRIMARY_METRIC in significance.get(n, {})
        ]
    general = {n: models[n].get("general_check") or {} for n in names}
    if all("pearson" in g for g in general.values()):
        values = {n: {f"lee {m}": general[n][m] for m in ("pearson", "spearman")} for n in names}
        lines += ["", *_table(list(values[names[0]]), values, names, "general domain (Lee news similarity)")]
    return "\n".join(lines)


def render_report(results: Mapping[str, Any]) -> str:
    """The full ``eval_report.md``: what was evaluated, the tables, the chart."""
    config = results.get("config", {})
    names = list(results["models"])
    lines = [
        "# Retrieval evaluation",
        "",
        f"- dataset: `{config.get('dataset', '?')}` (split `{config.get('split', '?')}`), "
        f"{config.get('num_queries', '?')} judged queries, {config.get('num_passages', '?')} passages",
        f"- baseline: **{_cell(results['baseline'])}**; Δ = model - baseline, Δ% = Δ / baseline",
        f"- metrics: pytrec_eval (trec_eval semantics, as BEIR), mean over judged queries; "
        f"retrieval: {config.get('retrieval', 'exact inner product')}",
    ]
    for model in config.get("models", []):
        lines.append(
            f"- `{_cell(model['name'])}`: {model['source']}, {model['dimension']} dims, prompts `{json.dumps(model['prompts'])}`"
        )
    lines += ["", format_table(results), "", f"![{', '.join(CHART_METRICS)} per model]({CHART_FILE})", ""]
    seconds = ", ".join(f"{_cell(n)} {results['models'][n]['seconds']:.1f}s" for n in names)
    lines += [f"Time per model (embedding + retrieval): {seconds}.", ""]
    return "\n".join(lines)


def render_chart(results: Mapping[str, Any]) -> bytes:
    """PNG bytes of a grouped bar chart: nDCG@10, Recall@10, MAP@10, MRR@10 for each model."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    models = results["models"]
    names = list(models)
    metrics = [m for m in CHART_METRICS if all(m in models[n]["metrics"] for n in names)]
    fig = Figure(figsize=(2 + len(metrics) * (0.6 + 0.45 * len(names)), 4.6), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    width = 0.8 / len(names)
    x = np.arange(len(metrics))
    for i, name in enumerate(names):
        heights = [models[name]["metrics"][m] for m in metrics]
        bars = ax.bar(x + (i - (len(names) - 1) / 2) * width, heights, width, label=name)
        ax.bar_label(bars, fmt="%.3f", fontsize=7, padding=2)
    ax.set_xticks(x, metrics)
    ax.set_ylim(0, min(1.1, max([models[n]["metrics"][m] for n in names for m in metrics] + [0.1]) * 1.15))
    ax.set_ylabel("score")
    ax.set_title(f"Retrieval quality vs baseline '{results['baseline']}'")
    fig.legend(loc="outside lower center", ncols=min(len(names), 4), fontsize=8, frameon=False)
    ax.grid(axis="y", alpha=0.3)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()
