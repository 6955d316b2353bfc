"""Teacher distillation: scores computed once and cached, the loss by hand, screening, a real fine-tune."""

import json
import random

import numpy as np
import pytest
import torch

from embedforge.config import ConfigError, FinetuneConfig
from embedforge.finetune import distill
from embedforge.finetune.distill import DistilledLoss, TeacherScores, screen_negatives
from embedforge.finetune.inbatch import id_rows, text_key
from embedforge.finetune.trainer import GroupContrastiveLoss, finetune
from embedforge.models.bi_encoder import BiEncoder
from tiny_models import tiny_bert

LETTERS = "abcdefghijklmnopqrstuvwxyz"


def _words(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(LETTERS) for _ in range(n))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny student, a differently initialised tiny teacher, and 24 training queries in inline JSONL."""
    root = tmp_path_factory.mktemp("distill")
    rng = random.Random(0)
    lines = []
    for _ in range(24):
        query = _words(rng, 3)
        positive = query + " " + _words(rng, 4)
        negatives = [_words(rng, 7) for _ in range(3)]
        lines.append(json.dumps({"query": query, "pos_doc": positive, "neg_doc": negatives}))
    data = root / "train.jsonl"
    data.write_text("\n".join(lines) + "\n")
    return {
        "student": tiny_bert(root / "student", seed=0),
        "teacher": tiny_bert(root / "teacher", seed=1),
        "train": data,
    }


COLUMNS = {
    "anchor": ["a b", "c d"],
    "positive": ["a b e", "c d f"],
    "negative_1": ["g h", "i j"],
    "negative_2": ["k l", "g h"],
}


def test_teacher_scores_are_cosines_computed_once_and_reused_from_the_run_folder(tiny, tmp_path):
    config = FinetuneConfig(distill_teacher=str(tiny["teacher"]), distill_batch_size=4)
    scores, vectors, info = distill.teacher_scores(config, COLUMNS, tmp_path)
    assert info["reused"] is False and scores.shape == (2, 3)
    assert vectors["query_vectors"].shape[0] == 2 and vectors["passage_vectors"].shape[0] == 5  # "g h" once
    teacher = BiEncoder.load(tiny["teacher"])
    q = teacher.encode_queries(COLUMNS["anchor"])
    for g, name in enumerate(["positive", "negative_1", "negative_2"]):
        p = teacher.encode_passages(COLUMNS[name])
        np.testing.assert_allclose(scores[:, g], (q * p).sum(axis=1), atol=1e-5)
    cache = tmp_path / "teacher_scores"
    (cached,) = cache.iterdir()
    assert cached.name.startswith("teacher-") and cached.suffix == ".npz"

    # the second call reads the file instead of running the teacher: prove it by planting known vectors
    planted = {**vectors, "passage_vectors": vectors["passage_vectors"] * 2}
    np.savez(cached, **planted)
    again, _, info = distill.teacher_scores(config, COLUMNS, tmp_path)
    assert info["reused"] is True
    np.testing.assert_allclose(again, scores * 2, atol=1e-5)

    # a cache from before vectors were kept (scores only) is recomputed, not misread
    np.savez(cached, scores=scores)
    _, _, info = distill.teacher_scores(config, COLUMNS, tmp_path)
    assert info["reused"] is False

    # other rows are other data: a new cache entry, not a stale hit
    changed = {**COLUMNS, "negative_2": ["k l", "m n"]}
    _, _, info = distill.teacher_scores(config, changed, tmp_path)
    assert info["reused"] is False and len(list(cache.iterdir())) == 2

    # the teacher reads only what the student reads: a shorter max_seq_length is another entry, other scores
    short = FinetuneConfig(distill_teacher=str(tiny["teacher"]), max_seq_length=4)
    cut, _, info = distill.teacher_scores(short, COLUMNS, tmp_path)
    assert info["reused"] is False and len(list(cache.iterdir())) == 3
    assert not np.allclose(cut, scores, atol=1e-4)


def _unit(rng: np.random.Generator, rows: int, dim: int) -> np.ndarray:
    x = rng.normal(size=(rows, dim))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _teacher_vectors(rng: np.random.Generator, columns: dict[str, list[str]], dim: int = 6) -> dict:
    """Random unit teacher vectors for every distinct query and passage of ``columns``."""
    queries = sorted(set(columns["anchor"]))
    passages = sorted({t for name, texts in columns.items() if name != "anchor" for t in texts})
    return {
        "query_keys": np.array([text_key(t) for t in queries], dtype=np.int64),
        "query_vectors": _unit(rng, len(queries), dim).astype(np.float32),
        "passage_keys": np.array([text_key(t) for t in passages], dtype=np.int64),
        "passage_vectors": _unit(rng, len(passages), dim).astype(np.float32),
    }


@pytest.mark.parametrize("kind", ["margin_mse", "kl", "inbatch_kl"])
def test_distilled_loss_equals_a_hand_computation_on_a_fixed_batch(tiny, kind):
    vectors = _teacher_vectors(np.random.default_rng(1), COLUMNS)
    q_of = dict(zip(vectors["query_keys"].tolist(), vectors["query_vectors"], strict=True))
    p_of = dict(zip(vectors["passage_keys"].tolist(), vectors["passage_vectors"], strict=True))
    names = ["positive", "negative_1", "negative_2"]
    t_q = np.stack([q_of[text_key(t)] for t in COLUMNS["anchor"]])
    t_p = [np.stack([p_of[text_key(t)] for t in COLUMNS[name]]) for name in names]
    teacher = np.stack([(t_q * p).sum(axis=1) for p in t_p], axis=1)  # (2, 3), the row's own group
    student = BiEncoder.load(tiny["student"]).model
    temperature, weight, scale = 0.05, 0.7, 50.0
    loss = DistilledLoss(
        student,
        GroupContrastiveLoss(student, scale=scale),
        TeacherScores(vectors),
        loss=kind,
        weight=weight,
        temperature=temperature,
    )
    rng = np.random.default_rng(0)
    q, *docs = (_unit(rng, 2, 4) for _ in range(4))
    labels = torch.tensor(id_rows(COLUMNS))
    got = loss.compute_loss_from_embeddings(
        [torch.tensor(v, dtype=torch.float32) for v in (q, *docs)], labels
    )

    cos = np.stack([(q * d).sum(axis=1) for d in docs], axis=1)  # (2, 3), positive first
    logits = cos * scale
    contrastive = np.mean(np.log(np.exp(logits).sum(axis=1)) - logits[:, 0])
    s, t = cos / temperature, teacher / temperature
    if kind == "margin_mse":
        term = np.mean(((s[:, :1] - s[:, 1:]) - (t[:, :1] - t[:, 1:])) ** 2)
    elif kind == "inbatch_kl":  # every query against all 6 passages of the batch, positives first
        s = q @ np.concatenate(docs).T / temperature
        t = t_q @ np.concatenate(t_p).T / temperature
        p_t = np.exp(t) / np.exp(t).sum(axis=1, keepdims=True)
        log_p_s = s - np.log(np.exp(s).sum(axis=1, keepdims=True))
        term = np.sum(p_t * (np.log(p_t) - log_p_s)) / 2
    else:
        p_t = np.exp(t) / np.exp(t).sum(axis=1, keepdims=True)
        log_p_s = s - np.log(np.exp(s).sum(axis=1, keepdims=True))
        term = np.sum(p_t * (np.log(p_t) - log_p_s)) / 2
    assert got["contrastive"].item() == pytest.approx(contrastive, rel=1e-4)
    assert got["distill"].item() == pytest.approx(weight * term, rel=1e-4)
    assert got["distill"].item() > 0


def test_screening_replaces_negatives_the_teacher_ranks_near_the_positive():
    columns = {
        "anchor": ["q1", "q2", "q3"],
        "positive": ["p1", "p2", "p3"],
        "negative_1": ["n1", "n4", "n6"],
        "negative_2": ["n2", "n5", "n7"],
        "negative_3": ["n3", "n4", "n8"],
    }
    scores = np.array([[0.8, 0.79, 0.2, 0.3], [0.5, 0.1, 0.2, 0.1], [0.4, 0.9, 0.5, 0.6]], dtype=np.float32)
    out, new, stats = screen_negatives(columns, scores, margin=0.95)  # cut-offs 0.76, 0.475, 0.38
    assert [out[f"negative_{i}"][0] for i in (1, 2, 3)] == ["n2", "n3", "n2"]
    assert [out[f"negative_{i}"][1] for i in (1, 2, 3)] == ["n4", "n5", "n4"]  # untouched
    assert [out[f"negative_{i}"][2] for i in (1, 2, 3)] == ["n7"] * 3  # all screened: the lowest kept
    np.testing.assert_allclose(new[0], [0.8, 0.2, 0.3, 0.2])
    np.testing.assert_allclose(new[2], [0.4, 0.5, 0.5, 0.5])
    assert stats == {"negatives_screened": 3, "rows_screened": 2, "rows_all_screened": 1}
    assert columns["negative_1"][0] == "n1"  # the input is not modified
    # one negative a row: a likely positive has nothing to be replaced with, and no negative counts as dropped
    one = {name: columns[name] for name in ("anchor", "positive", "negative_1")}
    out, new, stats = screen_negatives(one, scores[:, :2], margin=0.95)
    assert out == one and stats == {"negatives_screened": 0, "rows_screened": 0, "rows_all_screened": 2}


def test_distillation_refuses_gradcache_and_groups_without_negatives(tiny, tmp_path):
    with pytest.raises(ConfigError, match="cached_loss"):
        distill.prepare(FinetuneConfig(distill_teacher="x", cached_loss=True), COLUMNS, tmp_path)
    with pytest.raises(ConfigError, match="n_passages"):
        distill.prepare(FinetuneConfig(distill_teacher="x"), {"anchor": ["q"], "positive": ["p"]}, tmp_path)


@pytest.mark.parametrize(
    "kind, in_batch, screen, anchored",
    [
        ("margin_mse", True, None, False),
        ("kl", False, 0.95, False),
        ("inbatch_kl", True, None, False),
        ("margin_mse", True, 0.95, True),
    ],
    ids=["mse-inbatch", "kl-group", "inbatch-kl", "mse-anchored"],
)
def test_finetune_with_a_teacher_trains_records_and_reuses_the_scores(
    tiny, tmp_path, kind, in_batch, screen, anchored
):
    anchors = tmp_path / "anchors.txt"
    anchors.write_text("\n".join(_words(random.Random(i), 12) for i in range(8)) + "\n")
    config = FinetuneConfig(
        base_model=str(tiny["student"]),
        train_data=str(tiny["train"]),
        output_dir=str(tmp_path / "run"),
        max_seq_length=32,
        n_passages=4,
        max_steps=3,
        global_batch_size=8,
        learning_rate=1e-3,
        validation_split=0.0,
        in_batch_negatives=in_batch,
        log_every=1,
        distill_teacher=str(tiny["teacher"]),
        distill_loss=kind,
        distill_weight=2.0,
        distill_screen_negatives=screen,
        anchor_weight=5.0 if anchored else 0.0,  # the CPU recipes' anchor next to a teacher's term
        anchor_texts=str(anchors),
        anchor_batch=4,
    )
    summary = finetune(config)
    assert summary["steps"] == 3 and summary["distillation"]["reused"] is False
    assert summary["distillation"]["rows"] == 24
    folder = tmp_path / "run" / "model"
    info = json.loads((folder / "embedforge.json").read_text())
    saved = info["training"]["config"]
    assert (saved["distill_teacher"], saved["distill_loss"], saved["distill_weight"]) == (
        str(tiny["teacher"]),
        kind,
        2.0,
    )
    assert info["training"]["distillation"]["teacher"] == str(tiny["teacher"])
    assert f"distilled from `{tiny['teacher']}`" in (folder / "README.md").read_text()
    log = [json.loads(line) for line in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    terms = [r for r in log if "distill" in r]
    assert len(terms) == 3 and all(r["distill"] > 0 and r["contrastive"] > 0 for r in terms)
    # the anchor term is one more logged part, > 0 once the weights have moved from the base
    assert all(("anchor" in r) == anchored for r in terms)
    assert not anchored or terms[-1]["anchor"] > 0

    probe = ["a b c", "the d e f"]
    before = BiEncoder.load(tiny["student"]).encode_queries(probe)
    after = BiEncoder.load(folder).encode_queries(probe)
    assert not np.allclose(before, after, atol=1e-4)

    again = finetune(config)  # same rows, same teacher: the cached scores are reused
    assert again["distillation"]["reused"] is True
    assert again["distillation"]["cache"] == summary["distillation"]["cache"]
