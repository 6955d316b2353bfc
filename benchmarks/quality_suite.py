"""Does tuning help on every domain, not one? The bare ``embedforge run`` on each set of the dev suite.

For each set of ``benchmarks/devsets.py`` and each seed S: ``embedforge run --corpus SET/docs --out
RUN_DIR/SET/seedS --stages sdg,prep,finetune,eval`` (the CPU default recipe, every stage seed = S), then
base and tuned MiniLM answer the set's human-written questions (paired 95% bootstrap CI and sign-flip p).
The run's own held-out verdict (its generated questions) is set beside the real one: they must agree in
sign. Reports per set and over sets; the claim:

- on every set, over 3 seeds: mean gain >= +5% nDCG@10, every seed's CI above 0, no seed significantly
  worse, Lee Pearson within 0.01 of the base in every seed;
- over the suite: mean gain >= +8%;
- the held-out verdict agrees in sign with the real-question result in every run.

    .venv/bin/python benchmarks/quality.py --suite [SET ...] --seeds 0 1 2 [--run-dir runs/suite] [--no-docs]

With ``--summarize-only`` a set's table has the seeds whose run has finished (its seed count is shown).

Writes ``docs/bench/suite.json`` and the section between the ``suite`` markers of ``docs/benchmarks.md``.
"""

from __future__ import annotations

import datetime as dt
import os
import platform
import shlex
import statistics
from pathlib import Path

SET_GAIN, SUITE_GAIN, GENERAL_TOLERANCE, SEEDS = 0.05, 0.08, 0.01, 3
START, END = "<!-- suite:start -->", "<!-- suite:end -->"
RESULTS = "eval_results.json"


def sign(test: dict) -> int:
    """+1 a significant gain, -1 a significant loss, 0 no significant difference."""
    return 0 if not test["significant"] else (1 if test["diff"] > 0 else -1)


def score_seed(q, devset, run: Path, base_results: dict, seed: int) -> dict:
    """The tuned model on the set's real questions (base reused), then this seed's numbers."""
    from embedforge.atomic import write_json_atomic
    from embedforge.evaluate import compare_models
    from embedforge.measures.significance import paired_comparison

    out, key = run / "real", q._marker(run, "finetune")["key"]
    if not ((out / "source.json").exists() and q._json(out / "source.json") == {"key": key}):
        base = base_results["baseline"]
        models = {base: base, f"tuned seed {seed}": str(run / "finetune" / "model")}
        compare_models(models, devset.beir, out, progress=False, reuse=base_results["models"])
        write_json_atomic(out / "source.json", {"key": key})
    real = q._json(out / RESULTS)
    base, tuned = real["baseline"], next(n for n in real["models"] if n != real["baseline"])
    test = paired_comparison(
        *({k: v["ndcg@10"] for k, v in real["models"][n]["per_query"].items()} for n in (base, tuned))
    )
    held = q._json(run / "eval" / RESULTS)
    held_name = next(n for n in held["models"] if n != held["baseline"])
    held_test = held["significance"][held_name]["ndcg@10"]
    general = [held["models"][n]["general_check"]["pearson"] for n in (held["baseline"], held_name)]
    prep = q._json(run / "prep" / "prep_report.json")["split"]
    return {
        "seed": seed,
        "sdg_seed": q._marker(run, "sdg")["config"].get("seed"),
        "real": {
            k: test[k]
            for k in ("n", "base", "model", "diff", "rel", "ci95", "p", "better", "worse", "significant")
        },
        "held_out": {k: held_test[k] for k in ("n", "diff", "rel", "ci95", "p", "significant")},
        "agree": sign(held_test) == sign(test),
        "general": {"base": general[0], "tuned": general[1], "drop": general[0] - general[1]},
        "training": {k: prep["questions"].get(k, 0) for k in ("train", "heading_pairs")},
        "stage_seconds": {s: q._marker(run, s).get("seconds") for s in q.STAGES},
    }


def aggregate_set(seeds: list[dict]) -> dict:
    """A set's mean gain over seeds and its criteria."""
    gains = [s["real"]["rel"] for s in seeds]
    checks = {
        f"{SEEDS} seeds": len(seeds) >= SEEDS,
        f"mean gain >= +{SET_GAIN:.0%}": statistics.fmean(gains) >= SET_GAIN,
        "every seed's CI above 0": all(s["real"]["ci95"][0] > 0 for s in seeds),
        "no seed significantly worse": all(sign(s["real"]) >= 0 for s in seeds),
        f"Pearson within {GENERAL_TOLERANCE} of base": all(
            s["general"]["drop"] <= GENERAL_TOLERANCE for s in seeds
        ),
        "held-out verdict agrees in sign": all(s["agree"] for s in seeds),
    }
    return {
        "mean_gain": statistics.fmean(gains),
        "smallest_clear_gain": statistics.fmean(smallest_clear_gain(s["real"]) for s in seeds),
        "checks": checks,
        "holds": all(checks.values()),
    }


def smallest_clear_gain(test: dict) -> float:
    """The relative gain a seed needs for its 95% CI to clear 0, given this set's questions and their spread:
    the CI's half-width over the base score. What a set of a few dozen questions can show at all."""
    low, high = test["ci95"]
    return (high - low) / 2 / test["base"]


def aggregate_suite(sets: dict[str, dict]) -> dict:
    mean = statistics.fmean(s["aggregate"]["mean_gain"] for s in sets.values())
    checks = {f"mean over sets >= +{SUITE_GAIN:.0%}": mean >= SUITE_GAIN} | {
        f"{name} (its criteria above)": s["aggregate"]["holds"] for name, s in sets.items()
    }
    return {"mean_gain": mean, "checks": checks, "holds": all(checks.values())}


def _seed(s: dict) -> str:
    """The seed, and the seed whose generated questions it reused (``--shared-sdg``)."""
    sdg = s.get("sdg_seed")
    return str(s["seed"]) if sdg in (None, s["seed"]) else f"{s['seed']} (sdg of {sdg})"


def _ci(pair: list[float]) -> str:
    return f"[{pair[0]:+.3f}, {pair[1]:+.3f}]"


def render(summary: dict) -> str:
    lines = [
        START,
        f"`{summary['command']}`, {summary['date']}, {summary['machine']}, {summary['cores']} CPU cores, recipe "
        f"`{summary['recipe']}` (what a bare `embedforge run` picks on a CPU). Real = the set's human-written "
        "questions (never seen by the pipeline), paired 95% bootstrap CI and sign-flip p of tuned - base "
        "nDCG@10; held-out = the run's own report (questions the LLM wrote for held-out documents, searched in "
        "the whole corpus).",
        "",
        "| set | seed | questions | real nDCG@10 base -> tuned | gain | CI | p | better / worse | held-out gain (CI) "
        "| agree | Pearson base -> tuned | train rows (LLM + headings) | s sdg/prep/ft/eval |",
        "|---|---:|---:|---|---:|---|---:|---|---|---|---|---|---|",
    ]
    for name, data in summary["sets"].items():
        for s in data["seeds"]:
            r, h, g, t = s["real"], s["held_out"], s["general"], s["stage_seconds"]
            lines.append(
                f"| {name} | {_seed(s)} | {r['n']} | {r['base']:.4f} -> {r['model']:.4f} | **{r['rel']:+.1%}** "
                f"| {_ci(r['ci95'])} | {r['p']:.3g} | {r['better']} / {r['worse']} | {h['rel']:+.1%} ({_ci(h['ci95'])}, "
                f"n {h['n']}) | {'yes' if s['agree'] else '**no**'} | {g['base']:.4f} -> {g['tuned']:.4f} "
                f"| {s['training']['train']} + {s['training']['heading_pairs']} "
                f"| {'/'.join(str(round(t[k] or 0)) for k in ('sdg', 'prep', 'finetune', 'eval'))} |"
            )
    lines += [
        "",
        "| set | seeds | mean gain | gain a seed needs for its CI to clear 0 | criteria not met |",
        "|---|---:|---:|---:|---|",
    ]
    for name, data in summary["sets"].items():
        agg = data["aggregate"]
        failed = [c for c, ok in agg["checks"].items() if not ok]
        lines.append(
            f"| {name} | {len(data['seeds'])} | {agg['mean_gain']:+.1%} | {agg['smallest_clear_gain']:+.1%} "
            f"| {'; '.join(failed) or 'none'} |"
        )
    suite = summary["aggregate"]
    failed = [c for c, ok in suite["checks"].items() if not ok]
    lines += [
        "",
        f"Over {len(summary['sets'])} sets the mean gain is **{suite['mean_gain']:+.1%}**: "
        + (
            "**the claim holds**."
            if suite["holds"]
            else f"**the claim does not hold**; not met: {'; '.join(failed)}."
        ),
        "",
        "Raw: `docs/bench/suite.json`.",
        END,
    ]
    return "\n".join(lines)


def _run_seeds(q, args, devset, set_dir: Path, seeds: list[int]):
    """Run (unless ``--summarize-only``, which reports only the seeds whose run has finished) each seed's
    ``embedforge run``; with ``--shared-sdg`` the later seeds reuse the first seed's generated questions and
    vary the split, mining and training only."""
    first = set_dir / f"seed{seeds[0]}"
    for s in seeds:
        run = set_dir / f"seed{s}"
        if args.summarize_only and not (run / "eval" / RESULTS).exists():
            continue
        if not args.summarize_only:
            if args.shared_sdg and s != seeds[0]:
                q.share_sdg(first, run)
            sdg_seed = seeds[0] if args.shared_sdg else s
            q.run_seed(devset.docs, run, args.recipe, q.seed_overrides(s, sdg_seed, args.overrides))
        yield s, run


def run_suite(q, args, argv: list[str]) -> int:
    """``quality.py --suite``: every set, every seed, then the table."""
    from devsets import SETS, build_devset

    from embedforge.atomic import write_json_atomic
    from embedforge.config import load_config
    from embedforge.evaluate import compare_models

    names = args.suite or list(SETS)
    run_dir, seeds = Path(args.run_dir), list(dict.fromkeys(args.seeds))
    base_name = load_config("finetune", args.recipe, args.overrides).base_model
    sets = {}
    for name in names:
        devset = build_devset(name)
        base_file = run_dir / name / "base" / RESULTS
        if not base_file.exists():
            compare_models([base_name], devset.beir, base_file.parent, progress=False)
        base_results = q._json(base_file)
        per_seed = [
            score_seed(q, devset, run, base_results, s)
            for s, run in _run_seeds(q, args, devset, run_dir / name, seeds)
        ]
        sets[name] = {"queries": len(q._json(base_file)["models"][base_name]["per_query"]), "seeds": per_seed}
        sets[name]["aggregate"] = aggregate_set(per_seed)
    summary = {
        "date": dt.date.today().isoformat(),
        "machine": platform.machine(),
        "cores": os.cpu_count(),
        "command": shlex.join(["python", "benchmarks/quality.py", *argv]),
        "recipe": args.recipe,
        "overrides": args.overrides,
        "sets": sets,
        "aggregate": aggregate_suite(sets),
    }
    section = render(summary)
    print(section)
    if not args.no_docs:
        write_json_atomic(q.ROOT / "docs" / "bench" / "suite.json", summary)
        title = "Quality over the dev suite (`benchmarks/quality.py --suite`)"
        q.write_section(q.ROOT / "docs" / "benchmarks.md", section, (START, END), title)
    return 0 if summary["aggregate"]["holds"] else 1
