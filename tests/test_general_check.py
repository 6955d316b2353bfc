"""The general-domain check: Lee news similarity read from gensim's wheel, scored as correlations."""

import numpy as np
import pytest

from embedforge.measures.general_check import lee_check, load_lee, similarity_correlation


def test_lee_data_loads_as_50_documents_and_a_ratings_matrix():
    docs, ratings = load_lee()
    assert len(docs) == 50 and ratings.shape == (50, 50)
    assert all(len(d.split()) > 40 for d in docs)
    upper = ratings[np.triu_indices(50, k=1)]
    assert 0.0 <= upper.min() and upper.max() <= 1.0 and np.allclose(np.diag(ratings), 1.0)
    assert any("£" in d for d in docs)  # the file is Latin-1, not UTF-8


def test_correlation_is_one_for_cosines_ordered_like_ratings_and_near_zero_for_noise():
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(30, 16))
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    ratings = unit @ unit.T  # ratings that are exactly the cosines
    perfect = similarity_correlation(vectors, ratings)
    assert perfect["pearson"] == pytest.approx(1.0) and perfect["spearman"] == pytest.approx(1.0)
    assert perfect["pairs"] == 30 * 29 // 2
    noise = similarity_correlation(rng.normal(size=(30, 16)), ratings)
    assert abs(noise["pearson"]) < 0.2


def test_minilm_agrees_with_people_on_lee(minilm):
    score = lee_check(minilm)
    # published sentence encoders reach about 0.6-0.7 Pearson here; people agree with each other at ~0.6
    assert 0.55 < score["pearson"] < 0.8 and score["spearman"] > 0.4
    shuffled = lee_check(_Shuffled(minilm))
    assert shuffled["pearson"] < score["pearson"] - 0.3


class _Shuffled:
    """A broken model: right vectors, wrong documents."""

    def __init__(self, encoder):
        self.encoder = encoder

    def encode_passages(self, texts):
        return self.encoder.encode_passages(list(texts))[np.random.default_rng(1).permutation(len(texts))]
