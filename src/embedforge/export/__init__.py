"""The export stage: a bi-encoder as a self-contained ONNX folder, checked against PyTorch before it is kept.

One module per job:

* ``graph``: trace backbone + pooling with the dynamo exporter; append Matryoshka truncation and L2 norm;
* ``checks``: tokenizer round trip, parity with PyTorch (fails above 1e-4), quality of reduced-precision
  copies (cosine to fp32, batch dependence, speed, nDCG@10 / Recall@10 delta on a BEIR folder);
* ``quantize``: int8 on a fused graph (``attention_fusion``), one scale per token row (``rowwise_int8``),
  and fp16;
* ``folder``: the one loader of an export folder (manifest, graph per precision, ONNX Runtime session),
  shared by ``OnnxEncoder`` (``encoder``) and the server;
* ``build``: ``export_onnx`` / ``run_export``, which build in a temp sibling and rename into place only when
  every check passed.

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

from embedforge.export.build import export_onnx, format_summary, run_export
from embedforge.export.checks import (
    FP16_TOLERANCE,
    MIN_QUANTIZED_COSINE,
    PARITY_TEXTS,
    PROBE_TEXTS,
    ExportError,
    parity_check,
    quality_vs_fp32,
)
from embedforge.export.encoder import OnnxEncoder
from embedforge.export.folder import (
    EXPORT_FILE,
    MODEL_FILES,
    PRECISIONS,
    ExportFolder,
    ExportFolderError,
    display_name,
    is_export_folder,
)
from embedforge.export.graph import DEFAULT_OPSET, default_matryoshka_dims, model_matryoshka_dims, pool

__all__ = [
    "DEFAULT_OPSET",
    "EXPORT_FILE",
    "FP16_TOLERANCE",
    "MIN_QUANTIZED_COSINE",
    "MODEL_FILES",
    "PARITY_TEXTS",
    "PRECISIONS",
    "PROBE_TEXTS",
    "ExportError",
    "ExportFolder",
    "ExportFolderError",
    "OnnxEncoder",
    "default_matryoshka_dims",
    "display_name",
    "export_onnx",
    "format_summary",
    "is_export_folder",
    "model_matryoshka_dims",
    "parity_check",
    "pool",
    "quality_vs_fp32",
    "run_export",
]
