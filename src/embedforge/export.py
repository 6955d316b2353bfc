"""The export stage: a bi-encoder as a self-contained ONNX folder, checked against PyTorch before it is kept.

What it does:

* traces the backbone with the dynamo exporter (``torch.onnx.export(..., dynamo=True)``; the legacy
  TorchScript exporter bakes the padding-mask branch and drifts on mixed-length batches) with dynamic
  ``batch`` and ``seq`` axes, with the model's pooling (avg / cls / last / weighted_avg, all driven by the
  attention mask, so left and right padding both work) inside the graph;
* appends Matryoshka truncation and L2 normalisation to the graph by hand (truncate first, then normalise),
  with ``dimensions`` an optional input that defaults to the full size;
* saves the tokenizer, the prompts and an ``embedforge_export.json`` beside the model, so the folder needs
  nothing else (``OnnxEncoder`` loads it; the server reads the same contract);
* checks that the saved tokenizer, reloaded, tokenizes exactly as the model does, then parity with the
  PyTorch ``BiEncoder`` on mixed-length batches (very short and truncated-long texts together, batch 1 and a
  full batch, full and smaller ``dimensions``, queries and passages); above the tolerance (1e-4) the export
  fails and nothing is left at the output path;
* optionally adds a dynamic-int8 copy (onnxruntime's transformer fusions and ours for attention, kept only
  when the fused graph matches fp32 within the parity tolerance, then the quantizer on MatMul and attention
  weights per channel) and/or an fp16
  copy, each with its quality measured against fp32 (mean cosine on 32 probe texts, the nDCG@10 / Recall@10 delta
  on a BEIR folder, file size, texts/s, and how much a vector depends on its batch); fp16 is also
  parity-checked at a relaxed tolerance (5e-3).

Everything is built in a temp sibling folder and renamed into place only when every check passed.

Folder contract (what ``serve`` relies on)::

    OUT/model.onnx            fp32 graph (model_int8.onnx / model_fp16.onnx beside it when asked for)
    OUT/tokenizer*.json ...   tokenizer.save_pretrained(OUT)
    OUT/embedforge_export.json
    inputs:  input_ids int64 [batch, seq], attention_mask int64 [batch, seq],
             dimensions int64 scalar [] (a shape [1] array works too) -- OPTIONAL: it is a graph input with
             a default initializer (= the full dimension), so onnxruntime lists it under
             ``get_overridable_initializers()``, not ``get_inputs()``; values are clipped to 1..dimension.
    output:  embeddings float32 [batch, dim_out], unit L2 norm (dim_out = min(dimensions, dimension))

What it deliberately does not do: TensorRT engines, FP8, static (calibrated) int8, or serving (``serve``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from embedforge.errors import EmbedforgeError

logger = logging.getLogger(__name__)

EXPORT_FILE = "embedforge_export.json"
MODEL_FILES = {"fp32": "model.onnx", "int8": "model_int8.onnx", "fp16": "model_fp16.onnx"}
INPUT_NAMES = ("input_ids", "attention_mask")
DIMENSIONS_INPUT, OUTPUT_NAME = "dimensions", "embeddings"
DEFAULT_OPSET = 17
# max abs difference per vector element allowed for fp16 weights vs PyTorch fp32 (measured ~5e-4 on MiniLM)
FP16_TOLERANCE = 5e-3
# a reduced-precision copy whose mean cosine to fp32 on the probe texts is lower fails the export
MIN_QUANTIZED_COSINE = 0.95
# above this many bytes of weights, they go to a .data file beside the graph (protobuf's 2 GB limit)
_EXTERNAL_DATA_BYTES = 1_800_000_000
_POOLING_MODES = ("avg", "cls", "last", "weighted_avg")

_LONG_TEXT = " ".join(
    (
        "PostgreSQL keeps old row versions until VACUUM removes them, so a table that sees many updates grows "
        "until autovacuum catches up; VACUUM FULL rewrites the whole table into a new file and returns the "
        "space to the operating system, but it takes an exclusive lock for as long as it runs."
    ).split()
    * 12
)  # ~560 words: longer than any model's usual token limit, so truncation is part of the check

PARITY_TEXTS = (  # padded together in one batch: 1-token texts next to one cut at the model's token limit
    "a",
    _LONG_TEXT,
    "ok?",
    "How do I reclaim disk space after deleting many rows?",
    "Streaming replication ships write-ahead log records to a standby server.",
    "x y",
)

PROBE_TEXTS = (  # 32 mixed texts: quality of reduced-precision copies and the speed figure
    "how do I free space taken by deleted rows in postgres?",
    "what makes sourdough rise?",
    "why does the sea level go up and down every day?",
    "green tea water temperature",
    "ok",
    "VACUUM reclaims storage occupied by dead tuples in PostgreSQL tables.",
    "A B-tree index speeds up lookups and range scans on a column.",
    "The write-ahead log records every change before it reaches the data files.",
    "Sourdough bread rises with wild yeast and lactic acid bacteria.",
    "Ocean tides are caused by the gravitational pull of the moon and, to a lesser degree, the sun.",
    "Stars fuse hydrogen into helium in their cores.",
    "Lubricate a bicycle chain every few hundred kilometres, more often after riding in the rain.",
    "Boil pasta in salted water until al dente, then drain it and toss it with the sauce.",
    "error: could not connect to server: Connection refused",
    "SELECT count(*) FROM orders WHERE created_at > now() - interval '1 day';",
    "Die Katze schläft auf dem Sofa.",
    "how many partitions should a kafka topic have",
    "Photosynthesis converts light energy into chemical energy stored in glucose.",
    "What is the capital of Australia?",
    "Canberra was chosen as a compromise between Sydney and Melbourne.",
    "refund policy for damaged items",
    "Items that arrive damaged can be returned within 30 days for a full refund or a replacement.",
    "The mitochondria is the powerhouse of the cell.",
    "best way to learn python",
    "Python's list comprehensions build lists from iterables in a single readable expression.",
    "A heat pump moves heat from outside air into the house, even when it is cold outside.",
    "symptoms of vitamin D deficiency",
    "Fatigue, bone pain and muscle weakness can be signs of low vitamin D levels.",
    "?",
    _LONG_TEXT[: len(_LONG_TEXT) // 2],
    "Transformers use self-attention to relate every token in a sequence to every other token.",
    "how to reset a router to factory settings",
)


class ExportError(EmbedforgeError, RuntimeError):
    """An export that failed a check; ``report`` holds what was measured (nothing was written to the output)."""

    def __init__(self, message: str, report: dict[str, Any] | None = None):
        super().__init__(message)
        self.report = report or {}


# ---------------------------------------------------------------------------------------------- pooling


def pool(token_embeddings, attention_mask, mode: str):
    """Masked pooling with sentence-transformers' semantics, written to trace into plain ONNX ops.

    ``avg`` is the masked mean; ``cls`` the first non-pad token; ``last`` the last non-pad token (the mask, not
    the padding side, decides, so left padding works); ``weighted_avg`` weights tokens 1, 2, 3... counted
    from the first non-pad token. Arg-max runs on float masks (onnxruntime has no int64 ArgMax).
    """
    import torch

    mask = attention_mask.to(token_embeddings.dtype)
    if mode == "avg":
        m = mask.unsqueeze(-1)
        return (token_embeddings * m).sum(dim=1) / m.sum(dim=1).clamp(min=1e-9)
    seq_len, hidden = token_embeddings.shape[1], token_embeddings.shape[2]
    positions = torch.arange(seq_len, device=token_embeddings.device, dtype=token_embeddings.dtype)
    if mode == "weighted_avg":
        first = mask.argmax(dim=1).to(token_embeddings.dtype)  # index of the first non-pad token
        weights = mask * (positions.unsqueeze(0) + 1 - first.unsqueeze(1))
        total = (token_embeddings * weights.unsqueeze(-1)).sum(dim=1)
        return total / weights.sum(dim=1, keepdim=True).clamp(min=1e-9)
    if mode == "cls":
        index = mask.argmax(dim=1)  # first non-pad token (0 for an all-pad row)
        source = token_embeddings
    elif mode == "last":
        index = (mask * (positions.unsqueeze(0) + 1)).argmax(dim=1)  # last non-pad token
        source = token_embeddings * mask.unsqueeze(-1)  # an all-pad row pools to zeros, as in ST
    else:
        raise ValueError(f"pooling must be one of {list(_POOLING_MODES)}, got '{mode}'")
    gather = index.view(-1, 1, 1).expand(-1, 1, hidden)
    return torch.gather(source, 1, gather).squeeze(1)


def _pooled_module(backbone, mode: str):
    import torch

    class PooledBackbone(torch.nn.Module):
        """backbone(input_ids, attention_mask) -> pooled [batch, hidden] (truncation and norm come later)."""

        def __init__(self):
            super().__init__()
            self.backbone = backbone

        def forward(self, input_ids, attention_mask):
            out = self.backbone(input_ids=input_ids, attention_mask=attention_mask, return_dict=True)
            hidden = getattr(out, "last_hidden_state", None)
            return pool(out[0] if hidden is None else hidden, attention_mask, mode)

    return PooledBackbone().eval()


# ------------------------------------------------------------------------------------------ model parts


def _parts(encoder) -> tuple[Any, Any, str]:
    """(Transformer module, tokenizer, pooling name) of a BiEncoder, or a clear error for what ONNX export lacks."""
    from sentence_transformers.base.modules import Normalize, Transformer
    from sentence_transformers.sentence_transformer.modules import Pooling

    modules = list(encoder.model)
    if not modules or not isinstance(modules[0], Transformer):
        raise ValueError("export needs a sentence-transformers model whose first module is a Transformer")
    unsupported = [type(m).__name__ for m in modules[1:] if not isinstance(m, (Pooling, Normalize))]
    if unsupported:
        raise ValueError(
            f"export supports Transformer -> Pooling -> Normalize models only; found {unsupported}"
        )
    pooling_module = encoder._pooling_module()
    modes = pooling_module.pooling_mode
    if isinstance(modes, (tuple, list)) and len(modes) != 1:
        raise ValueError(f"export supports a single pooling mode, got {list(modes)}")
    if not getattr(pooling_module, "include_prompt", True) and any(encoder.prompts.values()):
        raise ValueError("export does not support pooling that excludes the prompt (include_prompt=False)")
    pooling = encoder.pooling
    if pooling not in _POOLING_MODES:
        raise ValueError(f"export supports pooling {list(_POOLING_MODES)}, got '{pooling}'")
    tokenizer = modules[0].tokenizer
    if tokenizer is None:
        raise ValueError("the model has no tokenizer to save with the export")
    return modules[0], tokenizer, pooling


def default_matryoshka_dims(dimension: int) -> list[int]:
    """The full size plus the powers of two from 32 up to below it, ascending: 384 -> [32, 64, 128, 256, 384]."""
    dims, d = [], 32
    while d < dimension:
        dims.append(d)
        d *= 2
    return [*dims, int(dimension)]


def model_matryoshka_dims(folder: str | Path | None, dimension: int) -> list[int] | None:
    """The Matryoshka sizes a model declares (embedforge.json, its training config, or config.json), if any."""
    if folder is None or not Path(folder).is_dir():
        return None
    candidates = []
    for name in ("embedforge.json", "config.json"):
        path = Path(folder) / name
        if not path.is_file():
            continue
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        candidates += [
            data.get("matryoshka_dims"),
            data.get("matryoshka_dimensions"),
            ((data.get("training") or {}).get("config") or {}).get("matryoshka_dims"),
        ]
    for dims in candidates:
        if isinstance(dims, list) and dims and all(isinstance(d, int) for d in dims):
            return sorted({d for d in dims if 0 < d <= dimension} | {int(dimension)})
    return None


def _model_name(source: str, encoder) -> str:
    """A known short name as is; a folder's name, or ``parent-name`` for generic ones (``runs/tuned/model``)."""
    if os.sep not in source and not Path(source).exists():
        return source  # a known short name such as "minilm", or a BiEncoder's label
    path = Path(source).resolve()
    if path.name in {"model", "onnx", "export", "checkpoint"} and path.parent.name:
        return f"{path.parent.name}-{path.name}"
    return path.name or str(getattr(encoder, "name", "model"))


# ------------------------------------------------------------------------------------------- the graph


def _opset_of(model) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


@contextlib.contextmanager
def _quiet_exporter():
    """The exporters and the quantizer log a lot that is not actionable here (opset notes, tracing debug).

    Silences the torch / onnx / onnxruntime loggers and the root logger (the quantizer logs there) while
    they run, then restores every level.
    """
    prefixes = ("torch", "onnx", "onnxscript", "onnx_ir", "onnxruntime")
    names = [n for n in logging.root.manager.loggerDict if n.split(".")[0] in prefixes]
    loggers = [logging.getLogger(n) for n in [*names, *prefixes]] + [logging.getLogger()]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


@contextlib.contextmanager
def _attention(auto_model, implementation: str | None):
    """Temporarily switch the backbone's attention implementation (restored afterwards)."""
    before = getattr(auto_model.config, "_attn_implementation", None)
    changed = implementation is not None and implementation != before
    if changed:
        auto_model.set_attn_implementation(implementation)
    try:
        yield getattr(auto_model.config, "_attn_implementation", implementation)
    finally:
        if changed and before is not None:
            auto_model.set_attn_implementation(before)


def _export_backbone(encoder, path: Path, *, opset: int, attn_implementation: str | None) -> dict[str, Any]:
    """Trace backbone + pooling to ``path`` with the dynamo exporter; returns what was used."""
    import torch

    transformer, tokenizer, pooling = _parts(encoder)
    auto_model = transformer.auto_model
    example = tokenizer(
        [PARITY_TEXTS[3], PARITY_TEXTS[4] + " " + PARITY_TEXTS[3]],  # 2 rows of different lengths
        padding=True,
        truncation=True,
        max_length=encoder.max_seq_length,
        return_tensors="pt",
    )
    args = (example["input_ids"].to(torch.int64), example["attention_mask"].to(torch.int64))
    batch, seq = torch.export.Dim("batch"), torch.export.Dim("seq")
    shapes = {"input_ids": {0: batch, 1: seq}, "attention_mask": {0: batch, 1: seq}}
    n_bytes = sum(p.numel() * p.element_size() for p in auto_model.parameters())
    external = n_bytes > _EXTERNAL_DATA_BYTES

    current = getattr(auto_model.config, "_attn_implementation", None)
    if attn_implementation:
        tries = [attn_implementation]
    else:  # eager first: its plain matmuls trace to a smaller graph that onnxruntime runs about 1.15x
        # faster than the traced sdpa one (docs/benchmarks.md, serving); the model's own if eager fails
        tries = [None] if current == "eager" else ["eager", None]
    was_training = auto_model.training
    auto_model.eval()
    last_error: Exception | None = None
    try:
        for implementation in tries:
            with _attention(auto_model, implementation) as used, torch.no_grad():
                try:
                    with _quiet_exporter():
                        program = torch.onnx.export(
                            _pooled_module(auto_model, pooling),
                            args,
                            None,
                            dynamo=True,
                            opset_version=opset,
                            input_names=list(INPUT_NAMES),
                            output_names=["pooled"],
                            dynamic_shapes=shapes,
                            verbose=False,
                        )
                        program.save(str(path), external_data=external)
                    return {"attn_implementation": used, "external_data": external, "pooling": pooling}
                except Exception as err:  # noqa: BLE001 - retried with eager attention, then re-raised
                    last_error = err
                    logger.warning("ONNX export with %s attention failed: %s", used, str(err)[:500])
    finally:
        auto_model.train(was_training)
    raise ExportError(f"the dynamo ONNX exporter could not trace the model: {last_error}") from last_error


def _append_head(path: Path, dimension: int, opset: int) -> int:
    """Add the truncation + normalisation head to the graph at ``path`` (in place); returns its opset.

    The dynamo exporter builds at opset 18 and converts down; when its converter gives up (it does for Llama
    graphs) onnx's own version converter is tried on the finished graph before settling for 18.
    """
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    small = model.ByteSize() < _EXTERNAL_DATA_BYTES and not _has_external_data(model)
    if _opset_of(model) != opset and small:
        model = _convert_opset(model, opset)
    _add_head(model, dimension)
    if small:
        onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return _opset_of(model)


_REDUCE_OPS = {"ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2", "ReduceLogSum"}
_REDUCE_OPS |= {"ReduceLogSumExp", "ReduceSumSquare"}


def _convert_opset(model, opset: int):
    """onnx's version converter, plus a fix for its Reduce* 18 -> 17 adapter (which keeps the opset-18-only
    ``noop_with_empty_axes`` attribute); the model comes back unchanged when the result does not check."""
    import onnx
    from onnx import version_converter

    try:
        converted = version_converter.convert_version(model, opset)
        for node in converted.graph.node:
            if node.op_type in _REDUCE_OPS and opset < 18:
                keep = [a for a in node.attribute if not (a.name == "noop_with_empty_axes" and a.i == 0)]
                del node.attribute[:]
                node.attribute.extend(keep)
        onnx.checker.check_model(converted)
        return converted
    except Exception as err:  # noqa: BLE001 - keep the exporter's opset, reported in the json
        logger.warning("could not convert the graph to opset %d (kept %d): %s", opset, _opset_of(model), err)
        return model


def _has_external_data(model) -> bool:
    from onnx import TensorProto

    return any(t.data_location == TensorProto.EXTERNAL for t in model.graph.initializer)


_HEAD_NODES = ("ef_dims_1d", "ef_dims_clip", "ef_truncate", "ef_l2", "ef_norm_safe", "ef_normalise")


def _add_head(model, dimension: int) -> None:
    """``dimensions`` (optional, default full) -> truncate -> L2-normalise -> ``embeddings``, all float32."""
    from onnx import TensorProto, helper, numpy_helper

    graph = model.graph
    opset = _opset_of(model)
    (pooled,) = [o.name for o in graph.output]

    def const(name: str, value) -> str:
        graph.initializer.append(numpy_helper.from_array(np.asarray(value), f"ef_{name}"))
        return f"ef_{name}"

    # An initializer that is also a graph input is an input with a default value (ONNX IR >= 4).
    graph.initializer.append(numpy_helper.from_array(np.asarray(dimension, dtype=np.int64), DIMENSIONS_INPUT))
    graph.input.append(helper.make_tensor_value_info(DIMENSIONS_INPUT, TensorProto.INT64, []))
    shape1 = const("shape_1", np.array([1], dtype=np.int64))
    lo, hi = const("dim_min", np.array([1], np.int64)), const("dim_max", np.array([dimension], np.int64))
    zero, axis = const("zero", np.array([0], np.int64)), const("axis", np.array([1], np.int64))
    eps = const("eps", np.array(1e-12, dtype=np.float32))  # torch.nn.functional.normalize's eps
    nodes = [
        helper.make_node("Reshape", [DIMENSIONS_INPUT, shape1], ["ef_dims_1d"], name="ef_dims_1d"),
        helper.make_node("Clip", ["ef_dims_1d", lo, hi], ["ef_dims"], name="ef_dims_clip"),
        helper.make_node("Slice", [pooled, zero, "ef_dims", axis], ["ef_truncated"], name="ef_truncate"),
    ]
    if opset >= 18:  # ReduceL2 takes its axes as an input from opset 18
        nodes.append(
            helper.make_node("ReduceL2", ["ef_truncated", axis], ["ef_norm"], keepdims=1, name="ef_l2")
        )
    else:
        nodes.append(
            helper.make_node("ReduceL2", ["ef_truncated"], ["ef_norm"], axes=[1], keepdims=1, name="ef_l2")
        )
    nodes += [
        helper.make_node("Max", ["ef_norm", eps], ["ef_norm_safe"], name="ef_norm_safe"),
        helper.make_node("Div", ["ef_truncated", "ef_norm_safe"], [OUTPUT_NAME], name="ef_normalise"),
    ]
    graph.node.extend(nodes)
    del graph.output[:]
    graph.output.append(helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["batch", "dim_out"]))
    graph.doc_string = (
        "embedforge export: input_ids/attention_mask int64 [batch, seq]; optional dimensions int64 scalar "
        f"(default {dimension}); embeddings float32 [batch, dim_out], pooled, truncated, L2-normalised"
    )


def _strip_head(model) -> None:
    """Undo ``_add_head``: the graph ends at the pooled float32 [batch, hidden] tensor again."""
    from onnx import TensorProto, helper

    graph = model.graph
    (truncate,) = [n for n in graph.node if n.name == "ef_truncate"]
    pooled = truncate.input[0]
    keep = [n for n in graph.node if n.name not in _HEAD_NODES]
    del graph.node[:]
    graph.node.extend(keep)
    inits = [i for i in graph.initializer if i.name != DIMENSIONS_INPUT and not i.name.startswith("ef_")]
    del graph.initializer[:]
    graph.initializer.extend(inits)
    inputs = [i for i in graph.input if i.name != DIMENSIONS_INPUT]
    del graph.input[:]
    graph.input.extend(inputs)
    del graph.output[:]
    graph.output.append(helper.make_tensor_value_info(pooled, TensorProto.FLOAT, ["batch", "hidden"]))


def _fuse_for_onnxruntime(src: Path, dst: Path, external: bool, attention: bool = True) -> dict[str, Any]:
    """Write ``src`` with onnxruntime's transformer fusions (SkipLayerNormalization, BiasGelu, ...) and our
    attention fusion (``attention_fusion``) to ``dst``.

    The fused ops are onnxruntime contrib ops, so only the int8 copy (an onnxruntime artifact anyway) is
    built from this graph; ``model.onnx`` stays plain ONNX for other runtimes. On this 2-core CPU the fused
    int8 graph runs about 1.5x faster than the unfused one, and the attention fusion adds 1.1-1.2x on top
    (docs/benchmarks.md, serving).
    """
    from onnxruntime.transformers.optimizer import optimize_model

    from embedforge.attention_fusion import fuse_attention

    with _quiet_exporter():
        # opt_level 0: the pattern fusions only; onnxruntime's own graph passes run at session load anyway
        fused = optimize_model(str(src), model_type="bert", opt_level=0, use_gpu=False)
        counts = {op: n for op, n in fused.get_fused_operator_statistics().items() if n}
        layers = fuse_attention(fused) if attention else 0
        if layers:
            counts["Attention"] = counts.get("Attention", 0) + layers
        fused.save_model_to_file(str(dst), use_external_data_format=external)
    return {
        "method": "onnxruntime.transformers.optimizer (model_type bert, opt_level 0) + "
        "embedforge.attention_fusion",
        "fused_ops": counts,
    }


def _max_graph_diff(reference: OnnxEncoder, other: Path, texts: Sequence[str] = PARITY_TEXTS) -> float:
    """Max abs difference between ``reference`` and the graph file ``other`` on one mixed-length batch."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(other), options, providers=["CPUExecutionProvider"])
    tokens = reference.tokenizer(
        list(texts), padding=True, truncation=True, max_length=reference.max_seq_length, return_tensors="np"
    )
    feed = {name: tokens[name].astype(np.int64) for name in INPUT_NAMES}
    got = session.run([OUTPUT_NAME], feed)[0]
    return float(np.abs(got - reference.run(feed["input_ids"], feed["attention_mask"])).max())


def _quantize_int8(src: Path, dst: Path, external: bool) -> dict[str, Any]:
    """Dynamic int8 (weights int8, activations quantized at run time): MatMul and Attention weights.

    The embedding tables (Gather) stay fp32: quantizing them costs quality and buys no speed.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # Attention: the fused self-attention (QAttention: int8 Q/K/V projection weights)
    ops = ["MatMul", "Attention"]
    options = {"op_types_to_quantize": ops, "weight_type": QuantType.QInt8, "per_channel": True}
    with _quiet_exporter():
        quantize_dynamic(str(src), str(dst), use_external_data_format=external, **options)
    return {
        "method": "onnxruntime.quantization.quantize_dynamic",
        "op_types_to_quantize": ops,
        "weight_type": "QInt8",
        "per_channel": True,
        "activations": "uint8, one scale per tensor computed at run time",
    }


def _convert_fp16(src: Path, dst: Path, dimension: int, external: bool) -> dict[str, Any]:
    """fp16 weights and activations with float32 inputs/outputs; truncation and normalisation stay float32.

    The head is taken off before conversion and put back after, so the pooled vector is cast to float32
    once and the output keeps full float32 precision (unit norm to ~1e-7).
    """
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = onnx.load(str(src))
    _strip_head(model)
    with _quiet_exporter():
        half = convert_float_to_float16(model, keep_io_types=True)
    _add_head(half, dimension)
    onnx.save(half, str(dst), save_as_external_data=external, location=dst.name + ".data")
    return {
        "method": "onnxruntime.transformers.float16.convert_float_to_float16",
        "keep_io_types": True,
        "float32_parts": "inputs, outputs, truncation and L2 normalisation",
    }


# ------------------------------------------------------------------------------------------ the encoder


class OnnxEncoder:
    """An exported folder run with onnxruntime, used exactly like a ``BiEncoder`` (eval, parity, serving).

    Args:
        folder: an export folder (``model.onnx``, the tokenizer, ``embedforge_export.json``).
        variant: ``"fp32"`` (default), ``"int8"`` or ``"fp16"`` -- one of the files the export recorded.
        name: label for reports (default: the export's model name, plus ``-int8`` / ``-fp16``).
        threads: onnxruntime intra-op threads (default: onnxruntime's choice).

    Example:
        >>> enc = OnnxEncoder("runs/export")  # doctest: +SKIP
        >>> enc.encode_queries(["how do I vacuum a table?"], dimensions=128).shape  # doctest: +SKIP
        (1, 128)
    """

    def __init__(
        self,
        folder: str | Path,
        variant: str = "fp32",
        *,
        name: str | None = None,
        threads: int | None = None,
    ):
        import onnxruntime as ort
        from transformers import AutoTokenizer

        self.path = Path(folder)
        info_path = self.path / EXPORT_FILE
        if not info_path.is_file():
            raise FileNotFoundError(f"{self.path} is not an embedforge export folder (no {EXPORT_FILE})")
        self.info: dict[str, Any] = json.loads(info_path.read_text())
        files = self.info.get("files", {})
        if not files.get(variant):
            raise ValueError(f"export {self.path} has no '{variant}' model; it has {sorted(files)}")
        self.variant = variant
        self.model_file = self.path / files[variant]
        options = ort.SessionOptions()
        options.log_severity_level = 3  # the optional `dimensions` input makes onnxruntime warn on every load
        if threads:
            options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(self.model_file), options, providers=["CPUExecutionProvider"])
        self.tokenizer = AutoTokenizer.from_pretrained(str(self.path), local_files_only=True)
        for key in ("padding_side", "truncation_side"):  # as recorded at export, whatever the reload says
            if self.info.get(key):
                setattr(self.tokenizer, key, self.info[key])
        self.prompts: dict[str, str] = dict(self.info["prompts"])
        self.dimension: int = int(self.info["dimension"])
        self.max_seq_length: int = int(self.info["max_seq_length"])
        self.pooling: str = self.info["pooling"]
        self.matryoshka_dims: list[int] = list(self.info.get("matryoshka_dims") or [self.dimension])
        base = self.info.get("model_name", self.path.name)
        self.name = name or (base if variant == "fp32" else f"{base}-{variant}")

    def __repr__(self) -> str:
        return f"OnnxEncoder({str(self.path)!r}, variant={self.variant!r}, dimension={self.dimension})"

    def encode_queries(
        self,
        texts: Sequence[str],
        *,
        batch_size: int = 32,
        dimensions: int | None = None,
        progress: bool = False,
    ) -> np.ndarray:
        """Unit-norm float32 query vectors, with the saved query prompt prepended."""
        return self.encode(
            texts, self.prompts["query"], batch_size=batch_size, dimensions=dimensions, progress=progress
        )

    def encode_passages(
        self,
        texts: Sequence[str],
        *,
        batch_size: int = 32,
        dimensions: int | None = None,
        progress: bool = False,
    ) -> np.ndarray:
        """Unit-norm float32 passage vectors, with the saved passage prompt prepended."""
        return self.encode(
            texts, self.prompts["passage"], batch_size=batch_size, dimensions=dimensions, progress=progress
        )

    def encode(
        self,
        texts: Sequence[str],
        prompt: str = "",
        *,
        batch_size: int = 32,
        dimensions: int | None = None,
        progress: bool = False,
        sort_by_length: bool = True,
    ) -> np.ndarray:
        """``prompt + text`` for each text -> vectors; batches are length-sorted unless ``sort_by_length=False``."""
        if dimensions is not None and not 0 < dimensions <= self.dimension:
            raise ValueError(f"dimensions must be in 1..{self.dimension}, got {dimensions}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        width = dimensions or self.dimension
        texts = [prompt + t for t in texts]
        out = np.zeros((len(texts), width), dtype=np.float32)
        order = (
            np.argsort([-len(t) for t in texts], kind="stable") if sort_by_length else np.arange(len(texts))
        )
        starts = range(0, len(texts), batch_size)
        if progress:
            from tqdm.auto import tqdm

            starts = tqdm(starts, desc=f"onnx {self.name}", unit="batch")
        for start in starts:
            rows = order[start : start + batch_size]
            out[rows] = self.run_texts([texts[i] for i in rows], dimensions)
        return out

    def run_texts(self, texts: Sequence[str], dimensions: int | None = None) -> np.ndarray:
        """One batch of already-prompted texts through the tokenizer and the graph, in the given order."""
        tokens = self.tokenizer(
            list(texts), padding=True, truncation=True, max_length=self.max_seq_length, return_tensors="np"
        )
        return self.run(tokens["input_ids"], tokens["attention_mask"], dimensions)

    def run(self, input_ids, attention_mask, dimensions: int | None = None) -> np.ndarray:
        """The graph on token ids: ``dimensions=None`` leaves the optional input at its default (full size)."""
        feed = {
            "input_ids": np.asarray(input_ids, dtype=np.int64),
            "attention_mask": np.asarray(attention_mask, dtype=np.int64),
        }
        if dimensions is not None:
            feed[DIMENSIONS_INPUT] = np.asarray(dimensions, dtype=np.int64)
        return self.session.run([OUTPUT_NAME], feed)[0]


# ---------------------------------------------------------------------------------------------- checks


def _parity_dims(matryoshka_dims: Sequence[int], dimension: int) -> list[int]:
    """The full size and up to two smaller supported sizes (the smallest and a middle one)."""
    smaller = sorted(d for d in matryoshka_dims if d < dimension)
    picks = {dimension}
    if smaller:
        picks |= {smaller[0], smaller[len(smaller) // 2]}
    return sorted(picks, reverse=True)


def parity_check(
    encoder,
    onnx_encoder: OnnxEncoder,
    dims: Sequence[int],
    tolerance: float,
    texts: Sequence[str] = PARITY_TEXTS,
) -> dict[str, Any]:
    """Max abs difference, ONNX vs the PyTorch ``BiEncoder``, on mixed-length batches of size 1 and N.

    The ONNX rows keep the given order, so very short and truncated-long texts are padded together. Every
    size in ``dims`` is checked on the full batch, for queries and passages (passages skipped when the
    prompts are equal); the full size uses the graph's default ``dimensions`` and is also checked one text at
    a time. PyTorch runs the same batches. ``passed`` also needs every ONNX vector to be unit-norm within 1e-4.
    """
    texts = list(texts)
    kinds = ["query"] if encoder.prompts["query"] == encoder.prompts["passage"] else ["query", "passage"]
    by_dimension: dict[str, float] = {}
    by_batch_size: dict[str, float] = {}
    worst_norm = 0.0
    for dim in dims:
        arg = None if dim == encoder.dimension else dim
        batch_sizes = sorted({1, len(texts)}) if dim == encoder.dimension else [len(texts)]
        for kind in kinds:
            torch_encode = encoder.encode_queries if kind == "query" else encoder.encode_passages
            for batch_size in batch_sizes:
                # the same batches on both sides: with left padding and absolute positions (BERT) a vector
                # depends on how much padding its batch needs
                expected = torch_encode(texts, dimensions=arg, batch_size=batch_size)
                got = onnx_encoder.encode(
                    texts, encoder.prompts[kind], batch_size=batch_size, dimensions=arg, sort_by_length=False
                )
                if got.shape != expected.shape:
                    raise ExportError(
                        f"ONNX output shape {got.shape} != PyTorch {expected.shape} at dim {dim}"
                    )
                diff = float(np.abs(got.astype(np.float64) - expected).max())
                by_dimension[str(dim)] = max(by_dimension.get(str(dim), 0.0), diff)
                by_batch_size[str(batch_size)] = max(by_batch_size.get(str(batch_size), 0.0), diff)
                worst_norm = max(worst_norm, float(np.abs(np.linalg.norm(got, axis=1) - 1.0).max()))
    worst = max(by_dimension.values())
    tokens = onnx_encoder.tokenizer(texts, truncation=True, max_length=onnx_encoder.max_seq_length)
    return {
        "reference": "BiEncoder (PyTorch) encode",
        "tolerance": tolerance,
        "max_abs_diff": worst,
        "max_norm_error": worst_norm,
        "passed": bool(worst <= tolerance and worst_norm <= 1e-4),
        "by_dimension": by_dimension,
        "by_batch_size": by_batch_size,
        "kinds": kinds,
        "num_texts": len(texts),
        "token_lengths": [len(ids) for ids in tokens["input_ids"]],
    }


def _check_tokenizer(encoder, onnx_encoder: OnnxEncoder, info: dict[str, Any]) -> None:
    """The saved tokenizer, reloaded, must give the token ids the model itself gets (prompts included).

    A tokenizer changed in memory (say a decoder's BOS/EOS switches) may not survive ``save_pretrained``;
    this names that cause instead of leaving it to show up as a parity difference.
    """
    transformer = encoder.model[0]
    for kind in ("query", "passage"):
        texts = [encoder.prompts[kind] + t for t in PARITY_TEXTS]
        expected = transformer.preprocess(texts) if hasattr(transformer, "preprocess") else None
        if expected is None:
            expected = transformer.tokenize(texts)
        got = onnx_encoder.tokenizer(
            texts, padding=True, truncation=True, max_length=onnx_encoder.max_seq_length, return_tensors="np"
        )
        for key in ("input_ids", "attention_mask"):
            want = np.asarray(expected[key])
            if want.shape != got[key].shape or not np.array_equal(want, got[key]):
                row = 0 if want.shape != got[key].shape else int(np.argmax((want != got[key]).any(axis=1)))
                model_ids = np.asarray(expected["input_ids"])[row][
                    np.asarray(expected["attention_mask"])[row] > 0
                ]
                saved_ids = got["input_ids"][row][got["attention_mask"][row] > 0]
                raise ExportError(
                    f"the saved tokenizer does not reproduce the model's tokenization ({kind} text {row}: "
                    f"model {model_ids[:10].tolist()}, reloaded {saved_ids[:10].tolist()}, padding "
                    f"{transformer.tokenizer.padding_side} vs {onnx_encoder.tokenizer.padding_side}); "
                    "a setting changed on the tokenizer in memory was not saved",
                    info,
                )


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a.astype(np.float64) * b).sum(axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def quality_vs_fp32(
    fp32: OnnxEncoder, other: OnnxEncoder, texts: Sequence[str] = PROBE_TEXTS, dims: Sequence[int] = ()
) -> dict[str, Any]:
    """Cosine of ``other``'s vectors to fp32's, queries and passages, at full size and at each of ``dims``."""
    result: dict[str, Any] = {"probe_texts": len(texts)}
    for dim in [fp32.dimension, *[d for d in dims if d != fp32.dimension]]:
        options = {"dimensions": None if dim == fp32.dimension else dim, "batch_size": 8}
        cos = np.concatenate(
            [
                _cosines(other.encode_queries(texts, **options), fp32.encode_queries(texts, **options)),
                _cosines(other.encode_passages(texts, **options), fp32.encode_passages(texts, **options)),
            ]
        )
        entry = {"mean_cosine_to_fp32": float(cos.mean()), "min_cosine_to_fp32": float(cos.min())}
        if dim == fp32.dimension:
            result.update(entry)
        else:
            result.setdefault("by_dimension", {})[str(dim)] = entry
    return result


def batch_consistency(encoder: OnnxEncoder, texts: Sequence[str] = PROBE_TEXTS) -> float:
    """Min cosine between each text embedded alone and inside one batch of all ``texts``.

    fp32 gives ~1.0. Dynamic int8 quantizes activations with one scale per tensor, i.e. per batch, so a
    vector depends on what it was batched with (padding included): a server that batches requests together
    returns slightly different int8 vectors for the same text.
    """
    alone = encoder.encode_passages(texts, batch_size=1)
    together = encoder.encode_passages(texts, batch_size=len(texts))
    return float(_cosines(alone, together).min())


def measure_speed(encoder: OnnxEncoder, texts: Sequence[str] = PROBE_TEXTS, repeats: int = 2) -> float:
    """Texts per second for one batch of ``texts`` (tokenization included), best of ``repeats`` after a warm-up."""
    encoder.encode_passages(texts, batch_size=len(texts))
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        encoder.encode_passages(texts, batch_size=len(texts))
        best = min(best, time.perf_counter() - start)
    return len(texts) / best


_BEIR_METRICS = ("ndcg@10", "recall@10")


def _beir_scores(encoder: OnnxEncoder, dataset) -> dict[str, float]:
    from embedforge.evaluate import evaluate_dataset

    result = evaluate_dataset(encoder, dataset, ks=(1, 5, 10), progress=False)
    return {m: float(result["metrics"][m]) for m in _BEIR_METRICS}


# ---------------------------------------------------------------------------------------------- export


def _check_out_dir(out: Path) -> None:
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / EXPORT_FILE).is_file())):
        raise FileExistsError(f"{out} exists and is not an embedforge export folder; refusing to replace it")


def _swap_into_place(tmp: Path, out: Path) -> None:
    """Rename the finished folder to ``out``; an older export there is replaced only after that succeeds."""
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}-{int(time.time())}")
        out.rename(old)
    try:
        tmp.rename(out)
    except BaseException:
        if old is not None:
            old.rename(out)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _save_tokenizer(tokenizer, folder: Path) -> None:
    """``tokenizer.save_pretrained(folder)``, plus its padding and truncation sides in tokenizer_config.json.

    transformers 5 leaves ``padding_side`` out of the saved config and a reload takes the side from
    tokenizer.json's padding state, which is only set once the tokenizer has padded something: a left-padding
    tokenizer could come back right-padding (and ``last`` pooling would then read the wrong token).
    """
    tokenizer.save_pretrained(str(folder))
    path = folder / "tokenizer_config.json"
    config = json.loads(path.read_text()) if path.is_file() else {}
    for key in ("padding_side", "truncation_side"):
        if getattr(tokenizer, key, None):
            config[key] = getattr(tokenizer, key)
    path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")


def _write_info(folder: Path, info: dict[str, Any]) -> None:
    (folder / EXPORT_FILE).write_text(json.dumps(info, indent=2, default=str) + "\n")


def export_onnx(
    model,
    out_dir: str | Path,
    *,
    opset: int = DEFAULT_OPSET,
    quantize: str | None = None,
    fp16: bool = False,
    beir: str | None = None,
    parity_tolerance: float = 1e-4,
    fp16_tolerance: float = FP16_TOLERANCE,
    min_quantized_cosine: float = MIN_QUANTIZED_COSINE,
    matryoshka_dims: Sequence[int] | None = None,
    attn_implementation: str | None = None,
    model_name: str | None = None,
    beir_split: str = "test",
    speed: bool = True,
    config=None,
) -> dict[str, Any]:
    """Export a bi-encoder to a self-contained ONNX folder and return its ``embedforge_export.json`` report.

    Args:
        model: a known name (``minilm``), a model folder, or a loaded ``BiEncoder``.
        out_dir: the export folder; built beside it and renamed into place only after every check passed
            (an older export there is replaced; any other existing non-empty folder is an error).
        opset: ONNX opset (NVIDIA: 17).
        quantize: ``"int8"`` adds ``model_int8.onnx`` (dynamic int8) with its quality vs fp32 reported.
        fp16: add ``model_fp16.onnx`` (fp16 weights, float32 inputs/outputs), parity-checked at ``fp16_tolerance``.
        beir: a BEIR folder: also report nDCG@10 / Recall@10 of each reduced-precision copy vs fp32 ONNX.
        parity_tolerance: max abs difference allowed between fp32 ONNX and PyTorch vectors.
        fp16_tolerance: the same for the fp16 copy.
        min_quantized_cosine: a reduced-precision copy whose mean cosine to fp32 is lower fails the export.
        matryoshka_dims: supported sizes to record; None: the model's own list, else powers of two >= 32.
        attn_implementation: attention used for tracing; None: eager, retried with the model's own on failure.
        model_name: the name recorded for serving; None: the short name or the folder's name.
        beir_split: qrels split of ``beir``.
        speed: time fp32 and each reduced-precision copy on one batch of 32 mixed texts (texts/s).
        config: the ``ExportConfig`` to record (built from the arguments when None).

    Raises:
        ExportError: a parity or quality check failed (``err.report`` has the numbers; nothing was kept).
    """
    from embedforge import __version__
    from embedforge.config import ExportConfig, config_dict
    from embedforge.model import BiEncoder

    if quantize not in (None, "int8"):
        raise ValueError(f"quantize must be None or 'int8', got {quantize!r}")
    if isinstance(model, BiEncoder):
        encoder, source = model, str(model.name)
        places = [model.name, getattr(model.model[0].auto_model, "name_or_path", None)]
        folder = next((str(p) for p in places if p and Path(str(p)).is_dir()), None)
    else:
        from embedforge.registry import resolve_model

        source, folder = str(model), resolve_model(model)
        encoder = BiEncoder.load(model)
    _parts(encoder)  # fail fast on what export cannot do
    dimension = int(encoder.dimension)
    if matryoshka_dims:
        dims = sorted({int(d) for d in matryoshka_dims if 0 < int(d) <= dimension} | {dimension})
    else:
        dims = model_matryoshka_dims(folder, dimension) or default_matryoshka_dims(dimension)
    if config is None:
        config = ExportConfig(
            model=source,
            out=str(out_dir),
            opset=opset,
            quantize=quantize,
            fp16=fp16,
            beir=beir,
            beir_split=beir_split,
            parity_tolerance=parity_tolerance,
            fp16_tolerance=fp16_tolerance,
            min_quantized_cosine=min_quantized_cosine,
            matryoshka_dims=list(matryoshka_dims or []),
            attn_implementation=attn_implementation,
            model_name=model_name,
            speed=speed,
        )
    out = Path(out_dir)
    _check_out_dir(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.export-"))
    started = time.perf_counter()
    try:
        _, tokenizer, pooling = _parts(encoder)
        _save_tokenizer(tokenizer, tmp)
        logger.info("exporting %s to ONNX (opset %d, pooling %s)", source, opset, pooling)
        traced = _export_backbone(
            encoder, tmp / MODEL_FILES["fp32"], opset=opset, attn_implementation=attn_implementation
        )
        actual_opset = _append_head(tmp / MODEL_FILES["fp32"], dimension, opset)
        timings = {"trace": round(time.perf_counter() - started, 1)}
        if actual_opset != opset:
            logger.warning("the exporter produced opset %d (asked for %d)", actual_opset, opset)
        files = {"fp32": MODEL_FILES["fp32"]}
        info: dict[str, Any] = {
            "source_model": source,
            "model_name": model_name or _model_name(source, encoder),
            "prompts": encoder.prompts,
            "max_seq_length": int(encoder.max_seq_length),
            "dimension": dimension,
            "matryoshka_dims": dims,
            "pooling": pooling,
            "normalized": True,
            "opset": actual_opset,
            "files": files,
            "inputs": {
                "input_ids": "int64 [batch, seq]",
                "attention_mask": "int64 [batch, seq]",
                DIMENSIONS_INPUT: f"int64 scalar, optional (default {dimension}; clipped to 1..{dimension})",
            },
            "outputs": {OUTPUT_NAME: "float32 [batch, dim_out], L2-normalised after truncation"},
            "padding_side": getattr(tokenizer, "padding_side", "right"),
            "truncation_side": getattr(tokenizer, "truncation_side", "right"),
            "exporter": {"torch.onnx.export": "dynamo", **traced},
            "parity": {},
            "quantization_report": {},
            "config": config_dict(config),
            "embedforge_version": __version__,
        }
        _write_info(tmp, info)

        mark = time.perf_counter()
        fp32 = OnnxEncoder(tmp, "fp32")
        _check_tokenizer(encoder, fp32, info)
        parity = parity_check(encoder, fp32, _parity_dims(dims, dimension), parity_tolerance)
        info["parity"] = parity
        timings["parity"] = round(time.perf_counter() - mark, 1)
        logger.info(
            "parity fp32 vs PyTorch: max abs diff %.2e (tolerance %.0e)",
            parity["max_abs_diff"],
            parity_tolerance,
        )
        if not parity["passed"]:
            raise ExportError(
                f"parity check failed: ONNX vs PyTorch max abs diff {parity['max_abs_diff']:.3e} "
                f"(norm error {parity['max_norm_error']:.1e}) > tolerance {parity_tolerance:.1e}",
                info,
            )

        variants = []
        mark = time.perf_counter()
        if quantize == "int8":
            fused = tmp / "model_fused.tmp.onnx"
            fusion = _fuse_for_onnxruntime(tmp / MODEL_FILES["fp32"], fused, traced["external_data"])
            fusion["max_abs_diff_vs_fp32"] = _max_graph_diff(fp32, fused)
            fusion["used"] = fusion["max_abs_diff_vs_fp32"] <= parity_tolerance
            if not fusion["used"]:
                logger.warning(
                    "fused graph differs from fp32 by %.2e: int8 built unfused",
                    fusion["max_abs_diff_vs_fp32"],
                )
            method = _quantize_int8(
                fused if fusion["used"] else tmp / MODEL_FILES["fp32"],
                tmp / MODEL_FILES["int8"],
                traced["external_data"],
            )
            method["fusion"] = fusion
            for leftover in tmp.glob(fused.name + "*"):
                leftover.unlink()
            files["int8"] = MODEL_FILES["int8"]
            variants.append(("int8", method))
        if fp16:
            method = _convert_fp16(
                tmp / MODEL_FILES["fp32"], tmp / MODEL_FILES["fp16"], dimension, traced["external_data"]
            )
            files["fp16"] = MODEL_FILES["fp16"]
            variants.append(("fp16", method))
        _write_info(tmp, info)

        dataset = fp32_beir = None
        if variants and beir:
            from embedforge.formats import read_beir

            dataset = read_beir(beir, split=beir_split)
            fp32_beir = _beir_scores(fp32, dataset)
        quality_dims = [d for d in _parity_dims(dims, dimension) if d != dimension][:1]
        fp32_speed = None
        for variant, method in variants:
            mark = time.perf_counter() if variant != variants[0][0] else mark
            other = OnnxEncoder(tmp, variant)
            report: dict[str, Any] = {"file": files[variant], **method}
            report.update(quality_vs_fp32(fp32, other, dims=quality_dims))
            report["min_cosine_alone_vs_batched"] = batch_consistency(other)
            if speed:
                fp32_speed = fp32_speed or round(measure_speed(fp32), 1)
                report["speed"] = {
                    "batch": len(PROBE_TEXTS),
                    "fp32_texts_per_s": fp32_speed,
                    f"{variant}_texts_per_s": round(measure_speed(other), 1),
                    "note": "in-process onnxruntime CPU, one batch of mixed texts, tokenization included",
                }
            report["file_mb"] = {
                "fp32": round((tmp / files["fp32"]).stat().st_size / 1e6, 1),
                variant: round((tmp / files[variant]).stat().st_size / 1e6, 1),
            }
            if variant == "fp16":
                info["parity"]["fp16"] = parity_check(
                    encoder, other, _parity_dims(dims, dimension), fp16_tolerance
                )
            if dataset is not None:
                scores = _beir_scores(other, dataset)
                report["beir"] = {
                    "dataset": str(beir),
                    "split": beir_split,
                    "fp32": fp32_beir,
                    variant: scores,
                    "delta": {m: scores[m] - fp32_beir[m] for m in _BEIR_METRICS},
                }
            info["quantization_report"][variant] = report
            timings[variant] = round(time.perf_counter() - mark, 1)
            logger.info("%s: mean cosine to fp32 %.5f", variant, report["mean_cosine_to_fp32"])
            del other
            if report["mean_cosine_to_fp32"] < min_quantized_cosine:
                raise ExportError(
                    f"{variant} copy is too far from fp32: mean cosine {report['mean_cosine_to_fp32']:.4f} "
                    f"< {min_quantized_cosine}",
                    info,
                )
            if variant == "fp16" and not info["parity"]["fp16"]["passed"]:
                raise ExportError(
                    f"fp16 parity check failed: max abs diff {info['parity']['fp16']['max_abs_diff']:.3e} "
                    f"> tolerance {fp16_tolerance:.1e}",
                    info,
                )
        info["seconds"] = round(time.perf_counter() - started, 1)
        info["timings_s"] = timings
        _write_info(tmp, info)
        del fp32
        _swap_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logger.info("export written to %s", out)
    return info


def run_export(config) -> dict[str, Any]:
    """The ``embedforge export`` stage: ``export_onnx`` driven by a ``config.ExportConfig``."""
    return export_onnx(
        config.model,
        config.out,
        opset=config.opset,
        quantize=config.quantize,
        fp16=config.fp16,
        beir=config.beir,
        parity_tolerance=config.parity_tolerance,
        fp16_tolerance=config.fp16_tolerance,
        min_quantized_cosine=config.min_quantized_cosine,
        matryoshka_dims=config.matryoshka_dims or None,
        attn_implementation=config.attn_implementation,
        model_name=config.model_name,
        beir_split=config.beir_split,
        speed=config.speed,
        config=config,
    )


def format_summary(info: dict[str, Any]) -> str:
    """A few readable lines: files, parity, and each reduced-precision copy's quality and speed."""
    lines = []
    if info.get("files"):
        lines.append(
            f"model {info.get('model_name')}: {info.get('dimension')} dims, pooling {info.get('pooling')}, "
            f"opset {info.get('opset')}, Matryoshka {info.get('matryoshka_dims')}, files {info['files']}"
        )
    parity = info.get("parity") or {}
    for label, entry in [("fp32", parity), ("fp16", parity.get("fp16"))]:
        if entry and "max_abs_diff" in entry:
            dims = ", ".join(f"{d}: {v:.1e}" for d, v in entry["by_dimension"].items())
            verdict = "PASSED" if entry["passed"] else "FAILED"
            lines.append(
                f"parity {label} vs PyTorch: max abs diff {entry['max_abs_diff']:.2e} "
                f"(tolerance {entry['tolerance']:.0e}) {verdict}; by dimension {dims}"
            )
    for variant, report in (info.get("quantization_report") or {}).items():
        line = (
            f"{variant}: mean cosine to fp32 {report['mean_cosine_to_fp32']:.5f} "
            f"(min {report['min_cosine_to_fp32']:.5f}, {report['probe_texts']} probe texts as query and passage); "
            f"size {report['file_mb'][variant]} MB vs fp32 {report['file_mb']['fp32']} MB; "
            f"same text alone vs in a batch: min cosine {report['min_cosine_alone_vs_batched']:.4f}"
        )
        if "speed" in report:
            sp = report["speed"]
            line += (
                f"; speed {sp[f'{variant}_texts_per_s']} vs fp32 {sp['fp32_texts_per_s']} texts/s "
                f"(one batch of {sp['batch']} mixed texts)"
            )
        lines.append(line)
        if "beir" in report:
            b = report["beir"]
            lines.append(
                f"{variant} on {b['dataset']}: "
                + ", ".join(
                    f"{m} {b[variant][m]:.4f} vs fp32 {b['fp32'][m]:.4f} ({b['delta'][m]:+.4f})"
                    for m in _BEIR_METRICS
                )
            )
    return "\n".join(lines)


__all__ = [
    "EXPORT_FILE",
    "MODEL_FILES",
    "ExportError",
    "OnnxEncoder",
    "default_matryoshka_dims",
    "export_onnx",
    "format_summary",
    "parity_check",
    "pool",
    "run_export",
]
