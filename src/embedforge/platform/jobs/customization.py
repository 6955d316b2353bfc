"""Customization jobs: NeMo's job request -> embedforge's finetune config, progress from train_log.jsonl.

The mapping (hyperparameters and config -> ``FinetuneConfig`` keys):
``finetuning_type`` -> finetuning_type (all_weights | lora_merged), ``epochs``, ``batch_size`` ->
global_batch_size, ``learning_rate``, ``lora.adapter_dim/alpha/adapter_dropout`` -> lora_rank/alpha/dropout,
``warmup_steps``, ``weight_decay``, ``seed``, ``max_steps``, ``log_every_n_steps`` -> log_every; the
config's ``max_seq_length`` and ``training_options[].micro_batch_size``; ``training_precision`` fp32 turns
bf16 off, anything else lets embedforge use bf16 where the hardware has it.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from sqlalchemy.orm import Session

from embedforge.errors import EmbedforgeError
from embedforge.platform.errors import Unprocessable
from embedforge.platform.jobs import store as job_store
from embedforge.platform.schemas import CustomizationJobCreate, dump
from embedforge.platform.settings import Settings
from embedforge.platform.store import records

logger = logging.getLogger(__name__)
KIND = "customization"
DEFAULTS = {"optimizer": "adamw_with_cosine_annealing", "warmup_steps": 5, "weight_decay": 0.01, "seed": 42}


def finetune_values(config: dict, hp: dict, target: dict) -> dict:
    """The finetune config keys for this job (without data paths and output folder)."""
    option = _training_option(config, hp)
    values = {
        "base_model": target.get("model_path") or str(target.get("model_uri", "")).removeprefix("file://"),
        "finetuning_type": hp["finetuning_type"],
        "epochs": float(hp.get("epochs", 1)),
        "global_batch_size": int(hp.get("batch_size", 8)),
        "micro_batch_size": min(int(option.get("micro_batch_size", 1)), int(hp.get("batch_size", 8))),
        "learning_rate": float(hp.get("learning_rate", 1e-5)),
        "max_seq_length": int(config.get("max_seq_length", 2048)),
        "seed": int(hp.get("seed", 42)),
        "log_every": int(hp.get("log_every_n_steps") or 1),
    }
    for key, name in (
        ("warmup_steps", "warmup_steps"),
        ("weight_decay", "weight_decay"),
        ("max_steps", "max_steps"),
    ):
        if hp.get(key) is not None:
            values[name] = hp[key]
    lora = hp.get("lora") or {}
    for key, name in (
        ("adapter_dim", "lora_rank"),
        ("alpha", "lora_alpha"),
        ("adapter_dropout", "lora_dropout"),
    ):
        if key in lora:
            values[name] = lora[key]
    if config.get("training_precision") == "fp32":
        values["bf16"] = False
    return values


def _training_option(config: dict, hp: dict) -> dict:
    options = config.get("training_options") or []
    for option in options:
        if option.get("finetuning_type") == hp["finetuning_type"] and option.get(
            "training_type", "sft"
        ) == hp.get("training_type", "sft"):
            return option
    offered = [f"{o.get('training_type', 'sft')}/{o.get('finetuning_type')}" for o in options]
    raise Unprocessable(
        ["hyperparameters", "finetuning_type"],
        f"the config offers {offered}, not {hp.get('training_type', 'sft')}/{hp['finetuning_type']}",
    )


def _checked_values(config: dict, hp: dict, target: dict) -> dict:
    """The finetune values for ``hp``, refusing with a 422 what the trainer would refuse later."""
    from embedforge.config import FinetuneConfig, build_config

    if hp.get("training_type", "sft") != "sft":
        raise Unprocessable(
            ["hyperparameters", "training_type"], "embedding customization supports training_type 'sft' only"
        )
    if hp["finetuning_type"] == "lora":
        raise Unprocessable(
            ["hyperparameters", "finetuning_type"],
            "use 'lora_merged' (adapters merged into the weights) or 'all_weights'",
        )
    values = finetune_values(config, hp, target)
    try:
        build_config(FinetuneConfig, {**values, "train_data": "x", "output_dir": "x"}, "hyperparameters")
    except (EmbedforgeError, ValueError) as err:
        raise Unprocessable(["hyperparameters"], str(err)) from err
    return values


def _check_dataset(dataset: dict) -> None:
    if not str(dataset.get("files_url", "")).startswith("hf://datasets/"):
        raise Unprocessable(
            ["dataset"], f"dataset files_url must be hf://datasets/ns/name, got {dataset.get('files_url')}"
        )


def _output_model(body: CustomizationJobCreate, job_id: str) -> str | None:
    """``namespace/name@job_id``: the requested name, versioned by the job that will write it."""
    if not body.output_model:
        return None
    out_ns, _, out_name = body.output_model.rpartition("/")
    return f"{out_ns or body.namespace}/{out_name.split('@')[0]}@{job_id}"


def _public_body(
    body: CustomizationJobCreate,
    job_id: str,
    config: dict,
    config_ref: str,
    dataset: dict,
    target: dict,
    hp: dict,
) -> dict:
    """The job as clients see it: references by name, defaults filled in, and the config it ran with."""
    return {
        **{k: v for k, v in dump(body).items() if k not in ("config", "dataset", "hyperparameters")},
        "name": body.name or job_id,
        "namespace": body.namespace,
        "config": config_ref,
        "dataset": f"{dataset['namespace']}/{dataset['name']}",
        "hyperparameters": {
            **DEFAULTS,
            "training_type": "sft",
            "epochs": 1,
            "batch_size": 8,
            "learning_rate": 1e-5,
            **hp,
        },
        "output_model": _output_model(body, job_id),
        "config_snapshot": {
            "base_model": target.get("base_model"),
            "max_seq_length": config.get("max_seq_length"),
            "precision": config.get("training_precision"),
            "training_option": _training_option(config, hp),
            "prompt_template": config.get("prompt_template") or "{prompt} {completion}",
        },
    }


def submit(
    db: Session,
    settings: Settings,
    body: CustomizationJobCreate,
    config: dict,
    config_ref: str,
    dataset: dict,
    target: dict,
) -> dict:
    """Check the request, store the job as ``created`` and return its public form."""
    hp = dump(body.hyperparameters)
    hp.setdefault("finetuning_type", body.hyperparameters.finetuning_type)
    values = _checked_values(config, hp, target)
    _check_dataset(dataset)
    job_id = records.new_id("cust")
    public_body = _public_body(body, job_id, config, config_ref, dataset, target, hp)
    work = _work(values, dataset, target, _training_option(config, hp))
    row = job_store.create(
        db,
        KIND,
        job_id,
        body.namespace,
        public_body["name"],
        public_body,
        {"work": work, **_empty_progress()},
    )
    return job_store.public(row)


def _work(values: dict, dataset: dict, target: dict, option: dict) -> dict:
    """What the runner needs to start the job: never shown in the job's body."""
    return {
        "finetune": values,
        "files_url": dataset["files_url"],
        "target": target,
        "num_gpus": option.get("num_gpus", 1),  # what an executor reserves for the worker
    }


def _empty_progress() -> dict:
    return {
        "percentage_done": 0.0,
        "epochs_completed": 0,
        "steps_completed": 0,
        "steps_per_epoch": None,
        "train_loss": None,
        "val_loss": None,
        "best_epoch": None,
        "elapsed_time": 0.0,
        "metrics": {"keys": ["train_loss", "val_loss"], "metrics": {"train_loss": [], "val_loss": []}},
    }


def worker_spec(settings: Settings, row, workdir: Path) -> dict:
    """What the worker runs: the dataset as a data store URL (it downloads the files itself, so it needs
    the platform's URL, not its disk), the finetune values and its output folder."""
    from embedforge.platform.jobs.store_client import store_spec

    work = row.details["work"]
    return {
        "kind": KIND,
        "job_id": row.id,
        "data_store": store_spec(settings),
        "dataset": work["files_url"],
        "finetune": {
            **work["finetune"],
            "output_dir": str(workdir),
            "resume": bool(row.details.get("resume")),
        },
    }


def worker_env(settings: Settings, _db: Session, _row) -> dict[str, str]:
    """The data store's key (the base model is a folder the worker reads)."""
    from embedforge.platform.jobs.store_client import store_env

    return store_env(settings)


def progress(row, workdir: Path) -> dict:
    """Status fields from the worker's train_log.jsonl (the trainer's log records): ``train_loss`` per
    logged step and ``val_loss`` per validation point. A dataset without ``validation/`` files has no
    validation points, and its ``val_loss`` stays null."""
    log = workdir / "train_log.jsonl"
    if not log.exists():
        return {}
    epochs = float(row.body["hyperparameters"].get("epochs", 1))
    losses: dict[str, list[dict]] = {"loss": [], "val_loss": []}
    last = {}
    for line in log.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:  # the worker is mid-write on the last line
            continue
        last = record
        for key, points in losses.items():
            if key in record:
                points.append({"step": record["step"], "value": record[key], "timestamp": record.get("time")})
    if not last:
        return {}
    epoch, step = float(last.get("epoch") or 0), int(last.get("step") or 0)
    values, val = losses["loss"], losses["val_loss"]
    return {
        "percentage_done": round(min(100.0, 100.0 * epoch / epochs), 2),
        "epochs_completed": int(epoch + 1e-6),
        "steps_completed": step,
        "steps_per_epoch": round(step / epoch) if epoch > 0 else None,
        "train_loss": values[-1]["value"] if values else last.get("train_loss"),
        "val_loss": val[-1]["value"] if val else None,
        "metrics": {"keys": ["train_loss", "val_loss"], "metrics": {"train_loss": values, "val_loss": val}},
        "elapsed_time": round(time.time() - row.created_at.timestamp(), 1),
    }


def best_epoch(workdir: Path) -> int | None:
    """Epochs completed at the checkpoint finetune kept (NeMo's ``best_epoch``): the best validation
    checkpoint, or the last step when there was no validation. None when the run left no summary."""
    summary_path, log = workdir / "train_summary.json", workdir / "train_log.jsonl"
    if not summary_path.exists():
        return None
    summary = json.loads(summary_path.read_text())
    checkpoint = summary.get("best_checkpoint")
    step = int(checkpoint.rsplit("-", 1)[-1]) if checkpoint else summary.get("steps")
    epochs = [
        float(r["epoch"])
        for r in map(json.loads, log.read_text().splitlines() if log.exists() else [])
        if r.get("step") == step and r.get("epoch") is not None
    ]
    return int(max(epochs) + 1e-6) if epochs else None


def finish(db: Session, row, workdir: Path) -> dict:
    """Register the fine-tuned model as ``ns/name@cust-<id>``; returns extra status fields."""
    from embedforge.platform.targets import model_spec

    extra = {"best_epoch": best_epoch(workdir)}
    if not row.body.get("output_model"):
        return extra
    namespace, _, name = row.body["output_model"].partition("/")
    folder = workdir / "model"
    body = {
        "name": name,
        "namespace": namespace,
        "base_model": row.body["config_snapshot"]["base_model"],
        "peft": {"finetuning_type": row.body["hyperparameters"]["finetuning_type"]},
        "artifact": {
            "files_url": f"file://{folder}",
            "status": "upload_completed",
            "backend_engine": "hugging_face",
        },
        "spec": model_spec(folder),
        "custom_fields": {"customization_job": row.id},
    }
    existing = records.find(db, "model", namespace, name)
    if existing is None:
        records.create(db, "model", namespace, name, body, "model")
    return extra
