"""Speed of question generation on this CPU: the local generator batched vs one prompt at a time, and the
whole `embedforge sdg` stage on a sample of the PostgreSQL manual.

1. Generator: the stage's own prompts for a seeded sample of passages (one prompt per passage for its
   questions, one per multi-hop group) run through one loaded SmolLM2-135M, first one prompt per call, then
   ``batch`` prompts per call (length-sorted, left-padded, finished rows leave the batch). Questions per
   second = questions / wall time; the replies of both runs are compared. For reference, the naive way
   is timed too: one question per prompt, one prompt at a time. The three run in the order A B C C B A
   and the means are reported, so a change in the machine's load during the run hits all of them. The generator
   runs with its defaults (all cores, bfloat16 where native); ``--threads-compare`` repeats the batched run
   with the old defaults (1 thread, float32) for the ratio.
2. Stage: ``run_sdg`` (local backend, default filters: dedup 0.9, round trip top 10, no judge) on a
   sample of pages, reusing the loaded generator; reports questions generated and kept per second of the
   stage (corpus reading, generation, embedding and filtering included; model loading excluded) and the
   round-trip rank histogram.

    .venv/bin/python benchmarks/sdg_speed.py [--units 12] [--pages 40] [--passages 24] [--threads-compare]
        [--out docs/bench/sdg_speed.json]

The machine may be shared: the load average before and after each part is recorded with the numbers.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = Path(__file__).resolve().parents[1]


def load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def sample_pages(html_dir: Path, pages: int, seed: int, dest: Path) -> Path:
    names = sorted(p.name for p in html_dir.glob("*.html"))
    random.Random(seed).shuffle(names)
    dest.mkdir(parents=True, exist_ok=True)
    for name in names[:pages]:
        shutil.copy(html_dir / name, dest / name)
    return dest


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--units", type=int, default=12, help="passages whose prompts are timed batched vs one at a time"
    )
    parser.add_argument("--batch", type=int, default=16, help="prompts per generate call when batched")
    parser.add_argument("--pages", type=int, default=40, help="manual pages in the stage's corpus")
    parser.add_argument("--passages", type=int, default=24, help="passages the stage generates for")
    parser.add_argument("--threads-compare", action="store_true", help="also run the batch with 2 threads")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--out", default=str(ROOT / "docs/bench/sdg_speed.json"))
    args = parser.parse_args()

    from embedforge.config import SdgConfig
    from embedforge.data.corpus import load_corpus
    from embedforge.demo.debian import fetch_postgres_manual
    from embedforge.models.bi_encoder import BiEncoder
    from embedforge.sdg import run_sdg
    from embedforge.sdg.clean import clean_question
    from embedforge.sdg.generators import GenRequest, LocalGenerator
    from embedforge.sdg.pipeline import _UnitWork, plan_units, resolve
    from embedforge.sdg.prompts import plain_messages

    html_dir = fetch_postgres_manual(ROOT / ".cache/demo")
    work = Path(tempfile.mkdtemp(prefix="sdg_speed_"))
    try:
        corpus_dir = sample_pages(html_dir, args.pages, args.seed, work / "pages")
        corpus = load_corpus(corpus_dir)
        print(f"{len(corpus.documents)} pages, {len(corpus.passages)} passages", flush=True)

        load_before = load()
        start = time.perf_counter()
        generator = LocalGenerator("smollm2-135m", batch_size=args.batch)
        load_seconds = time.perf_counter() - start
        generator.question_stop_ids()  # computed once per tokenizer; not part of either timing

        # ---- 1. batched vs one at a time, same prompts (the stage's own requests for a sample of passages)
        config = SdgConfig(corpus=str(corpus_dir), max_passages=args.units, seed=args.seed + 1)
        resolved = resolve(config)
        by_id = {p.passage_id: p for p in corpus.passages}
        works = [_UnitWork(plan, by_id, config, resolved) for plan in plan_units(corpus.passages, config)]
        requests = [r for w in works for r in w.requests]
        specs = [spec for w in works for spec_list, _ in w.meta for spec in spec_list]
        sources = [
            " ".join([w.anchor.title, *w._texts(ids)])
            for w in works
            for spec_list, ids in w.meta
            for _ in spec_list
        ]
        n_questions = len(specs)
        # the naive baseline: one question per prompt (no shared prefill), one prompt per call
        naive = []
        for w in works:
            for spec_list, ids in w.meta:
                for spec in spec_list:
                    messages, prefix, _ = plain_messages([spec], w._texts(ids), w.anchor.title, 1500)
                    naive.append(
                        GenRequest(messages, prefix=prefix, max_new_tokens=48, stop_at_question=True)
                    )

        def timed(reqs, batch_size: int) -> tuple[float, list]:
            t = time.perf_counter()
            results = generator.generate(reqs, batch_size=batch_size)
            return time.perf_counter() - t, results

        def rate(mean_seconds: float, runs: list[float] | None = None) -> dict:
            row = {
                "seconds": round(mean_seconds, 2),
                "questions_per_second": round(n_questions / mean_seconds, 3),
            }
            if runs:
                row["runs_seconds"] = [round(x, 2) for x in runs]
            return row

        # A B C C B A: each mode runs early and late, so drift in the machine's load cancels out
        modes = {"naive": (naive, 1), "single": (requests, 1), "batched": (requests, args.batch)}
        seconds: dict[str, list[float]] = {name: [] for name in modes}
        replies: dict[str, list] = {}
        for name in [*modes, *reversed(modes)]:
            elapsed, replies[name] = timed(*modes[name])
            seconds[name].append(elapsed)
            print(f"{name}: {n_questions / elapsed:.2f} questions/s (load {load()[0]})", flush=True)
        naive_s, single_s, batched_s = (sum(seconds[n]) / len(seconds[n]) for n in modes)
        single, batched = replies["single"], replies["batched"]
        parts = [(part, cut) for r in batched for part, cut in zip(r.parts, r.parts_truncated, strict=True)]
        usable = sum(
            clean_question(part, passage=src, truncated=cut, require_mark=True)[0] is not None
            for (part, cut), src in zip(parts, sources, strict=True)
        )
        same = sum(a.parts == b.parts for a, b in zip(single, batched, strict=True))
        generator_result = {
            "model": f"smollm2-135m (GGUF Q4_1, de-quantized to {generator.model.dtype} by transformers)",
            "passages": len(works),
            "prompts": len(requests),
            "questions": n_questions,
            "max_new_tokens_per_question": 48,
            "threads": __import__("torch").get_num_threads(),
            "model_load_seconds": round(load_seconds, 1),
            "order": "A B C C B A (naive, one at a time, batched, then reversed); seconds are the means",
            "one_question_per_prompt_one_at_a_time": {
                "prompts": len(naive),
                **rate(naive_s, seconds["naive"]),
            },
            "one_at_a_time": rate(single_s, seconds["single"]),
            "batched": {"batch_size": args.batch, **rate(batched_s, seconds["batched"])},
            "speedup_batched_vs_one_at_a_time": round(single_s / batched_s, 2),
            "speedup_vs_naive": round(naive_s / batched_s, 2),
            "identical_replies_batched_vs_single": f"{same}/{len(requests)}",
            "usable_after_cleaning": f"{usable}/{n_questions}",
            "load_average_before_after": [load_before, load()],
        }
        if args.threads_compare:
            import torch

            dtype, threads = generator.model.dtype, generator.threads
            generator.model.to(torch.float32)
            generator.threads = 1
            old_s, _ = timed(requests, args.batch)
            generator.model.to(dtype)
            generator.threads = threads
            generator_result["batched_1_thread_float32"] = {
                **rate(old_s),
                "speedup_of_the_defaults": round(old_s / batched_s, 2),
            }
            print(f"batched, 1 thread, float32: {n_questions / old_s:.2f} questions/s", flush=True)

        # ---- 2. the whole stage on a sample
        encoder = BiEncoder.load("minilm")
        stage_config = SdgConfig(
            corpus=str(corpus_dir),
            out=str(work / "out"),
            max_passages=args.passages,
            batch_size=args.batch,
            seed=args.seed,
        )
        load_before = load()
        start = time.perf_counter()
        report = run_sdg(stage_config, generator=generator, encoder=encoder, progress=False)
        stage_s = time.perf_counter() - start
        pairs = [json.loads(line) for line in (work / "out" / "pairs.jsonl").read_text().splitlines()]
        stage_result = {
            "corpus": f"{len(corpus.documents)} pages of the PostgreSQL 15 manual, {len(corpus.passages)} passages",
            "passages": report["passages_done"],
            "questions_per_passage": stage_config.questions_per_passage,
            "generated": report["generated"],
            "removed": report["removed"],
            "kept": report["kept"],
            "seconds": round(stage_s, 2),
            "generation_seconds": report["this_run"]["generation_seconds"],
            "generated_per_second": round(report["generated"] / stage_s, 3),
            "kept_per_second": round(report["kept"] / stage_s, 3),
            "roundtrip": report["roundtrip"],
            "query_types": report["query_types"],
            "openings": report["openings"],
            "examples": [p["question"] for p in pairs[:8]],
            "load_average_before_after": [load_before, load()],
        }
        print(
            f"stage: {report['generated']} generated, {report['kept']} kept in {stage_s:.1f} s "
            f"({report['kept'] / stage_s:.2f} kept/s)",
            flush=True,
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)

    import torch
    import transformers

    result = {
        "command": "python benchmarks/sdg_speed.py " + " ".join(sys.argv[1:]),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{os.cpu_count()} CPU cores, {platform.machine()}, {platform.processor() or 'cpu'}; "
        f"torch {torch.__version__}, transformers {transformers.__version__}",
        "note": "the machine is shared with other jobs; see the load averages",
        "generator": generator_result,
        "stage": stage_result,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
