"""The plan `embedforge run` prints before it starts: what each stage will do and about how long it takes.

A run can last an hour, so the user should see the size of the job before it starts and pick a smaller
recipe if it is too big. The estimate is a simple model: counts from the corpus and the recipe (passages,
questions, training steps) times seconds per item measured with MiniLM and the local SmolLM2-135M on a
2-core x86_64 CPU (docs/benchmarks.md). Other models, a GPU or a remote question generator were not
measured; their stages show counts only. The printout says it is an estimate.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# seconds per item on 2 CPU cores with MiniLM (bf16 on this AMX CPU) at up to 256 tokens, refitted to the
# runs of 2026-11-29 (docs/benchmarks.md: the 500-page run, the demo and five perlfaq quality runs)
SECONDS = {
    "generate": 0.3,  # one question from the local SmolLM2-135M, batched (0.24-0.25 s measured)
    "embed": 0.02,  # one text embedded by MiniLM (4,249 passages in about 95 s)
    "train_text": 0.065,  # one text forward + backward at 256 tokens (0.055; at 384 tokens 0.094-0.109)
    "load": 5.0,  # loading a model
    "general_check": 10.0,  # eval's general-domain check, per model
    "export": 40.0,  # fp32 + int8 export with parity checks (the demo's export stage)
    # one passage encoded once by MPNet at 256 tokens, as the teacher or as sdg's embed_model (1,536 passages
    # + 600 queries in 11 min, with a second job on the cores: an upper bound)
    "teacher_text": 0.4,
}
MEASURED_TEACHER = "mpnet"
ANCHOR_PARAGRAPHS = 3686  # the built-in Wikipedia anchor paragraphs (median 83 words, under 256 tokens)
# share of generated questions that survive cleaning, dedup and the round-trip filter (0.31 and 0.41 in the
# quality and demo runs)
KEPT_SHARE = 0.35
MEASURED_MODEL = "minilm"
LOCAL_GENERATORS = ("", "smollm2-135m")


@dataclass
class StagePlan:
    stage: str
    what: str
    seconds: float | None  # None: not measured for this model, device or generator


@dataclass
class _Counts:
    """What the corpus and the recipe imply: the numbers every stage's line is made of."""

    documents: int  # in the corpus folder
    used: int  # documents used (sdg.max_documents samples fewer)
    all_passages: int  # in the corpus folder
    passages: int  # in the documents used
    selected: int  # passages that get questions
    generated: int
    kept: int
    test_passages: int
    train_queries: int
    test_queries: int
    users: int  # lines of prep.user_questions
    asks: bool  # sdg asks an LLM (questions_per_passage > 0)
    whole_corpus: bool  # the test questions search every passage (prep.test_corpus: all, or your questions)

    @property
    def scored_passages(self) -> int:
        return self.passages if self.whole_corpus else self.test_passages


def _user_questions(path: str) -> int:
    user = path and Path(path)
    return sum(1 for line in user.open(encoding="utf-8") if line.strip()) if user and user.is_file() else 0


def _count(corpus: str, sdg: Any, prep: Any) -> _Counts:
    """Documents, passages and questions per split, from the chunked corpus and the sdg and prep configs."""
    from embedforge.data.corpus import load_corpus

    chunked = load_corpus(
        corpus,
        sentences_per_chunk=sdg.sentences_per_chunk,
        max_tokens=sdg.max_passage_tokens,
        min_words=sdg.min_words,
    )
    n_docs = len(chunked.documents)
    docs = min(sdg.max_documents or n_docs, n_docs)
    passages = round(len(chunked.passages) * docs / n_docs) if n_docs else 0
    selected = min(sdg.max_passages or passages, passages)
    generated = selected * sdg.questions_per_passage
    kept = round(generated * KEPT_SHARE)
    test_queries = round(kept * prep.test_fraction)
    train_queries = kept - test_queries
    asks = sdg.questions_per_passage > 0  # 0: no LLM; prep trains and tests on the section headings
    if prep.heading_pairs:  # one pair per informative section heading
        from embedforge.prep.heading_pairs import heading_pairs

        sections = len(heading_pairs(chunked.passages)) * docs / max(n_docs, 1)
        train_queries += round(sections * (1 - prep.test_fraction))
        test_queries += 0 if asks else round(sections * prep.test_fraction)
    users = _user_questions(prep.user_questions)
    if users:  # split with the documents; those on test documents are the whole test set
        train_queries += round(users * (1 - prep.test_fraction))
        test_queries = round(users * prep.test_fraction)
    test_passages = round(passages * prep.test_fraction)
    return _Counts(
        n_docs, docs, len(chunked.passages), passages, selected, generated, kept, test_passages,
        train_queries, test_queries, users, asks, bool(users) or prep.test_corpus == "all",
    )  # fmt: skip


def _timed(measured: bool, seconds: float, ok: bool = True) -> float | None:
    return seconds if measured and ok else None


def _sdg_plan(sdg: Any, n: _Counts, measured: bool) -> StagePlan:
    if not n.asks:
        what = f"no questions (questions_per_passage 0): {n.passages:,} passages written for prep"
        return StagePlan("sdg", what, _timed(measured, 1.0))
    local = sdg.backend == "local" and sdg.model in LOCAL_GENERATORS
    generator = f"the local {sdg.model or 'smollm2-135m'}" if sdg.backend == "local" else sdg.model
    # the round trip embeds the corpus with sdg.embed_model: MiniLM, or MPNet at the teacher's rate
    round_trip = {MEASURED_MODEL: SECONDS["embed"], MEASURED_TEACHER: SECONDS["teacher_text"]}.get(
        sdg.embed_model
    )
    what = (
        f"{n.generated:,} questions for {n.selected:,} passages with {generator}; about {n.kept:,} kept; "
        f"{n.passages:,} passages embedded for the round trip"
        + ("" if sdg.embed_model == MEASURED_MODEL else f" by {sdg.embed_model}")
    )
    seconds = n.generated * SECONDS["generate"] + n.passages * (round_trip or 0) + 2 * SECONDS["load"]
    return StagePlan("sdg", what, _timed(measured, seconds, local and round_trip is not None))


def _prep_plan(sdg: Any, prep: Any, n: _Counts, measured: bool) -> StagePlan:
    if not prep.heading_pairs:
        headings = ""
    elif n.asks:
        headings = " (with the heading -> body pairs)"
    else:
        headings = "; heading -> body pairs only, the test documents' headings are the test questions"
    what = (
        f"{n.used:,} documents split {1 - prep.test_fraction:.0%} / "
        f"{prep.test_fraction:.0%}; {prep.num_negatives} hard negatives mined for ~{n.train_queries:,} questions"
        + headings
        + (
            f"; your {n.users:,} questions split with the documents, the test share the test set"
            if n.users
            else ""
        )
    )
    # the passages' vectors come from sdg's round trip, when it asked questions with prep's model
    reused = n.asks and sdg.embed_model == prep.model
    embedded = n.train_queries + (0 if reused else n.passages - n.test_passages)
    return StagePlan("prep", what, _timed(measured, embedded * SECONDS["embed"] + SECONDS["load"]))


def _finetune_plan(tune: Any, n: _Counts, measured: bool) -> StagePlan:
    from embedforge.finetune.trainer import plan_batches

    embed, text = SECONDS["embed"], SECONDS["train_text"]
    rows = max(1, round(n.train_queries * (1 - (0 if tune.val_data else tune.validation_split))))
    batches = plan_batches(tune, rows)
    steps, batch = batches["total_steps"], batches["global_batch_size"]
    train_seconds = steps * batch * (1 + tune.n_passages) * text
    train_seconds *= tune.max_seq_length / 256  # about linear in the length
    if tune.anchor_weight:  # the anchors embedded once, then anchor_batch more (shorter) texts a step
        train_seconds += min(tune.anchor_count, ANCHOR_PARAGRAPHS) * embed + steps * tune.anchor_batch * text
    # validation retrieves over the training rows' passages, three times per run
    validating = bool(tune.val_data) or tune.validation_split > 0
    validation = 3 * min(tune.max_val_corpus, rows * tune.n_passages) * embed if validating else 0
    teacher_texts = round(rows * tune.n_passages * 0.8) if tune.distill_teacher else 0  # rows share negatives
    teacher_seconds = teacher_texts * SECONDS["teacher_text"] + SECONDS["load"] if teacher_texts else 0
    what = (
        f"~{rows:,} training rows -> {steps} steps of {batch} x "
        f"(1 + {tune.n_passages}) texts at {tune.max_seq_length} tokens ({tune.base_model})"
        + (f" + {tune.anchor_batch} anchor texts" if tune.anchor_weight else "")
        + (
            f"; the {tune.distill_teacher} teacher encodes ~{teacher_texts:,} passages once"
            if teacher_texts
            else ""
        )
    )
    seconds = train_seconds + validation + SECONDS["load"] + teacher_seconds
    return StagePlan(
        "finetune",
        what,
        _timed(measured, seconds, not teacher_texts or tune.distill_teacher == MEASURED_TEACHER),
    )


def estimate_run(
    corpus: str, config_of: Callable[[str], Any], stages: Iterable[str], cuda: bool
) -> tuple[str, list[StagePlan]]:
    """(a line about the corpus, one StagePlan per requested stage) from the corpus and each stage's config."""
    sdg, prep, tune = config_of("sdg"), config_of("prep"), config_of("finetune")
    n = _count(corpus, sdg, prep)
    measured = not cuda and tune.base_model == MEASURED_MODEL
    embed, load = SECONDS["embed"], SECONDS["load"]
    served = n.scored_passages + n.test_queries
    precisions = 2 if config_of("export").quantize else 1
    plans = {
        "sdg": _sdg_plan(sdg, n, measured),
        "prep": _prep_plan(sdg, prep, n, measured),
        "finetune": _finetune_plan(tune, n, measured),
        "eval": StagePlan(
            "eval",
            f"base vs tuned on ~{n.test_queries:,} {'of your ' if n.users else ''}questions over "
            f"~{n.scored_passages:,} {'' if n.whole_corpus else 'held-out '}passages",
            _timed(measured, 2 * (served * embed + SECONDS["general_check"]) + load),
        ),
        "export": StagePlan(
            "export", "ONNX with pooling and norm in the graph", _timed(measured, SECONDS["export"])
        ),
        "verify": StagePlan(
            "verify",
            f"the eval re-run over HTTP for {precisions} precision(s)",
            _timed(measured, precisions * (served * embed + load)),
        ),
    }
    about = f"{n.documents:,} documents, {n.all_passages:,} passages" + (
        f" (a sample of {n.used:,} documents used)" if n.used < n.documents else ""
    )
    return about, [plans[s] for s in stages]


def busy_note(load: float, cores: int) -> str | None:
    """A warning when other work already fills the cores: the per-item seconds assume an idle machine."""
    if load <= cores:
        return None
    return (
        f"  note: load average {load:.1f} on {cores} cores: other work shares this machine, so expect the stages "
        "to take several times longer (on a busy machine sdg.threads=1 keeps the local generator from stalling)"
    )


def _minutes(seconds: float) -> str:
    return f"~{seconds / 60:.1f} min" if seconds >= 60 else f"~{seconds:.0f} s"


def format_plan(recipe: str, about: str, plans: list[StagePlan]) -> str:
    """The printed plan; stages without a measurement show their counts only."""
    lines = [f"plan (recipe {recipe}); corpus: {about}"]
    for p in plans:
        lines.append(
            f"  {p.stage:<9} {_minutes(p.seconds) if p.seconds is not None else 'not measured':>14}  {p.what}"
        )
    known = [p.seconds for p in plans if p.seconds is not None]
    if known:
        partial = " for the measured stages" if len(known) < len(plans) else ""
        lines.append(
            f"  total     {_minutes(sum(known)):>14}{partial}: an estimate from these counts and seconds per item "
            "measured with MiniLM on 2 CPU cores; a busy or slower machine takes longer"
        )
    return "\n".join(lines)
