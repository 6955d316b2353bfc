"""The sdg stage: plan questions per passage, generate them resumably, filter, and write the outputs.

Flow of :func:`run_sdg`:

1. Read and chunk the corpus (``corpus.load_corpus``); write ``passages.jsonl`` (every passage).
2. Plan each selected passage (a *unit*): its question types, complexities and openings, and for a
   multi-hop question the group of 2-3 neighbouring passages of its document (``prompts.plan_unit``).
3. Generate unit by unit, a chunk of units per round of generator calls. A finished unit (its questions
   cleaned, answered and, with the judge on, scored) is appended to ``sdg_checkpoint.jsonl`` and fsynced.
   A unit with any failed request is not written, so the next run retries it; a reply that arrives but is
   unusable (malformed JSON, chatter, "the passage") is counted and the unit is done. An interrupted run
   picks up exactly the units it has not written: never twice, never lost.
   The checkpoint is ``sdg.checkpoint``.
4. Filter all finished units in corpus order (``sdg.filters``; cheap, model-free except the embedding
   model, so they are re-run every time and can be retuned without regenerating): judge threshold,
   near-duplicate removal (cosine above ``dedup_threshold``, keep first), round-trip consistency (a
   positive must rank in the top ``roundtrip_top_k`` of the whole corpus under ``embed_model``).
5. Write ``pairs.jsonl``, ``sdg_dropped.jsonl`` (what each filter removed, for inspection) and
   ``sdg_report.json`` atomically (``embedforge.atomic``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import random
import time
from collections import Counter
from pathlib import Path
from typing import Any

from embedforge.atomic import write_text_atomic
from embedforge.config import ConfigError, SdgConfig
from embedforge.data.corpus import CorpusResult, Passage, load_corpus
from embedforge.data.records import DataFormatError
from embedforge.errors import EmbedforgeError
from embedforge.layout import SDG_PASSAGES_FILE, SDG_REPORT_FILE
from embedforge.models.registry import DEFAULT_GENERATOR
from embedforge.sdg import prompts as P
from embedforge.sdg.checkpoint import Checkpoint
from embedforge.sdg.clean import clean_question, extractive_answer, parse_json_reply, parse_scores
from embedforge.sdg.filters import finish, jsonl
from embedforge.sdg.generators import (
    GenRequest,
    GenResult,
    LocalGenerator,
    OpenAIGenerator,
)

logger = logging.getLogger(__name__)

# Stop the run (finished units stay saved) after this many requests in a row failed: the endpoint is down.
ABORT_AFTER_FAILED_REQUESTS = 12


class SdgError(EmbedforgeError, RuntimeError):
    """The run cannot go on (e.g. the endpoint stopped answering); finished units are saved for a resume."""


# ------------------------------------------------------------------------------------------- settings


@dataclasses.dataclass(frozen=True)
class Resolved:
    """Backend defaults filled in."""

    model: str
    temperature: float
    max_new_tokens: int
    judge: bool


def resolve(config: SdgConfig) -> Resolved:
    local = config.backend == "local"
    if config.backend not in ("local", "openai"):
        raise ConfigError(f"backend must be local or openai, got {config.backend!r}")
    if not local and not config.model:
        raise ConfigError("the openai backend needs model=<served model name>")
    if config.questions_per_passage < 0:
        raise ConfigError("questions_per_passage must be >= 0 (0: no questions, the passages only)")
    if not 0.0 <= config.multi_hop_share <= 1.0:
        raise ConfigError("multi_hop_share must be between 0 and 1")
    return Resolved(
        model=config.model or DEFAULT_GENERATOR,
        temperature=(0.0 if local else 0.7) if config.temperature is None else config.temperature,
        max_new_tokens=config.max_new_tokens or (48 if local else 1024),
        judge=(not local) if config.judge is None else config.judge,
    )


def generation_signature(config: SdgConfig, resolved: Resolved) -> dict[str, Any]:
    """Settings that change what a unit's generation produces: a checkpoint is only resumed if they match."""
    return {
        "prompt_version": P.PROMPT_VERSION,
        "backend": config.backend,
        "model": resolved.model,
        "questions_per_passage": config.questions_per_passage,
        "multi_hop_share": config.multi_hop_share,
        "question_style": config.question_style,
        "seed": config.seed,
        "temperature": resolved.temperature,
        "max_new_tokens": resolved.max_new_tokens,
        "judge": resolved.judge,
        "max_prompt_chars": config.max_prompt_chars,
        "sentences_per_chunk": config.sentences_per_chunk,
        "max_passage_tokens": config.max_passage_tokens,
        "min_words": config.min_words,
    }


def make_generator(config: SdgConfig, resolved: Resolved | None = None):
    """The generator a config asks for (loads the local model, or opens the HTTP client)."""
    resolved = resolved or resolve(config)
    if config.backend == "openai":
        return OpenAIGenerator(
            config.base_url,
            config.model,
            api_key=os.environ.get(config.api_key_env) or None,
            concurrency=config.concurrency,
            timeout=config.timeout,
            max_retries=config.max_retries,
            temperature=resolved.temperature,
            seed=config.seed,
        )
    return LocalGenerator(
        resolved.model,
        threads=config.threads,
        batch_size=config.batch_size,
        dtype=config.dtype,
        temperature=resolved.temperature,
        seed=config.seed,
    )


# ------------------------------------------------------------------------------------------- planning


def sample_documents(corpus: CorpusResult, max_documents: int, seed: int) -> CorpusResult:
    """Keep a seeded sample of ``max_documents`` documents (and their passages); 0 keeps all."""
    if not max_documents or max_documents >= len(corpus.documents):
        return corpus
    chosen = set(random.Random(seed).sample(sorted(d.doc_id for d in corpus.documents), max_documents))
    logger.info("using %d of %d documents (max_documents)", max_documents, len(corpus.documents))
    return dataclasses.replace(
        corpus,
        documents=[d for d in corpus.documents if d.doc_id in chosen],
        passages=[p for p in corpus.passages if p.doc_id in chosen],
    )


def _shuffled(ids: list[str], seed: int) -> list[str]:
    shuffled = ids[:]
    random.Random(seed).shuffle(shuffled)
    return shuffled


def _spread_over_documents(by_doc: dict[str, list[str]], seed: int) -> list[str]:
    """Round robin over documents in a seeded order, each document's passages seeded too.

    Every document gets a passage before any gets a second: a uniform sample over passages spends
    the budget on the longest pages (one 200-section reference page outweighs 200 one-answer pages).
    """
    rng = random.Random(seed)
    docs = sorted(by_doc)
    rng.shuffle(docs)
    queues = [_shuffled(by_doc[d], rng.randrange(2**32)) for d in docs]
    return [q[i] for i in range(max(map(len, queues))) for q in queues if i < len(q)]


def plan_units(passages: list[Passage], config: SdgConfig) -> list[P.UnitPlan]:
    """Plans for the selected passages, in corpus order.

    ``max_passages`` takes the first N of a seeded order, so a larger N later is a superset.
    """
    by_doc: dict[str, list[str]] = {}
    for p in passages:
        by_doc.setdefault(p.doc_id, []).append(p.passage_id)
    selected = [p.passage_id for p in passages]
    if config.max_passages and config.max_passages < len(selected):
        order = (
            _spread_over_documents(by_doc, config.seed) if config.spread else _shuffled(selected, config.seed)
        )
        chosen = set(order[: config.max_passages])
        selected = [pid for pid in selected if pid in chosen]
    doc_of = {p.passage_id: p.doc_id for p in passages}
    plans = []
    for pid in selected:
        siblings = by_doc[doc_of[pid]]
        i = siblings.index(pid)
        # nearest first, the following passage before the preceding one (it usually continues the topic)
        neighbours = [
            siblings[j] for d in range(1, len(siblings)) for j in (i + d, i - d) if 0 <= j < len(siblings)
        ]
        plans.append(
            P.plan_unit(
                pid,
                neighbours,
                config.questions_per_passage,
                config.multi_hop_share,
                config.seed,
                config.question_style,
            )
        )
    return plans


# ------------------------------------------------------------------------------------------- generation


def _question_id(unit: str, index: int, question: str) -> str:
    return "q" + hashlib.sha1(f"{unit}|{index}|{question}".encode()).hexdigest()[:15]


class _UnitWork:
    """Requests of one unit and how to turn their replies into pairs."""

    def __init__(self, plan: P.UnitPlan, passages: dict[str, Passage], config: SdgConfig, resolved: Resolved):
        self.plan = plan
        self.passages = passages
        self.anchor = passages[plan.passage_id]
        self.config = config
        self.resolved = resolved
        self.json_mode = config.backend == "openai"
        self.requests: list[GenRequest] = []
        self.meta: list[tuple[list[P.QuestionSpec], tuple[str, ...]]] = []  # specs, positives per request
        if self.json_mode:
            if plan.single:
                self._add_json(list(plan.single), (plan.passage_id,))
            if plan.multi:
                self._add_json(list(plan.multi), plan.group)
        else:
            if plan.single:
                self._add_plain(list(plan.single), (plan.passage_id,))
            if plan.multi:
                self._add_plain(list(plan.multi), plan.group)

    def _texts(self, ids: tuple[str, ...]) -> list[str]:
        return [self.passages[i].text for i in ids]

    def _add_json(self, specs: list[P.QuestionSpec], ids: tuple[str, ...]) -> None:
        messages = P.json_messages(
            specs, self._texts(ids), self.anchor.title, self.anchor.section, self.config.max_prompt_chars
        )
        self.requests.append(GenRequest(messages, max_new_tokens=self.resolved.max_new_tokens))
        self.meta.append((specs, ids))

    def _add_plain(self, specs: list[P.QuestionSpec], ids: tuple[str, ...]) -> None:
        messages, prefix, follow_ups = P.plain_messages(
            specs, self._texts(ids), self.anchor.title, self.config.max_prompt_chars
        )
        self.requests.append(
            GenRequest(
                messages,
                prefix=prefix,
                follow_ups=follow_ups,
                max_new_tokens=self.resolved.max_new_tokens,
                stop_at_question=True,
            )
        )
        self.meta.append((specs, ids))

    def parse(self, results: list[GenResult], generator_name: str) -> dict:
        """The unit's record: cleaned pairs, and every rejected reply with its reason."""
        pairs: list[dict] = []
        rejected: list[dict] = []
        malformed = 0
        for result, (specs, ids) in zip(results, self.meta, strict=True):
            texts = self._texts(ids)
            joined = " ".join([self.anchor.title, *texts])  # the prompt shows the title too
            if self.json_mode:
                items = _json_items(parse_json_reply(result.text))
                if items is None:
                    malformed += 1
                    rejected.append({"reason": "malformed_output", "raw": (result.text or "")[:500]})
                    continue
                items = items[: len(specs)]
            else:
                parts = result.parts if result.parts is not None else [result.text]
                flags = result.parts_truncated or [result.truncated] * len(parts)
                items = [{"question": part, "truncated": cut} for part, cut in zip(parts, flags, strict=True)]
            for spec, item in zip(specs, items, strict=False):
                raw = item.get("question") if isinstance(item, dict) else None
                if not isinstance(raw, str):
                    malformed += 1
                    rejected.append({"reason": "malformed_output", "raw": json.dumps(item)[:500]})
                    continue
                truncated = False if self.json_mode else bool(item.get("truncated"))
                question, reason = clean_question(
                    raw, passage=joined, truncated=truncated, require_mark=not self.json_mode
                )
                if question is None:
                    rejected.append({"reason": reason, "raw": raw[:500]})
                    continue
                pair = self._pair(spec, item, question, ids, generator_name, len(pairs))
                pairs.append(pair)
        return {
            "unit": self.plan.passage_id,
            "pairs": pairs,
            "rejected": rejected,
            "malformed": malformed,
            "requests": len(self.requests),
        }

    def _pair(self, spec, item: dict, question: str, ids: tuple[str, ...], generator_name: str, index: int):
        query_type, complexity, positives = spec.query_type, spec.complexity, list(ids)
        answer = ""
        if self.json_mode:
            answer = str(item.get("answer") or "").strip()
            claimed = item.get("query_type")
            if spec.query_type != "multi_hop" and claimed in ("structural", "contextual", "factual"):
                query_type = claimed
            try:
                complexity = int(item.get("complexity", complexity))
            except (TypeError, ValueError):
                pass
            uses = item.get("uses")
            if isinstance(uses, list) and len(ids) > 1:
                picked = [ids[u - 1] for u in uses if isinstance(u, int) and 1 <= u <= len(ids)]
                positives = list(dict.fromkeys(picked)) or positives
            if spec.query_type == "multi_hop" and len(positives) < 2:
                query_type = "factual"  # the model says one segment suffices: not multi-hop after all
        if not answer:
            answer = extractive_answer(question, [self.passages[i].text for i in positives])
        if query_type == "multi_hop":
            complexity = max(complexity, 3)
        return {
            "question_id": _question_id(self.plan.passage_id, index, question),
            "question": question,
            "answer": answer,
            "positive_ids": positives,
            "doc_id": self.anchor.doc_id,
            "query_type": query_type,
            "complexity": min(5, max(2, complexity)),
            "hops": min(3, max(1, len(positives))),
            "scores": {},
            "generator": generator_name,
        }


def _json_items(data) -> list | None:
    if isinstance(data, dict):
        if isinstance(data.get("questions"), list):
            return data["questions"]
        if "question" in data:
            return [data]
        return None
    if isinstance(data, list) and data:
        return data
    return None


def _judge_requests(pairs: list[dict], passages: dict[str, Passage], config: SdgConfig, local: bool):
    requests = []
    for pair in pairs:
        texts = [passages[i].text for i in pair["positive_ids"]]
        messages = P.judge_messages(pair["question"], pair["answer"], texts, config.max_prompt_chars)
        requests.append(
            GenRequest(
                messages,
                prefix='{"relevance": ' if local else "",
                max_new_tokens=64 if local else 256,
                temperature=0.0,
            )
        )
    return requests


# ------------------------------------------------------------------------------------------- the stage


def run_sdg(
    config: SdgConfig, *, generator=None, encoder=None, progress: bool = True, make=None
) -> dict[str, Any]:
    """Run the sdg stage; returns the report also written to ``OUT/sdg_report.json``.

    Args:
        config: the stage config.
        generator: use this generator instead of building one from the config (anything with
            ``generate(list[GenRequest]) -> list[GenResult]`` and a ``name``).
        encoder: a loaded ``BiEncoder`` to use instead of loading ``config.embed_model``.
        make: builds the generator instead of ``make_generator`` (e.g. spread over Ray); closed after generation.
        progress: show a progress bar.

    Raises:
        SdgError: the generator failed many requests in a row; finished units are saved, run again to resume.
        GeneratorError: the endpoint rejected the credentials, URL or model.
    """
    resolved = resolve(config)
    if not config.corpus:
        raise ConfigError("sdg needs a corpus folder: --corpus DIR or corpus=DIR")
    started = time.perf_counter()
    out = Path(config.out)
    corpus = _passages_for(config, out)
    passages = {p.passage_id: p for p in corpus.passages}
    # 0 questions: the passages only, for prep's section-heading pairs; no generator is loaded
    plans = plan_units(corpus.passages, config) if config.questions_per_passage else []
    checkpoint = Checkpoint(out, generation_signature(config, resolved), resume=config.resume)
    pending = [plan for plan in plans if plan.passage_id not in checkpoint.records]
    resumed = len(plans) - len(pending)
    if resumed:
        logger.info("resuming: %d of %d passages already done", resumed, len(plans))

    run_stats = Counter()
    generation_seconds = 0.0
    owned = generator is None
    name = None
    try:
        if pending:
            generator = generator or (make or make_generator)(config, resolved)
        name = _generator_name(generator, config, resolved) if plans else "none (questions_per_passage 0)"
        if pending:
            generation_seconds = _generate(
                pending, passages, config, resolved, generator, name, checkpoint, run_stats, progress
            )
    finally:
        if owned and generator is not None:
            generator.close()

    report = finish(config, resolved, corpus, plans, checkpoint, encoder, name, progress)
    retries = getattr(generator, "retries", 0) if pending else 0
    report["this_run"] = _this_run(run_stats, resumed, retries, generation_seconds, started)
    if run_stats["units_failed"]:
        report["note"] = (
            f"{run_stats['units_failed']} passage(s) had failed requests and were not saved; "
            "run the same command again to retry them"
        )
    write_text_atomic(out / SDG_REPORT_FILE, json.dumps(report, indent=2) + "\n")
    return report


def _generator_name(generator, config: SdgConfig, resolved: Resolved) -> str:
    return getattr(generator, "name", None) or f"{config.backend}:{resolved.model}"


def _passages_for(config: SdgConfig, out: Path) -> CorpusResult:
    """The corpus chunked and sampled as configured; its passages are written to OUT for prep."""
    corpus = load_corpus(
        config.corpus,
        sentences_per_chunk=config.sentences_per_chunk,
        max_tokens=config.max_passage_tokens,
        min_words=config.min_words,
    )
    if not corpus.passages:
        raise DataFormatError(config.corpus, "no passages (no readable .txt/.md/.rst/.html documents)")
    corpus = sample_documents(corpus, config.max_documents, config.seed)
    out.mkdir(parents=True, exist_ok=True)
    fields = ("passage_id", "doc_id", "text", "title", "section")
    write_text_atomic(
        out / SDG_PASSAGES_FILE, jsonl({f: getattr(p, f) for f in fields} for p in corpus.passages)
    )
    return corpus


def _this_run(stats: Counter, resumed: int, retries: int, generation_seconds: float, started: float) -> dict:
    """The report's account of this invocation (a resumed run reports only what it did itself)."""
    return {
        "units_resumed": resumed,
        "units_generated": stats["units_done"],
        "units_failed": stats["units_failed"],
        "requests": stats["requests"],
        "failed_requests": stats["failed_requests"],
        "retries": retries,
        "questions": stats["questions"],
        "generation_seconds": round(generation_seconds, 2),
        "questions_per_second": round(stats["questions"] / generation_seconds, 3)
        if generation_seconds
        else None,
        "seconds": round(time.perf_counter() - started, 2),
    }


def _generate(pending, passages, config, resolved, generator, name, checkpoint, stats, progress) -> float:
    """Generate the pending units chunk by chunk; returns the seconds spent generating."""
    from tqdm.auto import tqdm

    local = config.backend == "local"
    # a generator spread over workers (``pipeline.ray_backend.RayGenerator``) gets a round's worth per worker
    workers = getattr(generator, "workers", 1)
    per_round = max(1, config.batch_size * 4 if local else config.concurrency * 2) * workers
    consecutive_failures = 0
    seconds = 0.0
    bar = tqdm(total=len(pending), desc="sdg", unit="passage", disable=not progress)
    try:
        index = 0
        while index < len(pending):
            works, index = _next_round(pending, index, per_round, passages, config, resolved)
            start = time.perf_counter()
            requests = [r for w in works for r in w.requests]
            results = generator.generate(requests)
            stats["requests"] += len(requests)
            records, consecutive_failures = _parse_round(works, results, name, stats, consecutive_failures)
            if resolved.judge:
                consecutive_failures = _judge(
                    records, passages, config, local, generator, stats, consecutive_failures
                )
            seconds += time.perf_counter() - start
            for record in records:
                if record is None:
                    stats["units_failed"] += 1
                    continue
                checkpoint.append(record)
                stats["units_done"] += 1
                stats["questions"] += len(record["pairs"])
            bar.update(len(works))
            bar.set_postfix(questions=stats["questions"], failed=stats["units_failed"])
            if consecutive_failures >= ABORT_AFTER_FAILED_REQUESTS:
                raise SdgError(
                    f"the generator failed {consecutive_failures} requests in a row (last: "
                    f"{_last_error(results)}); {len(checkpoint.records)} finished passages are saved in "
                    f"{checkpoint.path}: run again to resume"
                )
    finally:
        bar.close()
    return seconds


def _next_round(
    pending, index: int, per_round: int, passages, config, resolved
) -> tuple[list[_UnitWork], int]:
    """The units from ``index`` on whose requests fill one round (at least one unit); and the next index."""
    works: list[_UnitWork] = []
    n_requests = 0
    while index < len(pending) and (not works or n_requests < per_round):
        work = _UnitWork(pending[index], passages, config, resolved)
        works.append(work)
        n_requests += len(work.requests)
        index += 1
    return works, index


def _parse_round(works, results: list[GenResult], name, stats: Counter, consecutive_failures: int):
    """Each unit's record from its share of the results (None when a request failed: retried next run), and
    the running count of failed requests in a row."""
    records: list[dict | None] = []
    offset = 0
    for work in works:
        mine = results[offset : offset + len(work.requests)]
        offset += len(work.requests)
        failed = [r for r in mine if r.text is None]
        consecutive_failures = _count_failures(mine, consecutive_failures)
        stats["failed_requests"] += len(failed)
        if failed:
            logger.warning(
                "passage %s: %d request(s) failed (%s); it will be retried on the next run",
                work.plan.passage_id,
                len(failed),
                failed[0].error,
            )
            records.append(None)
        else:
            records.append(work.parse(mine, name))
    return records, consecutive_failures


def _count_failures(results: list[GenResult], running: int) -> int:
    for result in results:
        running = running + 1 if result.text is None else 0
    return running


def _last_error(results: list[GenResult]) -> str:
    return next((r.error for r in reversed(results) if r.error), "unknown")


def _judge(records, passages, config, local, generator, stats, consecutive_failures) -> int:
    """Attach judge scores to the pairs of the records; a record whose judging failed becomes None."""
    todo = [(i, pair) for i, record in enumerate(records) if record for pair in record["pairs"]]
    if not todo:
        return consecutive_failures
    requests = _judge_requests([pair for _, pair in todo], passages, config, local)
    results = generator.generate(requests)
    stats["requests"] += len(requests)
    failed_records = set()
    for (i, pair), result in zip(todo, results, strict=True):
        consecutive_failures = _count_failures([result], consecutive_failures)
        if result.text is None:
            stats["failed_requests"] += 1
            failed_records.add(i)
            continue
        scores = parse_scores(result.text)
        pair["scores"] = scores or {}
        if scores is None:
            records[i]["judge_unparsed"] = records[i].get("judge_unparsed", 0) + 1
    for i in failed_records:
        logger.warning(
            "passage %s: judge request failed; it will be retried on the next run", records[i]["unit"]
        )
        records[i] = None
    return consecutive_failures
