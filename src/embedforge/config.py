"""Typed configs, one per stage: the single source for recipe YAML keys, `key=value` overrides and docs.

A recipe is a YAML file with one section per stage (``finetune:``, ``eval:``, ...). A stage command reads
its own section, applies ``key=value`` overrides from the command line, and rejects any key it does not know,
naming the file and the key. Each field's ``help`` metadata is the documentation shown by ``--help`` and by
``embedforge config``. This module holds no logic about what the settings do.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import ConfigDict, TypeAdapter, ValidationError

from embedforge.errors import EmbedforgeError


class ConfigError(EmbedforgeError, ValueError):
    """A recipe or override that names an unknown key or a value of the wrong type."""


# the shipped recipes are package data, so a wheel install has them too (the checkout's recipes/ links here)
RECIPES_DIR = Path(__file__).parent / "recipes"
CPU_RECIPE = "minilm_cpu"
GPU_RECIPE = "llama_nemotron_embed_1b_v2"


def default_recipe(cuda: bool | None = None) -> Path:
    """The recipe sized for this machine: NVIDIA's GPU defaults with CUDA, the MiniLM CPU recipe without."""
    if cuda is None:
        import torch

        cuda = torch.cuda.is_available()
    return RECIPES_DIR / f"{GPU_RECIPE if cuda else CPU_RECIPE}.yaml"


def _recipe_file(recipe: str | Path) -> Path:
    """A recipe path, or the name of a shipped recipe (``minilm_cpu``)."""
    path = Path(recipe)
    shipped = RECIPES_DIR / f"{recipe}.yaml"
    if not path.exists() and path.suffix == "" and shipped.exists():
        return shipped
    return path


# top-level recipe keys besides the stage sections; ``ray: auto | HOST:PORT`` runs `embedforge run` on a cluster
RECIPE_KEYS = {"name", "description", "ray"}


def recipe_ray(recipe: str | Path | None) -> str | None:
    """The recipe's ``ray`` address (``auto`` or ``host:port``), None when it has none."""
    if not recipe:
        return None
    path = _recipe_file(recipe)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as err:
        raise ConfigError(f"{path}: cannot read recipe: {err}") from err
    value = data.get("ray") if isinstance(data, dict) else None
    if value is not None and (not isinstance(value, str) or not value.strip()):
        raise ConfigError(f"{path}: ray: must be auto or a cluster address host:port, got {value!r}")
    return value.strip() if value else None


def setting(default: Any, help: str, **kwargs) -> Any:
    """A dataclass field with its documentation attached."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help}, **kwargs)
    return field(default=default, metadata={"help": help}, **kwargs)


@dataclass
class FinetuneConfig:
    """Contrastive fine-tuning of a bi-encoder (NVIDIA defaults unless the comment says otherwise)."""

    base_model: str = setting("minilm", "base model: a known name (`embedforge models`) or a folder")
    bidirectional: bool | None = setting(
        None,
        "true: turn a plain Llama/Mistral decoder into a bidirectional encoder (llama_bidirec); None: keep the "
        "checkpoint's attention",
    )
    train_data: str = setting("", "training data: inline JSONL, corpus-ID JSON, BEIR folder or triplets")
    val_data: str | None = setting(
        None, "validation data (any training format); None: hold out validation_split"
    )
    output_dir: str = setting("runs/finetune", "where the model, checkpoints and logs are written")
    finetuning_type: Literal["all_weights", "lora_merged"] = setting(
        "all_weights", "all_weights (full fine-tune) or lora_merged (LoRA adapters merged into the weights)"
    )
    lora_rank: int = setting(16, "LoRA rank (NVIDIA: 16)")
    lora_alpha: int = setting(32, "LoRA alpha (NVIDIA: 32)")
    lora_dropout: float = setting(0.05, "LoRA dropout")
    pooling: Literal["avg", "cls", "last", "weighted_avg"] | None = setting(
        None, "pooling; None keeps the base model's (avg for a plain Hugging Face encoder)"
    )
    query_prompt: str | None = setting(
        None, "prefix for queries, e.g. 'query: '; None keeps the base model's"
    )
    passage_prompt: str | None = setting(
        None, "prefix for passages, e.g. 'passage: '; None keeps the base model's"
    )
    max_seq_length: int = setting(512, "token limit for queries and passages (NVIDIA: 512)")
    n_passages: int = setting(
        5, "passages per query in a training group: 1 positive + n_passages-1 negatives"
    )
    temperature: float = setting(0.02, "softmax temperature of the contrastive loss (NVIDIA: 0.02)")
    in_batch_negatives: bool = setting(
        True,
        "also score each query against the other queries' passages in the batch (NVIDIA: off; on measured "
        "better: docs/benchmarks.md)",
    )
    cached_loss: bool = setting(
        False,
        "GradCache loss: in-batch negatives over the full batch in micro-batch memory (implies in-batch)",
    )
    gather_across_devices: bool = setting(
        False,
        "multi-process runs: in-batch negatives from every process's batch, not only this one's "
        "(needs in_batch_negatives or cached_loss; NVIDIA: do_distributed_inbatch_negative, off)",
    )
    matryoshka_dims: list[int] = setting(
        [], "train these truncated dimensions too (MatryoshkaLoss); [] = off"
    )
    epochs: float = setting(3.0, "passes over the training data (NVIDIA: 3)")
    max_steps: int = setting(-1, "stop after this many optimizer steps; -1 = use epochs")
    learning_rate: float = setting(1e-5, "peak learning rate (NVIDIA: 1e-5)")
    warmup_steps: int = setting(5, "linear warm-up steps (NVIDIA: 5)")
    lr_scheduler: Literal["cosine", "linear", "constant_with_warmup"] = setting(
        "cosine", "decay after warm-up"
    )
    weight_decay: float = setting(0.01, "AdamW weight decay (NVIDIA: 0.01)")
    global_batch_size: int = setting(
        128,
        "queries per optimizer step (NVIDIA: 128); under 2000 examples the default shrinks (NVIDIA's small-data rule)",
    )
    micro_batch_size: int | None = setting(
        None, "queries per forward pass; the rest is gradient accumulation (or GradCache with cached_loss)"
    )
    validation_split: float = setting(
        0.1, "share of training queries held out for validation when no val_data"
    )
    eval_steps: int | None = setting(None, "validate and checkpoint every N steps; None = total_steps // 3")
    early_stopping_patience: int = setting(
        2, "stop after this many validations without a better nDCG@10; 0 = off"
    )
    max_val_corpus: int = setting(
        20000, "cap on passages in the validation retrieval corpus (positives kept)"
    )
    resume: bool = setting(False, "continue from the last checkpoint in output_dir")
    seed: int = setting(42, "random seed for splits, sampling and initialisation")
    bf16: bool | None = setting(
        None,
        "bfloat16 mixed precision; None = on where the hardware multiplies bf16 natively (a CUDA GPU with bf16, "
        "or a CPU with AMX: 1.9x faster steps here)",
    )
    attention_dropout: float | None = setting(
        0.0,
        "dropout on attention probabilities while fine-tuning; 0 lets PyTorch use its fused attention kernel "
        "(3.5x faster steps and half the memory on CPU); None keeps the model's own (MiniLM: 0.1)",
    )
    gradient_checkpointing: bool = setting(False, "trade compute for memory (large models)")
    dataloader_workers: int = setting(0, "DataLoader worker processes")
    log_every: int = setting(10, "log the loss every N steps")
    # teacher distillation (embedforge.finetune.distill)
    distill_teacher: str | None = setting(
        None,
        "teacher that scores every training group once before training (a known name such as mpnet, or a "
        "folder); its scores add a distillation term to the contrastive loss; None = off",
    )
    distill_loss: Literal["margin_mse", "kl", "inbatch_kl"] = setting(
        "margin_mse",
        "margin_mse: MSE of the (positive - negative_i) score margins (Hofstaetter et al. 2020); kl: KL "
        "divergence from the teacher's softmax over the group to the student's; inbatch_kl: the same over "
        "every passage in the batch",
    )
    distill_weight: float = setting(1.0, "weight of the distillation term next to the contrastive loss")
    distill_temperature: float = setting(
        0.05,
        "teacher and student cosines are divided by this before the distillation term (0.05: the scale "
        "MiniLM and MPNet were trained at)",
    )
    distill_screen_negatives: float | None = setting(
        None,
        "drop a mined negative the teacher scores above this x its positive's score (a likely false "
        "negative; e.g. 0.95) for the row's other negatives; needs n_passages >= 3 to have any; None = keep all",
    )
    distill_batch_size: int = setting(32, "teacher encoding batch size")
    freeze_layers: int = setting(
        0,
        "keep the token embeddings and the first N transformer layers at the base model's weights; the "
        "rest trains. Fewer weights to update: faster steps, less memory, less general-domain forgetting "
        "(the lower layers hold general language; Howard & Ruder 2018, Lee et al. 2019); 0 = train all",
    )
    anchor_weight: float = setting(
        0.0,
        "weight of a term that keeps general English text where the base model embedded it: anchor_weight x "
        "mean(1 - cos(tuned, base)) over anchor_batch anchor texts a step (Learning without Forgetting, Li & "
        "Hoiem 2016); 0 = off; embedforge.finetune.anchor",
    )
    anchor_texts: str = setting(
        "wikipedia",
        "the anchor texts: 'wikipedia' (prose paragraphs of the 206 articles in gensim's test data) or a "
        "file with one text per line",
    )
    anchor_count: int = setting(1024, "anchor texts kept (spread over the source), embedded once by the base")
    anchor_batch: int = setting(16, "anchor texts drawn each step")
    base_mix: float = setting(
        0.0,
        "after training, mix this share of the base model's weights back in: final = (1 - base_mix) x tuned + "
        "base_mix x base (WiSE-FT, Wortsman et al. 2022); keeps general-domain quality a narrow fine-tune "
        "erodes; 0 = the tuned weights as trained",
    )


@dataclass
class EvalConfig:
    """Retrieval evaluation of one or more models on a BEIR folder."""

    beir: str = setting("", "BEIR folder with corpus.jsonl, queries.jsonl and qrels/<split>.tsv")
    split: str = setting("test", "qrels split to evaluate")
    models: list[str] = setting(["minilm"], "models to compare; the first is the baseline")
    out: str = setting("runs/eval", "folder for eval_results.json, eval_report.md and eval_chart.png")
    ks: list[int] = setting([1, 5, 10, 100], "cut-offs for nDCG, MAP, Recall and Precision")
    dims: list[int] = setting([], "Matryoshka dimensions to evaluate as well; [] = full dimension only")
    batch_size: int = setting(64, "encoding batch size")
    query_prompt: str | None = setting(None, "override every model's query prefix; None = the model's own")
    passage_prompt: str | None = setting(
        None, "override every model's passage prefix; None = the model's own"
    )
    max_seq_length: int | None = setting(None, "override every model's token limit")
    general_check: bool = setting(
        True,
        "also score each model on a general-domain set (Lee news similarity, from gensim's wheel) to show "
        "that a domain fine-tune kept its general quality",
    )


@dataclass
class PrepConfig:
    """sdg output -> document-level train/test split, hard negatives, training data and a BEIR test set."""

    pairs: str = setting("", "question pairs JSONL written by sdg (question_id, question, positive_ids, ...)")
    passages: str = setting(
        "", "passages JSONL (passage_id, doc_id, text, title); '' = passages.jsonl next to pairs"
    )
    out: str = setting("runs/prep", "folder for train.json (+corpus/), train.jsonl, test_beir/, prep_report")
    model: str = setting("minilm", "model that mines the negatives: a known name or a folder")
    test_fraction: float = setting(
        0.2, "share of the questions held out for test, drawn as whole documents (NVIDIA: 0.2 of documents)"
    )
    seed: int = setting(42, "random seed of the document split (NVIDIA: 42)")
    num_negatives: int = setting(5, "hard negatives mined per query (NVIDIA: 5)")
    margin: float = setting(
        0.95, "false-negative margin: skip candidates scoring above it (NVIDIA: 0.95 with perc)"
    )
    margin_type: Literal["perc", "abs"] = setting(
        "perc", "perc: skip > margin x lowest positive score; abs: skip > lowest positive - margin"
    )
    max_positives: int = setting(5, "positives kept per query for training (NVIDIA: 5)")
    heading_pairs: bool = setting(
        False,
        "also train on section heading -> section body pairs of the train documents (no LLM). Never in the "
        "test set, except when sdg wrote no questions: then the test documents' headings are the test "
        "questions; embedforge.prep.heading_pairs",
    )
    heading_passages: int = setting(
        1,
        "heading pairs: how many passages of a section, from its first, are positives of its heading (more "
        "than 1 = a multi-positive query, up to max_positives; 3 scored 0.022 nDCG@10 lower on the Perl FAQ)",
    )
    heading_section: bool = setting(
        False,
        "heading pairs: the positive is the whole section (its passages joined, cut at training's "
        "max_seq_length) instead of its first passage; heading_passages is then ignored",
    )
    user_questions: str = setting(
        "",
        'JSONL of your own questions (search logs, tickets): {"question": ..., "document": path in the corpus '
        'folder, or a list of them}, optional "id". Split with the documents: those on test documents are '
        "the test set (instead of the generated questions), the rest train with their document's closest "
        "passage; embedforge.prep.run",
    )
    test_roundtrip_top_k: int | None = setting(
        None,
        "the test set also takes the test documents' questions that sdg's round-trip filter dropped: None = "
        "all of them, k = those whose positive the base model ranked within k, 0 = none. A test set of only "
        "the questions the base model already ranks in its top 10 is chosen by the base model and favours it",
    )
    test_corpus: Literal["all", "test_documents"] = setting(
        "all",
        "what the held-out questions search: all = every passage of the corpus, as your users search it "
        "(the training documents' passages are distractors, never answers); test_documents = only the "
        "test documents' passages (a handful of pages: easy, and it overstates a gain)",
    )
    candidate_pool: int = setting(
        100, "passages retrieved per query before the margin rule (widened if short)"
    )
    batch_size: int = setting(64, "encoding batch size")
    query_prompt: str | None = setting(None, "query prefix for mining; None = the model's own")
    passage_prompt: str | None = setting(None, "passage prefix for mining; None = the model's own")


@dataclass
class ServeConfig:
    """The OpenAI/NIM-compatible embedding server (``embedforge serve``)."""

    model: str = setting(
        "minilm", "model to serve: a checkpoint folder, a known name or an ONNX export folder"
    )
    host: str = setting("127.0.0.1", "interface to listen on (0.0.0.0 exposes the server to the network)")
    port: int = setting(8000, "TCP port")
    served_model_name: str | None = setting(
        None, "the name clients send as 'model' and get echoed; None = the known name or folder name"
    )
    precision: Literal["fp32", "int8", "fp16"] = setting(
        "fp32", "ONNX exports only: fp32 (model.onnx), int8 or fp16 (the export's reduced-precision copies)"
    )
    dimensions: list[int] = setting(
        [], "Matryoshka sizes clients may request (the full size always); [] = the model's, as export records"
    )
    max_length: int | None = setting(None, "token limit per input; None = the model's max_seq_length")
    max_batch_tokens: int = setting(
        1024, "padded tokens (longest x count) per model call; ~1,000 suits CPUs (cache), GPUs want more"
    )
    max_wait_ms: float = setting(5.0, "how long a queued input waits for others to join its batch")
    max_queue: int = setting(
        1024, "inputs admitted and not yet answered; beyond it requests get 429 with Retry-After"
    )
    max_inputs: int = setting(256, "inputs per request (more: 400)")
    max_input_chars: int = setting(50000, "characters per input (more: 400), checked before tokenizing")
    max_body_bytes: int = setting(8_000_000, "request body size (more: 413)")
    api_key: str | None = setting(
        None, "require 'Authorization: Bearer KEY' (else 401); None = env EMBEDFORGE_API_KEY, unset = open"
    )
    threads: int = setting(0, "CPU threads for the model; 0 = the runtime's default")
    graceful_timeout: float = setting(30.0, "seconds to finish in-flight requests on shutdown")
    access_log: bool = setting(False, "log every request (uvicorn access log)")


@dataclass
class VerifyConfig:
    """Check a served model against its offline evaluation (NVIDIA's deploy check)."""

    url: str = setting("http://127.0.0.1:8000", "base URL of the server (with or without /v1)")
    beir: str = setting("", "BEIR folder the reference was evaluated on")
    split: str = setting("test", "qrels split")
    reference: str = setting("", "eval_results.json written by `embedforge eval`")
    reference_model: str | None = setting(None, "which model entry of the reference; None = the last one")
    model: str | None = setting(None, "model name to request; None = the first one /v1/models lists")
    api_key: str | None = setting(None, "Bearer key for the server; None = env EMBEDFORGE_API_KEY")
    dimensions: int | None = setting(
        None, "request this Matryoshka size and compare with the reference's numbers for it"
    )
    ks: list[int] = setting([], "cut-offs to compare (nDCG@k, Recall@k); [] = the reference's")
    tolerance_small_k: float = setting(0.03, "max |served - reference| for k < 5 (NVIDIA: 0.03)")
    tolerance: float = setting(0.01, "max |served - reference| for k >= 5 (NVIDIA: 0.01)")
    batch_size: int = setting(32, "inputs per request")
    concurrency: int = setting(4, "requests in flight at once")
    encoding_format: Literal["float", "base64"] = setting("float", "how vectors are requested")
    timeout: float = setting(120.0, "seconds per request (and to wait for /v1/health/ready)")
    out: str | None = setting(None, "write the JSON report here")


@dataclass
class ExportConfig:
    """ONNX export with pooling, Matryoshka truncation and L2 norm in the graph, parity-checked (``embedforge export``)."""

    model: str = setting("minilm", "model to export: a known name or a folder")
    out: str = setting("runs/export", "export folder (built beside it, renamed into place after the checks)")
    opset: int = setting(17, "ONNX opset (NVIDIA: 17)")
    quantize: Literal["int8"] | None = setting(
        None,
        "int8: also write model_int8.onnx (int8, one scale per token row) with its quality vs fp32 reported",
    )
    fp16: bool = setting(False, "also write model_fp16.onnx (fp16 weights, float32 inputs/outputs)")
    beir: str | None = setting(
        None, "BEIR folder: report nDCG@10/Recall@10 of the int8/fp16 copy vs fp32 on it"
    )
    beir_split: str = setting("test", "qrels split of the BEIR folder")
    parity_tolerance: float = setting(
        1e-4, "max abs difference of fp32 ONNX vs PyTorch vectors; above it the export fails"
    )
    fp16_tolerance: float = setting(5e-3, "the same for the fp16 copy (relaxed: fp16 weights)")
    min_quantized_cosine: float = setting(
        0.95, "an int8/fp16 copy whose mean cosine to fp32 on the probe texts is lower fails the export"
    )
    matryoshka_dims: list[int] = setting(
        [], "supported sizes to record; [] = the model's own list, else powers of two >= 32 and the full size"
    )
    attn_implementation: str | None = setting(
        None,
        "attention used for tracing (e.g. sdpa); None = eager (the faster graph), retried with the model's own on failure",
    )
    model_name: str | None = setting(None, "name recorded for serving; None = the known name or folder name")
    speed: bool = setting(
        True, "time fp32 and the int8/fp16 copy on one batch of 32 mixed texts (texts/s in the report)"
    )


@dataclass
class SdgConfig:
    """Synthetic questions: an LLM writes questions that passages answer, then filters (``embedforge sdg``)."""

    corpus: str = setting("", "folder of documents (.txt, .md, .rst, .html), read and chunked by corpus.py")
    out: str = setting(
        "runs/sdg", "folder for passages.jsonl, pairs.jsonl, sdg_report.json and the resumable checkpoint"
    )
    backend: Literal["local", "openai"] = setting(
        "local", "local: a GGUF model on this CPU; openai: any OpenAI-compatible chat-completions endpoint"
    )
    model: str = setting(
        "",
        "generator; local: smollm2-135m | qwen2.5-coder-0.5b | a .gguf file | a model folder ('' = smollm2-135m); "
        "openai: the served model name (required)",
    )
    base_url: str = setting(
        "http://127.0.0.1:8000/v1",
        "openai backend: base URL ending in /v1 (NIM, vLLM, Ollama, llama.cpp, OpenAI)",
    )
    api_key_env: str = setting(
        "OPENAI_API_KEY", "openai backend: environment variable holding the API key (unset: no auth header)"
    )
    concurrency: int = setting(8, "openai backend: requests in flight at once")
    timeout: float = setting(120.0, "openai backend: seconds per request attempt")
    max_retries: int = setting(
        4, "openai backend: retries on timeouts, connection errors, 429 and 5xx (exponential backoff)"
    )
    questions_per_passage: int = setting(
        2,
        "questions asked per passage (recipe: 10 per document of ~5 five-sentence chunks); 0 = none: sdg only "
        "chunks the corpus and prep trains and tests on section headings (prep.heading_pairs)",
    )
    multi_hop_share: float = setting(
        0.3, "share of questions that combine 2-3 neighbouring passages of one document (recipe: 3 of 10)"
    )
    question_style: Literal["documentation", "user"] = setting(
        "documentation",
        "single-passage questions: documentation (factual, structural and contextual, the NVIDIA SDG mix) or "
        "user (short questions as people type them: how do I, why does, can I)",
    )
    max_passages: int = setting(
        0, "generate for at most this many passages, a seeded sample (0 = all); raising it later reuses work"
    )
    spread: bool = setting(
        False,
        "with max_passages: every document gets a passage before any gets a second (else uniform over passages)",
    )
    max_documents: int = setting(
        0, "use a seeded sample of this many documents as the corpus (0 = all): a quick run on a large folder"
    )
    batch_size: int = setting(16, "local backend: prompts per generate call (left-padded, length-sorted)")
    max_new_tokens: int | None = setting(
        None,
        "token cap per generation; None = 48 for local (one question), 1024 for openai (JSON with answers)",
    )
    temperature: float | None = setting(
        None, "sampling temperature; None = 0 (greedy) for local, 0.7 for openai"
    )
    seed: int = setting(42, "seed for the passage sample, question types, openings and sampling")
    threads: int = setting(
        0,
        "local backend: torch CPU threads; 0 = auto: all cores, or 1 while the load average exceeds the cores",
    )
    dtype: str = setting(
        "auto",
        "local backend: weights dtype, float32 or bfloat16; auto = bfloat16 where native (a CPU with AMX: "
        "2x faster here), else float32",
    )
    judge: bool | None = setting(
        None,
        "LLM judge scores each pair 1-10; None = on for openai, off for local (small models judge poorly)",
    )
    judge_threshold: float = setting(7.0, "with the judge on, keep pairs whose overall score is >= this")
    dedup_threshold: float = setting(
        0.9, "drop a question whose cosine with an earlier kept one is above this (keep first); 1.0 = off"
    )
    roundtrip_top_k: int = setting(
        10,
        "keep a question only if one of its positives ranks in the top k of the corpus under embed_model; 0 = off",
    )
    embed_model: str = setting("minilm", "embedding model for dedup and the round-trip filter")
    sentences_per_chunk: int = setting(5, "chunking: sentences per passage (recipe: 5)")
    max_passage_tokens: int = setting(256, "chunking: token cap per passage (whitespace estimate)")
    min_words: int = setting(8, "chunking: shorter passages are merged into the previous one or dropped")
    max_prompt_chars: int = setting(
        1500, "passage text is cut to this many characters in prompts (small models drift on long input)"
    )
    resume: bool = setting(
        True, "continue the run found in out (finished passages are kept); false deletes its checkpoint first"
    )


STAGE_CONFIGS: dict[str, type] = {
    "finetune": FinetuneConfig,
    "eval": EvalConfig,
    "prep": PrepConfig,
    "serve": ServeConfig,
    "verify": VerifyConfig,
    "export": ExportConfig,
    "sdg": SdgConfig,
}


@functools.cache
def _validator(cls: type) -> TypeAdapter:
    cls.__pydantic_config__ = ConfigDict(coerce_numbers_to_str=True)  # model=123 is the name "123"
    return TypeAdapter(cls)


def build_config(cls: type, values: dict[str, Any], source: str = "config") -> Any:
    """Make a ``cls`` from a mapping with pydantic's type checks and coercions ("3" -> 3, 1 -> 1.0), rejecting
    unknown keys and wrong values with the source, ``stage.key`` and the value named."""
    stage = next((name for name, c in STAGE_CONFIGS.items() if c is cls), cls.__name__)
    hints = typing.get_type_hints(cls)
    unknown = sorted(set(values) - set(hints))
    if unknown:
        raise ConfigError(
            f"{source}: unknown key(s) {unknown} for {cls.__name__}; known keys: {sorted(hints)}"
        )
    # a comma-separated string is a list (``dims=64,128`` on the command line)
    values = {
        k: [p for p in v.split(",") if p.strip()]
        if isinstance(v, str) and typing.get_origin(hints[k]) is list
        else v
        for k, v in values.items()
    }
    try:
        return _validator(cls).validate_python(values)
    except ValidationError as err:
        first = err.errors()[0]
        key, *index = first["loc"]
        where = f"{stage}.{key}" + "".join(f"[{i}]" for i in index if isinstance(i, int))
        raise ConfigError(f"{source}: {where}: {first['msg']}, got {first['input']!r}") from None


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """``["lr=1e-5", "dims=[64,128]"]`` -> dict; values are read as YAML scalars/lists."""
    values = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override '{pair}' is not of the form key=value")
        values[key.strip()] = yaml.safe_load(raw) if raw.strip() else ""
    return values


def load_config(
    stage: str, recipe: str | Path | None = None, overrides: list[str] | None = None, **given: Any
) -> Any:
    """The stage's config from (lowest to highest priority) defaults, a recipe section, ``given``, overrides.

    Overrides may be written ``key=value`` or ``stage.key=value``; the latter are ignored by other stages.
    """
    cls = STAGE_CONFIGS[stage]
    values: dict[str, Any] = {}
    source = "command line"
    if recipe:
        recipe = _recipe_file(recipe)
        source = str(recipe)
        try:
            data = yaml.safe_load(recipe.read_text()) or {}
        except (OSError, yaml.YAMLError) as err:
            shipped = ", ".join(sorted(p.stem for p in RECIPES_DIR.glob("*.yaml")))
            raise ConfigError(f"{recipe}: cannot read recipe: {err} (shipped recipes: {shipped})") from err
        if not isinstance(data, dict):
            raise ConfigError(f"{recipe}: a recipe must be a mapping of stage sections")
        unknown_sections = sorted(set(data) - set(STAGE_CONFIGS) - RECIPE_KEYS)
        if unknown_sections:
            raise ConfigError(
                f"{recipe}: unknown section(s) {unknown_sections}; known: {sorted(STAGE_CONFIGS)}"
            )
        section = data.get(stage) or {}
        if not isinstance(section, dict):
            raise ConfigError(f"{recipe}: section '{stage}' must be a mapping")
        values.update(section)
    values.update({k: v for k, v in given.items() if v is not None})
    for key, value in parse_overrides(overrides or []).items():
        prefix, dot, rest = key.partition(".")
        if dot and prefix in STAGE_CONFIGS:
            if prefix == stage:
                values[rest] = value
        else:
            values[key] = value
    return build_config(cls, values, source)


def config_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config)


def config_hash(config: Any) -> str:
    """A short stable hash of a config, recorded with every artifact a stage writes."""
    text = json.dumps(config_dict(config), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def describe(cls: type) -> list[tuple[str, str, str]]:
    """(key, default, help) rows for docs and --help."""
    rows = []
    for f in dataclasses.fields(cls):
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        rows.append((f.name, json.dumps(default), f.metadata.get("help", "")))
    return rows
