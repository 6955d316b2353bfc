"""Typed configs, one per stage: the single source for recipe YAML keys, `key=value` overrides and docs.

A recipe is a YAML file with one section per stage (``finetune:``, ``eval:``, ...). A stage command reads
its own section, applies ``key=value`` overrides from the command line, and rejects any key it does not know,
naming the file and the key. Each field's ``help`` metadata is the documentation shown by ``--help`` and by
``embedforge config``. This module holds no logic about what the settings do.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml


class ConfigError(ValueError):
    """A recipe or override that names an unknown key or a value of the wrong type."""


def setting(default: Any, help: str, **kwargs) -> Any:
    """A dataclass field with its documentation attached."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help}, **kwargs)
    return field(default=default, metadata={"help": help}, **kwargs)


@dataclass
class FinetuneConfig:
    """Contrastive fine-tuning of a bi-encoder (NVIDIA defaults unless the comment says otherwise)."""

    base_model: str = setting("minilm", "base model: a known name (`embedforge models`) or a folder")
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
        False, "also score each query against the other queries' passages in the batch (NVIDIA: off)"
    )
    cached_loss: bool = setting(
        False,
        "GradCache loss: in-batch negatives over the full batch in micro-batch memory (implies in-batch)",
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
        "queries per optimizer step (NVIDIA: 128); under 2000 examples the default shrinks (REFERENCE §1)",
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
    bf16: bool = setting(False, "bfloat16 mixed precision (GPU)")
    gradient_checkpointing: bool = setting(False, "trade compute for memory (large models)")
    dataloader_workers: int = setting(0, "DataLoader worker processes")
    log_every: int = setting(10, "log the loss every N steps")


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


STAGE_CONFIGS: dict[str, type] = {"finetune": FinetuneConfig, "eval": EvalConfig}


def _coerce(value: Any, annotation: Any, where: str) -> Any:
    """Check ``value`` against a field's type annotation, converting the few safe cases (int -> float)."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, arg, where)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0] if errors else f"{where}: cannot be {value!r}")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{where}: must be one of {list(args)}, got {value!r}")
        return value
    if origin is list:
        if isinstance(value, str):
            value = [v for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: must be a list, got {value!r}")
        return [_coerce(v, args[0], f"{where}[{i}]") for i, v in enumerate(value)]
    if annotation is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if annotation is int and isinstance(value, str) and value.lstrip("-").isdigit():
        return int(value)
    if annotation is float and isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    if annotation is str and isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    if annotation in (int, float, str, bool) and (type(value) is not annotation):
        raise ConfigError(f"{where}: must be {annotation.__name__}, got {value!r}")
    return value


def build_config(cls: type, values: dict[str, Any], source: str = "config") -> Any:
    """Make a ``cls`` from a mapping, rejecting unknown keys and wrong types with the source named."""
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(
            f"{source}: unknown key(s) {unknown} for {cls.__name__}; known keys: {sorted(known)}"
        )
    kwargs = {k: _coerce(v, hints[k], f"{source}: key '{k}'") for k, v in values.items()}
    return cls(**kwargs)


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
        source = str(recipe)
        try:
            data = yaml.safe_load(Path(recipe).read_text()) or {}
        except (OSError, yaml.YAMLError) as err:
            raise ConfigError(f"{recipe}: cannot read recipe: {err}") from err
        if not isinstance(data, dict):
            raise ConfigError(f"{recipe}: a recipe must be a mapping of stage sections")
        unknown_sections = sorted(set(data) - set(STAGE_CONFIGS) - {"name", "description"})
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
