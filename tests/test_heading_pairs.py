"""Heading -> body training pairs: which sections make pairs, and how prep trains on them without leaking."""

import json
from pathlib import Path

import pandas as pd
import pytest

from embedforge.config import PrepConfig
from embedforge.data.corpus import Passage
from embedforge.data.formats import passage_id
from embedforge.prep.heading_pairs import BODY_SUFFIX, heading_pairs
from embedforge.prep.run import run_prep


def _p(doc, title, section, text):
    return Passage(passage_id(doc + text), doc, text, title, section)


BODY = "the dough rests overnight in a cool room so the yeast can work slowly and the flavour deepens"


def test_one_pair_per_informative_section_with_the_heading_cut_off():
    passages = [
        _p("a.md", "Bread", "Proofing the dough", "Proofing the dough " + BODY),
        _p(
            "a.md",
            "Bread",
            "Proofing the dough",
            "A second passage of the same section, long enough to count.",
        ),
        _p("a.md", "Bread", "Overview", "Overview " + BODY + " bread"),
        _p("b.md", "Cakes", "Overview", "Overview " + BODY + " cakes"),  # 'Overview' heads two documents
        _p("b.md", "Cakes", "Cakes", "Cakes " + BODY + " again"),  # the heading is the document's title
        _p("b.md", "Cakes", "Icing", "Icing too short here"),  # under 8 words once the heading is cut
        _p("b.md", "Cakes", "", "Text before any heading has no pair " + BODY),
        _p("c.md", "Pies", "Blind baking", "Blind baking: " + BODY),
        _p("d.md", "Tarts", "F.2.1. Overview", "F.2.1. Overview " + BODY),  # generic once unnumbered
        _p("d.md", "Tarts", "12.3. Glazing a tart", "12.3. Glazing a tart " + BODY),
    ]
    pairs = heading_pairs(passages)
    assert [(h.heading, h.doc_id) for h in pairs] == [
        ("Proofing the dough", "a.md"),
        ("Blind baking", "c.md"),
        ("Glazing a tart", "d.md"),  # numbering cut; 'Overview' under a number is still generic
    ]
    assert pairs[2].body == BODY
    first = pairs[0]
    assert first.body == BODY and first.source_id == passages[0].passage_id
    assert first.body_id == passages[0].passage_id + BODY_SUFFIX and first.title == "Bread"
    assert pairs[1].body == BODY  # the ':' after the heading goes too
    # restricted to some documents; a heading shared with an excluded document is still generic
    assert [h.doc_id for h in heading_pairs(passages, {"c.md", "b.md"})] == ["c.md"]
    assert heading_pairs(passages, {"a.md"})[0].heading == "Proofing the dough"
    assert "Overview" not in [h.heading for h in heading_pairs(passages, {"a.md"})]
    assert all(h.more_ids == () for h in pairs)  # one passage per section unless asked


def _proofing_section(parts: int) -> tuple[list[str], list[Passage]]:
    """A section in ``parts`` passages (bodies, then passages), another section after its second passage."""
    body = [f"part {n} of the section, {BODY}" for n in range(parts)]
    passages = [_p("a.md", "Bread", "Proofing the dough", "Proofing the dough " + body[0])]
    passages += [_p("a.md", "Bread", "Proofing the dough", text) for text in body[1:]]
    # the parts after another section still belong to this one (same heading, same document)
    passages.insert(2, _p("a.md", "Bread", "Shaping", "Shaping " + BODY))
    return body, passages


def test_more_passages_of_a_section_are_positives_of_its_heading():
    _, passages = _proofing_section(4)
    ids = [p.passage_id for p in passages]
    by_heading = {h.heading: h for h in heading_pairs(passages, passages_per_section=3)}
    assert by_heading["Proofing the dough"].more_ids == (ids[1], ids[3])  # first 3 of the section, in order
    assert by_heading["Shaping"].more_ids == ()
    assert heading_pairs(passages, passages_per_section=10)[0].more_ids == (ids[1], ids[3], ids[4])
    with pytest.raises(ValueError, match="passages_per_section"):
        heading_pairs(passages, passages_per_section=0)


def test_a_whole_section_can_be_the_positive_of_its_heading():
    body, passages = _proofing_section(3)
    ids = [p.passage_id for p in passages]
    by_heading = {h.heading: h for h in heading_pairs(passages, passages_per_section=3, whole_section=True)}
    proofing = by_heading["Proofing the dough"]
    assert proofing.body == " ".join(body)  # heading cut from the first passage, the rest in order
    assert proofing.joined_ids == (ids[1], ids[3]) and proofing.more_ids == ()  # one positive, not three
    assert proofing.body_id == ids[0] + BODY_SUFFIX and proofing.source_id == ids[0]
    assert by_heading["Shaping"].body == BODY and by_heading["Shaping"].joined_ids == ()
    # a section too short in its first passage alone counts its whole text
    short = [_p("b.md", "Cakes", "Icing", "Icing too short here"), _p("b.md", "Cakes", "Icing", BODY)]
    assert heading_pairs(short) == []
    assert heading_pairs(short, whole_section=True)[0].body == "too short here " + BODY


TOPICS = {
    "volcano.md": ("Volcanoes", [
        ("Lava flows", "Basaltic lava is runny and flows for kilometres before it cools and hardens into rock."),
        ("Eruption warning signs", "Swelling ground, small earthquakes and sulphur gas warn that magma is rising."),
        ("Ash clouds", "Fine volcanic ash grounds aircraft because it melts inside jet engines at high heat."),
    ]),
    "bees.md": ("Beekeeping", [
        ("The queen bee", "A healthy queen lays up to two thousand eggs a day during the summer months."),
        ("Smoking the hive", "Smoke masks alarm pheromones so the bees stay calm while the hive is opened."),
        ("Varroa mites", "Oxalic acid treatments in winter keep the varroa mite population under control."),
    ]),
    "tea.md": ("Tea", [
        ("Green tea processing", "Green tea leaves are steamed or pan fired soon after picking to stop oxidation."),
        ("Oolong and black tea", "Oolong is partly oxidised while black tea is fully oxidised before drying."),
        ("Shade grown tea", "Shading the bushes for weeks raises amino acids and makes the tea taste sweeter."),
    ]),
    "chess.md": ("Chess", [
        ("The Sicilian Defence", "Black answers the king pawn opening with the c pawn to fight for the centre."),
        ("Castling early", "Castling tucks the king into safety and connects the rooks on the back rank."),
        ("Endgame technique", "In the endgame the king becomes an attacking piece and should walk to the centre."),
    ]),
    "rail.md": ("Railways", [
        ("Overhead lines", "High speed trains draw power from overhead lines carrying twenty five kilovolts."),
        ("Welded rail", "Continuous welded rail removes joints, making the ride quiet and smooth for riders."),
        ("Signalling", "Signals divide the line into blocks so that only one train occupies a block at once."),
    ]),
}  # fmt: skip


@pytest.fixture(scope="module")
def prepped(tmp_path_factory):
    """sdg-shaped files: passages with sections (heading first, as the corpus writes them), one question each."""
    root = tmp_path_factory.mktemp("headings")
    passages, pairs = [], []
    for doc, (title, sections) in TOPICS.items():
        for n, (heading, body) in enumerate(sections):
            text = f"{heading} {body}"
            pid = passage_id(text)
            passages.append(
                {"passage_id": pid, "doc_id": doc, "text": text, "title": title, "section": heading}
            )
            question = f"What should I know about {body.split()[0].lower()} {body.split()[1]}?"
            pairs.append(
                {"question_id": f"{doc}-q{n}", "question": question, "positive_ids": [pid], "doc_id": doc}
            )
    (root / "pairs.jsonl").write_text("".join(json.dumps(p) + "\n" for p in pairs))
    (root / "passages.jsonl").write_text("".join(json.dumps(p) + "\n" for p in passages))
    config = PrepConfig(pairs=str(root / "pairs.jsonl"), out=str(root / "out"), heading_pairs=True,
                        num_negatives=3, test_fraction=0.2)  # fmt: skip
    return config, run_prep(config), {p["passage_id"]: p for p in passages}


def test_prep_trains_on_heading_pairs_of_train_documents_only(prepped):
    config, report, passages = prepped
    out = Path(config.out)
    test_docs = set(report["split"]["test_documents"])
    train_docs = set(TOPICS) - test_docs
    assert len(test_docs) == 1
    assert report["split"]["questions"]["heading_pairs"] == 3 * len(train_docs)
    assert report["split"]["questions"]["train"] == 3 * len(train_docs)  # the LLM's questions, counted apart
    assert report["query_types"]["train"]["heading"] == 3 * len(train_docs)
    data = json.loads((out / "train.json").read_text())["data"]
    heading_records = [r for r in data if r["question_id"].startswith("h-")]
    assert len(heading_records) == 3 * len(train_docs) and len(data) == 6 * len(train_docs)
    inline = [json.loads(line) for line in (out / "train.jsonl").read_text().splitlines()]
    by_id = {r["question_id"]: row for r, row in zip(data, inline, strict=True)}
    for record in heading_records:
        source = record["question_id"][2:]
        assert record["pos_doc"][0]["id"] == source + BODY_SUFFIX
        assert passages[source]["doc_id"] in train_docs
        assert record["question"] == passages[source]["section"]
        positive = by_id[record["question_id"]]["pos_doc"]
        assert passages[source]["section"] not in positive  # the body copy lost its heading
        assert passages[source]["text"].endswith(positive.split(" ", 1)[1])  # title + body
        assert source not in [n["id"] for n in record["neg_doc"]]
    for record in data:  # the heading-free copies are never negatives
        assert all(
            n["id"] in passages and passages[n["id"]]["doc_id"] in train_docs for n in record["neg_doc"]
        )
    beir = out / "test_beir"
    assert all(
        BODY_SUFFIX not in json.loads(line)["_id"]
        for line in (beir / "corpus.jsonl").read_text().splitlines()
    )
    assert all(
        not json.loads(line)["_id"].startswith("h-")
        for line in (beir / "queries.jsonl").read_text().splitlines()
    )
    assert report["checks"] == {"negatives_from_test_documents": 0, "negatives_that_are_positives": 0}


def _two_passage_sections(folder: Path) -> list[dict]:
    """sdg-shaped files in ``folder``: every TOPICS section in two passages, a question on the first."""
    passages, pairs = [], []
    for doc, (title, sections) in TOPICS.items():
        for n, (heading, body) in enumerate(sections):
            for text in (
                f"{heading} {body}",
                f"More on {heading.lower()}: {body.lower()} and so on, in detail.",
            ):
                passages.append({"passage_id": passage_id(text), "doc_id": doc, "text": text, "title": title,
                                 "section": heading})  # fmt: skip
            pairs.append({"question_id": f"{doc}-q{n}", "question": f"Tell me about {heading.lower()}?",
                          "positive_ids": [passages[-2]["passage_id"]], "doc_id": doc})  # fmt: skip
    (folder / "pairs.jsonl").write_text("".join(json.dumps(p) + "\n" for p in pairs))
    (folder / "passages.jsonl").write_text("".join(json.dumps(p) + "\n" for p in passages))
    return passages


def test_prep_unrolls_a_multi_passage_section_into_one_record_per_positive(tmp_path):
    passages = _two_passage_sections(tmp_path)
    config = PrepConfig(pairs=str(tmp_path / "pairs.jsonl"), out=str(tmp_path / "out"), heading_pairs=True,
                        heading_passages=2, num_negatives=2, test_fraction=0.2)  # fmt: skip
    report = run_prep(config)
    assert report["config"]["heading_passages"] == 2
    train_docs = set(TOPICS) - set(report["split"]["test_documents"])
    by_id = {p["passage_id"]: p for p in passages}
    data = json.loads((tmp_path / "out" / "train.json").read_text())["data"]
    records: dict[str, list[dict]] = {}
    for r in data:
        if r["question_id"].startswith("h-"):
            records.setdefault(r["question"], []).append(r)
    assert len(records) == 3 * len(train_docs)
    for heading, rows in records.items():
        first, second = (row["pos_doc"][0]["id"] for row in rows)
        assert first.endswith(BODY_SUFFIX) and by_id[second]["text"].startswith("More on")
        assert by_id[second]["section"] == heading and by_id[second]["doc_id"] in train_docs
        for row in rows:  # neither positive is a negative of its heading
            assert {first, second, first[: -len(BODY_SUFFIX)]}.isdisjoint(n["id"] for n in row["neg_doc"])
    with pytest.raises(ValueError, match="heading_passages must be >= 1"):
        run_prep(
            PrepConfig(pairs=config.pairs, out=str(tmp_path / "bad"), heading_pairs=True, heading_passages=0)
        )
    assert not (tmp_path / "bad").exists()


def test_prep_trains_a_heading_on_its_whole_section_and_never_on_its_parts_as_negatives(tmp_path):
    passages = _two_passage_sections(tmp_path)
    config = PrepConfig(pairs=str(tmp_path / "pairs.jsonl"), out=str(tmp_path / "out"), heading_pairs=True,
                        heading_section=True, num_negatives=3, test_fraction=0.2)  # fmt: skip
    report = run_prep(config)
    assert report["config"]["heading_section"] is True
    data = json.loads((tmp_path / "out" / "train.json").read_text())["data"]
    corpus = dict(pd.read_parquet(tmp_path / "out" / "corpus" / "train.parquet")[["id", "text"]].values)
    rows = [r for r in data if r["question_id"].startswith("h-")]
    train_docs = set(TOPICS) - set(report["split"]["test_documents"])
    assert len(rows) == 3 * len(train_docs)  # one record per heading: the section is one positive
    for row in rows:
        (positive,) = [d["id"] for d in row["pos_doc"]]
        first = next(p for p in passages if p["passage_id"] == positive[: -len(BODY_SUFFIX)])
        second = next(p for p in passages if p["text"].startswith(f"More on {row['question'].lower()}:"))
        assert corpus[positive].endswith(second["text"])  # both passages, in order, in the one positive
        negatives = {n["id"] for n in row["neg_doc"]}
        assert len(negatives) == 3
        assert negatives.isdisjoint({positive, first["passage_id"], second["passage_id"]})


def test_without_questions_prep_trains_and_tests_on_headings_cut_from_their_sections(tmp_path):
    passages = _two_passage_sections(tmp_path)
    (tmp_path / "pairs.jsonl").write_text("")  # what sdg writes with questions_per_passage 0
    config = PrepConfig(pairs=str(tmp_path / "pairs.jsonl"), out=str(tmp_path / "out"), heading_pairs=True,
                        num_negatives=2, test_fraction=0.4)  # fmt: skip
    report = run_prep(config)
    test_docs = set(report["split"]["test_documents"])
    assert len(test_docs) == 2 and report["split"]["documents"]["train"] == len(TOPICS) - 2
    questions = report["split"]["questions"]
    assert (questions["train"], questions["heading_pairs"], questions["test"]) == (0, 9, 6)
    assert report["query_types"]["test"] == {"heading": 6}
    beir = tmp_path / "out" / "test_beir"
    queries = {
        q["_id"]: q["text"] for q in map(json.loads, (beir / "queries.jsonl").read_text().splitlines())
    }
    corpus = {d["_id"]: d["text"] for d in map(json.loads, (beir / "corpus.jsonl").read_text().splitlines())}
    by_id = {p["passage_id"]: p for p in passages}
    # the test corpus: every passage (the questions search the whole corpus); no test document's passage
    # still opens with its heading, the test question
    assert set(corpus) == {p["passage_id"] for p in passages}
    firsts = passages[::2]  # each section's first passage, the one that opens with its heading
    assert sorted(queries.values()) == sorted(p["section"] for p in firsts if p["doc_id"] in test_docs)
    for pid, text in corpus.items():
        assert by_id[pid]["doc_id"] not in test_docs or not text.startswith(by_id[pid]["section"])
    qrels = [line.split("\t") for line in (beir / "qrels" / "test.tsv").read_text().splitlines()[1:]]
    relevant: dict[str, set[str]] = {}
    for qid, pid, _ in qrels:
        relevant.setdefault(queries[qid], set()).add(pid)
    for heading, pids in relevant.items():  # a heading's whole section is relevant: both of its passages
        assert {by_id[p]["section"] for p in pids} == {heading} and len(pids) == 2
    data = json.loads((tmp_path / "out" / "train.json").read_text())["data"]
    assert data and all(r["question_id"].startswith("h-") for r in data)
    assert all(by_id[r["question_id"][2:]]["doc_id"] not in test_docs for r in data)
    assert report["checks"] == {"negatives_from_test_documents": 0, "negatives_that_are_positives": 0}


def test_without_questions_or_heading_pairs_prep_says_what_to_set_and_writes_nothing(tmp_path):
    _two_passage_sections(tmp_path)
    (tmp_path / "pairs.jsonl").write_text("")
    with pytest.raises(ValueError, match=r"holds no questions .* prep.heading_pairs=true"):
        run_prep(PrepConfig(pairs=str(tmp_path / "pairs.jsonl"), out=str(tmp_path / "out")))
    assert not (tmp_path / "out").exists()


def test_without_questions_a_corpus_without_headings_is_a_clear_error(tmp_path):
    passages = _two_passage_sections(tmp_path)
    for p in passages:
        p["section"] = ""  # plain text: no headings
    (tmp_path / "passages.jsonl").write_text("".join(json.dumps(p) + "\n" for p in passages))
    (tmp_path / "pairs.jsonl").write_text("")
    config = PrepConfig(pairs=str(tmp_path / "pairs.jsonl"), out=str(tmp_path / "out"), heading_pairs=True)
    with pytest.raises(
        ValueError,
        match=r"2 documents with usable section headings .* found 0 in .*passages.jsonl: let sdg write",
    ):
        run_prep(config)
    assert not (tmp_path / "out").exists()
