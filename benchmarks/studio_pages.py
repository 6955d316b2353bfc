"""The studio's page render time on a large store: p50/p95 of each page, fetched one at a time.

A fresh data dir is seeded before the platform starts with ``--jobs`` finished customization jobs (each
with a ``--points``-step loss curve, through the customizer's own ``submit`` and the job store), and
``--datasets`` datasets with a Hub repo of two files each and each completed job's model (through the
entity store's ``records``). Then
``embedforge platform serve`` (no API key: no login) answers ``--requests`` GETs of every page below,
timed from request to the last byte. ``/health`` is timed the same way as a reference: on a machine
shared with other work, a page's time over it says more than its time alone. The 1-minute load average
before and after is recorded.

    .venv/bin/python benchmarks/studio_pages.py [--jobs 1000] [--datasets 200] [--requests 30] [--out FILE]
    .venv/bin/python benchmarks/studio_pages.py --jobs 20 --datasets 5 --requests 3   # a smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).parent))
from platform_overhead import start_platform  # noqa: E402

from embedforge.platform import store  # noqa: E402
from embedforge.platform.jobs import customization  # noqa: E402
from embedforge.platform.jobs import store as job_store  # noqa: E402
from embedforge.platform.routers.datastore import REPO_KIND  # noqa: E402
from embedforge.platform.schemas import CustomizationJobCreate  # noqa: E402
from embedforge.platform.settings import Settings  # noqa: E402
from embedforge.platform.store import records  # noqa: E402

NS = "bench"
BASE = "sentence-transformers/all-MiniLM-L6-v2"
STATUSES = ("completed", "completed", "completed", "failed", "cancelled")
CONFIG = {
    "target": BASE,
    "training_options": [{"finetuning_type": "all_weights", "micro_batch_size": 8}],
    "max_seq_length": 128,
}


def seed_datasets(db, count: int) -> list[str]:
    names = [f"set-{i:04d}" for i in range(count)]
    files = {p: {"size": 1000, "sha256": "0" * 64} for p in ("training/a.jsonl", "validation/b.jsonl")}
    for name in names:
        body = {"name": name, "namespace": NS, "files_url": f"hf://datasets/{NS}/{name}"}
        records.create(db, "dataset", NS, name, body, "dataset")
        records.create(db, REPO_KIND, "dataset", f"{NS}/{name}", {"files": files, "sha": "1" * 40}, "repo")
    return names


def loss_curve(points: int) -> dict:
    losses = [{"step": s, "value": 3.0 / (1 + 0.05 * s), "timestamp": None} for s in range(1, points + 1)]
    val = losses[:: max(1, points // 5)]
    return {"keys": ["train_loss", "val_loss"], "metrics": {"train_loss": losses, "val_loss": val}}


def seed_jobs(db, settings: Settings, datasets: list[str], count: int, points: int) -> list[str]:
    """Finished jobs (the runner leaves them alone), made by the customizer's own ``submit``."""
    ids = []
    for i in range(count):
        dataset = records.public(records.get(db, "dataset", NS, datasets[i % len(datasets)]))
        body = CustomizationJobCreate(
            name=f"job-{i:05d}",
            namespace=NS,
            config=f"{NS}/bench-config",
            dataset=f"{NS}/{dataset['name']}",
            hyperparameters={"finetuning_type": "all_weights", "epochs": 2},
            output_model=f"{NS}/model-{i:05d}",
        )
        target = {"model_path": "/nonexistent", "base_model": BASE}
        job = customization.submit(db, settings, body, CONFIG, f"{NS}/bench-config", dataset, target)
        row = job_store.get(db, customization.KIND, job["id"])
        status = STATUSES[i % len(STATUSES)]
        job_store.set_status(
            db,
            row,
            status,
            status,
            None,
            percentage_done=100.0,
            epochs_completed=2,
            elapsed_time=60.0 + i,
            train_loss=0.5,
            metrics=loss_curve(points),
        )
        if status == "completed":
            register_model(db, row)
        ids.append(job["id"])
    return ids


def register_model(db, row) -> None:
    """The job's output model with its lineage, as the customizer registers one when a job completes."""
    namespace, _, name = row.body["output_model"].partition("/")
    body = {
        "name": name,
        "namespace": namespace,
        "base_model": BASE,
        "custom_fields": {"customization_job": row.id},
    }
    records.create(db, "model", namespace, name, body, "model")


def seed(data_dir: Path, jobs: int, datasets: int, points: int) -> tuple[list[str], list[str]]:
    settings = Settings.from_env(data_dir)
    engine = store.make_engine(settings.database_url)
    store.migrate(engine)
    with store.session_factory(engine)() as db:
        names = seed_datasets(db, datasets)
        ids = seed_jobs(db, settings, names, jobs, points)
    engine.dispose()
    return ids, names


def pages(job_ids: list[str], datasets: list[str]) -> dict[str, str]:
    middle_job, middle_set = job_ids[len(job_ids) // 2], datasets[len(datasets) // 2]
    return {
        "reference: /health": "/health",  # the server's floor on this machine under its current load
        "jobs": "/studio/jobs",
        "jobs, status filter": "/studio/jobs?status=failed",
        "jobs, search": "/studio/jobs?q=job-0001",
        "jobs, search by dataset": "/studio/jobs?q=set-0001&field=dataset",
        "jobs, sorted by name": "/studio/jobs?sort=name",
        "job": f"/studio/jobs/{middle_job}",
        "job fragment": f"/studio/jobs/{middle_job}/live",
        "new job form": "/studio/jobs/new",
        "datasets": "/studio/datasets",
        "dataset": f"/studio/datasets/{NS}/{middle_set}",
        "models": "/studio/models",
        "deployments": "/studio/deployments",
        "evaluations": "/studio/evaluations",
    }


def measure(url: str, paths: dict[str, str], requests: int) -> dict[str, dict]:
    out = {}
    with httpx.Client(base_url=url, timeout=120) as client:
        for name, path in paths.items():
            client.get(path).raise_for_status()  # warm: templates compiled, caches filled
            times = []
            for _ in range(requests):
                started = time.perf_counter()
                client.get(path).raise_for_status()
                times.append(time.perf_counter() - started)
            times.sort()
            out[name] = {
                "p50_ms": round(statistics.median(times) * 1000, 1),
                "p95_ms": round(times[round(0.95 * (len(times) - 1))] * 1000, 1),
            }
            print(f"{name:24s} {json.dumps(out[name])}", flush=True)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--datasets", type=int, default=200)
    parser.add_argument("--points", type=int, default=200, help="loss points per job")
    parser.add_argument("--requests", type=int, default=30, help="timed GETs per page")
    parser.add_argument("--out", help="write the results as JSON here")
    args = parser.parse_args()

    data_dir = Path(tempfile.mkdtemp(prefix="studio_bench_")) / "data"
    started = time.perf_counter()
    job_ids, datasets = seed(data_dir, args.jobs, args.datasets, args.points)
    print(f"seeded {args.jobs} jobs and {args.datasets} datasets in {time.perf_counter() - started:.1f} s")
    url, process = start_platform(data_dir, None)
    try:
        load = {"before": os.getloadavg()[0]}
        results = {"args": vars(args), "pages": measure(url, pages(job_ids, datasets), args.requests)}
        results["load_average_1min"] = {**load, "after": os.getloadavg()[0]}
        print(f"1-minute load average: {load['before']:.1f} before, {os.getloadavg()[0]:.1f} after")
    finally:
        process.terminate()
        process.wait(timeout=60)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
