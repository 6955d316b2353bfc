"""`mpnet`: all-mpnet-base-v2 assembled offline from its five PyPI parts into a loadable folder."""

from __future__ import annotations

import numpy as np
from sentence_transformers import SentenceTransformer

from embedforge.models.registry import KNOWN_MODELS, resolve_model


def test_mpnet_builds_from_parts_and_encodes_768d_unit_vectors(tmp_path, monkeypatch):
    monkeypatch.setenv("EMBEDFORGE_CACHE", str(tmp_path))  # a fresh build: join, checksum, unzip
    folder = resolve_model("mpnet")
    built = tmp_path / "models" / "mpnet"
    assert folder == str(built)
    assert (built / "model.safetensors").stat().st_size > 400_000_000
    assert not list(built.parent.glob(".mpnet*.tmp")) and not list(built.glob("*.zip"))
    model = SentenceTransformer(folder, device="cpu")
    vectors = model.encode(
        [
            "How do I sort a hash by its values?",
            "Sort the keys of %h by $h{$a} <=> $h{$b}.",
            "The weather is mild.",
        ]
    )
    assert vectors.shape == (3, 768)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2] + 0.2
    assert resolve_model("mpnet") == folder  # second use finds the folder
    assert KNOWN_MODELS["mpnet"].cache_path() == built
