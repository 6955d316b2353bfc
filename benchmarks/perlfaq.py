"""Retrieval quality on questions people wrote: the Perl FAQ benchmark (``embedforge.demo.perlfaq_data``).

Builds (once, cached) the document folder ``embedforge run --corpus`` reads and the BEIR folder with the
FAQ's real questions, then evaluates the given models on it (default: base MiniLM and base MPNet) with
``embedforge eval``'s report: nDCG@10, Recall@10, paired 95% CI and p-value of each model vs the first.
Writes ``<out>/eval_results.json`` / ``eval_report.md`` and ``docs/bench/perlfaq.json``.

    .venv/bin/python benchmarks/perlfaq.py [--model minilm --model mpnet --model runs/x/finetune/model]

To tune on it: ``embedforge run --corpus .cache/perlfaq/docs --out runs/perlfaq --config recipes/minilm_cpu.yaml``,
then ``benchmarks/perlfaq.py --model minilm --model runs/perlfaq/finetune/model``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = Path(__file__).resolve().parents[1]


def summarize(results: dict, manifest: dict) -> dict:
    """The numbers worth keeping: counts, checksums, each model's scores and its test vs the first."""
    return {
        "date": dt.date.today().isoformat(),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores",
        "data": {k: v for k, v in manifest.items() if k != "headings"},
        "baseline": results["baseline"],
        "models": {
            name: {
                "ndcg@10": r["metrics"]["ndcg@10"],
                "recall@10": r["metrics"]["recall@10"],
                "mrr@10": r["metrics"]["mrr@10"],
                "queries": r["num_queries"],
                "documents": r["num_passages"],
                "seconds": r["seconds"],
            }
            for name, r in results["models"].items()
        },
        "significance": results.get("significance", {}),
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--cache-dir", default=str(ROOT / ".cache" / "perlfaq"))
    parser.add_argument("--out", default=str(ROOT / "runs" / "perlfaq_eval"))
    parser.add_argument(
        "--model", action="append", help="model name or folder, first = baseline (repeatable)"
    )
    parser.add_argument("--json", default=str(ROOT / "docs" / "bench" / "perlfaq.json"), help="'' to skip")
    parser.add_argument(
        "--reuse", help="eval_results.json of an earlier run on this set: its models are not encoded again"
    )
    args = parser.parse_args()

    from embedforge.atomic import write_json_atomic
    from embedforge.demo.perlfaq_data import build_perlfaq
    from embedforge.evaluate import compare_models
    from embedforge.evaluate.report import format_table

    paths = build_perlfaq(args.cache_dir)
    manifest = json.loads(paths.manifest.read_text())
    print(
        f"perlfaq: {manifest['queries']} real questions, {manifest['documents']} documents "
        f"({manifest['distractor_documents']} distractors); docs for the pipeline: {paths.docs}",
        flush=True,
    )
    reuse = json.loads(Path(args.reuse).read_text())["models"] if args.reuse else None
    results = compare_models(
        args.model or ["minilm", "mpnet"], paths.beir, args.out, progress=False, reuse=reuse
    )
    print(format_table(results))
    summary = summarize(results, manifest)
    if args.json:
        write_json_atomic(args.json, summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
