"""An export folder run with ONNX Runtime behind the ``BiEncoder`` interface, for eval, parity and checks."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from embedforge.export.folder import DIMENSIONS_INPUT, OUTPUT_NAME, ExportFolder


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
        self.folder = ExportFolder(folder)
        self.path, self.info = self.folder.path, self.folder.manifest
        self.variant = variant
        self.model_file = self.folder.graph(variant)
        self.session = self.folder.session(variant, threads=threads or 0)
        self.tokenizer = self.folder.tokenizer()
        self.prompts: dict[str, str] = self.folder.prompts
        self.dimension: int = int(self.info["dimension"])
        self.max_seq_length: int = int(self.info["max_seq_length"])
        self.pooling: str = self.info["pooling"]
        self.matryoshka_dims: list[int] = list(self.info.get("matryoshka_dims") or [self.dimension])
        base = self.folder.model_name
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
