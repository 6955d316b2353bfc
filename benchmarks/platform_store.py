"""The platform's store as it grows: list and get latency with 100 and with 10,000 datasets and jobs.

Two platforms run side by side (fresh data dirs; SQLite unless ``--database-url``, where each gets its own
database): one holds ``--small`` datasets and as many customization jobs, the other ``--large``. Rows are
written straight into each store in the API's shapes (the platform itself writes them this way; 20,000
API calls would only time the seeding). Then the same requests go to both in alternating rounds, so a
shared machine's drift hits both alike, and the result is each call's p95 on the large store over the
small one (target: under 2x). Run through ``benchmarks/platform_overhead.py --store-scaling``.
"""

from __future__ import annotations

import statistics
import time
from datetime import timedelta
from pathlib import Path

import httpx

NS = "bench"
CALLS = {  # name -> request path; {name} / {job} are filled per request from the seeded rows
    "list datasets (page of 100, newest first)": "/v1/datasets?filter[namespace]=bench&page_size=100",
    "list datasets sorted by name, page 3": "/v1/datasets?filter[namespace]=bench&sort=name&page=3&page_size=20",
    "list datasets, search in name": "/v1/datasets?search[name]=set-00&page_size=20",
    "list jobs by status": "/v1/customization/jobs?filter[status]=completed&page_size=100",
    "get a dataset": "/v1/datasets/bench/{name}",
    "get a job": "/v1/customization/jobs/{job}",
}


def seed(database_url: str, rows: int) -> list[str]:
    """``rows`` datasets and ``rows`` completed customization jobs; returns the job ids."""
    from embedforge.platform import store
    from embedforge.platform.store.models import Entity, Job, utcnow

    engine = store.make_engine(database_url)
    sessions = store.session_factory(engine)
    jobs = [f"cust-bench{i:017d}" for i in range(rows)]
    with sessions() as db:
        first = utcnow()
        for start in range(0, rows, 1000):
            for i in range(start, min(rows, start + 1000)):
                now = first + timedelta(milliseconds=i)  # rows made through the API have distinct times
                name = f"set-{i:05d}"
                body = {"name": name, "namespace": NS, "files_url": f"hf://datasets/{NS}/{name}", "limit": i}
                db.add(
                    Entity(
                        id=f"dataset-{i:017d}",
                        kind="dataset",
                        namespace=NS,
                        name=name,
                        body=body,
                        created_at=now,
                        updated_at=now,
                    )
                )
                db.add(
                    Job(
                        id=jobs[i],
                        kind="customization",
                        namespace=NS,
                        name=f"job-{i}",
                        status="completed",
                        body={"name": f"job-{i}", "namespace": NS, "dataset": f"{NS}/{name}"},
                        details={"status": "completed", "status_logs": []},
                        attempts=1,
                        created_at=now,
                        updated_at=now,
                    )
                )
            db.commit()
    engine.dispose()
    return jobs


def measure(urls: dict[str, str], jobs: dict[str, list[str]], requests: int, rounds: int) -> dict:
    """Per store size and call: every latency over ``rounds`` alternating rounds of ``requests`` calls."""
    lat = {size: {call: [] for call in CALLS} for size in urls}
    clients = {size: httpx.Client(base_url=url, timeout=60) for size, url in urls.items()}
    try:
        for _ in range(rounds):
            for size, client in clients.items():
                for call, path in CALLS.items():
                    for i in range(requests):
                        n = len(jobs[size])
                        target = path.format(name=f"set-{(i * 7919) % n:05d}", job=jobs[size][(i * 7919) % n])
                        t0 = time.perf_counter()
                        client.get(target).raise_for_status()
                        lat[size][call].append(time.perf_counter() - t0)
    finally:
        for client in clients.values():
            client.close()
    return lat


def p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[int(0.95 * (len(ordered) - 1))]


def summary(lat: dict, small: str, large: str) -> dict:
    out = {}
    for call in CALLS:
        row = {
            size: {
                "p50_ms": round(statistics.median(lat[size][call]) * 1000, 2),
                "p95_ms": round(p95(lat[size][call]) * 1000, 2),
            }
            for size in (small, large)
        }
        row["p95_growth"] = round(row[large]["p95_ms"] / row[small]["p95_ms"], 2)
        out[call] = row
    return out


def run(
    start_platform, work: Path, database_url: str | None, small: int, large: int, requests: int, rounds: int
) -> dict:
    """The whole comparison; ``start_platform(data_dir, database_url)`` -> (url, process)."""
    urls, jobs, processes = {}, {}, []
    try:
        for size in (small, large):
            data = work / f"store-{size}"
            url = database_url and _own_database(database_url, size)
            base, process = start_platform(data, url)
            processes.append(process)
            jobs[str(size)] = seed(url or f"sqlite:///{data / 'platform.db'}", size)
            urls[str(size)] = base
        lat = measure(urls, jobs, requests, rounds)
    finally:
        for process in processes:
            process.terminate()
            process.wait(timeout=60)
    return {
        "rows": [small, large],
        "requests_per_round": requests,
        "rounds": rounds,
        "calls": summary(lat, str(small), str(large)),
    }


def _own_database(url: str, size: int) -> str:
    """A database of its own per store, made on the same PostgreSQL server as ``url``'s."""
    from sqlalchemy import text

    from embedforge.platform import store

    base, _, name = url.rpartition("/")
    engine = store.make_engine(url).execution_options(isolation_level="AUTOCOMMIT")
    with engine.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}_{size}"'))
    engine.dispose()
    return f"{base}/{name}_{size}"
