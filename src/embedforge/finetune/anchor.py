"""Forget less: a loss term that keeps general English text where the base model embedded it.

A domain fine-tune moves the whole embedding space, and ordinary text moves with it: on the Perl
documentation every recipe that gains +10% nDCG@10 also lowers the general-domain check (Lee news
similarity) by more than 0.01 Pearson in some seeds, and the levers that hold it (a lower learning rate,
LoRA, frozen layers, WiSE-FT) give up domain gain at about the same rate (docs/benchmarks.md). Learning
without Forgetting (Li & Hoiem, 2016, arXiv:1606.09282) keeps the old model's outputs on other data as a
target while learning the new task; here the old model is the base model itself, the data is general
English prose, and the target is each text's base embedding:

    loss = contrastive (+ distillation) + anchor_weight * mean(1 - cos(student(x), base(x)))

over ``anchor_batch`` prose texts drawn each step. The base vectors are computed once, before training.

The built-in texts (``anchor_texts: wikipedia``) are the prose paragraphs of the 206 Wikipedia articles in
gensim's test data (``enwiki-latest-pages-articles1.xml-...-shortened.bz2``, CC BY-SA; the same wheel that
holds the Lee set, but encyclopedia text, not news), with the wiki markup stripped. A path reads one text
per non-blank line instead.
"""

from __future__ import annotations

import bz2
import html
import re
from pathlib import Path

import numpy as np
import torch
from sentence_transformers.util import batch_to_device
from torch import nn
from torch.nn import functional as F

from embedforge.measures.general_check import LEE_PACKAGE, gensim_root

BUILTIN = "wikipedia"
WIKI_SAMPLE = "test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
MIN_WORDS, MAX_WORDS = 40, 200  # whole prose paragraphs, cut to about MiniLM's 256-token window

_MARKUP = [
    (re.compile(r"<ref[^>]*/>"), ""),
    (re.compile(r"<ref[^>]*>.*?</ref>", re.S), ""),
    (re.compile(r"<[^>]+>"), ""),
    (re.compile(r"\{\{[^{}]*\}\}"), ""),  # innermost templates; applied until none is left
    (re.compile(r"\[\[(?:[^\[\]|]*\|)?([^\[\]]*)\]\]"), r"\1"),  # [[target|shown]] -> shown
    (re.compile(r"'{2,}"), ""),
    (re.compile(r"\s+"), " "),
]


def wiki_prose(text: str) -> str | None:
    """One wikitext line as plain prose, or None when it is markup, a list, a table or too short."""
    line = html.unescape(text).strip()
    if line[:1] in set("{|*#:;=!<"):  # templates, tables, lists, indents, headings, tags
        return None
    for pattern, replacement in _MARKUP:
        previous = None
        while previous != line:
            previous, line = line, pattern.sub(replacement, line)
    line = line.strip()
    words = line.split()
    if len(words) < MIN_WORDS or not line[:1].isalpha() or any(c in line for c in "{}[]|=<>"):
        return None
    return " ".join(words[:MAX_WORDS])


def builtin_texts() -> list[str]:
    """The built-in general English paragraphs (see the module docstring), in the file's order."""
    path = gensim_root() / WIKI_SAMPLE
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; reinstall with pip install --no-deps {LEE_PACKAGE}")
    with bz2.open(path, "rt", encoding="utf-8") as f:
        return [p for p in map(wiki_prose, f) if p]


def load_texts(source: str, limit: int) -> list[str]:
    """Up to ``limit`` anchor texts, evenly spread over the built-in paragraphs or a file's non-blank lines."""
    if source == BUILTIN:
        texts = builtin_texts()
    else:
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"finetune.anchor_texts: no file {path} (give a path or '{BUILTIN}')")
        texts = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not texts:
        raise ValueError(f"finetune.anchor_texts: {source} holds no text")
    return texts[:: max(1, len(texts) // limit)][:limit]  # spread over every article, not the first few


class AnchoredLoss(nn.Module):
    """``inner`` loss + ``weight`` x the mean cosine distance of anchor texts from their base vectors."""

    def __init__(self, model, inner: nn.Module, texts: list[str], base_vectors: np.ndarray, weight: float,
                 batch: int, seed: int):  # fmt: skip
        super().__init__()
        self.model, self.inner, self.texts, self.weight, self.batch = model, inner, texts, weight, batch
        self.register_buffer("base_vectors", torch.from_numpy(np.asarray(base_vectors, dtype=np.float32)))
        self.generator = torch.Generator().manual_seed(seed)
        self.last_drift: float | None = None

    def drift(self) -> torch.Tensor:
        """Mean 1 - cos(student, base) over a random batch of anchor texts (with gradients)."""
        pick = torch.randperm(len(self.texts), generator=self.generator)[: self.batch]
        features = self.model.preprocess([self.texts[i] for i in pick.tolist()])
        device = self.base_vectors.device
        vectors = self.model(batch_to_device(features, device))["sentence_embedding"]
        cos = F.cosine_similarity(vectors, self.base_vectors[pick.to(device)], dim=-1)
        return (1 - cos).mean()

    def forward(self, sentence_features, labels: torch.Tensor) -> torch.Tensor | dict[str, torch.Tensor]:
        drift = self.drift()
        self.last_drift = float(drift.detach())
        inner, term = self.inner(sentence_features, labels), self.weight * drift
        if isinstance(inner, dict):  # a loss that reports its parts (distillation): one part more, logged too
            return {**inner, "anchor": term}
        return inner + term


def anchored_loss(model, inner: nn.Module, texts: list[str], config) -> AnchoredLoss:
    """``inner`` with the anchor term of ``config`` (a FinetuneConfig) over ``texts``; embeds them with
    ``model`` as it is now, so call it before training starts."""
    vectors = model.encode(texts, batch_size=32, convert_to_numpy=True, normalize_embeddings=True)
    return AnchoredLoss(model, inner, texts, vectors, config.anchor_weight, config.anchor_batch, config.seed)
