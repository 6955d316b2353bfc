"""Which negatives should the CPU default use? NVIDIA's group loss vs in-batch + hard negatives.

Same model (MiniLM), data (the synthetic domain fixture: 1 positive + 3 mined-style hard negatives per
query, held-out machines for test), schedule and temperature (0.02); only `in_batch_negatives` differs.
Reports held-out nDCG@10 / Recall@10 for each, per seed.

    .venv/bin/python benchmarks/loss_choice.py [--seeds 0 1] [--out docs/bench/loss_choice.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--out", default=str(ROOT / "docs" / "bench" / "loss_choice.json"))
    args = parser.parse_args()

    from domain_fixture import make_domain_fixture
    from embedforge.config import FinetuneConfig
    from embedforge.evaluate import compare_models
    from embedforge.finetune import finetune

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            data = make_domain_fixture(Path(tmp) / f"data{seed}", seed=seed)
            models = {"base": "minilm"}
            for in_batch in (False, True):
                name = "in-batch + hard" if in_batch else "group (NVIDIA)"
                out = Path(tmp) / f"{seed}-{in_batch}"
                summary = finetune(
                    FinetuneConfig(
                        train_data=str(data["train"]),
                        val_data=str(data["val"]),
                        output_dir=str(out),
                        max_seq_length=64,
                        epochs=1,
                        learning_rate=1e-4,
                        global_batch_size=32,
                        n_passages=4,
                        in_batch_negatives=in_batch,
                        seed=seed,
                        early_stopping_patience=0,
                    )
                )
                models[name] = str(out / "model")
                rows.append({"seed": seed, "loss": name, "train_seconds": summary["seconds"]})
            results = compare_models(models, data["test_beir"], Path(tmp) / f"eval{seed}", progress=False)
            for row in rows:
                if row["seed"] == seed:
                    metrics = results["models"][row["loss"]]["metrics"]
                    row.update(ndcg10=round(metrics["ndcg@10"], 4), recall10=round(metrics["recall@10"], 4))
            base = results["models"]["base"]["metrics"]
            rows.append(
                {
                    "seed": seed,
                    "loss": "base",
                    "ndcg10": round(base["ndcg@10"], 4),
                    "recall10": round(base["recall@10"], 4),
                }
            )
            print(json.dumps([r for r in rows if r["seed"] == seed], indent=1), flush=True)
    report = {
        "command": "python benchmarks/loss_choice.py --seeds " + " ".join(map(str, args.seeds)),
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{os.cpu_count()} CPU cores",
        "rows": rows,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
