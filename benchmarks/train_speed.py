"""Training throughput of `embedforge finetune` against a plain sentence-transformers script.

Same model (MiniLM), same data (the synthetic domain fixture: 1 positive + 3 hard negatives per query),
same batch, same loss (MultipleNegativesRankingLoss, scale 50 = temperature 0.02), same max length, no
validation. Each run is a fresh subprocess so its peak RSS is its own; runs alternate A B B A to cancel drift.
Throughput = training rows / the Trainer's own train_runtime (model loading and saving excluded).

    .venv/bin/python benchmarks/train_speed.py [--rounds 2] [--out docs/bench/train_speed.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
SETTINGS = {"batch": 32, "max_seq_length": 64, "epochs": 1, "lr": 5e-5, "n_passages": 4, "seed": 42}


def run_embedforge(train: str, out: str) -> dict:
    from embedforge.config import FinetuneConfig
    from embedforge.finetune import finetune

    s = SETTINGS
    summary = finetune(
        FinetuneConfig(
            train_data=train,
            output_dir=out,
            max_seq_length=s["max_seq_length"],
            epochs=s["epochs"],
            learning_rate=s["lr"],
            global_batch_size=s["batch"],
            n_passages=s["n_passages"],
            in_batch_negatives=True,
            validation_split=0.0,
            seed=s["seed"],
            eval_steps=10_000,
        )
    )
    return {"rows": summary["data"]["rows"], "train_runtime": summary["train_runtime"]}


def run_plain(train: str, out: str) -> dict:
    """What a user would write by hand with sentence-transformers 6."""
    from datasets import Dataset
    from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer
    from sentence_transformers import SentenceTransformerTrainingArguments as Args
    from sentence_transformers.base.sampler import BatchSamplers
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

    from embedforge.models.registry import resolve_model

    s = SETTINGS
    rows = {"anchor": [], "positive": [], **{f"negative_{i}": [] for i in range(1, s["n_passages"])}}
    for line in Path(train).read_text().splitlines():
        r = json.loads(line)
        negs = r["neg_doc"]
        rows["anchor"].append(r["query"])
        rows["positive"].append(r["pos_doc"] if isinstance(r["pos_doc"], str) else r["pos_doc"][0])
        for i in range(1, s["n_passages"]):
            rows[f"negative_{i}"].append(negs[(i - 1) % len(negs)])
    model = SentenceTransformer(resolve_model("minilm"), device="cpu")
    model.max_seq_length = s["max_seq_length"]
    args = Args(
        output_dir=out,
        num_train_epochs=s["epochs"],
        per_device_train_batch_size=s["batch"],
        learning_rate=s["lr"],
        warmup_steps=5,
        lr_scheduler_type="cosine",
        weight_decay=0.01,
        seed=s["seed"],
        batch_sampler=BatchSamplers.NO_DUPLICATES,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        logging_steps=10,
    )
    trainer = SentenceTransformerTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_dict(rows),
        loss=MultipleNegativesRankingLoss(model, scale=50.0),
    )
    result = trainer.train()
    model.save(str(Path(out) / "model"))
    return {"rows": len(rows["anchor"]), "train_runtime": result.metrics["train_runtime"]}


def child(kind: str, train: str, out: str) -> None:
    runner = run_embedforge if kind == "embedforge" else run_plain
    start = time.time()
    result = runner(train, out)
    result.update(
        kind=kind,
        wall_seconds=round(time.time() - start, 1),
        peak_rss_mb=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    )
    result["pairs_per_second"] = round(result["rows"] * SETTINGS["epochs"] / result["train_runtime"], 2)
    print("RESULT " + json.dumps(result), flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=2, help="A/B pairs to run (order alternates)")
    parser.add_argument("--out", default=str(ROOT / "docs" / "bench" / "train_speed.json"))
    parser.add_argument("--child", nargs=3, metavar=("KIND", "TRAIN", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return 0

    from domain_fixture import make_domain_fixture

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    runs: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        train = str(make_domain_fixture(Path(tmp) / "data")["train"])
        order = []
        for r in range(args.rounds):
            order += ["plain", "embedforge"] if r % 2 == 0 else ["embedforge", "plain"]
        for i, kind in enumerate(order):
            proc = subprocess.run(
                [sys.executable, __file__, "--child", kind, train, str(Path(tmp) / f"run{i}")],
                capture_output=True,
                text=True,
                env=env,
                check=True,
            )
            line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT "))
            runs.append(json.loads(line[len("RESULT ") :]))
            print(runs[-1], flush=True)

    def mean(kind, key):
        values = [r[key] for r in runs if r["kind"] == kind]
        return sum(values) / len(values)

    report = {
        "command": f"python benchmarks/train_speed.py --rounds {args.rounds}",
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{os.cpu_count()} CPU cores, {platform.machine()}, torch threads default",
        "settings": SETTINGS,
        "runs": runs,
        "embedforge_pairs_per_second": round(mean("embedforge", "pairs_per_second"), 2),
        "plain_pairs_per_second": round(mean("plain", "pairs_per_second"), 2),
        "embedforge_peak_rss_mb": round(max(r["peak_rss_mb"] for r in runs if r["kind"] == "embedforge"), 1),
        "plain_peak_rss_mb": round(max(r["peak_rss_mb"] for r in runs if r["kind"] == "plain"), 1),
    }
    report["throughput_ratio"] = round(
        report["embedforge_pairs_per_second"] / report["plain_pairs_per_second"], 3
    )
    report["memory_ratio"] = round(report["embedforge_peak_rss_mb"] / report["plain_peak_rss_mb"], 3)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: v for k, v in report.items() if k != "runs"}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
