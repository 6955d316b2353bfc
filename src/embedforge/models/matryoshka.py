"""Matryoshka truncation, defined once for eval, the vector memo and the server: truncate, then normalise."""

from __future__ import annotations

import numpy as np


def unit_truncate(vectors: np.ndarray, dimensions: int | None) -> np.ndarray:
    """Keep the first ``dimensions`` values (None: all), then L2-normalise each row; float32, contiguous."""
    out = np.asarray(vectors, dtype=np.float32)
    if dimensions is not None and dimensions < out.shape[-1]:
        out = out[..., :dimensions]
    norms = np.linalg.norm(out, axis=-1, keepdims=True)
    return np.ascontiguousarray(out / np.maximum(norms, 1e-12), dtype=np.float32)
