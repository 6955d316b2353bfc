"""prep with the user's own questions (``prep.user_questions``): the test set, the training rows, the errors."""

import json
from pathlib import Path

import numpy as np
import pytest

from embedforge.config import PrepConfig
from embedforge.data.formats import passage_id, passage_text
from embedforge.data.records import DataFormatError
from embedforge.models.bi_encoder import BiEncoder
from embedforge.prep.run import run_prep

# per document: (title, [passage texts]); every document answers one user question with one of its passages
DOCS = {
    "garden/roses.md": ("Roses", [
        "Prune roses in late winter, cutting each cane just above an outward facing bud.",
        "Black spot is a fungus that marks rose leaves; clear fallen leaves and water at the base.",
    ]),
    "garden/tomatoes.md": ("Tomatoes", [
        "Tomato seedlings go outside after the last frost, planted deep so the stem grows roots.",
        "Blossom end rot shows as dark patches on the fruit when watering is uneven in hot weather.",
    ]),
    "kitchen/bread.md": ("Bread", [
        "Sourdough starter needs flour and water every day until it doubles within hours of feeding.",
        "Bake bread until the loaf sounds hollow when tapped and the crust is a deep brown.",
    ]),
    "kitchen/knives.md": ("Knives", [
        "Hone a knife on a steel before each use to straighten the edge without removing metal.",
        "Wash knives by hand and dry them at once; the dishwasher dulls and chips the blade.",
    ]),
    "bikes/chains.md": ("Chains", [
        "Oil a bicycle chain after riding in the rain, then wipe off the excess so dirt does not stick.",
        "A chain checker tool tells you when the chain has stretched and must be replaced.",
    ]),
    "bikes/brakes.md": ("Brakes", [
        "Squealing disc brakes are often contaminated pads; sand them or fit new ones.",
        "Adjust rim brake pads so they meet the rim squarely and never touch the tyre.",
    ]),
}  # fmt: skip

USER = [  # question, document, index of the passage that answers it
    ("when should I cut back my rose bushes?", "garden/roses.md", 0),
    ("why do my tomatoes have black bottoms", "garden/tomatoes.md", 1),
    ("how do I keep a sourdough starter alive", "kitchen/bread.md", 0),
    ("can kitchen knives go in the dishwasher?", "kitchen/knives.md", 1),
    ("how do I know my bike chain is worn out", "bikes/chains.md", 1),
    ("my disc brakes squeal, what do I do?", "bikes/brakes.md", 0),
]


def _write(folder: Path, user=USER, pairs=True) -> list[dict]:
    """sdg-shaped passages (+ one generated question per passage, or none) and a user questions file."""
    passages, generated = [], []
    for doc, (title, texts) in DOCS.items():
        for n, text in enumerate(texts):
            pid = passage_id(doc + text)
            passages.append({"passage_id": pid, "doc_id": doc, "text": text, "title": title})
            q = {
                "question_id": f"g-{pid}",
                "question": f"What does {title} say, part {n}?",
                "positive_ids": [pid],
            }
            generated.append(q)
    (folder / "passages.jsonl").write_text("".join(json.dumps(p) + "\n" for p in passages))
    (folder / "pairs.jsonl").write_text("".join(json.dumps(p) + "\n" for p in generated) if pairs else "")
    lines = [json.dumps({"question": q, "document": d}) + "\n" for q, d, _ in user]
    (folder / "user.jsonl").write_text("".join(lines))
    return passages


def _config(folder: Path, **kw) -> PrepConfig:
    kw = {"num_negatives": 2, "test_fraction": 0.34, **kw}
    return PrepConfig(pairs=str(folder / "pairs.jsonl"), out=str(folder / "out"),
                      user_questions=str(folder / "user.jsonl"), **kw)  # fmt: skip


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_user_questions_on_test_documents_are_the_whole_test_set(tmp_path):
    passages = _write(tmp_path)
    report = run_prep(_config(tmp_path))
    test_docs = set(report["split"]["test_documents"])
    assert len(test_docs) == 2  # 0.34 of 6 documents
    counts = report["split"]["questions"]
    assert counts["user"] == {"total": 6, "train": 4, "test": 2}
    assert counts["test"] == 2 and counts["generated_test_unused"] == 4  # 2 passages x 2 test documents
    assert report["query_types"]["test"] == {"user": 2}
    beir = tmp_path / "out" / "test_beir"
    queries = {q["_id"]: q["text"] for q in _read_jsonl(beir / "queries.jsonl")}
    assert sorted(queries.values()) == sorted(q for q, d, _ in USER if d in test_docs)
    # a user names a page: every passage of the question's document is relevant
    doc_of = {p["passage_id"]: p["doc_id"] for p in passages}
    qrels = [line.split("\t") for line in (beir / "qrels" / "test.tsv").read_text().splitlines()[1:]]
    relevant: dict[str, set[str]] = {}
    for qid, pid, _ in qrels:
        relevant.setdefault(queries[qid], set()).add(pid)
    for q, doc, _ in USER:
        if doc in test_docs:
            assert relevant[q] == {p["passage_id"] for p in passages if p["doc_id"] == doc}
    assert all(doc_of[pid] in test_docs for pids in relevant.values() for pid in pids)
    # searched in the whole corpus, as users search: the training documents' passages are distractors
    corpus = {d["_id"] for d in _read_jsonl(beir / "corpus.jsonl")}
    assert corpus == set(doc_of)
    assert "Your questions are the test set" in (tmp_path / "out" / "prep_report.md").read_text()


def test_user_questions_on_train_documents_train_on_their_closest_passage_and_no_negative_from_their_document(
    tmp_path,
):
    passages = _write(tmp_path)
    report = run_prep(_config(tmp_path))
    test_docs = set(report["split"]["test_documents"])
    rows = [r for r in _read_jsonl(tmp_path / "out" / "train.jsonl") if r["query"] in {q for q, _, _ in USER}]
    assert len(rows) == 4 and all(isinstance(r["pos_doc"], str) for r in rows)
    # the positive is the passage the mining model (MiniLM) scores highest, computed here independently
    model = BiEncoder.load("minilm")
    by_doc: dict[str, list[dict]] = {}
    for p in passages:
        by_doc.setdefault(p["doc_id"], []).append(p)
    for q, doc, answer in USER:
        if doc in test_docs:
            continue
        (row,) = [r for r in rows if r["query"] == q]
        texts = [passage_text(p) for p in by_doc[doc]]
        scores = model.encode_passages(texts) @ model.encode_queries([q])[0]
        assert row["pos_doc"] == texts[int(np.argmax(scores))]
        assert row["pos_doc"] == texts[answer]  # and here that is the passage written to answer it
        assert not set(row["neg_doc"]) & set(texts)  # the other passage of its page is no negative
        assert len(row["neg_doc"]) == 2
    assert report["checks"] == {"negatives_from_test_documents": 0, "negatives_that_are_positives": 0}


def test_without_generated_questions_the_user_questions_alone_are_split_trained_and_tested(tmp_path):
    _write(tmp_path, pairs=False)  # sdg with questions_per_passage 0, no section headings
    report = run_prep(_config(tmp_path))
    counts = report["split"]["questions"]
    assert counts["user"]["test"] == counts["test"] == 2 and counts["train"] == 0
    assert report["split"]["documents"] == {"train": 4, "test": 2, "without_questions": 0}


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ({"question": "where?", "document": "garden/lilies.md"}, r'field "document": no document "garden/lilies.md"'),
        ({"question": "where?", "document": ["garden/roses.md", 7]}, r'field "document": must be a document path'),
        ({"document": "garden/roses.md"}, r'field "question": is required'),
        ({"question": "  ", "document": "garden/roses.md"}, r'field "question": must not be empty'),
        ({"id": "u1", "question": "again?", "document": "garden/roses.md"}, r'field "id": duplicate id "u1"'),
    ],
)  # fmt: skip
def test_a_bad_user_question_names_file_line_and_field_and_nothing_is_written(tmp_path, line, message):
    _write(tmp_path)
    path = tmp_path / "user.jsonl"
    path.write_text(path.read_text() + json.dumps(line) + "\n")  # line 7
    with pytest.raises(DataFormatError, match=r"user.jsonl:7: " + message):
        run_prep(_config(tmp_path))
    assert not (tmp_path / "out").exists()
