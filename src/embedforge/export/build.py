"""The export stage: build the folder in a temp sibling, run every check, rename it into place.

Nothing is left at the output path when a check fails, and an older export there is replaced only once
the new one is complete (``embedforge.atomic``). A folder that is not an export is never replaced.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path
from typing import Any

from embedforge.atomic import atomic_write, write_json_atomic
from embedforge.export.checks import (
    BEIR_METRICS,
    ExportError,
    beir_scores,
    check_tokenizer,
    measure_speed,
    measure_variant,
    parity_check,
    parity_dims,
)
from embedforge.export.encoder import OnnxEncoder
from embedforge.export.folder import DIMENSIONS_INPUT, EXPORT_FILE, MODEL_FILES, OUTPUT_NAME, display_name
from embedforge.export.graph import (
    append_head,
    default_matryoshka_dims,
    model_matryoshka_dims,
    model_parts,
    trace_backbone,
)
from embedforge.export.quantize import add_variants

logger = logging.getLogger(__name__)


def _check_out_dir(out: Path) -> None:
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / EXPORT_FILE).is_file())):
        raise ExportError(
            f"{out} exists and is not an embedforge export folder (no {EXPORT_FILE}); not replaced"
        )


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


def _load(model) -> tuple[Any, str, str | None]:
    """(BiEncoder, source label, model folder or None) for a known name, a folder or a loaded BiEncoder."""
    from embedforge.models.bi_encoder import BiEncoder

    if isinstance(model, BiEncoder):
        places = [model.name, getattr(model.model[0].auto_model, "name_or_path", None)]
        return model, str(model.name), next((str(p) for p in places if p and Path(str(p)).is_dir()), None)
    from embedforge.models.registry import resolve_model

    return BiEncoder.load(model), str(model), resolve_model(model)


def _manifest(encoder, tokenizer, config, source: str, dims: list[int], opset: int, traced: dict) -> dict:
    from embedforge import __version__
    from embedforge.config import config_dict

    dimension = int(encoder.dimension)
    return {
        "source_model": source,
        "model_name": config.model_name or display_name(source),
        "prompts": encoder.prompts,
        "max_seq_length": int(encoder.max_seq_length),
        "dimension": dimension,
        "matryoshka_dims": dims,
        "pooling": traced["pooling"],
        "normalized": True,
        "opset": opset,
        "files": {"fp32": MODEL_FILES["fp32"]},
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


def export_onnx(model, out_dir: str | Path, config=None, **overrides) -> dict[str, Any]:
    """Export a bi-encoder to a self-contained ONNX folder and return its ``embedforge_export.json`` report.

    Args:
        model: a known name (``minilm``), a model folder, or a loaded ``BiEncoder``.
        out_dir: the export folder; built beside it and renamed into place only after every check passed
            (an older export there is replaced; any other existing non-empty folder is an ``ExportError``).
        config: an ``ExportConfig`` (its ``model`` and ``out`` are replaced by the two arguments above);
            ``overrides`` set any of its other keys (``quantize="int8"``, ``speed=False``, ...).

    Raises:
        ExportError: a parity or quality check failed (``err.report`` has the numbers; nothing was kept),
            or ``out_dir`` is a folder that is not an export.
    """
    from embedforge.config import ExportConfig

    encoder, source, folder = _load(model)
    config = dataclasses.replace(config or ExportConfig(), model=source, out=str(out_dir), **overrides)
    if config.quantize not in (None, "int8"):
        raise ValueError(f"quantize must be None or 'int8', got {config.quantize!r}")
    _, tokenizer, _ = model_parts(encoder)  # fail fast on what export cannot do
    dimension = int(encoder.dimension)
    if config.matryoshka_dims:
        dims = sorted({int(d) for d in config.matryoshka_dims if 0 < int(d) <= dimension} | {dimension})
    else:
        dims = model_matryoshka_dims(folder, dimension) or default_matryoshka_dims(dimension)
    out = Path(out_dir)
    _check_out_dir(out)
    started = time.perf_counter()
    with atomic_write(out) as tmp:
        tmp.mkdir()
        info = _build(encoder, tokenizer, config, source, dims, tmp)
        info["seconds"] = round(time.perf_counter() - started, 1)
        write_json_atomic(tmp / EXPORT_FILE, info)
    logger.info("export written to %s", out)
    return info


def _trace(encoder, tokenizer, config, source: str, dimension: int, tmp: Path) -> tuple[dict, int]:
    """Write the tokenizer and the fp32 graph with its embedding head; return the trace facts and the opset."""
    _save_tokenizer(tokenizer, tmp)
    logger.info("exporting %s to ONNX (opset %d, pooling %s)", source, config.opset, encoder.pooling)
    graph = tmp / MODEL_FILES["fp32"]
    traced = trace_backbone(
        encoder, graph, opset=config.opset, attn_implementation=config.attn_implementation
    )
    return traced, append_head(graph, dimension, config.opset)


def _require_parity(info: dict, config) -> None:
    """Refuse an fp32 graph that does not embed like the PyTorch model it came from."""
    parity = info["parity"]
    logger.info(
        "parity fp32 vs PyTorch: max abs diff %.2e (tolerance %.0e)",
        parity["max_abs_diff"],
        config.parity_tolerance,
    )
    if not parity["passed"]:
        raise ExportError(
            f"parity check failed: ONNX vs PyTorch max abs diff {parity['max_abs_diff']:.3e} "
            f"(norm error {parity['max_norm_error']:.1e}) > tolerance {config.parity_tolerance:.1e}",
            info,
        )


def _fp32_beir(fp32, config) -> dict:
    """The BEIR split the copies are scored on, with the fp32 graph's scores as their reference."""
    from embedforge.data.formats import read_beir

    data = read_beir(config.beir, split=config.beir_split)
    beir = {"dataset": str(config.beir), "split": config.beir_split, "data": data}
    beir["fp32"], beir["fp32_per_query"] = beir_scores(fp32, data)
    return beir


def _require_close(variant: str, report: dict, info: dict, config) -> None:
    """Refuse a smaller copy that drifted too far from fp32 to stand in for it."""
    if report["mean_cosine_to_fp32"] < config.min_quantized_cosine:
        raise ExportError(
            f"{variant} copy is too far from fp32: mean cosine {report['mean_cosine_to_fp32']:.4f} "
            f"< {config.min_quantized_cosine}",
            info,
        )
    if variant == "fp16" and not info["parity"]["fp16"]["passed"]:
        raise ExportError(
            f"fp16 parity check failed: max abs diff {info['parity']['fp16']['max_abs_diff']:.3e} "
            f"> tolerance {config.fp16_tolerance:.1e}",
            info,
        )


def _write_and_measure_variants(
    encoder, fp32, tmp: Path, info: dict, config, traced: dict, checked_dims, timings
):
    """Write the smaller copies, then measure each against fp32 into ``info`` (the first one's time includes
    writing them all)."""
    mark = time.perf_counter()
    variants = add_variants(tmp, fp32, config, traced["external_data"])
    info["files"].update({variant: MODEL_FILES[variant] for variant in variants})
    write_json_atomic(tmp / EXPORT_FILE, info)
    beir = _fp32_beir(fp32, config) if variants and config.beir else None
    fp32_speed = round(measure_speed(fp32), 1) if variants and config.speed else None
    for variant, method in variants.items():
        other = OnnxEncoder(tmp, variant)
        report = {"file": MODEL_FILES[variant], **method}
        report.update(measure_variant(fp32, other, dims=checked_dims[1:2], fp32_speed=fp32_speed, beir=beir))
        if variant == "fp16":
            info["parity"]["fp16"] = parity_check(encoder, other, checked_dims, config.fp16_tolerance)
        info["quantization_report"][variant] = report
        timings[variant] = round(time.perf_counter() - mark, 1)
        mark = time.perf_counter()
        logger.info("%s: mean cosine to fp32 %.5f", variant, report["mean_cosine_to_fp32"])
        del other
        _require_close(variant, report, info, config)


def _build(encoder, tokenizer, config, source: str, dims: list[int], tmp: Path) -> dict[str, Any]:
    """Everything inside the temp folder: trace, head, manifest, parity, copies and their reports."""
    started = time.perf_counter()
    dimension = int(encoder.dimension)
    traced, opset = _trace(encoder, tokenizer, config, source, dimension, tmp)
    timings = {"trace": round(time.perf_counter() - started, 1)}
    if opset != config.opset:
        logger.warning("the exporter produced opset %d (asked for %d)", opset, config.opset)
    info = _manifest(encoder, tokenizer, config, source, dims, opset, traced)
    write_json_atomic(tmp / EXPORT_FILE, info)

    mark = time.perf_counter()
    fp32 = OnnxEncoder(tmp, "fp32")
    check_tokenizer(encoder, fp32, info)
    checked_dims = parity_dims(dims, dimension)
    info["parity"] = parity_check(encoder, fp32, checked_dims, config.parity_tolerance)
    timings["parity"] = round(time.perf_counter() - mark, 1)
    _require_parity(info, config)

    _write_and_measure_variants(encoder, fp32, tmp, info, config, traced, checked_dims, timings)
    info["timings_s"] = timings
    return info


def run_export(config) -> dict[str, Any]:
    """The ``embedforge export`` stage: ``export_onnx`` driven by a ``config.ExportConfig``."""
    return export_onnx(config.model, config.out, config)


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
                    for m in BEIR_METRICS
                )
            )
            paired = b.get("paired_ndcg@10")
            if not paired:  # an export written before the paired test
                continue
            low, high = paired["ci95"]
            lines.append(
                f"{variant} vs fp32 per query: nDCG@10 {paired['diff']:+.4f}, 95% CI [{low:+.4f}, {high:+.4f}] "
                f"over {paired['n']} queries: {paired['verdict']} ({paired['why']})"
            )
    return "\n".join(lines)
