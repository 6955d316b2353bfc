"""A job's worker process: ``python -m embedforge.platform.jobs.worker WORKDIR`` runs WORKDIR/spec.json.

It runs the same stage functions as the CLI (``embedforge.finetune.trainer.finetune``, the evaluator's retrieval),
never in the API process, on data it downloads from the platform's data store (``store_client``). An
expected failure is written to WORKDIR/error.json (one line naming file, line and field) and the process
exits 2; success writes WORKDIR/result.json.
"""

from __future__ import annotations

import json
import logging
import shutil
import signal
import sys
from pathlib import Path

from embedforge.atomic import write_json_atomic
from embedforge.errors import EmbedforgeError
from embedforge.platform.jobs.lifeline import hold


def failure_reason(code: int, workdir: Path, who: str = "the worker process") -> str:
    """Why a child ended: its own error.json, the signal that killed it, or its last log line."""
    error = workdir / "error.json"
    if error.exists():
        return json.loads(error.read_text())["message"]
    if code < 0:
        return f"{who} was killed by {signal.Signals(-code).name}"
    tail = (
        (workdir / "worker.log").read_text(errors="replace").strip().splitlines()[-1:]
        if (workdir / "worker.log").exists()
        else []
    )
    return f"{who} exited with code {code}" + (f": {tail[0]}" if tail else "")


def merged_jsonl(dataset_dir: Path, split: str, out: Path) -> Path | None:
    """Check every ``split/*.jsonl`` of the dataset with embedforge's reader; write them as one file."""
    from embedforge.data.formats import DataFormatError, read_inline_jsonl, write_inline_jsonl

    folder = dataset_dir / split
    sources = sorted(folder.rglob("*.jsonl")) if folder.is_dir() else []
    if not sources:
        return None
    examples = []
    for source in sources:
        try:
            examples.extend(read_inline_jsonl(source))
        except DataFormatError as err:  # name the file as the data store knows it
            raise DataFormatError(source.relative_to(dataset_dir), err.message, err.line, err.field) from err
    target = out / "data" / f"{split}.jsonl"
    target.parent.mkdir(parents=True, exist_ok=True)
    write_inline_jsonl(examples, target)
    return target


def drop_incomplete_checkpoints(folder: Path) -> list[str]:
    """Remove checkpoints a killed worker left half-saved (the trainer writes trainer_state.json last),
    so a resumed job continues from the newest complete one."""
    dropped = []
    for checkpoint in sorted(folder.glob("checkpoint-*")) if folder.is_dir() else []:
        if not (checkpoint / "trainer_state.json").exists():
            shutil.rmtree(checkpoint)
            dropped.append(checkpoint.name)
    return dropped


def run_customization(spec: dict) -> dict:
    from embedforge.config import FinetuneConfig, build_config
    from embedforge.data.formats import DataFormatError
    from embedforge.finetune.trainer import finetune
    from embedforge.platform.jobs.store_client import fetch

    values = dict(spec["finetune"])
    out = Path(values["output_dir"])
    dataset_dir = fetch(spec["data_store"], spec["dataset"], out / "dataset")
    train = merged_jsonl(dataset_dir, "training", out)
    if train is None:
        raise DataFormatError(dataset_dir.name, "the dataset has no training/*.jsonl file")
    val = merged_jsonl(dataset_dir, "validation", out)
    values.update(train_data=str(train), val_data=str(val) if val else None)
    if values.get("resume"):
        for name in drop_incomplete_checkpoints(out / "checkpoints"):
            logging.warning("dropped the incomplete checkpoint %s", name)
    summary = finetune(build_config(FinetuneConfig, values, "customization job"))
    return {k: summary.get(k) for k in ("steps", "train_loss", "best_metric", "seconds")}


def run_evaluation(spec: dict) -> dict:
    from embedforge.platform.jobs import eval_worker

    return eval_worker.run(spec)


def main(argv: list[str]) -> int:
    hold()  # exit when the platform does
    workdir = Path(argv[0])
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    spec = json.loads((workdir / "spec.json").read_text())
    runners = {"customization": run_customization, "evaluation": run_evaluation}
    import httpx

    try:
        result = runners[spec["kind"]](spec)
    except (EmbedforgeError, ValueError, FileNotFoundError, httpx.HTTPError) as err:
        write_json_atomic(workdir / "error.json", {"message": str(err), "type": type(err).__name__})
        logging.error("%s", err)
        return 2
    write_json_atomic(workdir / "result.json", result)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
