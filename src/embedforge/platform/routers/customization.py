"""The customizer: targets, configs and jobs under ``/v1/customization``.

A job request is checked and mapped to embedforge's finetune config here (unknown or unsupported
fields are a 422 naming the field); the job runner does the work in a worker process.
"""

from __future__ import annotations

import shutil
from typing import Annotated

from fastapi import APIRouter, Header, Request, Response
from sqlalchemy import select
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import set_committed_value

from embedforge.platform import jobs, paths
from embedforge.platform.deps import DB, Config, Params, split_ref
from embedforge.platform.errors import Conflict, NotFound, Unprocessable
from embedforge.platform.routers import add_read_routes, add_update_route
from embedforge.platform.schemas import (
    ConfigCreate,
    CustomizationJobCreate,
    OptionRemoval,
    TargetCreate,
    TrainingOption,
    dump,
    update_schema,
)
from embedforge.platform.store import listing, records
from embedforge.platform.store.models import Job

router = APIRouter(prefix="/v1/customization", tags=["customization"])
TARGET, CONFIG = "customization_target", "customization_config"


@router.post("/targets")
def create_target(body: TargetCreate, db: DB, cfg: Config) -> dict:
    if not (body.model_path or body.model_uri):
        raise Unprocessable(["model_path"], "a target needs model_path (a local folder) or model_uri")
    check_target_paths(cfg, body.model_dump(), "")
    data = {"status": "ready", "model_path": "", **dump(body)}  # NeMo always answers a model_path
    data.setdefault("base_model", f"{body.namespace}/{body.name}")
    return records.public(records.create(db, TARGET, body.namespace, body.name, data, "cust-target"))


add_read_routes(router, "/targets", TARGET)


def _target_update(_db, cfg, merged: dict, changes: dict) -> dict:
    check_target_paths(cfg, merged, "")
    return changes


add_update_route(router, "/targets", TARGET, update_schema(TargetCreate), _target_update)


def check_target_paths(cfg, target: dict, loc: str) -> None:
    """A target's local ``model_path`` / ``model_uri`` must resolve into an allowed folder (400 if not)."""
    for key in ("model_path", "model_uri"):
        if paths.is_local(target.get(key)):
            paths.confined(cfg, target[key], f"{loc}{key}")


def _config_body(body: ConfigCreate, db: Session, loc: list) -> dict:
    data = dump(body)
    if isinstance(body.target, str):
        ns, name = split_ref(body.target, "target")
        if records.find(db, TARGET, ns, name) is None:
            raise Unprocessable([*loc, "target"], f"no customization target '{body.target}'")
    else:
        data["target"] = f"{body.target.namespace}/{body.target.name}"
    data["training_options"] = _options(data["training_options"])
    data.setdefault("max_seq_length", body.max_seq_length)
    data.setdefault("training_precision", body.training_precision)
    return data


@router.post("/configs")
def create_config(body: ConfigCreate, db: DB, cfg: Config) -> dict:
    if not isinstance(body.target, str):
        check_target_paths(cfg, body.target.model_dump(), "target.")
        create_target(body.target, db, cfg)
    data = _config_body(body, db, [])
    return records.public(records.create(db, CONFIG, body.namespace, body.name, data, "customization_config"))


add_read_routes(router, "/configs", CONFIG)


def _options(given: list[dict]) -> list[dict]:
    """Training options with every field NeMo answers (defaults filled in)."""
    return [TrainingOption.model_validate(o).model_dump(mode="json") for o in given]


def _config_update(db, _cfg, merged: dict, changes: dict) -> dict:
    """NeMo's config PATCH: fields replace, and ``add_training_options`` / ``remove_training_options``
    edit the list (matched by training and finetuning type); the config keeps at least one option."""
    if isinstance(changes.get("target"), str):
        ns, name = split_ref(changes["target"], "target")
        if records.find(db, TARGET, ns, name) is None:
            raise Unprocessable(["target"], f"no customization target '{changes['target']}'")
    elif "target" in changes:
        raise Unprocessable(["target"], "give the target as 'namespace/name' (create an inline one first)")
    options = _options(merged.get("training_options") or [])
    removed = {(o["training_type"], o["finetuning_type"]) for o in changes.pop("remove_training_options", [])}
    options = [o for o in options if (o["training_type"], o["finetuning_type"]) not in removed]
    options += _options(changes.pop("add_training_options", []))
    if not options:
        raise Unprocessable(["training_options"], "a config needs at least one training option")
    return {**changes, "training_options": options}


add_update_route(
    router,
    "/configs",
    CONFIG,
    update_schema(
        ConfigCreate, add_training_options=list[TrainingOption], remove_training_options=list[OptionRemoval]
    ),
    _config_update,
)


@router.post("/jobs")
def create_job(
    body: CustomizationJobCreate,
    db: DB,
    cfg: Config,
    wandb_api_key: Annotated[str | None, Header()] = None,
) -> dict:
    if isinstance(body.config, str):
        ns, name = split_ref(body.config, "config")
        row = records.find(db, CONFIG, ns, name)
        if row is None:
            raise Unprocessable(["config"], f"no customization config '{body.config}'")
        config, config_ref = row.body, f"{ns}/{name}"
    else:
        config = _config_body(body.config, db, ["config"])
        config_ref = f"{body.config.namespace}/{body.config.name}"
    ds_ns, ds_name = (
        split_ref(body.dataset, "dataset")
        if isinstance(body.dataset, str)
        else (body.dataset.namespace, body.dataset.name)
    )
    dataset = records.find(db, "dataset", ds_ns, ds_name)
    if dataset is None:
        raise Unprocessable(["dataset"], f"no dataset '{ds_ns}/{ds_name}' in the entity store")
    t_ns, t_name = split_ref(config["target"], "target")
    target = records.get(db, TARGET, t_ns, t_name)
    if not target.body.get("enabled", True):
        raise Unprocessable(["config", "target"], f"target '{config['target']}' is disabled")
    check_target_paths(cfg, target.body, "config.target.")  # a row stored before the rule existed
    return jobs.customization.submit(db, cfg, body, config, config_ref, records.public(dataset), target.body)


@router.get("/jobs")
def list_jobs(params: Params, db: DB) -> dict:
    """NeMo's job list. ``metrics=false`` (an embedforge addition) leaves out each job's loss curves:
    most of a list's bytes, and a table of many jobs shows none of them."""
    if params.get("metrics") != "false":
        return jobs.store.list_public(db, "customization", params)
    query, lighter = select(Job).where(Job.kind == "customization"), listing.lighter(db, Job, "metrics")
    return listing.page(db, query, Job, params, _without_metrics, {"status": Job.status}, lighter)


def _without_metrics(row: Job) -> dict:
    set_committed_value(row, "details", row.lighter_details)  # what the database sent, not a change
    return jobs.store.public(row)


@router.get("/jobs/{job_id}")
def get_job(job_id: str, db: DB) -> dict:
    return jobs.store.public(jobs.store.get(db, "customization", job_id))


@router.get("/jobs/{job_id}/status")
def get_job_status(job_id: str, db: DB) -> dict:
    return jobs.store.public(jobs.store.get(db, "customization", job_id))["status_details"]


@router.post("/jobs/{job_id}/cancel")
def cancel_job(job_id: str, db: DB) -> dict:
    return jobs.store.public(jobs.store.request_cancel(db, "customization", job_id))


@router.delete("/jobs/{job_id}", status_code=204)
def delete_job(job_id: str, db: DB, cfg: Config) -> Response:
    """Delete a finished job and its folder (an embedforge addition: NeMo keeps every job). Refused while
    it runs, and while the model it made is registered: the model's files live in the job's folder."""
    row = jobs.store.get(db, "customization", job_id)
    if row.status in jobs.store.ACTIVE:
        raise Conflict(f"customization job {job_id} is {row.status}; cancel it first")
    model = row.body.get("output_model")
    if model and records.find(db, "model", *split_ref(model, "output_model")) is not None:
        raise Conflict(
            f"job {job_id} made the model '{model}', whose files are in its folder; delete it first"
        )
    jobs.store.delete(db, row)
    shutil.rmtree(cfg.data_dir / "customization" / job_id, ignore_errors=True)
    return Response(status_code=204)


@router.get("/jobs/{job_id}/container-logs")
def job_logs(job_id: str, db: DB, request: Request) -> dict:
    """The worker's output, from wherever its executor runs it (its log file, or Ray's job logs)."""
    lines = request.app.state.runner.logs(jobs.store.get(db, "customization", job_id))
    if lines is None:
        raise NotFound(f"job {job_id} has no worker log yet")
    lines = lines[-500:]
    entry = {"object": "job_entry", "logs": {"worker.log": "\n".join(lines)}, "events": []}
    return {"entries": {"worker": entry}, "data": lines}  # NeMo's JobLogs; ``data``: the lines, as before
