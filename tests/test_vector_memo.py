"""MemoEncoder: each passage embedded once, identical vectors, the model released and reloaded on demand."""

import numpy as np

from embedforge.models.vector_memo import MemoEncoder

TEXTS = [
    "VACUUM reclaims storage occupied by dead tuples.",
    "A B-tree index can handle equality and range queries.",
    "pg_dump extracts a database into a script file.",
]


def test_memo_gives_the_encoders_vectors_and_embeds_each_text_once(minilm):
    loads = []

    def load():
        loads.append(1)
        return minilm

    memo = MemoEncoder(load, name="minilm")
    first = memo.encode_passages(TEXTS[:2])
    both = memo.encode_passages([TEXTS[1], TEXTS[2], TEXTS[1]])
    assert memo.misses == 3 and memo.hits == 2
    direct = minilm.encode_passages(TEXTS)
    np.testing.assert_allclose(first, direct[:2], atol=1e-5)
    np.testing.assert_allclose(both, direct[[1, 2, 1]], atol=1e-5)

    truncated = memo.encode_passages(TEXTS, dimensions=64)
    np.testing.assert_allclose(truncated, minilm.encode_passages(TEXTS, dimensions=64), atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(truncated, axis=1), 1.0, atol=1e-6)

    memo.release()
    assert memo.encode_passages(TEXTS).shape == (3, 384)
    assert len(loads) == 1, "remembered passages must not reload a released model"
    queries = memo.encode_queries(["how do I reclaim space?"])  # queries go to the model: reloaded
    assert len(loads) == 2 and queries.shape == (1, 384)
    assert memo.name == "minilm" and memo.prompts == minilm.prompts
