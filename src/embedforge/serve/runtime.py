"""What the server runs: a model behind one small interface, in PyTorch or in ONNX Runtime.

An ``EmbeddingRuntime`` knows its tokenizer, token limit, prompts and dimensions, and turns already
tokenized, padded numpy batches into unit vectors. Everything about HTTP, batching and limits lives in
``app`` and ``batcher``; this module only loads models and runs them.

* ``TorchRuntime``: a BiEncoder checkpoint folder (sentence-transformers layout) or a known short name.
* ``OnnxRuntime``: a folder written by ``embedforge export`` (``model.onnx`` + tokenizer files +
  ``embedforge_export.json``), optionally its int8 graph.
* ``load_runtime`` picks ONNX when the folder has ``embedforge_export.json``, else PyTorch.

``tokenize`` is shared by both: it prepends the prompt for the input type (exactly as sentence-transformers
does: ``prompt + text``), and applies the NIM ``truncate`` modes; ``pad`` builds the numpy batch.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from embedforge.models.matryoshka import unit_truncate

logger = logging.getLogger(__name__)

TRUNCATE_MODES = ("NONE", "START", "END")
INPUT_TYPES = ("query", "passage")


class InputTooLongError(ValueError):
    """An input longer than the model's token limit with ``truncate=NONE``."""

    def __init__(self, index: int, length: int, limit: int):
        self.index, self.length, self.limit = index, length, limit
        super().__init__(f"Input length {length} exceeds maximum allowed token size {limit}")


@dataclass
class Tokenized:
    """One tokenized input: its ids (special tokens and prompt included) ready to pad."""

    ids: list[int]
    truncated: bool = False


class EmbeddingRuntime:
    """A loaded embedding model the server can run. Subclasses set the attributes and ``_forward``.

    Attributes:
        model_name: the name the server reports by default.
        tokenizer: a Hugging Face tokenizer.
        max_length: token limit per input, special tokens and prompt included.
        prompts: ``{"query": str, "passage": str}`` prepended server-side.
        dimension: full embedding size.
        supported_dimensions: the sizes a request may ask for (ascending; always includes ``dimension``).
        backend: ``"torch"`` or ``"onnx"`` (and the precision for ONNX).
    """

    model_name: str
    tokenizer: Any
    max_length: int
    prompts: dict[str, str]
    dimension: int
    supported_dimensions: list[int]
    backend: str = "?"

    @property
    def asymmetric(self) -> bool:
        """True when queries and passages get different prompts, so a request must say which it sends."""
        return self.prompts.get("query", "") != self.prompts.get("passage", "")

    def describe(self) -> dict[str, Any]:
        return {
            "model_name": self.model_name,
            "backend": self.backend,
            "max_length": self.max_length,
            "prompts": dict(self.prompts),
            "dimension": self.dimension,
            "supported_dimensions": list(self.supported_dimensions),
            "asymmetric": self.asymmetric,
        }

    # --------------------------------------------------------------------------------- tokenization

    def _init_tokenization(self) -> None:
        """Find the special tokens the tokenizer adds around content (e.g. [CLS] ... [SEP]) once."""
        tok = self.tokenizer
        probe = "hello"
        content = tok(probe, add_special_tokens=False)["input_ids"]
        full = tok(probe, add_special_tokens=True)["input_ids"]
        for start in range(len(full) - len(content) + 1):
            if full[start : start + len(content)] == content:
                self._prefix, self._suffix = full[:start], full[start + len(content) :]
                break
        else:  # pragma: no cover - no known tokenizer does this
            raise ValueError("cannot locate content tokens inside the tokenizer's special tokens")
        self._prompt_ids = {
            kind: tok(prompt, add_special_tokens=False)["input_ids"] if prompt else []
            for kind, prompt in self.prompts.items()
        }
        self._pad_id = tok.pad_token_id if tok.pad_token_id is not None else 0
        self._left_pad = getattr(tok, "padding_side", "right") == "left"
        self._tok_lock = threading.Lock()

    def tokenize(self, texts: Sequence[str], input_type: str, truncate: str = "NONE") -> list[Tokenized]:
        """Token ids of ``prompt + text`` for each text, as sentence-transformers builds them.

        ``truncate``: ``NONE`` raises ``InputTooLongError`` for the first input over ``max_length``;
        ``END`` drops tokens from the end (what sentence-transformers does silently); ``START`` drops tokens
        from the start of the text but keeps the prompt, so a query stays a query.
        """
        if truncate not in TRUNCATE_MODES:
            raise ValueError(f"truncate must be one of {TRUNCATE_MODES}, got {truncate!r}")
        prompt = self.prompts.get(input_type, "")
        with self._tok_lock:  # HF fast tokenizers are not safe to share between threads mid-call
            encoded = self.tokenizer(
                [prompt + text for text in texts], add_special_tokens=True, truncation=False, verbose=False
            )["input_ids"]
        limit = self.max_length
        out = []
        for i, ids in enumerate(encoded):
            if len(ids) <= limit:
                out.append(Tokenized(list(ids)))
                continue
            if truncate == "NONE":
                raise InputTooLongError(i, len(ids), limit)
            out.append(Tokenized(self._truncate(list(ids), input_type, truncate), truncated=True))
        return out

    def _truncate(self, ids: list[int], input_type: str, mode: str) -> list[int]:
        pre, suf = self._prefix, self._suffix
        body = ids[len(pre) : len(ids) - len(suf)] if suf else ids[len(pre) :]
        budget = self.max_length - len(pre) - len(suf)
        if mode == "END":
            return pre + body[:budget] + suf
        prompt = self._prompt_ids.get(input_type, [])
        keep = prompt if prompt and body[: len(prompt)] == prompt and len(prompt) < budget else []
        rest = body[len(keep) :]
        tail = budget - len(keep)
        return pre + keep + rest[len(rest) - tail :] + suf

    def pad(self, batch: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
        """``(input_ids, attention_mask)`` int64 arrays padded to the longest sequence of the batch."""
        width = max(len(ids) for ids in batch)
        input_ids = np.full((len(batch), width), self._pad_id, dtype=np.int64)
        mask = np.zeros((len(batch), width), dtype=np.int64)
        for row, ids in enumerate(batch):
            if self._left_pad:
                input_ids[row, width - len(ids) :] = ids
                mask[row, width - len(ids) :] = 1
            else:
                input_ids[row, : len(ids)] = ids
                mask[row, : len(ids)] = 1
        return input_ids, mask

    # ------------------------------------------------------------------------------------ inference

    def embed(
        self, input_ids: np.ndarray, attention_mask: np.ndarray, dimensions: int | None = None
    ) -> np.ndarray:
        """Unit-norm float32 vectors ``(batch, dimensions or dimension)`` for a padded int64 batch."""
        if dimensions is not None and not 0 < dimensions <= self.dimension:
            raise ValueError(f"dimensions must be in 1..{self.dimension}, got {dimensions}")
        input_ids = np.ascontiguousarray(input_ids, dtype=np.int64)
        attention_mask = np.ascontiguousarray(attention_mask, dtype=np.int64)
        if input_ids.ndim != 2 or input_ids.shape != attention_mask.shape:
            raise ValueError(
                f"input_ids and attention_mask must be 2-D with one shape, got {input_ids.shape}, "
                f"{attention_mask.shape}"
            )
        return self._forward(input_ids, attention_mask, dimensions)

    def _forward(self, input_ids: np.ndarray, attention_mask: np.ndarray, dimensions: int | None):
        raise NotImplementedError

    def embed_texts(
        self, texts: Sequence[str], input_type: str = "query", *, dimensions: int | None = None
    ) -> np.ndarray:
        """Convenience for scripts and warm-up: tokenize (truncate END), pad and embed in one go."""
        tokens = self.tokenize(texts, input_type, "END")
        return self.embed(*self.pad([t.ids for t in tokens]), dimensions)


def _supported_dimensions(full: int, extra: Sequence[int] | None) -> list[int]:
    dims = {int(full)}
    for d in extra or ():
        if 0 < int(d) <= full:
            dims.add(int(d))
        else:
            logger.warning("ignoring Matryoshka dimension %s: not in 1..%d", d, full)
    return sorted(dims)


def _declared_dimensions(folder: Path | None, dimension: int) -> list[int]:
    """The sizes ``embedforge export`` would record for this model, so PyTorch and ONNX serving agree:
    the Matryoshka sizes the model declares (embedforge.json / config.json), else powers of two from 32."""
    from embedforge.export import default_matryoshka_dims, model_matryoshka_dims

    return model_matryoshka_dims(folder, dimension) or default_matryoshka_dims(dimension)


class TorchRuntime(EmbeddingRuntime):
    """A BiEncoder (sentence-transformers folder or known name) run with PyTorch on the CPU.

    Args:
        model: a folder, a known name (``minilm``) or a loaded ``BiEncoder``.
        name: the model name to report (default: the known name or folder name).
        dimensions: the Matryoshka sizes to accept besides the full size (default: the model's declared
            sizes, else powers of two from 32, as ``embedforge export`` records).
        max_length: token limit (default: the model's ``max_seq_length``).
        threads: torch intra-op threads; 0 leaves torch's default.
    """

    backend = "torch"

    def __init__(
        self,
        model,
        *,
        name: str | None = None,
        dimensions: Sequence[int] | None = None,
        max_length: int | None = None,
        threads: int = 0,
    ):
        import torch

        from embedforge.export import display_name
        from embedforge.models.bi_encoder import BiEncoder
        from embedforge.models.registry import KNOWN_MODELS, resolve_model

        if threads:
            torch.set_num_threads(threads)
        self._torch = torch
        if isinstance(model, BiEncoder):
            encoder, default_name, folder = model, model.name, None
        else:
            folder = Path(resolve_model(model))
            default_name = str(model) if str(model) in KNOWN_MODELS else display_name(folder)
            encoder = BiEncoder.load(model, name=default_name)
        self.encoder = encoder
        st = encoder.model
        st.eval()
        self._check_supported(st)
        self.model_name = name or default_name
        self.tokenizer = st.tokenizer
        self.max_length = int(max_length or encoder.max_seq_length)
        self.prompts = encoder.prompts
        self.dimension = int(encoder.dimension)
        extra = dimensions if dimensions else _declared_dimensions(folder, self.dimension)
        self.supported_dimensions = _supported_dimensions(self.dimension, extra)
        self._token_type_ids = "token_type_ids" in (getattr(self.tokenizer, "model_input_names", []) or [])
        self._init_tokenization()

    @staticmethod
    def _check_supported(st) -> None:
        from sentence_transformers.base.modules import Router

        for module in st:
            if isinstance(module, Router):
                raise ValueError("models with a Router (separate query/passage towers) cannot be served")
            if getattr(module, "include_prompt", True) is False:
                raise ValueError("pooling with include_prompt=False is not supported by the server")
            if "message" in (getattr(module, "modality_config", None) or {}):
                # sentence-transformers would wrap each text in the chat template; the server tokenizes
                # plain ``prompt + text``, so the two would silently differ
                raise ValueError("models that embed through a chat template cannot be served")

    def _forward(self, input_ids, attention_mask, dimensions):
        torch = self._torch
        features = {
            "input_ids": torch.from_numpy(input_ids),
            "attention_mask": torch.from_numpy(attention_mask),
        }
        if self._token_type_ids:
            features["token_type_ids"] = torch.zeros_like(features["input_ids"])
        with torch.inference_mode():
            out = self.encoder.model(features)["sentence_embedding"]
        return unit_truncate(out.float().numpy(), dimensions)


class OnnxRuntime(EmbeddingRuntime):
    """An ``embedforge export`` folder run with ONNX Runtime (CPU), opened by ``export.ExportFolder``.

    The graph takes ``input_ids`` and ``attention_mask`` (int64 ``[batch, seq]``), optionally
    ``token_type_ids`` and ``dimensions`` (int64 scalar or ``[1]``), and returns unit-norm ``embeddings``.
    Without a ``dimensions`` input, truncation and re-normalisation happen in numpy.

    Args:
        folder: the export folder (with ``embedforge_export.json``).
        precision: ``fp32`` (``files.fp32``), ``int8`` or ``fp16`` (``ExportFolderError`` when the export has none).
        name, max_length: as for ``TorchRuntime``.
        dimensions: sizes to accept besides the full size (default: the export's ``matryoshka_dims``).
        threads: ONNX Runtime intra-op threads; 0 leaves its default.
    """

    def __init__(
        self,
        folder,
        *,
        precision: str = "fp32",
        name: str | None = None,
        dimensions: Sequence[int] | None = None,
        max_length: int | None = None,
        threads: int = 0,
    ):
        from embedforge.export import ExportFolder

        export = ExportFolder(folder)
        self.session = export.session(precision, threads=threads, spin=False)
        self.backend = f"onnx-{precision}"
        self.precision = precision
        self.manifest = export.manifest
        self.model_name = name or export.model_name
        self.tokenizer = export.tokenizer()
        self.max_length = int(
            max_length or self.manifest.get("max_seq_length") or self.tokenizer.model_max_length
        )
        self.prompts = export.prompts
        inputs = {i.name: i for i in self.session.get_inputs()}
        # an optional input with a default is an overridable initializer, not a listed graph input
        optional = {i.name: i for i in self.session.get_overridable_initializers()}
        outputs = [o.name for o in self.session.get_outputs()]
        self._output = "embeddings" if "embeddings" in outputs else outputs[0]
        self.dimension = int(self.manifest.get("dimension") or self.session.get_outputs()[0].shape[-1])
        extra = dimensions if dimensions else self.manifest.get("matryoshka_dims")
        self.supported_dimensions = _supported_dimensions(self.dimension, extra)
        self._token_type_ids = "token_type_ids" in inputs
        dims_input = inputs.get("dimensions") or optional.get("dimensions")
        # a scalar input has shape [], a 1-element one [1] (or a symbolic name)
        self._dims_shape = None if dims_input is None else (() if not dims_input.shape else (1,))
        self._init_tokenization()

    def _forward(self, input_ids, attention_mask, dimensions):
        feed = {"input_ids": input_ids, "attention_mask": attention_mask}
        if self._token_type_ids:
            feed["token_type_ids"] = np.zeros_like(input_ids)
        if self._dims_shape is not None:
            feed["dimensions"] = np.full(self._dims_shape, dimensions or self.dimension, dtype=np.int64)
            (vectors,) = self.session.run([self._output], feed)
            # the graph truncates and normalises; re-normalising in float32 is a no-op that guards drift
            return unit_truncate(vectors, dimensions)
        (vectors,) = self.session.run([self._output], feed)
        return unit_truncate(vectors, dimensions)


def load_runtime(path_or_name, *, precision: str = "fp32", **options) -> EmbeddingRuntime:
    """ONNX Runtime for an export folder (has ``embedforge_export.json``), else PyTorch.

    ``options``: ``name``, ``dimensions``, ``max_length``, ``threads`` (see the runtimes). ``precision``
    only applies to ONNX exports; asking for int8 with a PyTorch checkpoint is an error.
    """
    from embedforge.export import is_export_folder

    if is_export_folder(path_or_name):
        return OnnxRuntime(path_or_name, precision=precision, **options)
    if precision != "fp32":
        raise ValueError(
            f"precision={precision} needs an ONNX export folder (embedforge export); {path_or_name} is a checkpoint"
        )
    return TorchRuntime(path_or_name, **options)
