"""The fp32 graph: backbone + pooling traced by the dynamo exporter, then truncation and L2 norm appended.

The dynamo exporter (``torch.onnx.export(..., dynamo=True)``) is used because the legacy TorchScript
exporter bakes the padding-mask branch and drifts on mixed-length batches. Axes ``batch`` and ``seq`` are
dynamic; the model's pooling (avg / cls / last / weighted_avg, driven by the attention mask so left and right
padding both work) is inside the graph; Matryoshka truncation and normalisation (truncate first, then
normalise) are added by hand, with ``dimensions`` an optional input defaulting to the full size.
"""

from __future__ import annotations

import contextlib
import json
import logging
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from embedforge.export.checks import PARITY_TEXTS, ExportError
from embedforge.export.folder import DIMENSIONS_INPUT, INPUT_NAMES, OUTPUT_NAME

logger = logging.getLogger(__name__)

DEFAULT_OPSET = 17
# above this many bytes of weights, they go to a .data file beside the graph (protobuf's 2 GB limit)
EXTERNAL_DATA_BYTES = 1_800_000_000
POOLING_MODES = ("avg", "cls", "last", "weighted_avg")


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
        raise ValueError(f"pooling must be one of {list(POOLING_MODES)}, got '{mode}'")
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


def model_parts(encoder) -> tuple[Any, Any, str]:
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
    if pooling not in POOLING_MODES:
        raise ValueError(f"export supports pooling {list(POOLING_MODES)}, got '{pooling}'")
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


# ------------------------------------------------------------------------------------------- the graph


def opset_of(model) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


@contextlib.contextmanager
def quiet_exporter():
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


def trace_backbone(encoder, path: Path, *, opset: int, attn_implementation: str | None) -> dict[str, Any]:
    """Trace backbone + pooling to ``path`` with the dynamo exporter; returns what was used."""
    import torch

    transformer, tokenizer, pooling = model_parts(encoder)
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
    external = n_bytes > EXTERNAL_DATA_BYTES

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
                    with quiet_exporter():
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


def append_head(path: Path, dimension: int, opset: int) -> int:
    """Add the truncation + normalisation head to the graph at ``path`` (in place); returns its opset.

    The dynamo exporter builds at opset 18 and converts down; when its converter gives up (it does for Llama
    graphs) onnx's own version converter is tried on the finished graph before settling for 18.
    """
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    small = model.ByteSize() < EXTERNAL_DATA_BYTES and not _has_external_data(model)
    if opset_of(model) != opset and small:
        model = convert_opset(model, opset)
    add_head(model, dimension)
    if small:
        onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return opset_of(model)


_REDUCE_OPS = {"ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2", "ReduceLogSum"}
_REDUCE_OPS |= {"ReduceLogSumExp", "ReduceSumSquare"}


def convert_opset(model, opset: int):
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
        logger.warning("could not convert the graph to opset %d (kept %d): %s", opset, opset_of(model), err)
        return model


def _has_external_data(model) -> bool:
    from onnx import TensorProto

    return any(t.data_location == TensorProto.EXTERNAL for t in model.graph.initializer)


_HEAD_NODES = ("ef_dims_1d", "ef_dims_clip", "ef_truncate", "ef_l2", "ef_norm_safe", "ef_normalise")


def add_head(model, dimension: int) -> None:
    """``dimensions`` (optional, default full) -> truncate -> L2-normalise -> ``embeddings``, all float32."""
    from onnx import TensorProto, helper, numpy_helper

    graph = model.graph
    opset = opset_of(model)
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


def strip_head(model) -> None:
    """Undo ``add_head``: the graph ends at the pooled float32 [batch, hidden] tensor again."""
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
