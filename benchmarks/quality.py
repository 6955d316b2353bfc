"""Retrieval quality of the whole pipeline on the demo corpus, with a larger budget than `make demo`.

Runs ``embedforge run`` (sdg with the local SmolLM2-135M -> prep -> finetune MiniLM -> eval) on the whole
PostgreSQL 15 manual with ``recipes/demo_cpu.yaml`` plus the overrides below (more pages and questions),
then writes the relative nDCG@10 and Recall@10 gains of the tuned model over the base model on held-out
pages, the general-domain check (Lee news similarity, base vs tuned), the stage times and the chart into
``docs/benchmarks.md`` (between the ``quality`` markers) and ``docs/bench/quality.json``.

Target: at least +10% relative nDCG@10 on held-out pages and no loss on the general-domain set
(here: the tuned Pearson correlation no more than 0.01 below the base model's).

    .venv/bin/python benchmarks/quality.py [--run-dir runs/quality] [stage.key=value ...]

A re-run resumes: finished stages are skipped (see ``embedforge run``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "demo_cpu.yaml"
# the demo recipe on the whole manual, with 15 times the questions
OVERRIDES = ["sdg.max_documents=0", "sdg.max_passages=3000"]
START, END = "<!-- quality:start -->", "<!-- quality:end -->"
TARGET_NDCG_GAIN = 0.10
GENERAL_TOLERANCE = 0.01


def _relative(tuned: float, base: float) -> float | None:
    return None if base == 0 else (tuned - base) / base


def summarize(run: Path, overrides: list[str]) -> dict:
    results = json.loads((run / "eval" / "eval_results.json").read_text())
    prep = json.loads((run / "prep" / "prep_report.json").read_text())["split"]
    sdg = json.loads((run / "sdg" / "sdg_report.json").read_text())
    base_name = results["baseline"]
    tuned_name = next(n for n in results["models"] if n != base_name)
    base, tuned = results["models"][base_name], results["models"][tuned_name]
    metrics = {
        m: {
            "base": base["metrics"][m],
            "tuned": tuned["metrics"][m],
            "relative": _relative(tuned["metrics"][m], base["metrics"][m]),
        }
        for m in ("ndcg@10", "recall@10", "mrr@10", "recall@100")
    }
    general = {
        m: {"base": base["general_check"][m], "tuned": tuned["general_check"][m]}
        for m in ("pearson", "spearman")
    }
    stages = {}
    for stage in ("sdg", "prep", "finetune", "eval"):
        marker = json.loads((run / stage / ".stage.json").read_text())
        stages[stage] = marker.get("seconds")
    return {
        "command": "python benchmarks/quality.py " + " ".join(overrides),
        "recipe": str(RECIPE.relative_to(ROOT)),
        "overrides": OVERRIDES + overrides,
        "date": dt.date.today().isoformat(),
        "machine": f"{os.cpu_count()} CPU cores, {platform.machine()}, no GPU",
        # from the stage markers, so a resumed or re-rendered run still reports the time the work took
        "stage_seconds": stages,
        "total_seconds": round(sum(v or 0 for v in stages.values())),
        "data": {
            "pages_train": prep["documents"]["train"],
            "pages_test": prep["documents"]["test"],
            "questions_generated": sdg["generated"],
            "questions_kept": sdg["kept"],
            "removed": sdg["removed"],
            "train_questions": prep["questions"]["train"],
            "test_questions": prep["questions"]["test"] + prep["questions"].get("test_roundtrip_dropped", 0),
            "test_passages": prep["passages"]["test"],
        },
        "metrics": metrics,
        "general_check": general,
        "targets": {
            "ndcg@10 relative gain >= 10%": metrics["ndcg@10"]["relative"] >= TARGET_NDCG_GAIN,
            f"general-domain Pearson not below base - {GENERAL_TOLERANCE}": general["pearson"]["tuned"]
            >= general["pearson"]["base"] - GENERAL_TOLERANCE,
        },
    }


def render(summary: dict) -> str:
    d, m, g = summary["data"], summary["metrics"], summary["general_check"]
    lines = [
        START,
        f"`{summary['command']}`, {summary['date']}, {summary['machine']}. "
        f"Recipe `{summary['recipe']}` with `{' '.join(summary['overrides'])}`: the local SmolLM2-135M wrote "
        f"{d['questions_generated']} questions, {d['questions_kept']} survived cleaning, dedup and the "
        f"round-trip filter; {d['train_questions']} train MiniLM ({d['pages_train']} pages), "
        f"{d['test_questions']} test it on {d['test_passages']} passages of {d['pages_test']} held-out pages. "
        f"Time {summary['total_seconds']} s (stages: "
        + ", ".join(f"{k} {v} s" for k, v in summary["stage_seconds"].items())
        + ").",
        "",
        "| metric (held-out pages) | base MiniLM | tuned | relative |",
        "|---|---:|---:|---:|",
    ]
    for name, row in m.items():
        rel = "n/a" if row["relative"] is None else f"{row['relative']:+.1%}"
        bold = "**" if name in ("ndcg@10", "recall@10") else ""
        lines.append(f"| {name} | {row['base']:.4f} | {row['tuned']:.4f} | {bold}{rel}{bold} |")
    lines += [
        "",
        "| general domain: Lee news similarity (1,225 rated pairs) | base | tuned | delta |",
        "|---|---:|---:|---:|",
    ]
    for name, row in g.items():
        lines.append(
            f"| {name} | {row['base']:.4f} | {row['tuned']:.4f} | {row['tuned'] - row['base']:+.4f} |"
        )
    lines += ["", "| target | status |", "|---|---|"]
    lines += [f"| {t} | {'met' if ok else '**not met**'} |" for t, ok in summary["targets"].items()]
    lines += ["", "![quality chart](bench/quality_chart.png)", "", "Raw: `docs/bench/quality.json`.", END]
    return "\n".join(lines)


def write_section(path: Path, section: str) -> None:
    text = path.read_text()
    if START in text and END in text:
        text = text[: text.index(START)] + section + text[text.index(END) + len(END) :]
    else:
        text = (
            text.rstrip("\n") + "\n\n## Quality: embedforge run on the PostgreSQL manual\n\n" + section + "\n"
        )
    tmp = path.with_suffix(".md.tmp")
    tmp.write_text(text)
    tmp.replace(path)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--run-dir", default=str(ROOT / "runs" / "quality"))
    parser.add_argument("--cache-dir", default=str(ROOT / ".cache" / "demo"))
    parser.add_argument("--no-docs", action="store_true", help="do not touch docs/ (print the section only)")
    parser.add_argument("overrides", nargs="*", help="extra stage.key=value overrides")
    args = parser.parse_args()

    from embedforge.demo_data import fetch_postgres_manual
    from embedforge.pipeline import run_pipeline

    manual = fetch_postgres_manual(Path(args.cache_dir))
    run_pipeline(str(manual), args.run_dir, str(RECIPE), OVERRIDES + args.overrides)
    summary = summarize(Path(args.run_dir), args.overrides)
    section = render(summary)
    print(section)
    if not args.no_docs:
        bench = ROOT / "docs" / "bench"
        (bench / "quality.json").write_text(json.dumps(summary, indent=2) + "\n")
        shutil.copy(Path(args.run_dir) / "eval" / "eval_chart.png", bench / "quality_chart.png")
        write_section(ROOT / "docs" / "benchmarks.md", section)
    return 0 if all(summary["targets"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
