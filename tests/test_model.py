"""BiEncoder: loading, pooling, prompts saved with the model, Matryoshka truncation, plain ST reload."""

import numpy as np
import pytest
from sentence_transformers import SentenceTransformer

from embedforge.models.bi_encoder import BiEncoder
from embedforge.models.registry import KNOWN_MODELS, ModelNotFoundError, describe_known_models, resolve_model
from tiny_models import tiny_bert

TEXTS = ["How do I reclaim disk space after deleting rows?", "VACUUM FULL rewrites the table.", "short"]


def test_known_name_resolves_to_an_installed_folder():
    path = resolve_model("minilm")
    assert (KNOWN_MODELS["minilm"].path() / "model.safetensors").is_file()
    assert path == str(KNOWN_MODELS["minilm"].path())
    assert describe_known_models()[0]["name"] == "minilm"


def test_unknown_model_is_a_clear_error():
    with pytest.raises(ModelNotFoundError, match="neither a known name"):
        resolve_model("no-such-model-xyz")


def test_vectors_are_unit_norm_and_prompts_change_them(minilm):
    plain = minilm.encode_queries(TEXTS)
    assert plain.shape == (3, 384) and plain.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(plain, axis=1), 1.0, atol=1e-5)
    prefixed = BiEncoder(minilm.model, "x")
    old = dict(minilm.model.prompts)
    try:
        prefixed.configure(query_prompt="query: ")
        assert not np.allclose(prefixed.encode_queries(TEXTS), plain, atol=1e-3)
        manual = minilm.model.encode(["query: " + t for t in TEXTS], normalize_embeddings=True)
        np.testing.assert_allclose(prefixed.encode_queries(TEXTS), manual, atol=1e-5)
    finally:
        minilm.model.prompts = old


def test_matryoshka_truncates_then_renormalises(minilm):
    full = minilm.encode_passages(TEXTS)
    small = minilm.encode_passages(TEXTS, dimensions=64)
    expected = full[:, :64] / np.linalg.norm(full[:, :64], axis=1, keepdims=True)
    np.testing.assert_allclose(small, expected, atol=1e-5)
    with pytest.raises(ValueError, match="dimensions"):
        minilm.encode_passages(TEXTS, dimensions=1000)


def test_saved_model_reloads_in_plain_sentence_transformers(tmp_path):
    enc = BiEncoder.load("minilm", query_prompt="query: ", passage_prompt="passage: ", pooling="cls")
    enc.save(tmp_path / "m")
    plain = SentenceTransformer(str(tmp_path / "m"), device="cpu")
    assert plain.prompts["query"] == "query: " and plain.prompts["document"] == "passage: "
    np.testing.assert_allclose(plain.encode_query(TEXTS), enc.encode_queries(TEXTS), atol=1e-6)
    np.testing.assert_allclose(plain.encode_document(TEXTS), enc.encode_passages(TEXTS), atol=1e-6)
    again = BiEncoder.load(tmp_path / "m")
    assert again.pooling == "cls" and again.prompts == {"query": "query: ", "passage": "passage: "}


@pytest.mark.parametrize("pooling", ["avg", "cls", "last", "weighted_avg"])
def test_plain_hugging_face_encoder_gets_each_pooling(tmp_path, pooling):
    folder = tiny_bert(tmp_path / "bert")
    enc = BiEncoder.load(folder, pooling=pooling, max_seq_length=32)
    assert enc.pooling == pooling and enc.dimension == 32
    vectors = enc.encode_passages(["the cat", "a dog sat"])
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_pooling_modes_differ_on_the_same_backbone(tmp_path):
    folder = tiny_bert(tmp_path / "bert")
    avg = BiEncoder.load(folder, pooling="avg").encode_passages(["the cat sat"])
    cls = BiEncoder.load(folder, pooling="cls").encode_passages(["the cat sat"])
    assert not np.allclose(avg, cls, atol=1e-3)
    with pytest.raises(ValueError, match="pooling must be one of"):
        BiEncoder.load(folder, pooling="max-ish")
