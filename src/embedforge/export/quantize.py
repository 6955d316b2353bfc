"""Reduced-precision copies of the fp32 graph: per-row int8 (built on a fused graph) and fp16.

int8: onnxruntime's transformer fusions plus ours for attention (``attention_fusion``), kept only when the
fused graph matches fp32 within the parity tolerance, then per-row int8 (``rowwise_int8``) on the MatMul
and attention projections. fp16: fp16 weights and activations with float32 inputs, outputs and head.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from embedforge.export.checks import max_graph_diff
from embedforge.export.encoder import OnnxEncoder
from embedforge.export.folder import MODEL_FILES
from embedforge.export.graph import add_head, quiet_exporter, strip_head

logger = logging.getLogger(__name__)


def fuse_for_onnxruntime(src: Path, dst: Path, external: bool, attention: bool = True) -> dict[str, Any]:
    """Write ``src`` with onnxruntime's transformer fusions (SkipLayerNormalization, BiasGelu, ...) and our
    attention fusion (``attention_fusion``) to ``dst``.

    The fused ops are onnxruntime contrib ops, so only the int8 copy (an onnxruntime artifact anyway) is
    built from this graph; ``model.onnx`` stays plain ONNX for other runtimes. On this 2-core CPU the fused
    int8 graph runs about 1.5x faster than the unfused one, and the attention fusion adds 1.1-1.2x on top
    (docs/benchmarks.md, serving).
    """
    from onnxruntime.transformers.optimizer import optimize_model

    from embedforge.export.attention_fusion import fuse_attention

    with quiet_exporter():
        # opt_level 0: the pattern fusions only; onnxruntime's own graph passes run at session load anyway
        fused = optimize_model(str(src), model_type="bert", opt_level=0, use_gpu=False)
        counts = {op: n for op, n in fused.get_fused_operator_statistics().items() if n}
        layers = fuse_attention(fused) if attention else 0
        if layers:
            counts["Attention"] = counts.get("Attention", 0) + layers
        fused.save_model_to_file(str(dst), use_external_data_format=external)
    return {
        "method": "onnxruntime.transformers.optimizer (model_type bert, opt_level 0) + "
        "embedforge.export.attention_fusion",
        "fused_ops": counts,
    }


def quantize_int8(src: Path, dst: Path, external: bool) -> dict[str, Any]:
    """int8 weights and per-row int8 activations (``rowwise_int8``): a text's vector is the same in any batch.

    The embedding tables (Gather) stay fp32: quantizing them costs quality and buys no speed.
    """
    from embedforge.export.rowwise_int8 import SYMMETRIC_KINDS, quantize_rowwise

    with quiet_exporter():
        counts = quantize_rowwise(src, dst, external)
    return {
        "method": "embedforge.export.rowwise_int8 (QuantizeLinear per row, MatMulIntegerToFloat, "
        "MultiHeadAttention)",
        "quantized_ops": counts,
        "weights": "int8, one scale per output column",
        "activations": "uint8, one scale and zero point per token row computed at run time "
        f"(zero point fixed at 128 for {sorted(SYMMETRIC_KINDS)}, else the row's own)",
    }


def convert_fp16(src: Path, dst: Path, dimension: int, external: bool) -> dict[str, Any]:
    """fp16 weights and activations with float32 inputs/outputs; truncation and normalisation stay float32.

    The head is taken off before conversion and put back after, so the pooled vector is cast to float32
    once and the output keeps full float32 precision (unit norm to ~1e-7).
    """
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = onnx.load(str(src))
    strip_head(model)
    with quiet_exporter():
        half = convert_float_to_float16(model, keep_io_types=True)
    add_head(half, dimension)
    onnx.save(half, str(dst), save_as_external_data=external, location=dst.name + ".data")
    return {
        "method": "onnxruntime.transformers.float16.convert_float_to_float16",
        "keep_io_types": True,
        "float32_parts": "inputs, outputs, truncation and L2 normalisation",
    }


def add_variants(folder: Path, fp32: OnnxEncoder, config, external: bool) -> dict[str, dict[str, Any]]:
    """Write the copies ``config`` asks for (``quantize: int8``, ``fp16``) beside ``model.onnx`` in ``folder``.

    Returns ``{variant: how it was made}``; the int8 entry records whether the fused graph was used.
    """
    made: dict[str, dict[str, Any]] = {}
    source = folder / MODEL_FILES["fp32"]
    if config.quantize == "int8":
        fused = folder / "model_fused.tmp.onnx"
        fusion = fuse_for_onnxruntime(source, fused, external)
        fusion["max_abs_diff_vs_fp32"] = max_graph_diff(fp32, fused)
        fusion["used"] = fusion["max_abs_diff_vs_fp32"] <= config.parity_tolerance
        if not fusion["used"]:
            logger.warning(
                "fused graph differs from fp32 by %.2e: int8 built unfused", fusion["max_abs_diff_vs_fp32"]
            )
        method = quantize_int8(fused if fusion["used"] else source, folder / MODEL_FILES["int8"], external)
        method["fusion"] = fusion
        for leftover in folder.glob(fused.name + "*"):
            leftover.unlink()
        made["int8"] = method
    if config.fp16:
        made["fp16"] = convert_fp16(source, folder / MODEL_FILES["fp16"], fp32.dimension, external)
    return made
