"""`make demo`: the main job end to end on the bundled default data and model.

PostgreSQL 15 manual (Debian package, fetched into .cache/ without root) -> a training set and a held-out
BEIR test set split by page -> fine-tune MiniLM with the CPU recipe -> base vs tuned retrieval metrics.
Until the LLM question generator lands, the training questions are the manual's section headings
(see ``demo_data``). Every artifact lands in ``runs/demo``; re-running rebuilds it.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from embedforge.config import load_config
from embedforge.demo_data import build_demo_dataset, fetch_postgres_manual
from embedforge.evaluate import compare_models, format_table
from embedforge.registry import DEFAULT_MODEL
from embedforge.train import finetune

RECIPE = Path(__file__).resolve().parents[2] / "recipes" / "minilm_cpu.yaml"


def main(run_dir: str = "runs/demo", cache_dir: str = ".cache/demo") -> int:
    started = time.time()
    run = Path(run_dir)
    print(f"[1/4] fetching the PostgreSQL 15 manual into {cache_dir}", flush=True)
    html = fetch_postgres_manual(Path(cache_dir))
    print("[2/4] building training pairs and a held-out test set (split by page)", flush=True)
    counts = build_demo_dataset(html, run / "data")
    print(f"      {counts}", flush=True)
    recipe = os.environ.get("EMBEDFORGE_DEMO_RECIPE", str(RECIPE))
    config = load_config(
        "finetune",
        recipe,
        # No hard negatives before the mining stage exists: in-batch negatives only.
        ["n_passages=1", "in_batch_negatives=true"],
        train_data=str(run / "data" / "train.jsonl"),
        output_dir=str(run / "finetune"),
    )
    print(f"[3/4] fine-tuning {config.base_model} ({recipe})", flush=True)
    summary = finetune(config)
    print(
        f"      {summary['steps']} steps in {summary['seconds']} s, best val nDCG@10 {summary['best_metric']}"
    )
    print("[4/4] evaluating base vs tuned on held-out pages", flush=True)
    results = compare_models(
        {"base (" + DEFAULT_MODEL + ")": DEFAULT_MODEL, "tuned": str(run / "finetune" / "model")},
        run / "data" / "test_beir",
        run / "eval",
    )
    print()
    print(format_table(results))
    print(f"\nreport: {run / 'eval' / 'eval_report.md'}  chart: {run / 'eval' / 'eval_chart.png'}")
    print(f"demo finished in {time.time() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
