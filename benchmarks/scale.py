"""`embedforge run --ray` on this machine: what spreading over Ray costs, per worker, and the driver's memory.

1. Embedding: the same synthetic passages embedded by one process (``BiEncoder.encode_passages``, torch on
   all cores, model load included) and by ``RayEncoder`` (Ray Data ``map_batches`` over one actor per CPU,
   each loading the model; pool start included). Ray's overhead = Ray time / local time - 1, in one run.
   Per-worker throughput = passages / Ray seconds / workers, the rate docs/scale.md projects from.
2. Generation: questions for K passages with sdg's local generator, one process vs ``RayGenerator`` (one
   generator per actor), the same requests; the replies are compared.
3. Driver memory: for each size in ``--rss-sizes`` a fresh driver process joins the same cluster, embeds that
   many passages on it and reports its peak RSS; flat means the driver holds texts and vectors, not the work.

Passages are made from the sentences of this repository's docs (seeded, five sentences each), so the
benchmark needs no download.

    nice -n 15 .venv/bin/python benchmarks/scale.py [--passages 10000] [--generate 1000]
        [--rss-sizes 10000,100000] [--model minilm] [--out docs/bench/scale.json]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import random
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_memory_monitor_refresh_ms", "0")  # its OOM killer counts other processes' memory
ROOT = Path(__file__).resolve().parents[1]


def passages(n: int, seed: int = 0) -> list[str]:
    """``n`` five-sentence passages drawn (seeded) from the sentences of docs/*.md."""
    text = " ".join(p.read_text() for p in sorted((ROOT / "docs").rglob("*.md")))
    split = re.split(r"(?<=[.!?])\s+", re.sub(r"\s+", " ", text))
    sentences = [s for s in split if 6 <= len(s.split()) <= 60]
    rng = random.Random(seed)
    return [" ".join(rng.choices(sentences, k=5)) for _ in range(n)]


def peak_rss_mib() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def start_cluster() -> int:
    import ray

    for attempt in range(3):  # on a busy machine the raylet may miss Ray's fixed 30 s start-up window
        try:
            return _start(ray)
        except Exception as error:  # Ray raises a bare Exception for it
            if "timed out during startup" not in str(error) or attempt == 2:
                raise
            ray.shutdown()


def _start(ray) -> int:
    ray.init(
        address="local",
        include_dashboard=False,
        _node_ip_address="127.0.0.2",  # loopback (Ray rewrites 127.0.0.1 to the machine's address)
        _temp_dir=tempfile.mkdtemp(prefix="efscale"),
        logging_level="ERROR",
        log_to_driver=False,
    )
    return int(ray.cluster_resources()["CPU"])


def timed(fn):
    start = time.perf_counter()
    result = fn()
    return result, round(time.perf_counter() - start, 2)


def bench_embedding(texts: list[str], model: str, workers: int) -> dict:
    import numpy as np

    from embedforge.models.bi_encoder import BiEncoder
    from embedforge.pipeline.ray_backend import RayEncoder

    local, local_s = timed(lambda: BiEncoder.load(model).encode_passages(texts))
    spread, ray_s = timed(lambda: RayEncoder(model, workers).encode_passages(texts))
    return {
        "passages": len(texts),
        "local_seconds": local_s,
        "ray_seconds": ray_s,
        "ray_overhead": round(ray_s / local_s - 1, 3),
        "ray_passages_per_second_per_worker": round(len(texts) / ray_s / workers, 2),
        "local_passages_per_second": round(len(texts) / local_s, 2),
        "max_abs_difference": float(np.abs(local - spread).max()),
    }


def generation_requests(k: int) -> tuple:
    from embedforge.config import SdgConfig
    from embedforge.data.corpus import Passage
    from embedforge.sdg.pipeline import _UnitWork, plan_units, resolve

    config = SdgConfig(questions_per_passage=2, multi_hop_share=0.0)
    rows = [Passage(f"p{i}", f"d{i}", text, f"Page {i}", "") for i, text in enumerate(passages(k, seed=1))]
    by_id = {p.passage_id: p for p in rows}
    works = [_UnitWork(plan, by_id, config, resolve(config)) for plan in plan_units(rows, config)]
    return config, [r for w in works for r in w.requests]


def bench_generation(k: int, workers: int) -> dict:
    import functools

    from embedforge.pipeline.ray_backend import RayGenerator
    from embedforge.sdg.pipeline import make_generator

    config, requests = generation_requests(k)
    local, local_s = timed(lambda: make_generator(config).generate(requests))
    spread = RayGenerator(functools.partial(make_generator, config), workers)
    remote, ray_s = timed(lambda: spread.generate(requests))
    spread.close()
    return {
        "passages": k,
        "requests": len(requests),
        "local_seconds": local_s,
        "ray_seconds": ray_s,
        "ray_overhead": round(ray_s / local_s - 1, 3),
        "ray_passages_per_second_per_worker": round(k / ray_s / workers, 3),
        "same_replies": sum(a.text == b.text for a, b in zip(local, remote, strict=True)),
    }


def driver_rss(n: int, model: str) -> dict:
    """Run in a fresh process (``--rss-only``): join the parent's cluster, embed ``n`` passages, report RSS."""
    import ray

    from embedforge.pipeline.ray_backend import RayEncoder

    ray.init(address=os.environ["EMBEDFORGE_SCALE_GCS"], logging_level="ERROR", log_to_driver=False)
    texts = passages(n)
    before = peak_rss_mib()
    vectors = RayEncoder(model, int(ray.cluster_resources()["CPU"])).encode_passages(texts)
    return {
        "passages": n,
        "peak_rss_mib": peak_rss_mib(),
        "peak_rss_before_embedding_mib": before,
        "vectors_mib": round(vectors.nbytes / 2**20, 1),
    }


def rss_curve(sizes: list[int], model: str) -> list[dict]:
    import ray

    env = {**os.environ, "EMBEDFORGE_SCALE_GCS": ray.get_runtime_context().gcs_address}
    out = []
    for n in sizes:
        cmd = [sys.executable, __file__, "--rss-only", str(n), "--model", model]
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
        out.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(out[-1], flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--passages", type=int, default=10_000, help="passages embedded, local vs Ray")
    parser.add_argument("--generate", type=int, default=1_000, help="passages generated for (0: skip)")
    parser.add_argument("--rss-sizes", default="10000,100000", help="driver-memory sizes ('' skips)")
    parser.add_argument("--model", default="minilm", help="embedding model (name or folder)")
    parser.add_argument("--out", default=str(ROOT / "docs" / "bench" / "scale.json"))
    parser.add_argument("--rss-only", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rss_only:
        print(json.dumps(driver_rss(args.rss_only, args.model)))
        return
    workers = start_cluster()
    result = {
        "date": dt.date.today().isoformat(),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "command": "nice -n 15 .venv/bin/python benchmarks/scale.py " + " ".join(sys.argv[1:]),
        "workers": workers,
        "model": args.model,
        "load_before": [round(x, 2) for x in os.getloadavg()],
    }
    result["embedding"] = bench_embedding(passages(args.passages), args.model, workers)
    print(result["embedding"], flush=True)
    if args.generate:
        result["generation"] = bench_generation(args.generate, workers)
        print(result["generation"], flush=True)
    sizes = [int(s) for s in args.rss_sizes.split(",") if s.strip()]
    result["driver_memory"] = rss_curve(sizes, args.model) if sizes else []
    result["load_after"] = [round(x, 2) for x in os.getloadavg()]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
