"""Embed each passage once per run: the base model's passage vectors shared by sdg, prep and eval.

In ``embedforge run`` the base model embeds the same passages three times: the whole corpus for sdg's
round-trip filter, the training documents for mining, the test documents for the baseline eval. On a CPU
that is most of the run's time outside generation and training. ``MemoEncoder`` wraps one loaded encoder
and remembers every passage vector it computed, keyed by the exact text, so each passage is embedded once.
Queries are not remembered (each stage embeds different ones, and they are short). The model itself can
be released between stages (``release``) and is loaded again only when a query or a new passage needs it,
so a large base model does not sit in memory while the tuned one trains.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from embedforge.models.matryoshka import unit_truncate


class MemoEncoder:
    """An ``Encoder`` whose ``encode_passages`` computes each distinct text once (the wrapped one's vectors).

    Args:
        load: builds the encoder (called on first use, and again after ``release``).
        name: the report name (the encoder's ``name`` is not known before it is loaded).

    Vectors are stored at the full dimension; a ``dimensions`` request truncates and re-normalises them,
    as the wrapped encoder would. Every other attribute is the wrapped encoder's.
    """

    def __init__(self, load: Callable[[], object], name: str):
        self._load = load
        self._encoder = None
        self.name = name
        self._vectors: dict[str, np.ndarray] = {}
        self.hits = 0
        self.misses = 0

    @property
    def encoder(self):
        if self._encoder is None:
            self._encoder = self._load()
        return self._encoder

    def release(self) -> None:
        """Drop the model, keep the vectors."""
        self._encoder = None

    @property
    def dimension(self) -> int:
        return self.encoder.dimension

    @property
    def prompts(self) -> dict[str, str]:
        return self.encoder.prompts

    def encode_queries(
        self,
        texts: Sequence[str],
        *,
        batch_size: int = 64,
        dimensions: int | None = None,
        progress: bool = False,
    ) -> np.ndarray:
        """Queries are not remembered: the wrapped encoder's vectors."""
        return self.encoder.encode_queries(
            texts, batch_size=batch_size, dimensions=dimensions, progress=progress
        )

    def __getattr__(self, name):
        if name.startswith("_"):  # never route private lookups (e.g. during copying) to a model load
            raise AttributeError(name)
        return getattr(self.encoder, name)

    def encode_passages(
        self,
        texts: Sequence[str],
        *,
        batch_size: int = 64,
        dimensions: int | None = None,
        progress: bool = False,
    ) -> np.ndarray:
        """Each distinct text embedded once; a ``dimensions`` request truncates the stored full-size rows."""
        texts = list(texts)
        missing = list(dict.fromkeys(t for t in texts if t not in self._vectors))
        self.hits += len(texts) - len(missing)
        self.misses += len(missing)
        if missing:
            fresh = self.encoder.encode_passages(missing, batch_size=batch_size, progress=progress)
            self._vectors.update(zip(missing, np.asarray(fresh, dtype=np.float32), strict=True))
        if not texts:
            return np.zeros((0, self.encoder.dimension), dtype=np.float32)
        vectors = np.stack([self._vectors[t] for t in texts])
        if dimensions is not None and not 0 < dimensions <= vectors.shape[1]:
            raise ValueError(f"dimensions must be in 1..{vectors.shape[1]}, got {dimensions}")
        return unit_truncate(vectors, dimensions)
