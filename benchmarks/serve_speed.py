"""Serving speed on this CPU: `embedforge serve` over HTTP (ONNX fp32 and int8) against in-process ONNX
Runtime and against the peers a user would pick for CPU serving: sentence-transformers (PyTorch, and its ONNX
int8 backend in-process and behind a minimal FastAPI server) and infinity-emb (torch and optimum/ONNX engines).

One run, one model (``minilm``, the bundled local copy: nothing comes from a model hub), one set of texts
(passages of the cached PostgreSQL manual, else generated sentences). Every "request" is a batch of
``--batch`` texts (input_type passage, truncate END, base64). For each system and each concurrency level
(1, 8, 32 by default) ``concurrency`` client threads send requests back-to-back for at most ``--seconds``
seconds or ``--max-requests`` requests; throughput is texts / wall time, latency is per request (p50/p99).
Memory: every server's RSS (VmRSS) is sampled from /proc/PID/status while the load runs and its peak (VmHWM)
read after each level; the in-process sentence-transformers ONNX peer samples its own process.

* server-fp32 / server-int8: ``python -m embedforge.cli serve EXPORT --port N precision=...`` as a
  subprocess, clients are threads with one ``httpx.Client`` each. Then one ``--rss-seconds`` run at
  concurrency 8 samples RSS every 0.5 s: memory is flat when the mean of the last 10 s is close to the mean
  of the first 10 s.
* ort-fp32 / ort-int8: the server's own runtime (``load_runtime(EXPORT, precision=...)``) called in-process
  with the same batches (``embed_texts``: tokenize, pad, run), the same client threads without HTTP.
* st-torch: ``SentenceTransformer(resolve_model("minilm")).encode(batch, batch_size=len(batch))``.
* st-onnx-int8 / st-onnx-int8-http: sentence-transformers' ONNX backend as its docs show it: the model
  exported with ``backend="onnx"`` and quantized by ``export_dynamic_quantized_onnx_model(model, CONFIG)``
  (CONFIG from this CPU's flags: avx512_vnni, avx512, avx2 or arm64; ``--st-quantization``), loaded with
  ``model_kwargs={"file_name": "onnx/model_qint8_CONFIG.onnx"}``; in-process, and behind FastAPI's
  ``POST /v1/embeddings`` on uvicorn (127.0.0.1). It needs optimum-onnx, whose pins (transformers < 4.58)
  conflict with ours, so it runs from its own venv (``--st-venv``) through ``benchmarks/st_onnx_peer.py``.
* infinity-torch / infinity-optimum: ``infinity_emb v2 --engine torch|optimum --device cpu --batch-size
  32`` from its own venv (``--infinity-venv``); the optimum engine serves the same int8 ONNX file as the
  sentence-transformers peer (as ``--model-id .`` from a copy holding only that file: see
  ``infinity_optimum_dir``). A peer's logged warnings are kept (``log_warnings``: infinity 0.0.78's start-up
  graph optimization fails with optimum 2.1 and it serves the graph as given). A peer that cannot start is
  recorded with the reason, not measured.

``make bench-peers`` builds both venvs (``benchmarks/peers-st-onnx.txt``, ``benchmarks/peers-infinity.txt``).

Targets (``targets`` in the output; ratios within this run; the best peer is the peer with the highest
throughput at that level): `embedforge serve` int8 >= 1.5x the best peer's throughput at concurrency 32, and
its p99 at concurrency 1 <= 1.2x the best peer's. Other ratios (``ratios``): server / in-process ORT
throughput at concurrency 32 (>= 0.85); int8 server / sentence-transformers torch (>= 2); p99 at concurrency
1 / the median of one in-process call of the same request (<= 1.5): one request of median length is sent
``--fixed-requests`` times one after the other, to the server and in-process.

    .venv/bin/python benchmarks/serve_speed.py [--texts 512] [--seconds 8] [--rss-seconds 60]
        [--out docs/bench/serve_speed.json]

The machine may be shared: the load average is recorded before and after each part.
"""

from __future__ import annotations

import argparse
import datetime as dt
import functools
import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = Path(__file__).resolve().parents[1]


def load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    if not s:
        return float("nan")
    k = min(len(s) - 1, max(0, int(round(q / 100 * (len(s) - 1)))))
    return s[k]


# ------------------------------------------------------------------------------------------------ texts


def build_texts(n: int, seed: int) -> tuple[list[str], str]:
    """``n`` passages of mixed length from the cached manual (a sample of pages), else generated sentences."""
    rng = random.Random(seed)
    html_dir = None
    for cand in (ROOT / ".cache/demo").rglob("*.html"):
        html_dir = cand.parent
        break
    if html_dir is not None:
        from embedforge.data.corpus import load_corpus

        names = sorted(p.name for p in html_dir.glob("*.html"))
        rng.shuffle(names)
        tmp = Path(tempfile.mkdtemp(prefix="serve_speed_pages_"))
        try:
            for name in names[:120]:
                shutil.copy(html_dir / name, tmp / name)
            passages = [p.text for p in load_corpus(tmp, max_tokens=200).passages]
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        if len(passages) >= n:
            rng.shuffle(passages)
            # mixed length: a third as they are, a third cut to one sentence-ish, a third to a short query
            out = []
            for i, text in enumerate(passages[:n]):
                words = text.split()
                if i % 3 == 1:
                    text = " ".join(words[: rng.randint(10, 30)])
                elif i % 3 == 2:
                    text = " ".join(words[: rng.randint(3, 9)])
                out.append(text)
            return out, f"PostgreSQL manual ({html_dir.relative_to(ROOT)}), 120 sampled pages"
    vocab = "table index query vacuum lock row column server replica backup planner cost scan join".split()
    out = [" ".join(rng.choice(vocab) for _ in range(rng.choice([5, 20, 60, 150]))) for _ in range(n)]
    return out, "generated sentences"


# ----------------------------------------------------------------------------------------------- driver


def drive(
    call: Callable[[list[str]], None],
    batches: list[list[str]],
    concurrency: int,
    seconds: float,
    max_requests: int,
    sampler: Callable[[], None] | None = None,
) -> dict:
    """``concurrency`` threads calling ``call`` on batches round-robin until time or count runs out."""
    lat: list[float] = []
    errors: list[str] = []
    texts_done = [0]
    counter = [0]
    lock = threading.Lock()
    stop_at = time.monotonic() + seconds

    def worker() -> None:
        while True:
            with lock:
                if counter[0] >= max_requests or time.monotonic() >= stop_at:
                    return
                i = counter[0]
                counter[0] += 1
            batch = batches[i % len(batches)]
            t0 = time.perf_counter()
            try:
                call(batch)
            except Exception as exc:  # noqa: BLE001 - recorded
                with lock:
                    errors.append(repr(exc)[:200])
                continue
            dt_ = time.perf_counter() - t0
            with lock:
                lat.append(dt_)
                texts_done[0] += len(batch)

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(concurrency)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):
        if sampler:
            sampler()
        time.sleep(0.25)
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    return {
        "concurrency": concurrency,
        "requests": len(lat),
        "errors": len(errors),
        "first_errors": errors[:3],
        "texts": texts_done[0],
        "wall_s": round(wall, 3),
        "texts_per_s": round(texts_done[0] / wall, 2) if wall else None,
        "p50_ms": round(pct(lat, 50) * 1000, 2),
        "p99_ms": round(pct(lat, 99) * 1000, 2),
        "mean_ms": round(statistics.fmean(lat) * 1000, 2) if lat else None,
    }


# ----------------------------------------------------------------------------------------------- server


def proc_status(pid: int) -> dict[str, int]:
    out = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(("VmRSS", "VmHWM", "Threads")):
                key, val = line.split(":", 1)
                out[key] = int(val.split()[0])
    except OSError:
        pass
    return out


class Server:
    def __init__(self, export: Path, precision: str, threads: int, log: Path):
        from embedforge.serve.server import free_port

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [
            sys.executable,
            "-m",
            "embedforge.cli",
            "serve",
            str(export),
            f"precision={precision}",
            "--port",
            str(self.port),
        ]
        if threads:
            cmd.insert(5, f"threads={threads}")
        self.cmd = cmd
        self.log = open(log, "w")
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, cwd=ROOT)

    def wait_ready(self, timeout: float = 180) -> None:
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}; see {self.log.name}")
            try:
                if httpx.get(self.url + "/v1/health/ready", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise TimeoutError("server not ready")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.log.close()


OUR_REQUEST = {"input_type": "passage", "truncate": "END", "encoding_format": "base64"}


def http_caller(
    url: str, model: str, path: str = "/v1/embeddings", extra: dict | None = None
) -> Callable[[list[str]], None]:
    """One ``httpx.Client`` per client thread posting a batch; ``extra``: the body's other fields."""
    import httpx

    local = threading.local()
    fields = OUR_REQUEST if extra is None else extra

    def call(batch: list[str]) -> None:
        client = getattr(local, "client", None)
        if client is None:
            client = local.client = httpx.Client(timeout=120)
        r = client.post(url + path, json={"input": batch, "model": model, **fields})
        if r.status_code != 200:
            raise RuntimeError(f"HTTP {r.status_code}: {r.text[:150]}")
        if len(r.json()["data"]) != len(batch):
            raise RuntimeError("wrong number of embeddings")

    return call


def bench_server(export: Path, precision: str, batches, levels, args, work: Path, threads: int = 0) -> dict:
    import httpx

    name = f"server-{precision}" + (f"-t{threads}" if threads else "")
    srv = Server(export, precision, threads, work / f"{name}.log")
    res: dict = {"command": " ".join(srv.cmd[1:]), "threads_setting": threads, "levels": []}
    try:
        t0 = time.monotonic()
        srv.wait_ready()
        res["startup_s"] = round(time.monotonic() - t0, 2)
        res["rss_idle_kb"] = proc_status(srv.proc.pid).get("VmRSS")
        model = httpx.get(srv.url + "/v1/models").json()["data"][0]["id"]
        call = http_caller(srv.url, model)
        res["levels"] = run_levels(name, call, batches, levels, args, srv.proc.pid)
        r = drive(call, [args.fixed_batch], 1, 10**9, args.fixed_requests)
        res["fixed_c1"] = {k: r[k] for k in ("requests", "errors", "p50_ms", "p99_ms", "mean_ms")}
        print(f"  {name} fixed request c=1: p50 {r['p50_ms']} ms p99 {r['p99_ms']} ms", flush=True)
        if name in args.rss_for and args.rss_seconds > 0:
            samples_t: list[tuple[float, int]] = []
            t_start = time.monotonic()
            sampler = lambda: samples_t.append(  # noqa: E731
                (round(time.monotonic() - t_start, 2), proc_status(srv.proc.pid).get("VmRSS", 0))
            )
            r = drive(call, batches, 8, args.rss_seconds, 10**9, sampler)
            first = [v for t, v in samples_t if t <= 10]
            last = [v for t, v in samples_t if t >= samples_t[-1][0] - 10]
            res["rss_run"] = {
                "concurrency": 8,
                "seconds": args.rss_seconds,
                "requests": r["requests"],
                "texts_per_s": r["texts_per_s"],
                "errors": r["errors"],
                "first_10s_mean_kb": round(statistics.fmean(first)),
                "last_10s_mean_kb": round(statistics.fmean(last)),
                "growth_pct": round(100 * (statistics.fmean(last) / statistics.fmean(first) - 1), 2),
                "vmhwm_kb": proc_status(srv.proc.pid).get("VmHWM"),
                "samples_kb": [v for _, v in samples_t][::2],  # every 1 s
            }
            print(
                f"  {name} RSS run: first10 {res['rss_run']['first_10s_mean_kb']} kB, "
                f"last10 {res['rss_run']['last_10s_mean_kb']} kB ({res['rss_run']['growth_pct']}%)",
                flush=True,
            )
        res["vmhwm_kb"] = proc_status(srv.proc.pid).get("VmHWM")
    finally:
        srv.stop()
    return res


# ------------------------------------------------------------------------------------------------- peers

PEER_SCRIPT = ROOT / "benchmarks/st_onnx_peer.py"
PEER_PREFIXES = ("st-", "infinity-")  # the systems the targets compare `embedforge serve` against


def quantization_config_for_cpu(cpuinfo: str | None = None) -> str:
    """The ``export_dynamic_quantized_onnx_model`` config that fits this CPU (its /proc/cpuinfo flags)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            cpuinfo = ""
    flags = set(cpuinfo.split())
    if platform.machine().lower() in ("aarch64", "arm64"):
        return "arm64"
    if "avx512_vnni" in flags:
        return "avx512_vnni"
    return "avx512" if "avx512f" in flags else "avx2"


def wait_http(proc: subprocess.Popen, url: str, log: Path, timeout: float) -> None:
    """Poll ``url`` until it answers 200; a process that exits or a timeout raises with the log's tail."""
    import httpx

    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"exited with {proc.returncode}: {log.read_text()[-800:]}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"not ready in {timeout:.0f} s: {log.read_text()[-800:]}")
        time.sleep(0.5)


def stop_process(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def run_levels(name: str, call, batches, levels, args, pid: int) -> list[dict]:
    """Warm up, then every concurrency level with process ``pid``'s RSS sampled while the load runs."""
    for b in batches[:5]:
        call(b)
    out = []
    for c in levels:
        samples: list[int] = []
        sampler = lambda samples=samples: samples.append(proc_status(pid).get("VmRSS", 0))  # noqa: E731
        r = drive(call, batches, c, args.seconds, args.max_requests, sampler)
        st = proc_status(pid)
        r["rss_max_sampled_kb"] = max(samples) if samples else None
        r["vmhwm_kb_after"] = st.get("VmHWM")
        r["server_threads_os"] = st.get("Threads")
        r["load"] = load()
        out.append(r)
        print(
            f"  {name} c={c}: {r['texts_per_s']} texts/s p50 {r['p50_ms']} ms "
            f"p99 {r['p99_ms']} ms err {r['errors']} HWM {st.get('VmHWM')} kB",
            flush=True,
        )
    return out


def bench_http_peer(
    name: str, cmd: list[str], env: dict, ready: str, caller, batches, levels, args, work, cwd: Path = ROOT
):
    """Start a peer's server, run the levels against it over HTTP, stop it; a start that fails is recorded."""
    from embedforge.serve.server import free_port

    port = free_port()
    cmd = [part.replace("{port}", str(port)) for part in cmd]
    url = f"http://127.0.0.1:{port}"
    log = work / f"{name}.log"
    res: dict = {"command": " ".join(cmd), "levels": []}
    with open(log, "w") as logf:
        proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, env=env, cwd=cwd)
        try:
            t0 = time.monotonic()
            wait_http(proc, url + ready, log, args.peer_start_timeout)
            res["startup_s"] = round(time.monotonic() - t0, 2)
            res["rss_idle_kb"] = proc_status(proc.pid).get("VmRSS")
            res["levels"] = run_levels(name, caller(url), batches, levels, args, proc.pid)
            res["vmhwm_kb"] = proc_status(proc.pid).get("VmHWM")
            res["status"] = "ok"
        except TimeoutError as exc:
            res["status"], res["reason"] = "not ready in time", str(exc)
        except RuntimeError as exc:
            res["status"] = "failed under load" if "startup_s" in res else "failed to start"
            res["reason"] = str(exc)
        finally:
            stop_process(proc)
    res["log_warnings"] = log_warnings(log)
    print(f"  {name}: {res['status']}", flush=True)
    return res


def log_warnings(log: Path, limit: int = 10) -> list[str]:
    """A peer's logged warnings, each with the three lines after it (its logger wraps long messages)."""
    lines = log.read_text(errors="replace").splitlines() if log.exists() else []
    found = [i for i, line in enumerate(lines) if "WARNING" in line]
    return [" ".join(x.strip() for x in lines[i : i + 4]) for i in found[:limit]]


def infinity_optimum_dir(st_dir: Path, file_name: str, work: Path) -> Path:
    """The model with one ONNX file, the int8 one, as ``model_quantized.onnx`` at its top.

    infinity's optimum engine picks the ONNX file itself (on a CPU the one whose name contains "quantize",
    else the last one listed), so the copy holds only the int8 file. It passes the file's path as listed
    under ``--model-id`` to optimum-onnx, which matches it against bare file names: served as ``--model-id
    .`` from this directory, the path listed is the bare name.
    """
    out = work / "infinity_optimum_model"
    shutil.copytree(st_dir, out, ignore=shutil.ignore_patterns("onnx"))
    shutil.copy(st_dir / file_name, out / "model_quantized.onnx")
    return out


def try_infinity(engine: str, model_dir: Path, batches, levels, args, work: Path) -> dict:
    """infinity-emb (its own venv, ``--infinity-venv``) serving the model with ``engine`` (torch or optimum)."""
    exe = Path(args.infinity_venv) / "bin/infinity_emb"
    log = Path(args.infinity_install_log)
    if not exe.exists():
        tail = log.read_text()[-600:] if log.exists() else "no install log"
        return {"status": "not installed (make bench-peers)", "reason": tail}
    model_id = "." if engine == "optimum" else str(model_dir)  # see infinity_optimum_dir
    cmd = [str(exe), "v2", "--model-id", model_id, "--port", "{port}", "--host", "127.0.0.1"]
    cmd += ["--engine", engine, "--device", "cpu", "--batch-size", "32"]
    # HF_HUB_CACHE: where the optimum engine writes the graph it optimizes at start
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(work / "infinity_hf_cache")}
    env["INFINITY_ANONYMOUS_USAGE_STATS"] = "0"
    caller = functools.partial(
        http_caller, model=model_id, path="/embeddings", extra={"encoding_format": "base64"}
    )
    res = bench_http_peer(
        f"infinity-{engine}", cmd, env, "/health", caller, batches, levels, args, work, cwd=model_dir
    )
    return {"model_dir": str(model_dir), **res}


def run_peer_script(args, *argv: str) -> dict:
    """Run ``st_onnx_peer.py`` with the sentence-transformers ONNX venv; its last stdout line is JSON."""
    py = Path(args.st_venv) / "bin/python"
    r = subprocess.run([str(py), str(PEER_SCRIPT), *argv], capture_output=True, text=True, cwd=ROOT)
    sys.stderr.write(r.stderr[-2000:] if r.returncode else "")
    if r.returncode:
        raise RuntimeError(f"{PEER_SCRIPT.name} {argv[0]} exited with {r.returncode}: {r.stderr[-800:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def bench_st_onnx(model_dir: Path, batches, levels, args, work: Path) -> dict:
    """sentence-transformers' ONNX int8 backend: exported, then in-process and behind FastAPI."""
    py = Path(args.st_venv) / "bin/python"
    if not py.exists():
        return {"status": "not installed (make bench-peers)", "reason": f"{py} not found"}
    out = work / "st_onnx_model"
    try:
        export = run_peer_script(
            args, "export", "--model", str(model_dir), "--out", str(out), "--config", args.st_quantization
        )
    except RuntimeError as exc:
        return {"status": "export failed", "reason": str(exc)}
    print(
        f"  sentence-transformers ONNX export ({export['quantization_config']}): {export['seconds']} s",
        flush=True,
    )
    batches_file = work / "batches.json"
    batches_file.write_text(json.dumps(batches))
    res: dict = {"status": "ok", "export": export, "model_dir": str(out), "systems": {}}
    try:
        inproc = run_peer_script(
            args, "inprocess", "--model", str(out), "--file-name", export["file_name"], "--batches",
            str(batches_file), "--levels", ",".join(map(str, levels)), "--seconds", str(args.seconds),
            "--max-requests", str(args.max_requests),
        )  # fmt: skip
        inproc["runtime"] = (
            f"SentenceTransformer(dir, backend='onnx', model_kwargs={{'file_name': {export['file_name']!r}}}).encode"
        )
        res["systems"]["st-onnx-int8"] = inproc
        for r in inproc["levels"]:
            print(
                f"  st-onnx-int8 c={r['concurrency']}: {r['texts_per_s']} texts/s p99 {r['p99_ms']} ms",
                flush=True,
            )
    except RuntimeError as exc:
        res["inprocess_error"] = str(exc)
    cmd = [
        str(py),
        str(PEER_SCRIPT),
        "serve",
        "--model",
        str(out),
        "--file-name",
        export["file_name"],
        "--port",
        "{port}",
    ]
    caller = functools.partial(http_caller, model="st-onnx-int8")
    http = bench_http_peer(
        "st-onnx-int8-http", cmd, dict(os.environ), "/health", caller, batches, levels, args, work
    )
    res["systems"]["st-onnx-int8-http"] = http
    return res


# ----------------------------------------------------------------------------------------------- targets


def level_value(results: dict, name: str, c: int, key: str):
    for r in results["systems"].get(name, {}).get("levels", []):
        if r["concurrency"] == c and r["requests"]:
            return r[key]
    return None


def best_peer(results: dict, c: int) -> str | None:
    """The peer with the highest throughput at concurrency ``c`` (peers: sentence-transformers, infinity)."""
    peers = [n for n in results["systems"] if n.startswith(PEER_PREFIXES)]
    measured = [n for n in peers if level_value(results, n, c, "texts_per_s")]
    return max(measured, key=lambda n: level_value(results, n, c, "texts_per_s"), default=None)


def peer_targets(results: dict, levels: list[int], ours: str = "server-int8") -> dict:
    """The serving targets, as ratios within this run: ``ours`` against the best peer at each level."""
    top, low = max(levels), min(levels)
    out: dict = {}
    peer, mine = best_peer(results, top), level_value(results, ours, top, "texts_per_s")
    theirs = level_value(results, peer, top, "texts_per_s") if peer else None
    value = round(mine / theirs, 3) if mine and theirs else None
    out[f"{ours}_throughput_vs_best_peer_at_c{top}"] = {
        "value": value,
        "target": ">= 1.5",
        "met": value is not None and value >= 1.5,
        "best_peer": peer,
        "texts_per_s": {ours: mine, peer: theirs},
    }
    peer, mine = best_peer(results, low), level_value(results, ours, low, "p99_ms")
    theirs = level_value(results, peer, low, "p99_ms") if peer else None
    value = round(mine / theirs, 3) if mine and theirs else None
    peers = [
        n
        for n in results["systems"]
        if n.startswith(PEER_PREFIXES) and level_value(results, n, low, "p99_ms")
    ]
    out[f"{ours}_p99_vs_best_peer_at_c{low}"] = {
        "value": value,
        "target": "<= 1.2",
        "met": value is not None and value <= 1.2,
        "best_peer": peer,
        "p99_ms": {ours: mine, peer: theirs},
        "lowest_peer_p99_ms": min((level_value(results, n, low, "p99_ms"), n) for n in peers)
        if peers
        else None,
    }
    return out


# ------------------------------------------------------------------------------------------------- main


def chart(results: dict, levels: list[int], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    systems = [(k, v) for k, v in results["systems"].items() if v.get("levels")]
    fig, ax = plt.subplots(figsize=(13, 5.5))
    width = 0.8 / max(1, len(systems))
    for i, (name, res) in enumerate(systems):
        by_c = {r["concurrency"]: r["texts_per_s"] or 0 for r in res["levels"]}
        xs = [j + (i - (len(systems) - 1) / 2) * width for j in range(len(levels))]
        bars = ax.bar(xs, [by_c.get(c, 0) for c in levels], width, label=name, color=plt.cm.tab20(i % 20))
        ax.bar_label(bars, fmt="%.0f", fontsize=6)
    ax.set_xticks(range(len(levels)), [f"concurrency {c}" for c in levels])
    ax.set_ylabel(f"texts / s (batches of {results['batch']})")
    ax.set_title(
        f"minilm serving throughput, {results['machine']} (load {results['load_before']} -> "
        f"{results['load_after']})",
        fontsize=9,
    )
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--texts", type=int, default=512)
    parser.add_argument("--batch", type=int, default=8, help="texts per request")
    parser.add_argument("--levels", default="1,8,32")
    parser.add_argument("--seconds", type=float, default=8.0, help="max seconds per system and level")
    parser.add_argument("--max-requests", type=int, default=400, help="max requests per system and level")
    parser.add_argument("--rss-seconds", type=float, default=60.0)
    parser.add_argument(
        "--rss-for", default="server-int8", help="comma list of server names to run the RSS run for"
    )
    parser.add_argument(
        "--threads",
        default="0,1",
        help="thread settings to run every system with (server threads=, ORT intra-op, torch); 0 = default",
    )
    parser.add_argument("--infinity-venv", default="/tmp/infvenv")
    parser.add_argument("--infinity-install-log", default="/tmp/infinstall.log")
    parser.add_argument("--skip-infinity", action="store_true")
    parser.add_argument("--infinity-engines", default="torch,optimum", help="comma list of infinity engines")
    parser.add_argument("--st-venv", default="/tmp/stvenv", help="venv with sentence-transformers[onnx]")
    parser.add_argument(
        "--st-quantization",
        default=quantization_config_for_cpu(),
        help="export_dynamic_quantized_onnx_model config (default: the one this CPU's flags fit)",
    )
    parser.add_argument("--skip-st-onnx", action="store_true")
    parser.add_argument(
        "--peer-start-timeout", type=float, default=600, help="seconds a peer's server may take to start"
    )
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument(
        "--fixed-requests", type=int, default=100, help="repeats of the median request at c=1"
    )
    parser.add_argument("--out", default=str(ROOT / "docs/bench/serve_speed.json"))
    args = parser.parse_args()
    args.rss_for = args.rss_for.split(",")
    levels = [int(x) for x in args.levels.split(",")]

    t_all = time.monotonic()
    results: dict = {
        "command": " ".join([".venv/bin/python", "benchmarks/serve_speed.py", *sys.argv[1:]]),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{os.cpu_count()} CPU cores",
        "platform": platform.platform(),
        "python": platform.python_version(),
        "load_before": load(),
        "batch": args.batch,
        "levels": levels,
        "seconds_per_level": args.seconds,
        "max_requests_per_level": args.max_requests,
        "systems": {},
    }
    import onnxruntime
    import sentence_transformers
    import torch

    results["versions"] = {
        "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__,
        "sentence_transformers": sentence_transformers.__version__,
        "torch_threads_default": torch.get_num_threads(),
    }

    texts, source = build_texts(args.texts, args.seed)
    results["texts"] = {
        "count": len(texts),
        "source": source,
        "chars_p50": int(statistics.median(len(t) for t in texts)),
        "chars_max": max(len(t) for t in texts),
    }
    batches = [texts[i : i + args.batch] for i in range(0, len(texts), args.batch)]
    fixed = sorted(batches, key=lambda b: sum(map(len, b)))[len(batches) // 2]  # the median request
    args.fixed_batch = fixed
    print(f"{len(texts)} texts from {source}, {len(batches)} batches of {args.batch}", flush=True)

    from embedforge.export import export_onnx
    from embedforge.models.registry import resolve_model

    work = Path(tempfile.mkdtemp(prefix="serve_speed_"))
    export_dir = work / "export"
    t0 = time.monotonic()
    report = export_onnx("minilm", export_dir, quantize="int8", speed=False)
    results["export"] = {
        "seconds": round(time.monotonic() - t0, 1),
        "int8_quality": {k: v for k, v in report.items() if "int8" in k.lower()} or None,
    }
    print(f"exported in {results['export']['seconds']} s to {export_dir}", flush=True)

    thread_variants = [int(x) for x in args.threads.split(",")]
    results["thread_variants"] = thread_variants
    sfx = lambda t: f"-t{t}" if t else ""  # noqa: E731

    # -- (a) servers over HTTP
    for t in thread_variants:
        for precision in ("fp32", "int8"):
            name = f"server-{precision}{sfx(t)}"
            results[f"load_before_{name}"] = load()
            results["systems"][name] = bench_server(export_dir, precision, batches, levels, args, work, t)

    # -- (b) in-process ONNX Runtime: the server's runtime on the same batches
    from embedforge.serve.runtime import load_runtime

    one_call: dict[str, dict] = {}
    for t in thread_variants:
        for precision in ("fp32", "int8"):
            name = f"ort-{precision}{sfx(t)}"
            rt = load_runtime(export_dir, precision=precision, threads=t)
            call = lambda b, rt=rt: rt.embed_texts(b, "passage")  # noqa: E731
            for b in batches[:5]:
                call(b)
            times = []
            for b in batches[:32]:
                t1 = time.perf_counter()
                call(b)
                times.append(time.perf_counter() - t1)
            fixed_times = []
            for _ in range(args.fixed_requests):
                t1 = time.perf_counter()
                call(fixed)
                fixed_times.append(time.perf_counter() - t1)
            one_call[name] = {
                "median_ms": round(statistics.median(times) * 1000, 2),
                "p99_ms": round(pct(times, 99) * 1000, 2),
                "calls": len(times),
                "fixed_request": {
                    "median_ms": round(statistics.median(fixed_times) * 1000, 2),
                    "p99_ms": round(pct(fixed_times, 99) * 1000, 2),
                    "calls": len(fixed_times),
                    "chars": sum(map(len, fixed)),
                },
            }
            res = {
                "runtime": f"load_runtime(EXPORT, precision={precision!r}, threads={t}).embed_texts(batch, 'passage')",
                "levels": [],
            }
            for c in levels:
                r = drive(call, batches, c, args.seconds, args.max_requests)
                r["load"] = load()
                res["levels"].append(r)
                print(
                    f"  {name} c={c}: {r['texts_per_s']} texts/s p50 {r['p50_ms']} p99 {r['p99_ms']}",
                    flush=True,
                )
            results["systems"][name] = res
            del rt
    results["one_inprocess_call_ms"] = one_call

    # -- (c) sentence-transformers, PyTorch
    from sentence_transformers import SentenceTransformer

    default_threads = torch.get_num_threads()
    st = SentenceTransformer(str(resolve_model("minilm")), device="cpu")
    prompt = (st.prompts or {}).get("passage") or None
    call = lambda b: st.encode(b, batch_size=len(b), prompt=prompt, normalize_embeddings=True)  # noqa: E731
    for t in thread_variants:
        torch.set_num_threads(t or default_threads)
        name = f"st-torch{sfx(t)}"
        for b in batches[:5]:
            call(b)
        res = {
            "runtime": "SentenceTransformer(resolve_model('minilm')).encode(batch, batch_size=len(batch))",
            "torch_threads": torch.get_num_threads(),
            "levels": [],
        }
        for c in levels:
            r = drive(call, batches, c, args.seconds, args.max_requests)
            r["load"] = load()
            res["levels"].append(r)
            print(
                f"  {name} c={c}: {r['texts_per_s']} texts/s p50 {r['p50_ms']} p99 {r['p99_ms']}", flush=True
            )
        results["systems"][name] = res
    torch.set_num_threads(default_threads)

    # -- (d) sentence-transformers' ONNX int8 backend (own venv), in-process and behind FastAPI
    model_dir = resolve_model("minilm")
    results["load_before_st_onnx"] = load()
    st_onnx = (
        {"status": "skipped"} if args.skip_st_onnx else bench_st_onnx(model_dir, batches, levels, args, work)
    )
    results["systems"].update({k: v for k, v in st_onnx.pop("systems", {}).items() if v.get("levels")})
    results["st_onnx"] = st_onnx
    print("sentence-transformers ONNX:", st_onnx["status"], st_onnx.get("reason", "")[-300:], flush=True)

    # -- (e) infinity-emb (own venv): its torch engine and its optimum (ONNX) engine on the same int8 graph
    results["infinity"] = {}
    for engine in args.infinity_engines.split(",") if not args.skip_infinity else []:
        if engine == "optimum" and st_onnx.get("status") != "ok":
            results["infinity"][engine] = {
                "status": "no int8 ONNX model: the sentence-transformers export did not run"
            }
            continue
        served = (
            model_dir
            if engine == "torch"
            else infinity_optimum_dir(Path(st_onnx["model_dir"]), st_onnx["export"]["file_name"], work)
        )
        results["load_before_infinity_" + engine] = load()
        res = try_infinity(engine, served, batches, levels, args, work)
        results["infinity"][engine] = {k: v for k, v in res.items() if k != "levels"}
        if res.get("levels"):
            results["systems"][f"infinity-{engine}"] = res
        print(f"infinity {engine}:", res["status"], res.get("reason", "")[-300:], flush=True)

    # -- ratios
    def tps(name: str, c: int):
        for r in results["systems"].get(name, {}).get("levels", []):
            if r["concurrency"] == c:
                return r["texts_per_s"]
        return None

    def p99(name: str, c: int):
        for r in results["systems"].get(name, {}).get("levels", []):
            if r["concurrency"] == c:
                return r["p99_ms"]
        return None

    top = max(levels)
    ratios = {}
    for t in thread_variants:
        for prec in ("fp32", "int8"):
            srv, ort = f"server-{prec}{sfx(t)}", f"ort-{prec}{sfx(t)}"
            s, o = tps(srv, top), tps(ort, top)
            o_best = max(tps(ort, c) or 0 for c in levels)
            ratios[f"{srv}_vs_{ort}_at_c{top}"] = {
                "value": round(s / o, 3) if s and o else None,
                "target": ">= 0.85",
                "vs_best_ort_level": round(s / o_best, 3) if s and o_best else None,
            }
            served = results["systems"][srv].get("fixed_c1", {}).get("p99_ms")
            one = one_call[ort]["fixed_request"]["median_ms"]
            p = p99(srv, 1)
            ratios[f"{srv}_p99_c1_vs_one_inprocess_call"] = {
                "value": round(served / one, 3) if served and one else None,
                "target": "<= 1.5",
                "what": "the same median-length request: server p99 at c=1 / median in-process call",
                "server_fixed_p99_ms": served,
                "one_call_median_ms": one,
                "mixed_requests_p99_ms": p,
                "mixed_vs_inprocess_mixed_p99": round(p / one_call[ort]["p99_ms"], 3) if p else None,
            }
        srv, stn = f"server-int8{sfx(t)}", f"st-torch{sfx(t)}"
        s8, tt = tps(srv, top), tps(stn, top)
        t_best = max(tps(stn, c) or 0 for c in levels)
        ratios[f"{srv}_vs_{stn}_at_c{top}"] = {
            "value": round(s8 / tt, 3) if s8 and tt else None,
            "target": ">= 2",
            "vs_best_st_torch_level": round(s8 / t_best, 3) if s8 and t_best else None,
        }
    # the best of each family over thread settings, as a deployment would pick
    best = lambda prefix, c: max((tps(n, c) or 0) for n in results["systems"] if n.startswith(prefix))  # noqa: E731
    ratios[f"best_server_int8_vs_best_st_torch_at_c{top}"] = {
        "value": round(best("server-int8", top) / best("st-torch", top), 3)
        if best("st-torch", top)
        else None,
        "target": ">= 2",
    }
    results["ratios"] = ratios
    results["targets"] = peer_targets(results, levels)
    results["load_after"] = load()
    results["total_seconds"] = round(time.monotonic() - t_all, 1)

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    chart(results, levels, out.with_suffix(".png"))
    print(json.dumps(ratios, indent=2))
    print("targets against the best peer:", json.dumps(results["targets"], indent=2))
    print(f"wrote {out} and {out.with_suffix('.png')} in {results['total_seconds']} s")
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
