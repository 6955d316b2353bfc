"""The finetune stage: contrastive training of a bi-encoder on (query, positive, hard negatives) groups.

Built on sentence-transformers' trainer (checkpoints, resume, schedules, DDP come from it and from
transformers' Trainer). What this module adds is what those lack for the NVIDIA recipe:

* the group loss NVIDIA uses: each query scored only against its own 1 positive + N hard negatives,
  cross-entropy at temperature 0.02; in-batch negatives (sentence-transformers' MNRL) and GradCache
  (CachedMNRL) are options;
* training rows with exactly ``n_passages`` passages: multi-positive queries unrolled, short negative
  lists repeated cyclically (one warning), missing negatives filled with random passages (one warning);
* NVIDIA's small-data rule (Nemotron `embed` recipe) (batch shrinks under 2000 examples, validate every total//3 steps);
* validation by full-corpus retrieval nDCG@10 on held-out queries, keeping the best checkpoint and stopping
  early when it stops improving; the training loss on the held-out rows is logged beside it as ``val_loss``;
* LoRA merged into the weights before saving, so the output is a plain full model.
* optional teacher distillation (``distill_teacher``): a term beside the contrastive loss, see ``distill``.

It deliberately does not mine negatives (see ``mining``) or compute test metrics (see ``evaluate``).
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import shutil
import time
import warnings
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from datasets import Dataset
from sentence_transformers import SentenceTransformerTrainer, SentenceTransformerTrainingArguments
from sentence_transformers.base.sampler import BatchSamplers
from sentence_transformers.sentence_transformer.evaluation import InformationRetrievalEvaluator
from sentence_transformers.sentence_transformer.losses import (
    MatryoshkaLoss,
    MultipleNegativesRankingLoss,
)
from transformers import EarlyStoppingCallback, TrainerCallback

from embedforge.atomic import atomic_write, write_json_atomic
from embedforge.config import ConfigError, FinetuneConfig, config_dict, config_hash
from embedforge.data.formats import TrainingExample, passage_id, read_training_data
from embedforge.finetune import distill, train_memory
from embedforge.finetune.anchor import anchored_loss, load_texts
from embedforge.finetune.distill import DistilledLoss, TeacherScores
from embedforge.finetune.inbatch import ID_COLUMN, CachedInBatchNegativesLoss, InBatchNegativesLoss, id_rows
from embedforge.models.bi_encoder import PASSAGE, QUERY, BiEncoder
from embedforge.models.precision import bf16_is_native

logger = logging.getLogger(__name__)

MAX_POSITIVES_PER_QUERY = 5  # NVIDIA's recipe: at most 5 positives per query
SMALL_DATA_EXAMPLES = 2000
DEFAULT_GLOBAL_BATCH = 128
VAL_METRIC = "ndcg@10"


class GroupContrastiveLoss(MultipleNegativesRankingLoss):
    """NVIDIA's loss: softmax over each query's own group (positive first), no in-batch negatives.

    Reuses sentence-transformers' MNRL for embedding the columns (and so MatryoshkaLoss wrapping works);
    only the score matrix differs: (batch, 1 + negatives) instead of (batch, batch * (1 + negatives)).
    """

    def compute_loss_from_embeddings(
        self, embeddings: list[torch.Tensor], labels: torch.Tensor
    ) -> torch.Tensor:
        queries = torch.nn.functional.normalize(embeddings[0], dim=-1)
        group = torch.nn.functional.normalize(torch.stack(embeddings[1:], dim=1), dim=-1)  # (B, G, D)
        scores = torch.einsum("bd,bgd->bg", queries, group) * self.scale
        target = torch.zeros(scores.size(0), dtype=torch.long, device=scores.device)
        return torch.nn.functional.cross_entropy(scores, target)


@dataclass
class TrainingRows:
    columns: dict[str, list[str]]
    stats: dict[str, int]


def build_training_rows(examples: list[TrainingExample], n_passages: int, seed: int) -> TrainingRows:
    """One row per (query, positive) with exactly ``n_passages - 1`` negatives.

    Multi-positive queries are unrolled (at most 5 positives) and share their negatives. A row with too few
    negatives repeats them cyclically; a row with none gets random passages from other queries' positives.
    """
    rng = random.Random(seed)
    n_neg = n_passages - 1
    pool = sorted({p for ex in examples for p in ex.positives})
    columns: dict[str, list[str]] = {"anchor": [], "positive": []}
    columns.update({f"negative_{i + 1}": [] for i in range(n_neg)})
    stats = {
        "examples": len(examples),
        "rows": 0,
        "rows_short_of_negatives": 0,
        "rows_with_random_negatives": 0,
    }
    for ex in examples:
        negatives = [n for n in ex.negatives if n not in ex.positives]
        if n_neg and not negatives:
            own = set(ex.positives)
            candidates = [p for p in rng.sample(pool, min(len(pool), n_neg + len(own))) if p not in own]
            negatives = candidates[:n_neg]
            stats["rows_with_random_negatives"] += 1
            if not negatives:
                raise ValueError(
                    f"query '{ex.query[:60]}' has no negatives and no other passage exists to sample"
                )
        elif len(negatives) < n_neg:
            stats["rows_short_of_negatives"] += 1
        negatives = [negatives[i % len(negatives)] for i in range(n_neg)] if n_neg else []
        for positive in ex.positives[:MAX_POSITIVES_PER_QUERY]:
            columns["anchor"].append(ex.query)
            columns["positive"].append(positive)
            for i, negative in enumerate(negatives):
                columns[f"negative_{i + 1}"].append(negative)
            stats["rows"] += 1
    if stats["rows_short_of_negatives"]:
        warnings.warn(
            f"{stats['rows_short_of_negatives']} of {len(examples)} queries have fewer than {n_neg} negatives; "
            "their negatives are repeated cyclically",
            stacklevel=2,
        )
    if stats["rows_with_random_negatives"]:
        warnings.warn(
            f"{stats['rows_with_random_negatives']} of {len(examples)} queries have no negatives; random passages "
            "from other queries stand in (mine hard negatives with `embedforge prep` for better results)",
            stacklevel=2,
        )
    return TrainingRows(columns, stats)


def split_validation(
    examples: list[TrainingExample], share: float, seed: int
) -> tuple[list[TrainingExample], list[TrainingExample]]:
    """Hold out a share of distinct queries (never the same query text on both sides)."""
    if share <= 0 or len(examples) < 10:
        return examples, []
    queries = sorted({ex.query for ex in examples})
    random.Random(seed).shuffle(queries)
    held = set(queries[: max(1, int(len(queries) * share))])
    return [ex for ex in examples if ex.query not in held], [ex for ex in examples if ex.query in held]


def validation_evaluator(
    val: list[TrainingExample], train: list[TrainingExample], max_corpus: int, seed: int, batch_size: int
) -> InformationRetrievalEvaluator:
    """Full-corpus retrieval for held-out queries: every known passage competes, not only the query's group."""
    corpus: dict[str, str] = {}
    relevant: dict[str, set[str]] = {}
    queries: dict[str, str] = {}
    for i, ex in enumerate(val):
        qid = f"q{i}"
        queries[qid] = ex.query
        relevant[qid] = {passage_id(p) for p in ex.positives}
        corpus.update({passage_id(p): p for p in ex.positives})
    others = sorted({p for ex in val + train for p in ex.positives + ex.negatives} - set(corpus.values()))
    random.Random(seed).shuffle(others)
    corpus.update({passage_id(p): p for p in others[: max(0, max_corpus - len(corpus))]})
    return InformationRetrievalEvaluator(
        queries=queries,
        corpus=corpus,
        relevant_docs=relevant,
        name="val",
        ndcg_at_k=[10],
        mrr_at_k=[10],
        accuracy_at_k=[1, 10],
        precision_recall_at_k=[10],
        map_at_k=[10],
        query_prompt_name=QUERY,
        corpus_prompt_name=PASSAGE,
        batch_size=batch_size,
        write_csv=False,
    )


def validation_rows(val: list[TrainingExample], config: FinetuneConfig, with_ids: bool) -> Dataset | None:
    """The held-out queries as training rows: the trainer's ``eval_dataset``, whose loss under the training
    loss (eval mode, no gradient) it reports as ``eval_loss``. None when the rows cannot be built (a
    query without negatives and no other passage to stand in): the nDCG@10 validation still runs."""
    try:
        with warnings.catch_warnings():  # the training rows already warned about short negative lists
            warnings.simplefilter("ignore")
            columns = dict(build_training_rows(val, config.n_passages, config.seed).columns)
    except ValueError as err:
        logger.warning("no validation loss: %s", err)
        return None
    if with_ids:
        columns[ID_COLUMN] = id_rows(columns)
    return Dataset.from_dict(columns)


def make_loss(
    model,
    config: FinetuneConfig,
    micro_batch: int,
    teacher: TeacherScores | None = None,
    anchors: list[str] | None = None,
):
    scale = 1.0 / config.temperature
    # in-batch negatives from every process (DDP); a single process has nothing to gather
    gather = config.gather_across_devices and int(os.environ.get("WORLD_SIZE", "1")) > 1
    if config.cached_loss:
        loss = CachedInBatchNegativesLoss(
            model, scale=scale, mini_batch_size=micro_batch, gather_across_devices=gather
        )
    elif config.in_batch_negatives:  # MNRL + masking of same-passage false negatives (see inbatch)
        loss = InBatchNegativesLoss(model, scale=scale, gather_across_devices=gather)
    else:
        if config.gather_across_devices:
            warnings.warn(
                "gather_across_devices needs in_batch_negatives or cached_loss; ignored", stacklevel=2
            )
        loss = GroupContrastiveLoss(model, scale=scale)
    if teacher is not None:
        loss = DistilledLoss(
            model,
            loss,
            teacher,
            loss=config.distill_loss,
            weight=config.distill_weight,
            temperature=config.distill_temperature,
            components=not config.matryoshka_dims,
        )
    if config.matryoshka_dims:
        dims = sorted(set(config.matryoshka_dims) | {model.get_embedding_dimension()}, reverse=True)
        loss = MatryoshkaLoss(model, loss, matryoshka_dims=dims)
    if anchors:  # embedded now, by the model as loaded: a resumed run loads its checkpoint later
        loss = anchored_loss(model, loss, anchors, config)
    return loss


def plan_batches(config: FinetuneConfig, n_rows: int) -> dict[str, int]:
    """Global/micro batch, accumulation and step counts, applying the small-data rule."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    global_batch = config.global_batch_size
    if n_rows < SMALL_DATA_EXAMPLES and global_batch == DEFAULT_GLOBAL_BATCH:
        global_batch = max(16, min(64, n_rows // 8))
    global_batch = max(world, min(global_batch, n_rows))
    per_process = global_batch // world
    if config.cached_loss:
        micro, accumulation = per_process, 1
        mini = config.micro_batch_size or min(32, per_process)
    else:
        micro = min(config.micro_batch_size or per_process, per_process)
        if per_process % micro:
            raise ConfigError(
                f"finetune.global_batch_size {global_batch} is not a multiple of micro_batch_size {micro} x {world}"
            )
        accumulation = per_process // micro
        mini = micro
    steps_per_epoch = max(1, n_rows // global_batch)
    total = config.max_steps if config.max_steps > 0 else math.ceil(steps_per_epoch * config.epochs)
    return {
        "world_size": world,
        "global_batch_size": global_batch,
        "micro_batch_size": micro,
        "cache_mini_batch_size": mini,
        "gradient_accumulation_steps": accumulation,
        "steps_per_epoch": steps_per_epoch,
        "total_steps": total,
        "eval_steps": config.eval_steps or max(1, total // 3),
    }


class JsonlLogCallback(TrainerCallback):
    """Appends every trainer log record (loss, lr, validation metrics) to train_log.jsonl; the trainer's
    ``eval_loss`` is written as ``val_loss``."""

    def __init__(self, path: Path):
        self.path = path

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and logs:
            record = {"step": state.global_step, "epoch": state.epoch, **logs}
            if "eval_loss" in record:  # the training loss on the validation rows
                record["val_loss"] = record.pop("eval_loss")
            with self.path.open("a") as fh:
                fh.write(json.dumps(record) + "\n")


def _last_checkpoint(folder: Path) -> str | None:
    checkpoints = sorted(folder.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[-1]))
    return str(checkpoints[-1]) if checkpoints else None


def _add_lora(encoder: BiEncoder, config: FinetuneConfig) -> None:
    from peft import LoraConfig, get_peft_model

    backbone = encoder.model[0]
    lora = LoraConfig(
        r=config.lora_rank,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules="all-linear",
    )
    backbone.model = get_peft_model(backbone.model, lora)


def _merge_lora(encoder: BiEncoder) -> None:
    backbone = encoder.model[0]
    backbone.model = backbone.model.merge_and_unload()


def mix_with_base(encoder: BiEncoder, config: FinetuneConfig) -> int:
    """Move the trained weights ``base_mix`` of the way back to the base model's (WiSE-FT); returns how
    many tensors were mixed. The base is loaded again after training, so training holds one copy only."""
    base = BiEncoder.load(config.base_model, bidirectional=config.bidirectional, device="cpu")
    base_state = base.model.state_dict()
    mixed = 0
    with torch.no_grad():
        for name, tensor in encoder.model.state_dict().items():
            source = base_state.get(name)
            if source is None or source.shape != tensor.shape or not tensor.is_floating_point():
                continue
            tensor.mul_(1.0 - config.base_mix).add_(source.to(tensor), alpha=config.base_mix)
            mixed += 1
    if not mixed:
        raise ConfigError(f"finetune.base_mix: no weights of {config.base_model} match the tuned model")
    logger.info("mixed %d weight tensors with %.2f of the base model (WiSE-FT)", mixed, config.base_mix)
    return mixed


def resolve_bf16(requested: bool | None) -> bool:
    """``None`` -> bf16 where it is native (``precision.bf16_is_native``)."""
    return bf16_is_native() if requested is None else requested


def set_attention_dropout(backbone, p: float) -> int:
    """Set the attention-probability dropout of every attention module to ``p``; returns how many changed.

    Covers both layouts in transformers: an ``nn.Dropout`` named ``dropout`` inside an attention module
    (BERT family) and a float ``attention_dropout`` (Llama, Mistral, Qwen). The saved config is untouched:
    this is a training choice, not a property of the model.
    """
    changed = 0
    for module in backbone.modules():
        if "Attention" not in type(module).__name__:
            continue
        if isinstance(getattr(module, "dropout", None), torch.nn.Dropout):
            module.dropout.p = p
            changed += 1
        elif isinstance(getattr(module, "attention_dropout", None), float):
            module.attention_dropout = p
            changed += 1
    return changed


def freeze_bottom(backbone, n_layers: int) -> int:
    """Stop gradients to the embeddings and the first ``n_layers`` transformer layers; returns how many
    parameters were frozen. Covers the BERT family (``embeddings``, ``encoder.layer``) and decoders
    (``embed_tokens``, ``layers``); a PEFT-wrapped backbone is unwrapped first, so the adapters inside
    the frozen layers freeze with them."""
    base = backbone.get_base_model() if hasattr(backbone, "get_base_model") else backbone
    embeddings = base.embeddings if hasattr(base, "embeddings") else base.get_input_embeddings()
    encoder = getattr(base, "encoder", None)
    layers = encoder.layer if hasattr(encoder, "layer") else getattr(base, "layers", None)
    if layers is None or not 0 <= n_layers <= len(layers):
        available = "no layer stack found" if layers is None else f"the model has {len(layers)} layers"
        raise ConfigError(f"finetune.freeze_layers={n_layers}: {available}")
    frozen = [*embeddings.parameters(), *(p for layer in layers[:n_layers] for p in layer.parameters())]
    for parameter in frozen:
        parameter.requires_grad_(False)
    return sum(p.numel() for p in frozen)


def _check_config(config: FinetuneConfig) -> None:
    """Refuse settings that cannot train, before anything is loaded or a previous run is touched."""
    if config.n_passages < 1:
        raise ConfigError(f"finetune.n_passages must be at least 1, got {config.n_passages}")
    if config.anchor_weight < 0 or config.anchor_batch < 1 or config.anchor_count < 1:
        raise ConfigError(
            "finetune.anchor_weight must be >= 0 and anchor_batch, anchor_count >= 1, got "
            f"{config.anchor_weight}, {config.anchor_batch}, {config.anchor_count}"
        )
    if not 0.0 <= config.base_mix < 1.0:
        raise ConfigError(f"finetune.base_mix must be in [0, 1), got {config.base_mix}")
    if config.n_passages == 1 and not (config.in_batch_negatives or config.cached_loss):
        raise ConfigError(
            "finetune.n_passages=1 has no negatives: enable in_batch_negatives or give negatives"
        )


def _training_examples(config: FinetuneConfig) -> tuple[list[TrainingExample], list[TrainingExample]]:
    """(train, validation) examples: ``val_data`` when given, else a ``validation_split`` share held out."""
    examples = read_training_data(config.train_data)
    if config.val_data:
        return examples, read_training_data(config.val_data)
    return split_validation(examples, config.validation_split, config.seed)


def _load_for_training(config: FinetuneConfig) -> BiEncoder:
    """The base model as training wants it: attention dropout set, LoRA adapters added, bottom layers frozen."""
    encoder = BiEncoder.load(
        config.base_model,
        pooling=config.pooling,
        query_prompt=config.query_prompt,
        passage_prompt=config.passage_prompt,
        max_seq_length=config.max_seq_length,
        bidirectional=config.bidirectional,
    )
    model = encoder.model
    if config.attention_dropout is not None:
        set_attention_dropout(model[0].auto_model, config.attention_dropout)
    if config.finetuning_type == "lora_merged":
        _add_lora(encoder, config)
    if config.freeze_layers:
        frozen = freeze_bottom(model[0].auto_model, config.freeze_layers)
        if config.gradient_checkpointing:  # a checkpointed layer whose input needs no grad would get none
            model[0].auto_model.enable_input_require_grads()
        logger.info("froze the embeddings and %d layers: %d parameters", config.freeze_layers, frozen)
    return encoder


def _fit_in_memory(model, config: FinetuneConfig, plan: dict, n_rows: int) -> tuple[FinetuneConfig, dict]:
    """On a CPU the OOM killer ends a run that does not fit without a word: check before it starts. A step
    too large for the memory available, with the batch settings left to the recipe, runs as GradCache
    mini-batches (``cached_loss``: the same loss, negatives and false-negative masking, less memory, about
    a third more compute); otherwise it is refused with the settings to change."""
    shape = model[0].auto_model.config
    hidden, layers = getattr(shape, "hidden_size", None), getattr(shape, "num_hidden_layers", None)
    if torch.cuda.is_available() or not (hidden and layers):
        return config, plan
    step = {
        "hidden": hidden,
        "layers": layers,
        "parameters": sum(p.numel() for p in model.parameters()),
        "forward_batch": plan["cache_mini_batch_size"],
        "n_passages": config.n_passages,
        "max_seq_length": model.max_seq_length,  # the loaded model's, set from the config
        "extra_texts": config.anchor_batch if config.anchor_weight else 0,
    }
    try:
        train_memory.check_fits(
            model_name=str(config.base_model), available=train_memory.available_bytes(), **step
        )
    except train_memory.StepTooLarge as short:
        chosen = config.cached_loss or config.micro_batch_size or config.distill_teacher
        if chosen or short.fits < 1:
            raise
        logger.warning(
            "%s: running it as GradCache mini-batches (cached_loss=true micro_batch_size=%d)",
            short.shortfall,
            short.fits,
        )
        config = replace(config, cached_loss=True, micro_batch_size=short.fits)
        plan = {**plan_batches(config, n_rows), "memory_switch": short.shortfall}
    return config, plan


def _column_prompts(encoder: BiEncoder, columns: dict) -> dict[str, str]:
    """The query prompt for the anchor column, the passage prompt for the others; unset prompts left out."""
    prompts = {"anchor": encoder.prompts["query"]}
    prompts.update({col: encoder.prompts["passage"] for col in columns if col != "anchor"})
    return {k: v for k, v in prompts.items() if v}


def _training_arguments(
    config: FinetuneConfig,
    plan: dict[str, int],
    checkpoints: Path,
    bf16: bool,
    prompts: dict,
    validating: bool,
) -> SentenceTransformerTrainingArguments:
    """The trainer's settings from the config and the batch plan; with validation, the best checkpoint wins."""
    use_in_batch = config.in_batch_negatives or config.cached_loss
    return SentenceTransformerTrainingArguments(
        output_dir=str(checkpoints),
        num_train_epochs=config.epochs,
        max_steps=config.max_steps,
        per_device_train_batch_size=plan["micro_batch_size"],
        per_device_eval_batch_size=plan["micro_batch_size"],
        gradient_accumulation_steps=plan["gradient_accumulation_steps"],
        learning_rate=config.learning_rate,
        warmup_steps=config.warmup_steps,
        lr_scheduler_type=config.lr_scheduler,
        weight_decay=config.weight_decay,
        seed=config.seed,
        data_seed=config.seed,
        bf16=bf16,
        activation_checkpointing=config.gradient_checkpointing,
        dataloader_num_workers=config.dataloader_workers,
        # gathered in-batch negatives need equal batch shapes on every process
        dataloader_drop_last=config.gather_across_devices and plan["world_size"] > 1,
        batch_sampler=BatchSamplers.NO_DUPLICATES if use_in_batch else BatchSamplers.BATCH_SAMPLER,
        prompts=prompts or None,
        eval_strategy="steps" if validating else "no",
        eval_steps=plan["eval_steps"],
        save_strategy="steps",
        save_steps=plan["eval_steps"],
        save_total_limit=2,
        load_best_model_at_end=validating,
        metric_for_best_model=f"eval_val_cosine_{VAL_METRIC}" if validating else None,
        greater_is_better=True,
        logging_steps=config.log_every,
        report_to="none",
        use_cpu=not torch.cuda.is_available(),
        ddp_find_unused_parameters=False,
    )


def _train_dataset(rows: TrainingRows, config: FinetuneConfig, teacher: TeacherScores | None) -> Dataset:
    columns = dict(rows.columns)
    if config.in_batch_negatives or config.cached_loss or teacher is not None:
        # passage/query keys: false-negative masking and teacher-score lookup
        columns[ID_COLUMN] = id_rows(rows.columns)
    return Dataset.from_dict(columns)


def _prepare_run_folder(
    config: FinetuneConfig, rows: TrainingRows, out: Path
) -> tuple[TeacherScores | None, dict | None]:
    """The teacher's scores first (cached in the run folder, kept by a restart), then, unless resuming, the
    previous run's checkpoints and log go. Returns the teacher and its distillation report (None without)."""
    out.mkdir(parents=True, exist_ok=True)
    teacher, distillation = None, None
    if config.distill_teacher:  # scored once, before training
        rows.columns, teacher, distillation = distill.prepare(config, rows.columns, out)
    if not config.resume and int(os.environ.get("RANK", "0")) == 0:  # torchrun / accelerate launch set RANK
        shutil.rmtree(out / "checkpoints", ignore_errors=True)
        (out / "train_log.jsonl").unlink(missing_ok=True)
    return teacher, distillation


def _validation(
    config: FinetuneConfig,
    plan: dict[str, int],
    train: list[TrainingExample],
    val: list[TrainingExample],
    teacher: TeacherScores | None,
    train_dataset: Dataset,
) -> tuple[InformationRetrievalEvaluator | None, Dataset | None]:
    """The full-corpus retrieval evaluator and the validation rows for val_loss; (None, None) without validation."""
    if not val:
        return None, None
    evaluator = validation_evaluator(val, train, config.max_val_corpus, config.seed, plan["micro_batch_size"])
    if teacher is not None:  # the teacher scored the training rows only: no distillation term to compute
        return evaluator, None
    return evaluator, validation_rows(val, config, ID_COLUMN in train_dataset.column_names)


def _resume_from(config: FinetuneConfig, checkpoints: Path) -> str | None:
    """The last checkpoint when resuming; a warning when there is none to resume from."""
    resume_from = _last_checkpoint(checkpoints) if config.resume else None
    if config.resume and resume_from is None:
        logger.warning("resume requested but no checkpoint in %s: starting from scratch", checkpoints)
    return resume_from


def finetune(config: FinetuneConfig) -> dict:
    """Train, keep the best validation checkpoint, merge LoRA, and save to ``output_dir/model``.

    Returns a summary dict (also written to ``output_dir/train_summary.json``).
    """
    started = time.time()
    # everything that can fail on bad input runs before the previous run's checkpoints and log are removed
    _check_config(config)
    train_examples, val_examples = _training_examples(config)
    rows = build_training_rows(train_examples, config.n_passages, config.seed)
    plan = plan_batches(config, rows.stats["rows"])
    anchors = load_texts(config.anchor_texts, config.anchor_count) if config.anchor_weight else None
    encoder = _load_for_training(config)
    model, bf16 = encoder.model, resolve_bf16(config.bf16)
    config, plan = _fit_in_memory(model, config, plan, rows.stats["rows"])

    out = Path(config.output_dir)
    checkpoints, log_path = out / "checkpoints", out / "train_log.jsonl"
    teacher, distillation = _prepare_run_folder(config, rows, out)
    if plan["total_steps"] < 50:
        warnings.warn(f"only {plan['total_steps']} training steps: results may be noisy", stacklevel=2)
    train_dataset = _train_dataset(rows, config, teacher)

    evaluator, eval_dataset = _validation(config, plan, train_examples, val_examples, teacher, train_dataset)
    prompts = _column_prompts(encoder, rows.columns)
    callbacks = [JsonlLogCallback(log_path)]
    if evaluator and config.early_stopping_patience > 0:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=config.early_stopping_patience))
    trainer = SentenceTransformerTrainer(
        model=model,
        args=_training_arguments(config, plan, checkpoints, bf16, prompts, evaluator is not None),
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        loss=make_loss(model, config, plan["cache_mini_batch_size"], teacher, anchors),
        evaluator=evaluator,
        callbacks=callbacks,
    )
    result = trainer.train(resume_from_checkpoint=_resume_from(config, checkpoints))
    if config.finetuning_type == "lora_merged":
        _merge_lora(encoder)
    if config.base_mix:
        mix_with_base(encoder, config)
    summary = {
        "config": config_dict(config),
        "config_hash": config_hash(config),
        "plan": {**plan, "bf16": bf16},
        "data": {**rows.stats, "train_queries": len(train_examples), "val_queries": len(val_examples)},
        "train_loss": result.training_loss,
        "train_runtime": result.metrics.get("train_runtime"),
        "steps": trainer.state.global_step,
        "best_metric": trainer.state.best_metric,
        "best_checkpoint": trainer.state.best_model_checkpoint,
        "distillation": distillation,
        "seconds": round(time.time() - started, 1),
    }
    if trainer.is_world_process_zero():
        _save_model(encoder, out / "model", summary)
        write_json_atomic(out / "train_summary.json", summary)
    return summary


def _save_model(encoder: BiEncoder, target: Path, summary: dict) -> None:
    """Write the model into a temp sibling folder, then swap it in: the previous model stays until the new
    one is complete, and comes back if the swap fails."""
    with atomic_write(target) as tmp:
        encoder.save(tmp, extra_config={"training": summary})
        _write_model_card(tmp, encoder, summary)


def _write_model_card(folder: Path, encoder: BiEncoder, summary: dict) -> None:
    """Prepend a short embedforge summary to sentence-transformers' own card."""
    cfg = summary["config"]
    lines = [
        "# embedforge fine-tuned embedding model",
        "",
        f"- base model: `{cfg['base_model']}`; fine-tuning: {cfg['finetuning_type']}",
        f"- pooling: {encoder.pooling}; L2-normalised; max length {encoder.max_seq_length}",
        f"- prompts: query `{encoder.prompts['query']!r}`, passage `{encoder.prompts['passage']!r}` (saved as "
        "sentence-transformers prompts `query` / `document`)",
        f"- loss: {'in-batch + hard negatives' if cfg['in_batch_negatives'] or cfg['cached_loss'] else 'group'}"
        f" contrastive, temperature {cfg['temperature']}, {cfg['n_passages']} passages per query",
        *(
            [
                f"- distilled from `{cfg['distill_teacher']}`: {cfg['distill_loss']}, weight "
                f"{cfg['distill_weight']}, temperature {cfg['distill_temperature']}"
            ]
            if cfg.get("distill_teacher")
            else []
        ),
        *(
            [f"- embeddings and the first {cfg['freeze_layers']} layers kept at the base model's weights"]
            if cfg.get("freeze_layers")
            else []
        ),
        *(
            [f"- anchored to the base model on `{cfg['anchor_texts']}` text, weight {cfg['anchor_weight']}"]
            if cfg.get("anchor_weight")
            else []
        ),
        *(
            [f"- weights mixed back with {cfg['base_mix']} of the base model's (WiSE-FT)"]
            if cfg.get("base_mix")
            else []
        ),
        f"- data: {summary['data']['rows']} training rows from {summary['data']['train_queries']} queries; "
        f"{summary['data']['val_queries']} validation queries",
        f"- steps: {summary['steps']}; best validation nDCG@10: {summary['best_metric']}",
        f"- config hash: {summary['config_hash']} (full config in embedforge.json)",
        "",
        "Load with `SentenceTransformer(path)` and use `encode_query` / `encode_document`.",
        "",
    ]
    card = folder / "README.md"
    rest = card.read_text() if card.exists() else ""
    card.write_text("\n".join(lines) + "\n" + rest)
