"""Does tuning help on questions people wrote? The whole pipeline, over seeds, scored on the Perl FAQ.

For each seed S: ``embedforge run --corpus <perlfaq docs> --out RUN_DIR/seedS --config RECIPE --stages
sdg,prep,finetune,eval`` with every stage seed (sdg, prep, finetune) set to S, in a subprocess (its own peak
memory). Then the base model, MPNet and each seed's tuned model are scored on the FAQ's 298 real questions
(``embedforge.demo.perlfaq_data``) with paired 95% bootstrap CIs and sign-flip p-values; the base and MPNet once,
reused for every seed. Reports mean, sample std, min and max over seeds, and whether the claim holds:

- mean real-question nDCG@10 gain over the base model >= +10%, and every seed's CI lower bound > 0;
- mean tuned nDCG@10 >= MPNet's (all-mpnet-base-v2, about 5x MiniLM's parameters);
- general-domain check (Lee news similarity): tuned Pearson >= base - 0.01 in every seed.

    .venv/bin/python benchmarks/quality.py --suite [SET ...] --seeds 0 1 2 ...   (every set of the dev
        suite: benchmarks/quality_suite.py)
    .venv/bin/python benchmarks/quality.py --seeds 0 1 2 [--recipe minilm_cpu] [--run-dir runs/quality]
        [--shared-sdg] [--user-questions SHARE] [--summarize-only] [--base-results FILE] [--no-docs] [stage.key=value ...]

``--user-questions SHARE`` gives a seeded SHARE of the real questions to the pipeline as the user's own
(``prep.user_questions``: prep trains on those of its train documents and tests on the rest of them) and
scores base, tuned and MPNet on the other questions only, a different set for every seed.

``--shared-sdg`` generates the questions once, at the first seed, and copies its ``sdg/`` folder into the
other runs (the stage cache then skips sdg there); the seeds then vary split, mining and training only.
Re-runs resume: finished stages and evaluations are skipped. Writes ``docs/bench/quality.json`` and the
section between the ``quality`` markers of ``docs/benchmarks.md``; exits 1 when the claim does not hold.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = Path(__file__).resolve().parents[1]
STAGES = ("sdg", "prep", "finetune", "eval")
SEEDED = ("sdg", "prep", "finetune")  # the stage configs with a ``seed`` field
REFERENCE = "mpnet"
START, END = "<!-- quality:start -->", "<!-- quality:end -->"
TARGET_GAIN = 0.10
GENERAL_TOLERANCE = 0.01
RESULTS = "eval_results.json"
USER_QUESTIONS, HELD_OUT = "user_questions.jsonl", "held_out_queries.json"

from embedforge.errors import EmbedforgeError  # noqa: E402


class QualityBenchError(EmbedforgeError):
    """A run folder or result the summary needs is missing or not what it should be."""


def _json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise QualityBenchError(f"{path}: cannot read: {err}") from err


def _marker(run: Path, stage: str) -> dict:
    marker = _json(run / stage / ".stage.json")
    if marker.get("status") != "finished":
        raise QualityBenchError(f"{run / stage / '.stage.json'}: stage {stage} has not finished")
    return marker


def seed_overrides(seed: int, sdg_seed: int, user: list[str]) -> list[str]:
    """Every seeded stage gets the run's seed (sdg the shared one); the user may not override them."""
    clash = [o for o in user if o.partition("=")[0] in {f"{s}.seed" for s in SEEDED}]
    if clash:
        raise QualityBenchError(f"seeds are set by --seeds, not by overrides: {clash}")
    return [f"sdg.seed={sdg_seed}", f"prep.seed={seed}", f"finetune.seed={seed}", *user]


def run_seed(docs: Path, run: Path, recipe: str, overrides: list[str]) -> None:
    """``embedforge run`` in a child process; appends its peak resident memory (MiB) to the run's
    ``peak_memory.json`` when it did work, so a resumed or re-summarized run keeps the number."""
    import embedforge
    from embedforge.atomic import write_json_atomic

    before = {s: (run / s / ".stage.json").read_bytes() for s in STAGES if (run / s / ".stage.json").exists()}
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(Path(embedforge.__file__).parents[1]), env.get("PYTHONPATH", "")]
    )
    cmd = [sys.executable, "-m", "embedforge.cli", "run", "--corpus", str(docs), "--out", str(run)]
    cmd += ["--config", recipe, "--stages", ",".join(STAGES), *overrides]
    print("$", shlex.join(cmd), flush=True)
    child = subprocess.Popen(cmd, env=env)
    _, status, usage = os.wait4(child.pid, 0)  # this child's own rusage, not the max over all children
    child.returncode = code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise QualityBenchError(f"embedforge run for {run} failed (exit {code}); its output is above")
    if any(before.get(s) != (run / s / ".stage.json").read_bytes() for s in STAGES):
        path, peak = run / "peak_memory.json", round(usage.ru_maxrss / 1024, 1)  # ru_maxrss: KiB on Linux
        write_json_atomic(path, {"runs": [*(_json(path)["runs"] if path.exists() else []), peak]})


def share_sdg(first: Path, run: Path) -> None:
    """Copy the first seed's finished sdg folder; the same sdg config then has the same stage key."""
    done = _marker(first, "sdg")
    if run.joinpath("sdg", ".stage.json").exists() and _json(run / "sdg" / ".stage.json") == done:
        return
    shutil.rmtree(run / "sdg", ignore_errors=True)
    shutil.copytree(first / "sdg", run / "sdg")


def give_questions(beir: Path, run: Path, seed: int, share: float) -> str:
    """A seeded ``share`` of the real questions as the user's (RUN/user_questions.jsonl, which prep reads);
    the others, listed in RUN/held_out_queries.json, are the only ones the summary scores. Returns the
    override that hands the file to prep."""
    import random

    from embedforge.atomic import write_json_atomic, write_text_atomic
    from embedforge.data.formats import read_beir

    if not 0 < share < 1:
        raise QualityBenchError(f"--user-questions must be between 0 and 1, got {share}")
    data = read_beir(beir)
    ids = sorted(data.queries)
    random.Random(seed).shuffle(ids)
    given, held = sorted(ids[: round(len(ids) * share)]), sorted(ids[round(len(ids) * share) :])
    lines = [
        json.dumps({"id": q, "question": data.queries[q], "document": sorted(data.qrels[q])}) + "\n"
        for q in given
    ]
    run.mkdir(parents=True, exist_ok=True)
    write_text_atomic(run / USER_QUESTIONS, "".join(lines))  # the same bytes on a re-run: prep stays cached
    write_json_atomic(run / HELD_OUT, held)
    return f"prep.user_questions={run / USER_QUESTIONS}"


def evaluate_seed(run: Path, beir: Path, base_name: str, base_results: dict, name: str) -> dict:
    """The tuned model on the real questions (base and MPNet reused); skipped if this checkpoint was scored."""
    from embedforge.atomic import write_json_atomic
    from embedforge.evaluate import compare_models

    out, key = run / "perlfaq", _marker(run, "finetune")["key"]
    scored = (out / "source.json").exists() and _json(out / "source.json") == {"key": key}
    if scored and (out / RESULTS).exists():
        return _json(out / RESULTS)
    models = {base_name: base_name, name: str(run / "finetune" / "model"), REFERENCE: REFERENCE}
    results = compare_models(models, beir, out, progress=False, reuse=base_results["models"])
    write_json_atomic(out / "source.json", {"key": key})
    return results


def summarize_seed(seed: int, run: Path, base_results: dict, first_sdg_key: str | None) -> dict:
    """One seed's numbers from its run folder and its real-question results."""
    from embedforge.measures.significance import paired_comparison

    markers = {s: _marker(run, s) for s in STAGES}
    real = _json(run / "perlfaq" / RESULTS)
    base_name = real["baseline"]
    tuned_name = next(n for n in real["models"] if n not in (base_name, REFERENCE))
    held = set(_json(run / HELD_OUT)) if (run / HELD_OUT).exists() else None  # --user-questions

    def per_query(result: dict) -> dict:
        return {q: v["ndcg@10"] for q, v in result["per_query"].items() if held is None or q in held}

    tuned = per_query(real["models"][tuned_name])
    sig = paired_comparison(per_query(real["models"][base_name]), tuned)
    vs_ref = paired_comparison(per_query(base_results["models"][REFERENCE]), tuned)
    synth = _json(run / "eval" / RESULTS)
    s_base = synth["models"][synth["baseline"]]
    s_tuned_name = next(n for n in synth["models"] if n != synth["baseline"])
    s_tuned = synth["models"][s_tuned_name]
    s_sig = synth.get("significance", {}).get(s_tuned_name, {}).get("ndcg@10", {})
    gb, gt = s_base["general_check"]["pearson"], s_tuned["general_check"]["pearson"]
    peaks = _json(run / "peak_memory.json")["runs"] if (run / "peak_memory.json").exists() else []
    shared = first_sdg_key is not None and markers["sdg"]["key"] == first_sdg_key
    return {
        "seed": seed,
        "run": str(run),
        "stage_seeds": {s: markers[s]["config"].get("seed") for s in SEEDED},
        "sdg_shared": shared,
        "real": {
            **{k: sig[k] for k in ("base", "diff", "ci95", "p")},
            **{"tuned": sig["model"], "gain": sig["rel"], "queries": sig["n"], "mpnet": vs_ref["base"]},
            "vs_mpnet": {k: vs_ref[k] for k in ("diff", "ci95", "p")},
        },
        "synthetic": {
            "queries": s_base["num_queries"],
            "base": s_base["metrics"]["ndcg@10"],
            "tuned": s_tuned["metrics"]["ndcg@10"],
            "gain": synth["deltas"][s_tuned_name]["ndcg@10"]["rel"],
            "ci95": s_sig.get("ci95"),
            "p": s_sig.get("p"),
        },
        "general": {"base": gb, "tuned": gt, "drop": gb - gt},
        "stage_seconds": {s: markers[s].get("seconds") for s in STAGES},
        "peak_memory_mib": max(peaks) if peaks else None,
    }


def spread(values: list[float]) -> dict:
    """Mean, sample standard deviation (None for one value), min and max."""
    return {
        "n": len(values),
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else None,
        "min": min(values),
        "max": max(values),
    }


def aggregate(seeds: list[dict]) -> dict:
    """Spread over seeds and the acceptance verdict: each criterion, and whether all hold. MPNet's nDCG@10
    is its mean over the seeds' scored questions (all of them, unless --user-questions held some out)."""
    mpnet_ndcg = statistics.fmean(s["real"]["mpnet"] for s in seeds)
    stats = {
        "real_gain": spread([s["real"]["gain"] for s in seeds]),
        "real_tuned_ndcg@10": spread([s["real"]["tuned"] for s in seeds]),
        "synthetic_gain": spread([s["synthetic"]["gain"] for s in seeds]),
        "pearson_drop": spread([s["general"]["drop"] for s in seeds]),
    }
    checks = {
        f"mean real-question nDCG@10 gain >= +{TARGET_GAIN:.0%}": stats["real_gain"]["mean"] >= TARGET_GAIN,
        "every seed's 95% CI of the gain above 0": all(s["real"]["ci95"][0] > 0 for s in seeds),
        "mean tuned nDCG@10 >= MPNet's": stats["real_tuned_ndcg@10"]["mean"] >= mpnet_ndcg,
        f"tuned Pearson >= base - {GENERAL_TOLERANCE} in every seed": all(
            s["general"]["drop"] <= GENERAL_TOLERANCE for s in seeds
        ),
    }
    return {"stats": stats, "mpnet_ndcg@10": mpnet_ndcg, "checks": checks, "holds": all(checks.values())}


def _f(value, spec: str) -> str:
    """``value`` formatted, "n/a" when absent; a pair is a CI."""
    if value is None:
        return "n/a"
    return f"[{value[0]:{spec}}, {value[1]:{spec}}]" if isinstance(value, list) else format(value, spec)


STAT_ROWS = {
    "real_gain": ("real-question nDCG@10 gain", "+.1%"),
    "real_tuned_ndcg@10": ("tuned nDCG@10 on real questions", ".4f"),
    "synthetic_gain": ("held-out (generated) nDCG@10 gain", "+.1%"),
    "pearson_drop": ("Pearson drop (base - tuned)", "+.4f"),
}


def render(summary: dict) -> str:
    agg, seeds, data = summary["aggregate"], summary["seeds"], summary["perlfaq"]
    overrides = f" with `{' '.join(summary['overrides'])}`" if summary["overrides"] else ""
    lines = [
        START,
        f"`{summary['command']}`, {summary['date']}, {summary['machine']}, {summary['cores']} CPU cores. "
        f"Recipe `{summary['recipe']}`{overrides}, seeds {', '.join(map(str, summary['seeds_run']))}. Each seed "
        f"runs sdg -> prep -> finetune -> eval on the Perl FAQ's documents ({data['documents']:,} pages incl. "
        f"{data['distractor_documents']:,} distractors); then the base and tuned models answer the FAQ's "
        + (
            f"{data['queries']} real questions (paired 95% bootstrap CI and sign-flip p of tuned vs base)."
            if not summary.get("user_questions")
            else f"real questions: a seeded {summary['user_questions']:.0%} of the {data['queries']} go to prep "
            f"as the user's own (`prep.user_questions`), and the scores below are on the other "
            f"{seeds[0]['real']['queries']}, a different set for every seed, MPNet's too (paired 95% "
            "bootstrap CI and sign-flip p of tuned vs base)."
        ),
        "",
        "The seeds vary the split, mining and training but share one set of generated questions "
        "(`--shared-sdg`): the spread below leaves out question generation."
        if any(s["sdg_shared"] for s in seeds)
        else "Each seed generates its own questions and varies the split, mining and training.",
        "",
        "| seed (sdg/prep/ft) | real nDCG@10 base -> tuned | gain | CI of diff | p | tuned - MPNet (CI, p) "
        "| held-out gain (CI of diff) | Pearson base -> tuned | seconds sdg/prep/ft/eval | peak MiB |",
        "|---:|---|---:|---|---:|---|---|---|---|---:|",
    ]
    for s in seeds:
        r, y, g, t, vs = s["real"], s["synthetic"], s["general"], s["stage_seconds"], s["real"]["vs_mpnet"]
        used = "/".join(str(v) for v in s["stage_seeds"].values())
        sdg = "shared" if s["sdg_shared"] else t["sdg"]
        lines.append(
            f"| {s['seed']} ({used}) | {r['base']:.4f} -> {r['tuned']:.4f} | **{r['gain']:+.1%}** "
            f"| {_f(r['ci95'], '+.4f')} | {_f(r['p'], '.4f')} | {vs['diff']:+.4f} ({_f(vs['ci95'], '+.4f')}, "
            f"{_f(vs['p'], '.4f')}) | {y['gain']:+.1%} ({_f(y['ci95'], '+.4f')}) "
            f"| {g['base']:.4f} -> {g['tuned']:.4f} | {sdg}/{t['prep']}/{t['finetune']}/{t['eval']} "
            f"| {_f(s['peak_memory_mib'], '.0f')} |"
        )
    lines += ["", "| over seeds | mean | sample std | min | max |", "|---|---:|---:|---:|---:|"]
    for key, (label, spec) in STAT_ROWS.items():
        row = agg["stats"][key]
        cells = [_f(row[k], spec.lstrip("+") if k == "std" else spec) for k in ("mean", "std", "min", "max")]
        lines.append(f"| {label} | {' | '.join(cells)} |")
    gain, tuned = agg["stats"]["real_gain"], agg["stats"]["real_tuned_ndcg@10"]
    failed = [name for name, ok in agg["checks"].items() if not ok]
    lines += ["", "| acceptance | status |", "|---|---|"]
    lines += [f"| {name} | {'met' if ok else '**not met**'} |" for name, ok in agg["checks"].items()]
    lines += [
        "",
        f"Over {gain['n']} seed(s) tuning gains {gain['mean']:+.1%} nDCG@10 on the real questions (sample "
        f"std {_f(gain['std'], '.1%')}); tuned {tuned['mean']:.4f} vs untuned MPNet {agg['mpnet_ndcg@10']:.4f}"
        + (" on the same questions. " if summary.get("user_questions") else ". ")
        + (
            "**The claim holds**: every criterion is met."
            if agg["holds"]
            else f"**The claim does not hold**: not met: {'; '.join(failed)}."
        ),
        "",
        "Raw: `docs/bench/quality.json`.",
        END,
    ]
    return "\n".join(lines)


def write_section(
    path: Path,
    section: str,
    markers: tuple[str, str] = (START, END),
    title: str = "Quality: the Perl FAQ's real questions (`benchmarks/quality.py`)",
) -> None:
    """Replace the text between ``markers`` in ``path``, or append the section under ``title``."""
    from embedforge.atomic import write_text_atomic

    start, end = markers
    text = path.read_text()
    if start in text and end in text:
        text = text[: text.index(start)] + section + text[text.index(end) + len(end) :]
    else:
        text = text.rstrip("\n") + f"\n\n## {title}\n\n" + section + "\n"
    write_text_atomic(path, text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--recipe", default="minilm_cpu", help="shipped recipe name or YAML path")
    parser.add_argument("--run-dir", default=str(ROOT / "runs" / "quality"))
    parser.add_argument("--cache-dir", default=str(ROOT / ".cache" / "perlfaq"))
    parser.add_argument(
        "--shared-sdg", action="store_true", help="generate questions once, at the first seed"
    )
    parser.add_argument(
        "--summarize-only", action="store_true", help="no runs: read finished runs and results"
    )
    parser.add_argument(
        "--user-questions",
        type=float,
        metavar="SHARE",
        help="give this share of the real questions to prep as the user's own; score the rest",
    )
    parser.add_argument("--base-results", help=f"{RESULTS} with the base model and MPNet on perlfaq (reused)")
    parser.add_argument("--no-docs", action="store_true", help="do not touch docs/ (print the section only)")
    parser.add_argument(
        "--suite",
        nargs="*",
        metavar="SET",
        help="run the dev suite (benchmarks/devsets.py) instead of perlfaq alone: the named sets, or all",
    )
    parser.add_argument("overrides", nargs="*", help="extra stage.key=value overrides")
    args = parser.parse_args(argv)
    try:
        if args.suite is not None:
            sys.path.insert(0, str(ROOT / "benchmarks"))
            from quality_suite import run_suite

            return run_suite(sys.modules[__name__], args, argv if argv is not None else sys.argv[1:])
        return _bench(args, argv if argv is not None else sys.argv[1:])
    except EmbedforgeError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


def _bench(args: argparse.Namespace, argv: list[str]) -> int:
    from embedforge.atomic import write_json_atomic
    from embedforge.config import load_config
    from embedforge.demo.perlfaq_data import PerlfaqPaths, build_perlfaq
    from embedforge.evaluate import compare_models

    run_dir, seeds = Path(args.run_dir), list(dict.fromkeys(args.seeds))
    runs = {s: run_dir / f"seed{s}" for s in seeds}
    base_name = load_config("finetune", args.recipe, args.overrides).base_model
    cache = Path(args.cache_dir)  # a summary only reads the manifest: it never downloads
    paths = (
        PerlfaqPaths(cache / "docs", cache / "beir", cache / "manifest.json")
        if args.summarize_only
        else build_perlfaq(cache)
    )
    base_file = Path(args.base_results) if args.base_results else run_dir / "perlfaq_base" / RESULTS
    if not base_file.exists() and not args.summarize_only:
        compare_models([base_name, REFERENCE], paths.beir, base_file.parent, progress=False)
    base_results = _json(base_file)
    missing = {base_name, REFERENCE} - set(base_results["models"])
    if missing:
        raise QualityBenchError(f"{base_file}: no result for {sorted(missing)}")
    if not args.summarize_only:
        for s in seeds:
            if args.shared_sdg and s != seeds[0]:
                share_sdg(runs[seeds[0]], runs[s])
            overrides = seed_overrides(s, seeds[0] if args.shared_sdg else s, args.overrides)
            if args.user_questions:
                overrides.append(give_questions(paths.beir, runs[s], s, args.user_questions))
            run_seed(paths.docs, runs[s], args.recipe, overrides)
            if args.shared_sdg and _marker(runs[s], "sdg") != _marker(runs[seeds[0]], "sdg"):
                raise QualityBenchError(
                    f"{runs[s] / 'sdg'}: sdg ran again instead of reusing seed {seeds[0]}'s"
                )
            evaluate_seed(runs[s], paths.beir, base_name, base_results, f"tuned seed {s}")
    first_sdg = _marker(runs[seeds[0]], "sdg")["key"]
    per_seed = [summarize_seed(s, runs[s], base_results, first_sdg if s != seeds[0] else None) for s in seeds]
    manifest = _json(paths.manifest)
    summary = {
        "date": dt.date.today().isoformat(),
        "machine": platform.machine(),
        "cores": os.cpu_count(),
        "command": shlex.join(["python", "benchmarks/quality.py", *argv]),
        "recipe": args.recipe,
        "overrides": args.overrides,
        "seeds_run": seeds,
        "shared_sdg": args.shared_sdg,
        "perlfaq": {k: manifest[k] for k in ("queries", "documents", "distractor_documents")},
        "seeds": per_seed,
        "user_questions": args.user_questions,
        "aggregate": aggregate(per_seed),
    }
    section = render(summary)
    print(section)
    if not args.no_docs:
        write_json_atomic(ROOT / "docs" / "bench" / "quality.json", summary)
        write_section(ROOT / "docs" / "benchmarks.md", section)
    return 0 if summary["aggregate"]["holds"] else 1


if __name__ == "__main__":
    sys.exit(main())
