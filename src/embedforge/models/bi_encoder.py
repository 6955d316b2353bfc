"""The bi-encoder: one shared backbone that embeds queries and passages into one vector space.

``BiEncoder`` is a thin layer over a sentence-transformers ``SentenceTransformer`` (its saved folder is what
LangChain, LlamaIndex, TEI and infinity load), adding what embedforge needs everywhere:

* loading a sentence-transformers folder, any Hugging Face encoder (AutoModel fallback) or a known short name;
* pooling chosen by NVIDIA's names (avg, cls, last, weighted_avg) and always-on L2 normalisation;
* query/passage prompts as ONE setting stored in the model (``prompts = {"query", "document"}``), so mining,
  training, eval, export and serving all apply the identical prefix;
* Matryoshka truncation at encode time: truncate first, then re-normalise.

It deliberately does not train (see ``finetune``) or serve (see ``serve``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from sentence_transformers import SentenceTransformer
from sentence_transformers.base.modules import Normalize, Transformer
from sentence_transformers.sentence_transformer.modules import Pooling

from embedforge.models.llama_bidirectional import (
    DECODER_TYPES,
    is_bidirectional,
    prepare_decoder_tokenizer,
    register,
    to_bidirectional,
)
from embedforge.models.registry import resolve_model

logger = logging.getLogger(__name__)
register()  # llama_bidirec / mistral_bidirec checkpoints load through AutoConfig/AutoModel, no remote code

# NVIDIA's pooling names -> sentence-transformers' Pooling modes.
POOLING_MODES = {"avg": "mean", "cls": "cls", "last": "lasttoken", "weighted_avg": "weightedmean"}
QUERY, PASSAGE = (
    "query",
    "document",
)  # sentence-transformers' prompt names, used by encode_query/encode_document


def _pooling_mode(name: str) -> str:
    if name not in POOLING_MODES:
        raise ValueError(f"pooling must be one of {sorted(POOLING_MODES)}, got '{name}'")
    return POOLING_MODES[name]


def _adapt_decoder_backbone(model: SentenceTransformer, bidirectional: bool | None, fresh: bool) -> None:
    """Bidirectional conversion and tokenizer settings for Llama/Mistral backbones; other models untouched."""
    backbone = model[0]
    config = getattr(getattr(backbone, "auto_model", None), "config", None)
    if not isinstance(backbone, Transformer) or getattr(config, "model_type", None) not in DECODER_TYPES:
        if bidirectional:
            raise ValueError(
                "bidirectional=True needs a Llama or Mistral backbone, "
                f"got {getattr(config, 'model_type', type(backbone).__name__)}"
            )
        return
    if bidirectional and not is_bidirectional(backbone.auto_model):
        backbone.model = to_bidirectional(backbone.auto_model)
    elif bidirectional is False and is_bidirectional(backbone.auto_model):
        raise ValueError(
            "bidirectional=False: this checkpoint is bidirectional; causal attention is not restored"
        )
    if fresh:
        prepare_decoder_tokenizer(backbone.tokenizer, backbone.auto_model.config)
        _embed_plain_text(backbone)
    else:  # a saved model keeps its tokenizer settings; only a missing pad token is filled in
        prepare_decoder_tokenizer(
            backbone.tokenizer, backbone.auto_model.config, add_bos_token=None, add_eos_token=None
        )


def _embed_plain_text(backbone: Transformer) -> None:
    """Embed raw text, never a chat transcript.

    sentence-transformers routes every text through the tokenizer's chat template whenever one exists (an
    instruct LLM's template wraps each passage in a system prompt and role tokens, which then crowds the
    text out of the token budget). An embedding backbone drops the template and keeps the plain text modality.
    """
    for holder in (backbone.tokenizer, backbone.processor):  # the same object for text-only models
        if getattr(holder, "chat_template", None) is not None:
            holder.chat_template = None
    if "message" in backbone.modality_config and "text" in backbone.modality_config:
        backbone.modality_config = {k: v for k, v in backbone.modality_config.items() if k != "message"}
        backbone.input_formatter.supported_modalities = list(backbone.modality_config)


class BiEncoder:
    """A shared-backbone embedding model with its prompts, pooling and normalisation baked in.

    Args:
        model: a loaded ``SentenceTransformer`` whose last module is ``Normalize``.
        name: a label for reports (defaults to the folder or short name it came from).

    Example:
        >>> enc = BiEncoder.load("minilm", query_prompt="query: ", passage_prompt="passage: ")
        >>> q = enc.encode_queries(["how do I vacuum a table?"], dimensions=128)  # unit vectors, 128 dims
    """

    def __init__(self, model: SentenceTransformer, name: str = "model"):
        self.model = model
        self.name = name

    @classmethod
    def load(
        cls,
        name_or_path: str | Path,
        *,
        pooling: str | None = None,
        query_prompt: str | None = None,
        passage_prompt: str | None = None,
        max_seq_length: int | None = None,
        device: str | None = "cpu",
        name: str | None = None,
        bidirectional: bool | None = None,
    ) -> BiEncoder:
        """Load a folder or known name; None for an option keeps what the saved model says.

        A sentence-transformers folder keeps its modules; a plain Hugging Face folder gets
        Transformer -> Pooling(pooling, else the checkpoint's ``pooling``, else avg) -> Normalize.
        ``bidirectional=True`` turns a plain Llama/Mistral decoder into a bidirectional encoder
        (``llama_bidirec``); None keeps the checkpoint's attention. Decoder backbones get
        ``prepare_decoder_tokenizer`` (pad = EOS, BOS on, EOS off) when loaded from a plain folder.
        """
        _pooling_mode(pooling or "avg")
        path = resolve_model(name_or_path)
        saved = (Path(path) / "modules.json").is_file()
        if saved:
            model = SentenceTransformer(path, device=device, local_files_only=True)
        else:
            backbone = Transformer(path, max_seq_length=max_seq_length)
            dim = backbone.get_embedding_dimension()
            default = getattr(backbone.auto_model.config, "pooling", None)
            mode = _pooling_mode(pooling or (default if default in POOLING_MODES else "avg"))
            pool = Pooling(dim, pooling_mode=mode)
            model = SentenceTransformer(modules=[backbone, pool, Normalize()], device=device)
        _adapt_decoder_backbone(model, bidirectional, fresh=not saved)
        encoder = cls(model, name=name or str(name_or_path))
        encoder.configure(
            pooling=pooling,
            query_prompt=query_prompt,
            passage_prompt=passage_prompt,
            max_seq_length=max_seq_length,
        )
        return encoder

    def configure(
        self,
        *,
        pooling: str | None = None,
        query_prompt: str | None = None,
        passage_prompt: str | None = None,
        max_seq_length: int | None = None,
    ) -> None:
        """Apply settings that are saved with the model; None leaves a setting as it is."""
        if pooling is not None:
            self._pooling_module().pooling_mode = _pooling_mode(pooling)
        if not isinstance(self.model[-1], Normalize):
            self.model.append(Normalize())
        prompts = dict(self.model.prompts or {})
        if query_prompt is not None:
            prompts[QUERY] = query_prompt
        if passage_prompt is not None:
            prompts[PASSAGE] = passage_prompt
        prompts.setdefault(QUERY, "")
        prompts.setdefault(PASSAGE, "")
        self.model.prompts = prompts
        if max_seq_length is not None:
            self.model.max_seq_length = max_seq_length

    def _pooling_module(self) -> Pooling:
        for module in self.model:
            if isinstance(module, Pooling):
                return module
        raise ValueError("model has no Pooling module")

    @property
    def prompts(self) -> dict[str, str]:
        return {"query": self.model.prompts.get(QUERY, ""), "passage": self.model.prompts.get(PASSAGE, "")}

    @property
    def pooling(self) -> str:
        mode = self._pooling_module().pooling_mode
        mode = mode[0] if isinstance(mode, (tuple, list)) else mode
        return {v: k for k, v in POOLING_MODES.items()}.get(mode, mode)

    @property
    def dimension(self) -> int:
        return self.model.get_embedding_dimension()

    @property
    def max_seq_length(self) -> int:
        return self.model.max_seq_length

    def encode_queries(
        self,
        texts: Sequence[str],
        *,
        batch_size: int = 64,
        dimensions: int | None = None,
        progress: bool = False,
    ) -> np.ndarray:
        """Unit-norm float32 query vectors, with the saved query prompt prepended."""
        return self._encode(texts, QUERY, batch_size, dimensions, progress)

    def encode_passages(
        self,
        texts: Sequence[str],
        *,
        batch_size: int = 64,
        dimensions: int | None = None,
        progress: bool = False,
    ) -> np.ndarray:
        """Unit-norm float32 passage vectors, with the saved passage prompt prepended."""
        return self._encode(texts, PASSAGE, batch_size, dimensions, progress)

    def _encode(self, texts, prompt_name, batch_size, dimensions, progress) -> np.ndarray:
        if dimensions is not None and not 0 < dimensions <= self.dimension:
            raise ValueError(f"dimensions must be in 1..{self.dimension}, got {dimensions}")
        vectors = self.model.encode(
            list(texts),
            prompt_name=prompt_name,
            batch_size=batch_size,
            show_progress_bar=progress,
            convert_to_numpy=True,
            normalize_embeddings=True,  # after truncation: truncate first, then normalise
            truncate_dim=dimensions,
        )
        return np.asarray(vectors, dtype=np.float32)

    def save(self, path: str | Path, *, extra_config: dict | None = None) -> None:
        """Save as a plain sentence-transformers folder (+ embedforge.json with the config that made it)."""
        path = Path(path)
        self.model.save(str(path))
        info = {"pooling": self.pooling, "prompts": self.prompts, "max_seq_length": self.max_seq_length}
        if extra_config:
            info.update(extra_config)
        (path / "embedforge.json").write_text(json.dumps(info, indent=2, default=str) + "\n")
