"""The platform's overhead: ``/nim/v1/embeddings`` through the platform vs the same deployment called
directly, and entity-store list/get latency under many concurrent clients. (Not named platform.py: a
script of that name would shadow the standard library's ``platform`` module.)

One platform (a fresh data dir; SQLite unless ``--database-url`` or ``--database postgresql``), one
deployment of MiniLM (the ONNX export ``embedforge serve`` runs). Embeddings: requests of ``--batch`` texts
(the serving benchmark's texts and load driver, ``benchmarks/serve_speed.py``) from 32 client threads,
alternating direct and through the gateway ``--rounds`` times so a shared machine's drift hits both alike;
targets: gateway throughput >= 0.9x direct, p99 overhead <= 5 ms. At concurrency 32 a request's latency is
mostly its wait in the model server's queue, so the per-request cost of the gateway is also measured alone:
``--single`` one-text requests at concurrency 1, direct and through the gateway interleaved one by one.
Entity store: ``--entities`` datasets registered, then 50 client threads alternate
``GET /v1/datasets?filter[namespace]=...`` (a page of 100) and ``GET /v1/datasets/{ns}/{name}``.

With ``--split-cores`` the model server (the deployment's process tree) runs on CPU 0 and the platform and
this load driver on the other CPUs. On a 2-core machine the gateway otherwise takes its CPU from the model
server, and at concurrency 32 every millisecond it takes is queueing time for all 32 requests; split, both
paths get the same model-server capacity and the p99 difference is the gateway's own.

    .venv/bin/python benchmarks/platform_overhead.py [--seconds 10] [--rounds 2] [--split-cores] [--out docs/bench/platform.json]

``--store-scaling`` measures only the store: list and get p95 with 100 and with 10,000 datasets and jobs
(``--store-rows``), written to docs/bench/platform_store.json (``benchmarks/platform_store.py``).

``--database postgresql`` runs either measurement on PostgreSQL: a throwaway server from Debian's binaries
(the one the platform tests start, ``tests/platform/pg_server.py``) on 127.0.0.1, removed at the end; the
results go to ``..._postgresql.json`` unless ``--out`` is given.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform as host
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import psutil

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "platform"))
from serve_speed import build_texts, drive, http_caller, load  # noqa: E402

BASE = "sentence-transformers/all-MiniLM-L6-v2"
NS = "bench"


def start_platform(data_dir: Path, database_url: str | None) -> tuple[str, subprocess.Popen]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "embedforge.cli", "platform", "serve", "--data-dir", str(data_dir)]
    cmd += ["--port", str(port)] + (["--database-url", database_url] if database_url else [])
    process = subprocess.Popen(
        cmd, stdout=subprocess.DEVNULL, stderr=open(data_dir.parent / "platform.log", "wb")
    )  # noqa: SIM115
    url = f"http://127.0.0.1:{port}"
    for _ in range(1200):
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return url, process
        except httpx.HTTPError:
            time.sleep(0.25)
    raise SystemExit("the platform did not start")


def deploy(url: str, precision: str) -> str:
    body = {
        "name": "bench",
        "namespace": NS,
        "config": {"model": BASE, "nim_deployment": {"precision": precision}},
    }
    httpx.post(url + "/v1/deployment/model-deployments", json=body, timeout=30).raise_for_status()
    while True:
        d = httpx.get(f"{url}/v1/deployment/model-deployments/{NS}/bench", timeout=30).json()
        if d["status_details"]["status"] == "ready":
            return d["url"]
        if d["status_details"]["status"] == "failed":
            raise SystemExit(f"deployment failed: {d['status_details']['description']}")
        time.sleep(2)


def pin(pid: int, cpus: set[int]) -> None:
    """Pin every thread of ``pid`` to ``cpus`` (threads it starts later inherit it)."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        os.sched_setaffinity(int(task.name), cpus)


def split_cores(platform_pid: int) -> dict:
    """Model server tree on CPU 0; the platform and this process on the rest."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        raise SystemExit("--split-cores needs at least 2 CPUs")
    model, rest = {cpus[0]}, set(cpus[1:])
    servers = [child.pid for child in psutil.Process(platform_pid).children(recursive=True)]
    for pid in servers:
        pin(pid, model)
    for pid in (platform_pid, os.getpid()):
        pin(pid, rest)
    return {
        "model_server_cpus": sorted(model),
        "model_server_pids": servers,
        "gateway_and_driver_cpus": sorted(rest),
    }


def single_requests(direct: str, gateway: str, texts: list[str], n: int) -> dict:
    """One-text requests at concurrency 1, direct and through the gateway in turn: the gateway's own cost."""
    lat: dict[str, list[float]] = {"direct": [], "gateway": []}
    with httpx.Client(timeout=60) as client:
        for i in range(n):
            for name, base in (("direct", direct), ("gateway", gateway)):
                body = {"model": BASE, "input": [texts[i % len(texts)]], "input_type": "query"}
                t0 = time.perf_counter()
                client.post(base + "/v1/embeddings", json=body).raise_for_status()
                lat[name].append(time.perf_counter() - t0)
    out = {}
    for name, values in lat.items():
        values.sort()
        out[name] = {
            "p50_ms": round(statistics.median(values) * 1000, 2),
            "p99_ms": round(values[int(0.99 * (n - 1))] * 1000, 2),
        }
    out["p50_overhead_ms"] = round(out["gateway"]["p50_ms"] - out["direct"]["p50_ms"], 2)
    out["p99_overhead_ms"] = round(out["gateway"]["p99_ms"] - out["direct"]["p99_ms"], 2)
    return out


def entity_load(url: str, names: list[str], clients: int, seconds: float) -> dict:
    """``clients`` threads alternating a list call and a get call for ``seconds``."""
    lat: dict[str, list[float]] = {"list": [], "get": []}
    errors = [0]
    lock = threading.Lock()
    stop_at = time.monotonic() + seconds

    def worker(k: int) -> None:
        with httpx.Client(base_url=url, timeout=60) as client:
            i = k
            while time.monotonic() < stop_at:
                kind = "list" if i % 2 == 0 else "get"
                path = (
                    f"/v1/datasets?filter[namespace]={NS}&page_size=100"
                    if kind == "list"
                    else f"/v1/datasets/{NS}/{names[i % len(names)]}"
                )
                t0 = time.perf_counter()
                r = client.get(path)
                dt = time.perf_counter() - t0
                with lock:
                    if r.status_code == 200:
                        lat[kind].append(dt)
                    else:
                        errors[0] += 1
                i += 1

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    out = {"clients": clients, "wall_s": round(wall, 2), "errors": errors[0]}
    for kind, values in lat.items():
        values.sort()
        out[kind] = {
            "requests": len(values),
            "per_s": round(len(values) / wall, 1),
            "p50_ms": round(statistics.median(values) * 1000, 2),
            "p99_ms": round(values[int(0.99 * (len(values) - 1))] * 1000, 2),
        }
    return out


@contextlib.contextmanager
def database(args):
    """The database URL the platforms get: ``--database-url``, None for SQLite, or a throwaway local
    PostgreSQL server's, stopped and deleted on exit."""
    if args.database_url or args.database == "sqlite":
        yield args.database_url
        return
    from pg_server import Postgres

    server = Postgres()
    try:
        url = server.start()
        print(f"PostgreSQL on 127.0.0.1:{server.port}", flush=True)
        yield url
    finally:
        server.stop()


def out_path(args, default: str) -> Path:
    """``--out`` if given, else DEFAULT (``..._postgresql.json`` when the platforms use PostgreSQL)."""
    if args.out:
        return Path(args.out)
    postgres = args.database == "postgresql" or (args.database_url or "").startswith("postgresql")
    return Path(default.replace(".json", "_postgresql.json") if postgres else default)


def store_scaling(args, database_url: str | None) -> int:
    """List and get latency with a small and a large store (``platform_store.run``)."""
    import platform_store

    small, large = (int(n) for n in args.store_rows.split(","))
    work = Path(tempfile.mkdtemp(prefix="platform_store_"))
    results = {
        "machine": {"cpus": len(os.sched_getaffinity(0)), "python": host.python_version()},
        "args": vars(args),
        "load_before": load(),
        **platform_store.run(
            start_platform, work, database_url, small, large, args.store_requests, args.rounds
        ),
        "load_after": load(),
    }
    print(json.dumps(results["calls"], indent=2))
    out = out_path(args, "docs/bench/platform_store.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    return 0


def overhead(args, database_url: str | None) -> int:
    """Embeddings direct vs through the gateway, then the entity store under many clients."""
    work = Path(tempfile.mkdtemp(prefix="platform_bench_"))
    url, process = start_platform(work / "data", database_url)
    results: dict = {
        "machine": {"cpus": len(os.sched_getaffinity(0)), "python": host.python_version()},
        "args": vars(args),
        "load_before": load(),
    }
    try:
        started = time.perf_counter()
        direct_url = deploy(url, args.precision)
        results["deploy_seconds"] = round(time.perf_counter() - started, 1)
        if args.split_cores:
            results["split_cores"] = split_cores(process.pid)
            print("split", json.dumps(results["split_cores"]), flush=True)
        texts, source = build_texts(512, seed=0)
        batches = [texts[i : i + args.batch] for i in range(0, len(texts), args.batch)]
        results["texts"] = source
        runs: dict[str, list[dict]] = {"direct": [], "gateway": []}
        callers = {"direct": http_caller(direct_url, BASE), "gateway": http_caller(url + "/nim", BASE)}
        drive(callers["gateway"], batches, args.concurrency, 3, 10**9)  # warm both paths
        for _ in range(args.rounds):
            for name in ("direct", "gateway"):
                runs[name].append(drive(callers[name], batches, args.concurrency, args.seconds, 10**9))
                print(name, json.dumps(runs[name][-1]), flush=True)
        results["embeddings"] = runs
        results["single"] = single_requests(direct_url, url + "/nim", texts, args.single)
        print("single", json.dumps(results["single"]), flush=True)
        mean = {n: statistics.fmean(r["texts_per_s"] for r in runs[n]) for n in runs}
        p99 = {n: statistics.fmean(r["p99_ms"] for r in runs[n]) for n in runs}
        results["throughput_ratio"] = round(mean["gateway"] / mean["direct"], 3)
        results["p99_overhead_ms"] = round(p99["gateway"] - p99["direct"], 2)

        names = [f"set-{i:04d}" for i in range(args.entities)]
        with httpx.Client(base_url=url, timeout=60) as client:
            client.post("/v1/namespaces", json={"id": NS})
            for name in names:
                body = {"name": name, "namespace": NS, "files_url": f"hf://datasets/{NS}/{name}"}
                client.post("/v1/datasets", json=body).raise_for_status()
        results["entities"] = entity_load(url, names, args.clients, args.seconds)
        results["load_after"] = load()
    finally:
        process.terminate()
        process.wait(timeout=60)
    summary = {
        k: results[k] for k in ("throughput_ratio", "p99_overhead_ms", "single", "entities") if k in results
    }
    print(json.dumps(summary, indent=2))
    out = out_path(args, "docs/bench/platform.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--precision", choices=["fp32", "int8"], default="int8")
    parser.add_argument(
        "--single", type=int, default=300, help="one-text requests at concurrency 1, per path"
    )
    parser.add_argument("--entities", type=int, default=200)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--database-url", help="an existing database (its server must allow CREATE DATABASE)")
    parser.add_argument(
        "--database",
        choices=["sqlite", "postgresql"],
        default="sqlite",
        help="postgresql: a throwaway local server (Debian's binaries) unless --database-url is given",
    )
    parser.add_argument(
        "--split-cores", action="store_true", help="model server on CPU 0, platform and driver on the rest"
    )
    parser.add_argument("--out", help="default docs/bench/platform.json or platform_store.json")
    parser.add_argument(
        "--store-scaling",
        action="store_true",
        help="only the store at --store-rows (benchmarks/platform_store.py)",
    )
    parser.add_argument("--store-rows", default="100,10000", help="the small and the large store's rows")
    parser.add_argument("--store-requests", type=int, default=40, help="requests per call, store and round")
    args = parser.parse_args()
    with database(args) as database_url:
        return store_scaling(args, database_url) if args.store_scaling else overhead(args, database_url)


if __name__ == "__main__":
    sys.exit(main())
