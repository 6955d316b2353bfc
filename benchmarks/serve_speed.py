"""Serving speed on this CPU: `embedforge serve` over HTTP (ONNX fp32 and int8) against in-process ONNX
Runtime, in-process sentence-transformers (PyTorch) and, when it installs offline, infinity-emb.

One run, one model (``minilm``), one set of texts (passages of the cached PostgreSQL manual, else generated
sentences). Every "request" is a batch of ``--batch`` texts (input_type passage, truncate END). For each
system and each concurrency level (1, 8, 32 by default) ``concurrency`` client threads send requests
back-to-back for at most ``--seconds`` seconds or ``--max-requests`` requests; throughput is texts / wall
time, latency is per request (p50/p99).

* server-fp32 / server-int8: ``python -m embedforge.cli serve EXPORT --port N precision=...`` as a
  subprocess, clients are threads with one ``httpx.Client`` each. The server's RSS is sampled from
  /proc/PID/status while the load runs (VmRSS) and its peak (VmHWM) is read after each level. Then one
  ``--rss-seconds`` run at concurrency 8 samples RSS every 0.5 s: memory is flat when the mean of the last
  10 s is close to the mean of the first 10 s.
* ort-fp32 / ort-int8: the server's own runtime (``load_runtime(EXPORT, precision=...)``) called in-process
  with the same batches (``embed_texts``: tokenize, pad, run), the same client threads without HTTP.
* st-torch: ``SentenceTransformer(resolve_model("minilm")).encode(batch, batch_size=len(batch))``.

Ratios (the serving targets): at concurrency 32, server / in-process ORT throughput (>= 0.85); int8
server / sentence-transformers torch throughput (>= 2); p99 at concurrency 1 / the median of one in-process
call of the same request (<= 1.5): one request of median length is sent ``--fixed-requests`` times one after the
other, to the server and in-process, so the ratio measures what serving adds, not how request lengths vary
(the mixed-request p99 of both is reported too).

    .venv/bin/python benchmarks/serve_speed.py [--texts 512] [--seconds 8] [--rss-seconds 60]
        [--out docs/bench/serve_speed.json]

The machine may be shared: the load average is recorded before and after each part.
"""

from __future__ import annotations

import argparse
import datetime as dt
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


def http_caller(url: str, model: str) -> Callable[[list[str]], None]:
    import httpx

    local = threading.local()

    def call(batch: list[str]) -> None:
        client = getattr(local, "client", None)
        if client is None:
            client = local.client = httpx.Client(timeout=120)
        r = client.post(
            url + "/v1/embeddings",
            json={
                "input": batch,
                "model": model,
                "input_type": "passage",
                "truncate": "END",
                "encoding_format": "base64",
            },
        )
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
        for b in batches[:5]:  # warm-up
            call(b)
        for c in levels:
            samples: list[int] = []
            sampler = lambda samples=samples: samples.append(proc_status(srv.proc.pid).get("VmRSS", 0))  # noqa: E731
            r = drive(call, batches, c, args.seconds, args.max_requests, sampler)
            st = proc_status(srv.proc.pid)
            r["rss_max_sampled_kb"] = max(samples) if samples else None
            r["vmhwm_kb_after"] = st.get("VmHWM")
            r["server_threads_os"] = st.get("Threads")
            r["load"] = load()
            res["levels"].append(r)
            print(
                f"  {name} c={c}: {r['texts_per_s']} texts/s p50 {r['p50_ms']} ms "
                f"p99 {r['p99_ms']} ms err {r['errors']} HWM {st.get('VmHWM')} kB",
                flush=True,
            )
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


# ---------------------------------------------------------------------------------------------- infinity


def try_infinity(model_dir: str, batches, levels, args, work: Path) -> dict:
    """Serve the same model with infinity-emb from /tmp/infvenv if it installed (else record why not)."""
    exe = Path(args.infinity_venv) / "bin/infinity_emb"
    log = Path(args.infinity_install_log)
    if not exe.exists():
        tail = log.read_text()[-600:] if log.exists() else "no install log"
        return {"status": "did not install offline", "reason": tail}
    import httpx

    from embedforge.serve.server import free_port

    port = free_port()
    cmd = [
        str(exe),
        "v2",
        "--model-id",
        model_dir,
        "--port",
        str(port),
        "--host",
        "127.0.0.1",
        "--engine",
        "torch",
        "--device",
        "cpu",
        "--batch-size",
        "32",
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "INFINITY_ANONYMOUS_USAGE_STATS": "0"}
    logf = open(work / "infinity.log", "w")
    proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, env=env)
    res: dict = {"command": " ".join(cmd), "levels": []}
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 180
        while True:
            if proc.poll() is not None:
                logf.flush()
                return {"status": "failed to start", "reason": (work / "infinity.log").read_text()[-800:]}
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                return {"status": "did not become ready in 180 s"}
            time.sleep(0.5)
        models = httpx.get(url + "/models").json()
        model = models["data"][0]["id"]
        local = threading.local()

        def call(batch):
            client = getattr(local, "client", None) or httpx.Client(timeout=120)
            local.client = client
            r = client.post(url + "/embeddings", json={"input": batch, "model": model})
            if r.status_code != 200:
                raise RuntimeError(f"HTTP {r.status_code}: {r.text[:150]}")

        for b in batches[:5]:
            call(b)
        for c in levels:
            r = drive(call, batches, c, args.seconds, args.max_requests)
            st = proc_status(proc.pid)
            r["vmhwm_kb_after"] = st.get("VmHWM")
            r["load"] = load()
            res["levels"].append(r)
            print(
                f"  infinity c={c}: {r['texts_per_s']} texts/s p50 {r['p50_ms']} p99 {r['p99_ms']}",
                flush=True,
            )
        res["status"] = "ok"
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
        logf.close()
    return res


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

    # -- (d) infinity-emb
    if args.skip_infinity:
        results["infinity"] = {"status": "skipped"}
    else:
        results["infinity"] = try_infinity(str(resolve_model("minilm")), batches, levels, args, work)
        if results["infinity"].get("levels"):
            results["systems"]["infinity-emb"] = results["infinity"]
    print("infinity:", results["infinity"].get("status"), flush=True)

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
    results["load_after"] = load()
    results["total_seconds"] = round(time.monotonic() - t_all, 1)

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    chart(results, levels, out.with_suffix(".png"))
    print(json.dumps(ratios, indent=2))
    print(f"wrote {out} and {out.with_suffix('.png')} in {results['total_seconds']} s")
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
