"""Tiny random-weight models built from configs (no download), for tests that need a second backbone."""

import torch
from transformers import BertConfig, BertModel, BertTokenizerFast, LlamaConfig, MistralConfig


def tiny_bert(folder, seed: int = 0):
    """A 2-layer, 32-dim BERT with a 33-token vocabulary, saved as a plain Hugging Face folder."""
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [chr(c) for c in range(97, 123)] + ["the", "a"]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(vocab))
    BertTokenizerFast(vocab_file=str(folder / "vocab.txt")).save_pretrained(folder)
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    BertModel(config).save_pretrained(folder)
    return folder


def tiny_decoder_config(kind: str = "llama", vocab_size: int = 300, **extra):
    """A 2-layer, 32-dim Llama (or Mistral) config; ``extra`` overrides any field."""
    config_cls = LlamaConfig if kind == "llama" else MistralConfig
    fields = dict(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
    )
    return config_cls(**{**fields, **extra})
