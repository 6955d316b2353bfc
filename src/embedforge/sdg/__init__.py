"""Synthetic data generation: an LLM writes standalone questions that passages answer (the ``sdg`` stage).

``run_sdg(config) -> report`` reads a corpus folder and writes, in ``config.out``:

* ``passages.jsonl``: every passage, ``{"passage_id", "doc_id", "text", "title"}``;
* ``pairs.jsonl``: the kept questions, ``{"question_id", "question", "answer", "positive_ids", "doc_id",
  "query_type", "complexity", "hops", "scores", "roundtrip_rank", "generator"}``;
* ``sdg_dropped.jsonl``: pairs removed by the judge, dedup or round-trip filters, with ``dropped_by``;
* ``sdg_report.json``: counts per filter, query types, round-trip rank histogram, speed;
* ``sdg_checkpoint.jsonl`` (+ ``.meta.json``): finished passages, so an interrupted run resumes.

Modules: ``prompts`` (plans and prompt text), ``generators`` (OpenAI-compatible HTTP and local GGUF),
``clean`` (output cleaning, JSON and score parsing), ``pipeline`` (the stage and its filters).

Not here: splitting into train/test and mining negatives (``prep``), training (``finetune``).
"""

from embedforge.sdg.generators import (
    GeneratorError,
    GenRequest,
    GenResult,
    LocalGenerator,
    OpenAIGenerator,
    locate_local_model,
)
from embedforge.sdg.pipeline import SdgError, make_generator, run_sdg

__all__ = [
    "GenRequest",
    "GenResult",
    "GeneratorError",
    "LocalGenerator",
    "OpenAIGenerator",
    "SdgError",
    "locate_local_model",
    "make_generator",
    "run_sdg",
]
