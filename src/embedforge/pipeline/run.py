"""`embedforge run`: sdg -> prep -> finetune -> eval [-> export -> verify] in one run folder, resumable.

Each stage reads its section of one recipe, gets its inputs wired to the previous stage's outputs, and
writes into ``RUN_DIR/<stage>/``. A stage's key is the hash of its config (paths inside the run folder and
the corpus written relative to them) plus what its inputs on disk record: the key in the ``.stage.json``
marker of each stage folder it reads, and for sdg a fingerprint of the corpus files. A finished stage leaves
its marker with that key and the input keys, and is skipped when a re-run computes the same key. So an
interrupted run resumes: finished stages are skipped, sdg continues from its own checkpoint, finetune from
its last checkpoint; a changed setting re-runs that stage and everything after it, even when the later
stages run in a later invocation; and a moved run folder is still the same run.

This module only wires and skips stages; the work is in ``sdg``, ``prep``, ``finetune``, ``evaluate``,
``export`` and ``verify``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from embedforge.atomic import write_json_atomic, write_text_atomic
from embedforge.config import config_dict, default_recipe, load_config, recipe_ray
from embedforge.errors import EmbedforgeError
from embedforge.measures.significance import verdict
from embedforge.pipeline.plan import busy_note, estimate_run, format_plan

logger = logging.getLogger(__name__)

STAGES = ("sdg", "prep", "finetune", "eval", "export", "verify")
DEFAULT_STAGES = ("sdg", "prep", "finetune", "eval")
MARKER = ".stage.json"
# the stage folders each stage reads; verify also reads what it serves (see Pipeline.served)
INPUTS = {
    "sdg": (),
    "prep": ("sdg",),
    "finetune": ("prep",),
    "eval": ("prep", "finetune"),
    "export": ("prep", "finetune"),
    "verify": ("prep", "eval"),
}


class RunError(EmbedforgeError, ValueError):
    """A run that cannot start: bad stage names or overrides, or a stage whose inputs are not there."""


def _digest(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


def corpus_fingerprint(folder: str | Path) -> str:
    """Names, sizes and modification times of every file under the corpus folder."""
    files = sorted(p for p in Path(folder).rglob("*") if p.is_file())
    return _digest([(str(p.relative_to(folder)), p.stat().st_size, int(p.stat().st_mtime)) for p in files])


def _read_marker(folder: Path) -> dict:
    try:
        return json.loads((folder / MARKER).read_text())
    except (OSError, ValueError):
        return {}


def _write_marker(folder: Path, data: dict) -> None:
    write_json_atomic(folder / MARKER, data)


def torch_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


class Pipeline:
    """Builds each stage's config from the recipe and wires outputs to inputs."""

    def __init__(
        self,
        corpus: str,
        run_dir: str,
        recipe: str | None,
        overrides: list[str] | None = None,
        ray_workers: int = 0,
    ):
        self.corpus = corpus
        self.ray_workers = ray_workers  # > 0: on a Ray cluster with this many CPUs (``ray_backend``)
        self.run = Path(run_dir)
        self.recipe = recipe
        self.overrides = overrides or []
        bare = [o for o in self.overrides if o.partition("=")[0].partition(".")[0] not in STAGES]
        if bare:
            raise RunError(f"run overrides name their stage, e.g. finetune.epochs=1; got {bare}")
        self.finetune_cfg = load_config(
            "finetune",
            recipe,
            self.overrides,
            train_data=str(self.run / "prep" / "train.json"),
            output_dir=str(self.run / "finetune"),
        )
        self.base_model = self.finetune_cfg.base_model
        self._base = None

    def shared_base(self, model: str, *prompt_overrides):
        """The base model, shared by sdg, prep and eval so each passage is embedded once per run (see
        ``vector_memo``); None when this stage uses another model or its own prompts or token limit."""
        if model != self.base_model or any(o is not None for o in prompt_overrides):
            return None
        if self._base is None:
            from embedforge.models.vector_memo import MemoEncoder

            self._base = MemoEncoder(lambda: self.encoder(self.base_model), name=self.base_model)
        return self._base

    def encoder(self, model: str, **options):
        """``model`` loaded here, or on a Ray cluster its stand-in that embeds on the cluster's actors."""
        if self.ray_workers:
            from embedforge.pipeline.ray_backend import RayEncoder

            return RayEncoder(model, self.ray_workers, options=options)
        from embedforge.models.bi_encoder import BiEncoder

        return BiEncoder.load(model, **options)

    def release_base(self) -> None:
        if self._base is not None:
            self._base.release()

    def config(self, stage: str):
        run = self.run
        wiring: dict[str, dict[str, Any]] = {
            "sdg": {"corpus": self.corpus, "out": str(run / "sdg")},
            "prep": {
                "pairs": str(run / "sdg" / "pairs.jsonl"),
                "passages": str(run / "sdg" / "passages.jsonl"),
                "out": str(run / "prep"),
                "model": self.base_model,
            },
            "eval": {
                "beir": str(run / "prep" / "test_beir"),
                "models": [self.base_model, str(run / "finetune" / "model")],
                "out": str(run / "eval"),
            },
            "export": {
                "model": str(run / "finetune" / "model"),
                "out": str(run / "export"),
                "beir": str(run / "prep" / "test_beir"),  # int8/fp16 copies: their retrieval delta vs fp32
            },
            "verify": {
                "beir": str(run / "prep" / "test_beir"),
                "reference": str(run / "eval" / "eval_results.json"),
                "out": str(run / "verify" / "verify_report.json"),
            },
        }
        if stage == "finetune":
            return self.finetune_cfg
        return load_config(stage, self.recipe, self.overrides, **wiring[stage])

    def served(self) -> Path:
        """What verify serves: the run's export once it has finished, else the tuned checkpoint."""
        export = self.run / "export"
        return export if _read_marker(export).get("status") == "finished" else self.run / "finetune" / "model"

    def inputs(self, stage: str) -> dict[str, str]:
        """The keys the input stage folders record on disk (for sdg: the corpus fingerprint)."""
        if stage == "sdg":
            return {"corpus": corpus_fingerprint(self.corpus)}
        upstream = list(INPUTS[stage])
        if stage == "verify":
            upstream.append("export" if self.served().name == "export" else "finetune")
        found = {}
        for name in upstream:
            marker = _read_marker(self.run / name)
            if marker.get("status") != "finished":
                state = f"its status is '{marker['status']}'" if marker else "it has no marker"
                raise RunError(
                    f"{stage} reads {self.run / name}, but stage {name} has not finished there ({state}): "
                    f"run it first, e.g. --stages {name},{stage}"
                )
            found[name] = marker["key"]
        questions = self.config(stage).user_questions if stage == "prep" else ""
        if questions and Path(questions).is_file():  # an edited file makes prep and what follows run again
            found["user_questions"] = hashlib.sha256(Path(questions).read_bytes()).hexdigest()
        return found

    def key(self, stage: str, config, inputs: dict[str, str]) -> str:
        return _digest({"config": self._portable(config_dict(config)), "inputs": inputs})

    def _portable(self, value: Any) -> Any:
        """Paths inside the run folder or the corpus, written relative to them: a moved run keeps its keys."""
        if isinstance(value, str):
            for root, name in ((str(self.run), "<run>"), (str(self.corpus), "<corpus>")):
                if value == root or value.startswith(root + os.sep):
                    return name + value[len(root) :]
            return value
        if isinstance(value, list):
            return [self._portable(v) for v in value]
        if isinstance(value, dict):
            return {k: self._portable(v) for k, v in value.items()}
        return value


def _run_sdg(cfg, pipe: Pipeline) -> dict:
    from embedforge.sdg import run_sdg

    make = None
    if pipe.ray_workers:  # its actors hold the cluster's CPUs: sdg closes it before the round trip embeds
        import functools

        from embedforge.pipeline.ray_backend import RayGenerator
        from embedforge.sdg.pipeline import make_generator

        def make(config, resolved):
            return RayGenerator(functools.partial(make_generator, config, resolved), pipe.ray_workers)

    return run_sdg(cfg, encoder=pipe.shared_base(cfg.embed_model), make=make)


def _run_prep(cfg, pipe: Pipeline) -> dict:
    from embedforge.prep.run import run_prep

    return run_prep(cfg, encoder=pipe.shared_base(cfg.model, cfg.query_prompt, cfg.passage_prompt))


def _run_finetune(cfg, pipe: Pipeline) -> dict:
    from embedforge.finetune.trainer import finetune

    pipe.release_base()  # its passage vectors stay for eval; its weights need not sit beside training
    return finetune(cfg)


def _run_eval(cfg, pipe: Pipeline) -> dict:
    from embedforge.evaluate.retrieval import run_eval

    base = pipe.shared_base(pipe.base_model, cfg.query_prompt, cfg.passage_prompt, cfg.max_seq_length)
    loaded = {pipe.base_model: base} if base is not None else {}
    if pipe.ray_workers:  # the tuned model embeds the test corpus on the cluster too
        options = {"query_prompt": cfg.query_prompt, "passage_prompt": cfg.passage_prompt}
        tuned = [str(m) for m in cfg.models if str(m) not in loaded]
        loaded |= {m: pipe.encoder(m, name=m, max_seq_length=cfg.max_seq_length, **options) for m in tuned}
    results = run_eval(cfg, loaded=loaded)
    pipe.release_base()
    return {"table": results["table"]}


def _run_export(cfg, pipe: Pipeline) -> dict:
    from embedforge.export import run_export

    return run_export(cfg)


def served_precisions(served: Path) -> list[str]:
    """The graphs a user can serve from ``served``: every precision an export wrote, or the checkpoint."""
    from embedforge.export import EXPORT_FILE

    manifest = served / EXPORT_FILE
    if not manifest.is_file():
        return ["fp32"]
    files = json.loads(manifest.read_text()).get("files", {})
    return [p for p in ("fp32", "int8", "fp16") if files.get(p)]


def verify_report_path(fp32_report: str | Path, precision: str) -> Path:
    """fp32's report is verify's ``out``; each reduced-precision graph gets its own beside it."""
    out = Path(fp32_report)
    return out if precision == "fp32" else out.with_name(f"{out.stem}_{precision}{out.suffix}")


def describe_test_set(beir: str | Path) -> str:
    """What the run's test questions are, for verify's report: the user's own questions when prep had
    them (they are then the whole test set), else generated or heading questions on held-out pages."""
    report = Path(beir).parent / "prep_report.json"
    questions = json.loads(report.read_text())["split"]["questions"] if report.is_file() else {}
    user = (questions.get("user") or {}).get("test", 0)
    if user:
        return f"{user} real questions (prep.user_questions) on held-out documents"
    return "generated or heading questions on held-out pages"


def verify_served(served: str | Path, precision: str, cfg, evidence: str) -> dict:
    """Serve ``precision`` of ``served`` on a loopback port in this process and ``run_verify`` it with ``cfg``
    (a ``VerifyConfig``; its url is the server's)."""
    import dataclasses

    from embedforge.serve.app import create_app
    from embedforge.serve.server import ServerThread, load_serving_runtime
    from embedforge.verify import run_verify

    serve_cfg = load_config("serve", None, [], model=str(served), precision=precision)
    app = create_app(load_serving_runtime(serve_cfg), serve_cfg)
    with ServerThread(app) as server:
        return run_verify(dataclasses.replace(cfg, url=server.url), evidence=evidence)


def _run_verify(cfg, served: str) -> dict:
    """Serve each graph the export offers (fp32 and the int8/fp16 copies users are told to serve) on a
    loopback port in this process and verify it against the offline eval; fp32 must pass, a quantized copy
    that drifts is reported (its verify report says so) and not recommended."""
    import dataclasses

    from embedforge.verify import VerifyError

    reports = {}
    for precision in served_precisions(Path(served)):
        out = str(verify_report_path(cfg.out, precision))
        config = dataclasses.replace(cfg, out=out)
        reports[precision] = report = verify_served(served, precision, config, describe_test_set(cfg.beir))
        if not report.get("passed", False):
            why = report["table"].splitlines()[-1].removeprefix("VERIFY FAILED: ")
            if precision != "fp32":  # a quantized copy may drift on a small test set: reported, not fatal
                logger.warning("verify: %s (%s) drifts from the offline eval (%s); serve fp32; see %s",
                               served, precision, why, out)  # fmt: skip
                continue
            raise VerifyError(
                f"verify: {served} ({precision}) served over HTTP does not match the offline eval ({why}); "
                f"see {out}"
            )
    return reports


RUNNERS: dict[str, Callable] = {
    "sdg": _run_sdg,
    "prep": _run_prep,
    "finetune": _run_finetune,
    "eval": _run_eval,
    "export": _run_export,
}


def _chosen_stages(corpus: str, stages: list[str] | None) -> list[str]:
    """The stages to run, in pipeline order; unknown names and a missing corpus folder are refused."""
    stages = list(stages or DEFAULT_STAGES)
    unknown = sorted(set(stages) - set(STAGES))
    if unknown:
        raise RunError(f"unknown stage(s) {unknown}; stages are {list(STAGES)}")
    if not Path(corpus).is_dir():
        raise RunError(f"corpus folder '{corpus}' does not exist")
    return [s for s in STAGES if s in stages]


def _machine_recipe(cuda: bool) -> str:
    """The shipped recipe for this machine, announced with how to choose another."""
    recipe = str(default_recipe(cuda))
    print(
        f"no recipe given: {recipe}, sized for this machine ({'CUDA GPU' if cuda else 'CPU, no CUDA device'}); "
        "choose another with --config RECIPE or change a key with stage.key=value",
        flush=True,
    )
    return recipe


def _print_plan(pipe: Pipeline, recipe: str, chosen: list[str], cuda: bool) -> None:
    """What the run will do and about how long it takes, and a note when the machine is busy."""
    about, plans = estimate_run(pipe.corpus, pipe.config, chosen, cuda)
    print(format_plan(recipe, about, plans), flush=True)
    note = hasattr(os, "getloadavg") and busy_note(os.getloadavg()[0], os.cpu_count() or 1)
    if note:
        print(note, flush=True)


def _run_stage(pipe: Pipeline, stage: str) -> dict:
    """Run one stage unless its marker says it finished with the same key; its summary entry."""
    cfg = pipe.config(stage)
    inputs = pipe.inputs(stage)
    key = pipe.key(stage, cfg, inputs)
    folder = pipe.run / stage
    marker = _read_marker(folder)
    if marker.get("key") == key and marker.get("status") == "finished":
        print(f"[{stage}] unchanged since {marker.get('finished')}: skipped", flush=True)
        return {"skipped": True}
    if stage == "finetune" and marker.get("key") == key and marker.get("status") == "started":
        cfg.resume = True  # same config, interrupted: continue from the last checkpoint
    print(f"[{stage}] running (key {key})", flush=True)
    if stage != "export":
        # export refuses a non-empty out folder that is not an export (a lone marker is enough) and swaps
        # its finished folder into place, so its marker is written only once it finished
        _write_marker(folder, {"key": key, "status": "started", "inputs": inputs, "config": config_dict(cfg)})
    started = time.time()
    if stage == "verify":
        _run_verify(cfg, str(pipe.served()))
    else:
        RUNNERS[stage](cfg, pipe)
    seconds = round(time.time() - started, 1)
    finished = {"key": key, "status": "finished", "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
                "seconds": seconds, "inputs": inputs, "config": config_dict(cfg)}  # fmt: skip
    _write_marker(folder, finished)
    return {"seconds": seconds}


def run_pipeline(
    corpus: str,
    run_dir: str,
    recipe: str | None = None,
    overrides: list[str] | None = None,
    stages: list[str] | None = None,
    ray: str | None = None,
) -> dict:
    """Run the chosen stages in order, skipping those whose key is unchanged; returns a summary per stage.

    ``ray``: a Ray cluster address (or ``auto``; else the recipe's ``ray`` key) to generate and embed on; the
    cluster is joined before any stage starts, so an unreachable one leaves the run folder as it was.
    """
    chosen = _chosen_stages(corpus, stages)
    cuda = torch_cuda()
    recipe = recipe or _machine_recipe(cuda)
    pipe = Pipeline(corpus, run_dir, recipe, overrides, ray_workers=_join_ray(ray or recipe_ray(recipe)))
    _print_plan(pipe, recipe, chosen, cuda)
    summary: dict[str, Any] = {stage: _run_stage(pipe, stage) for stage in chosen}
    if pipe._base is not None:
        summary["base_model_passages"] = {"embedded": pipe._base.misses, "reused": pipe._base.hits}
    report = write_run_report(pipe.run, summary)
    summary["report"] = str(report)
    return summary


def _join_ray(address: str | None) -> int:
    """The cluster's CPU count once joined (0: no cluster, everything runs in this process)."""
    if not address:
        return 0
    from embedforge.pipeline.ray_backend import connect

    workers = connect(address)
    print(f"on the Ray cluster at {address}: generation and embedding over {workers} workers", flush=True)
    return workers


def _test_questions(run: Path) -> tuple[str, dict]:
    """What the held-out questions are, in words, and prep's split counts (empty without prep)."""
    prep = run / "prep" / "prep_report.json"
    split = json.loads(prep.read_text())["split"] if prep.exists() else {}
    questions = split.get("questions", {})
    user = questions.get("user", {}).get("test")
    whole = split.get("passages", {}).get("test") == split.get("passages", {}).get("total")
    where = "searched in the whole corpus" if whole else "searched in the test documents' passages only"
    if user:
        return f"your {user} questions on held-out documents, {where}", split
    return f"questions the LLM wrote for held-out documents (not written by people), {where}", split


def recommend(run: Path) -> dict | None:
    """Which model to use, and why: the tuned one only when the held-out check shows a significant gain and
    the general-domain check holds; otherwise the base model, saying what was missing. None without eval."""
    results_path = run / "eval" / "eval_results.json"
    if not results_path.exists():
        return None
    results = json.loads(results_path.read_text())
    base = results["baseline"]
    tuned = next((n for n in results["models"] if n != base), None)
    test = (results.get("significance") or {}).get(tuned, {}).get("ndcg@10")
    if tuned is None or test is None:
        return None
    _, split = _test_questions(run)
    questions = split.get("questions", {})
    signal = (
        questions.get("train", 0)
        + questions.get("heading_pairs", 0)
        + questions.get("user", {}).get("train", 0)
    )
    general = {n: results["models"][n].get("general_check", {}).get("pearson") for n in (base, tuned)}
    kept_general = None in general.values() or general[tuned] >= general[base] - GENERAL_TOLERANCE
    reasons = []
    if not (test["significant"] and test["diff"] > 0):
        reasons.append(f"the held-out check shows no significant gain ({verdict(tuned, base, test)})")
    if not kept_general:
        reasons.append(
            f"the general-domain check dropped (Pearson {general[base]:.4f} -> {general[tuned]:.4f})"
        )
    if signal < SMALL_TRAINING:
        reasons.append(
            f"little training signal: {questions.get('train', 0)} generated questions and "
            f"{questions.get('heading_pairs', 0)} heading -> body pairs (documents without section headings "
            "give none; more documents, sdg.max_passages or your own questions give more)"
        )
    use = base if reasons else tuned
    return {"model": use, "tuned": tuned, "base": base, "use_tuned": not reasons, "reasons": reasons}


SMALL_TRAINING = 100  # training rows under which a tune is called a small-data tune in the report
GENERAL_TOLERANCE = 0.01  # Lee Pearson the tuned model may lose before the report says it forgot


def _recommendation_lines(advice: dict) -> list[str]:
    if advice["use_tuned"]:
        return ["## Recommendation", "", f"Use the tuned model (`{advice['tuned']}`): a significant gain on the "
                "held-out questions and the general-domain check holds."]  # fmt: skip
    lines = ["## Recommendation", "", f"**Keep the base model (`{advice['base']}`)**: the tuned model is not "
             "shown to be better here. Why:"]  # fmt: skip
    return lines + [f"- {r}." for r in advice["reasons"]]


def write_run_report(run: Path, summary: dict) -> Path:
    """RUN_DIR/report.md: the recommendation, stage timings, the base-vs-tuned table and the chart from eval;
    RUN_DIR/recommendation.json: the same advice for scripts."""
    advice = recommend(run)
    lines = ["# embedforge run report", ""]
    if advice:
        lines += [*_recommendation_lines(advice), ""]
        write_text_atomic(run / "recommendation.json", json.dumps(advice, indent=2) + "\n")
    lines += ["| stage | status | seconds |", "|---|---|---|"]
    for stage in STAGES:
        marker = _read_marker(run / stage)
        if marker:
            lines.append(f"| {stage} | {marker.get('status')} | {marker.get('seconds', '')} |")
    eval_md = run / "eval" / "eval_report.md"
    if eval_md.exists():
        on, _ = _test_questions(run)
        lines += ["", f"## Base vs tuned on {on}", "", eval_md.read_text()]
        lines += ["", "![chart](eval/eval_chart.png)"]
    for name, title in (
        ("prep/prep_report.md", "Training data"),
        ("sdg/sdg_report.md", "Generated questions"),
    ):
        if (run / name).exists():
            lines += ["", f"## {title}", "", f"See [{name}]({name})."]
    path = run / "report.md"
    write_text_atomic(path, "\n".join(lines) + "\n")
    if advice:
        summary["recommendation"] = advice
    return path
