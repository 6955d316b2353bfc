"""The one interface every embedder offers, so eval, mining, prep and verify take any of them.

A PyTorch checkpoint (``models.bi_encoder.BiEncoder``), an ONNX export (``export.encoder.OnnxEncoder``), a
model served over HTTP (``verify.ServedEncoder``) and the run's passage memo
(``models.vector_memo.MemoEncoder``) all embed queries and passages with their own prompts applied and return
unit-norm float32 rows, one per text, in input order. Code that scores retrieval needs nothing else, so it is
written once against ``Encoder`` (PEP 544 structural typing: an embedder satisfies it by having these members,
without inheriting).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class Encoder(Protocol):
    """Embeds queries and passages; ``dimensions`` asks for Matryoshka-truncated, re-normalised rows."""

    @property
    def name(self) -> str:
        """The label reports use."""
        ...

    @property
    def dimension(self) -> int:
        """The full vector size."""
        ...

    @property
    def prompts(self) -> dict[str, str]:
        """``{"query": prefix, "passage": prefix}`` the encoder applies ("" for none)."""
        ...

    def encode_queries(
        self,
        texts: Sequence[str],
        *,
        batch_size: int = ...,
        dimensions: int | None = None,
        progress: bool = False,
    ) -> np.ndarray:
        """Unit-norm float32 query vectors, one row per text."""
        ...

    def encode_passages(
        self,
        texts: Sequence[str],
        *,
        batch_size: int = ...,
        dimensions: int | None = None,
        progress: bool = False,
    ) -> np.ndarray:
        """Unit-norm float32 passage vectors, one row per text."""
        ...
