"""A general-domain check: does a domain fine-tune still judge ordinary text like the base model?

Fine-tuning on one manual can make a model forget general semantics. This check scores a model on the
Lee document-similarity set (Lee, Pincombe & Welsh, 2005: 50 Australian news articles, every one of the
1,225 pairs rated for similarity by about ten people): the Pearson and Spearman correlation between the
model's cosine similarity and the mean human rating. The data ships inside gensim's wheel
(``gensim/test/test_data/lee.cor`` and ``similarities0-1.txt``, LGPL-2.1); install it with
``pip install --no-deps gensim==4.4.0``. The package is located, never imported.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
from scipy.stats import pearsonr, spearmanr

from embedforge.models.encoder import Encoder

LEE_PACKAGE = "gensim==4.4.0"
LEE_DOCS = "test/test_data/lee.cor"
LEE_RATINGS = "test/test_data/similarities0-1.txt"


def gensim_root() -> Path:
    """The installed gensim package's folder, found without running gensim's code."""
    spec = importlib.util.find_spec("gensim")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"the general-domain data needs: pip install --no-deps {LEE_PACKAGE}")
    return Path(next(iter(spec.submodule_search_locations)))


def lee_files() -> tuple[Path, Path]:
    """The documents file and the ratings matrix inside the installed gensim package."""
    root = gensim_root()
    docs, ratings = root / LEE_DOCS, root / LEE_RATINGS
    for path in (docs, ratings):
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing; reinstall with pip install --no-deps {LEE_PACKAGE}")
    return docs, ratings


def load_lee() -> tuple[list[str], np.ndarray]:
    """The 50 documents and the 50x50 upper-triangular matrix of mean human ratings (0-1)."""
    docs_path, ratings_path = lee_files()
    text = docs_path.read_text(encoding="latin-1")  # not UTF-8: the pound sign is the single byte 0xA3
    docs = [line.strip() for line in text.splitlines() if line.strip()]
    ratings = np.loadtxt(ratings_path, delimiter="\t", dtype=np.float64)
    if ratings.shape != (len(docs), len(docs)):
        raise ValueError(f"{ratings_path}: expected a {len(docs)}x{len(docs)} matrix, got {ratings.shape}")
    return docs, ratings


def similarity_correlation(vectors: np.ndarray, ratings: np.ndarray) -> dict[str, float]:
    """Pearson and Spearman correlation of pairwise cosine with the human ratings (pairs i < j)."""
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    cosine = unit @ unit.T
    upper = np.triu_indices(len(unit), k=1)
    return {
        "pearson": float(pearsonr(cosine[upper], ratings[upper]).statistic),
        "spearman": float(spearmanr(cosine[upper], ratings[upper]).statistic),
        "pairs": int(len(upper[0])),
    }


def lee_check(model: Encoder) -> dict[str, float]:
    """Score an ``Encoder`` (a checkpoint, an ONNX export, a served model) on the Lee set."""
    docs, ratings = load_lee()
    return similarity_correlation(np.asarray(model.encode_passages(docs)), ratings)
