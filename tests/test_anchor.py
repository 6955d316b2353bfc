"""The anchor term (``finetune.anchor_weight``): its texts, its value, and what it does to a fine-tune."""

import json

import numpy as np
import pytest
import torch
from sentence_transformers import SentenceTransformer
from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

from domain_fixture import make_domain_fixture
from embedforge.config import FinetuneConfig
from embedforge.finetune.anchor import AnchoredLoss, builtin_texts, load_texts, wiki_prose
from embedforge.finetune.trainer import finetune
from tiny_models import tiny_bert

PROSE = " ".join(["Perl borrows features from other languages, including C, shell scripting and awk."] * 4)


def test_wiki_markup_is_stripped_and_non_prose_lines_are_dropped():
    line = (
        "'''Perl''' is a family of [[programming language|languages]] by [[Larry Wall]].&lt;ref&gt;Wall, "
        "1987.&lt;/ref&gt; {{citation needed|date=2020}} " + PROSE
    )
    assert wiki_prose(line) == "Perl is a family of languages by Larry Wall. " + PROSE
    assert wiki_prose("{{Infobox language | name = Perl}}") is None
    assert wiki_prose("* a list item " + PROSE) is None
    assert wiki_prose("| a table cell " + PROSE) is None
    assert wiki_prose("Too short to be a paragraph.") is None
    assert len(wiki_prose(" ".join([PROSE] * 20)).split()) == 200  # cut to about a 256-token window


def test_builtin_texts_are_thousands_of_plain_paragraphs():
    texts = builtin_texts()
    assert len(texts) > 3000
    assert not [t for t in texts if any(c in t for c in "{}[]|=<>") or len(t.split()) < 40]


def test_anchor_texts_are_spread_over_the_source_and_a_missing_file_is_named(tmp_path):
    path = tmp_path / "general.txt"
    path.write_text("\n".join(f"text {i}" for i in range(10)) + "\n\n")
    assert load_texts(str(path), 5) == [f"text {i}" for i in (0, 2, 4, 6, 8)]
    assert load_texts(str(path), 50) == [f"text {i}" for i in range(10)]
    with pytest.raises(FileNotFoundError, match="anchor_texts: no file .*nowhere.txt"):
        load_texts(str(tmp_path / "nowhere.txt"), 5)


def test_the_term_is_zero_at_the_base_weights_and_adds_weight_times_drift(tmp_path):
    model = SentenceTransformer(str(tiny_bert(tmp_path / "tiny")), device="cpu")
    model.eval()  # no dropout: the student is exactly the base
    texts = ["the cat sat on a mat", "a dog ran in the park", "the sun sets late in june"]
    base = model.encode(texts, normalize_embeddings=True)
    inner = MultipleNegativesRankingLoss(model)
    loss = AnchoredLoss(model, inner, texts, base, weight=3.0, batch=3, seed=0)
    assert float(loss.drift().detach()) == pytest.approx(0.0, abs=1e-6)
    with torch.no_grad():
        model[0].auto_model.embeddings.word_embeddings.weight.mul_(-1.5)  # move the model
    features = [model.tokenize(["the cat"]), model.tokenize(["a mat"])]
    total = loss(features, torch.zeros(1))
    drift = loss.last_drift
    vectors = model.encode(texts, normalize_embeddings=True)
    assert drift == pytest.approx(float(np.mean(1 - (vectors * base).sum(1))), abs=1e-5)
    assert drift > 0.01
    assert float(total) == pytest.approx(float(inner(features, torch.zeros(1))) + 3.0 * drift, abs=1e-5)


def test_anchored_fine_tune_keeps_general_text_closer_to_the_base(tmp_path):
    domain = make_domain_fixture(tmp_path / "domain")
    student = tiny_bert(tmp_path / "tiny")
    general = tmp_path / "general.txt"
    general.write_text("\n".join(builtin_texts()[:64]))
    runs = {}
    for name, weight in (("plain", 0.0), ("anchored", 50.0)):
        config = FinetuneConfig(base_model=str(student), train_data=str(domain["train"]),
                                output_dir=str(tmp_path / name), max_seq_length=32, global_batch_size=8,
                                n_passages=2, max_steps=3, learning_rate=1e-2, validation_split=0.0,
                                anchor_weight=weight, anchor_texts=str(general), anchor_batch=16)  # fmt: skip
        finetune(config)
        runs[name] = SentenceTransformer(str(tmp_path / name / "model"), device="cpu")
    texts = load_texts(str(general), 1024)
    base = SentenceTransformer(str(student), device="cpu").encode(texts, normalize_embeddings=True)

    def drift(model):
        return float(np.mean(1 - (model.encode(texts, normalize_embeddings=True) * base).sum(1)))

    assert drift(runs["anchored"]) < 0.5 * drift(runs["plain"])
    saved = json.loads((tmp_path / "anchored" / "model" / "embedforge.json").read_text())
    assert saved["training"]["config"]["anchor_weight"] == 50.0
    assert "anchored to the base model" in (tmp_path / "anchored" / "model" / "README.md").read_text()
