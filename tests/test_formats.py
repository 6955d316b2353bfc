"""Tests for embedforge.data.formats: round trips, auto-detection, located errors, atomic writes."""

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from embedforge.atomic import atomic_write
from embedforge.data import formats
from embedforge.data.formats import (
    BeirDataset,
    DataFormatError,
    TrainingExample,
    beir_to_training,
    convert,
    detect_format,
    passage_id,
    read_beir,
    read_corpus_id_json,
    read_inline_jsonl,
    read_training_data,
    read_triplets,
    training_to_beir,
    validate,
    write_beir,
    write_corpus_id_json,
    write_inline_jsonl,
    write_triplets,
)

EXAMPLES = [
    TrainingExample(
        "what is a bi-encoder?", ["A bi-encoder embeds queries and passages apart."], ["Cats purr."]
    ),
    TrainingExample(
        "how is nDCG computed?",
        ["nDCG discounts gains by log rank.", "It is normalised by the ideal DCG."],
        ["BM25 is a lexical ranker.", "Cats purr.", "FAISS indexes vectors."],
    ),
    TrainingExample("what does LoRA train?", ["LoRA trains low-rank adapters."], []),
]


def triples(examples):
    return [(ex.query, ex.positives, ex.negatives) for ex in examples]


def write_lines(path: Path, *lines: str) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def write_in(fmt: str, examples, folder: Path) -> Path:
    """Write `examples` in `fmt` under `folder`, return the path to hand to a reader."""
    if fmt == "beir":
        write_beir(training_to_beir(examples), folder / "beir")
        return folder / "beir"
    path = folder / {"inline": "data.jsonl", "corpus_id": "train.json", "triplets": "triplets.jsonl"}[fmt]
    {"inline": write_inline_jsonl, "corpus_id": write_corpus_id_json, "triplets": write_triplets}[fmt](
        examples, path
    )
    return path


def make_corpus(folder: Path, docs: dict, corpus_id="c1") -> Path:
    folder.mkdir(parents=True)
    (folder / "merlin_metadata.json").write_text(
        json.dumps({"class": "TextQADataset", "corpus_id": corpus_id})
    )
    pq.write_table(pa.table({"id": list(docs), "text": list(docs.values())}), folder / "train.parquet")
    return folder


def make_corpus_id(tmp_path: Path, records: list, corpus_path="./corpus/", **top) -> Path:
    path = tmp_path / "train.json"
    path.write_text(json.dumps({"corpus": [{"path": corpus_path}], "data": records, **top}, indent=2))
    return path


DOCS = {"d1": "Paris is the capital of France.", "d2": "Berlin is in Germany.", "d3": "Rome is old."}


def record(qid, question, pos, neg=(), corpus_id="c1"):
    return {
        "question_id": qid,
        "question": question,
        "corpus_id": corpus_id,
        "pos_doc": [{"id": i} for i in pos],
        "neg_doc": [{"id": i} for i in neg],
    }


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


# ------------------------------------------------------------------------------------------ round trips


def test_passage_id_is_stable_short_hex_and_text_specific():
    assert passage_id("hello") == passage_id("hello")
    assert len(passage_id("hello")) == 16 and int(passage_id("hello"), 16) >= 0
    assert passage_id("hello") != passage_id("hello ")


@pytest.mark.parametrize("src", formats.FORMATS)
@pytest.mark.parametrize("dst", formats.FORMATS)
def test_convert_between_every_pair_preserves_queries_positives_negatives(tmp_path, src, dst):
    src_path = write_in(src, EXAMPLES, tmp_path / "in")
    out = tmp_path / "out" / {"beir": "beir", "corpus_id": "train.json"}.get(dst, "out.jsonl")
    summary = convert(src_path, out, dst)
    assert summary["from"] == src and summary["format"] == dst
    assert detect_format(out) == dst
    assert triples(read_training_data(out)) == triples(EXAMPLES)


def test_inline_writes_customizers_own_form(tmp_path):
    path = tmp_path / "train.jsonl"
    write_inline_jsonl(EXAMPLES, path)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert rows[0] == {
        "query": "what is a bi-encoder?",
        "pos_doc": "A bi-encoder embeds queries and passages apart.",
        "neg_doc": ["Cats purr."],
    }
    assert rows[1]["pos_doc"] == EXAMPLES[1].positives
    assert rows[2]["neg_doc"] == []


def test_inline_reads_every_accepted_shape(tmp_path):
    path = write_lines(
        tmp_path / "train.jsonl",
        json.dumps({"query": "q1", "pos_doc": "p1", "neg_doc": "n1"}),
        "",
        json.dumps({"question": "q2", "pos_doc": ["p2", "p3"], "neg_doc": ["n2", "n3"]}),
        json.dumps({"query": "q3", "pos_doc": {"text": "p4"}}),
        json.dumps({"query": "q4", "pos_doc": [{"text": "p5"}, "p6"], "neg_doc": ""}),
        json.dumps({"query": "q5", "pos_doc": "p7", "neg_doc": None, "extra": 1}),
    )
    assert triples(read_inline_jsonl(path)) == [
        ("q1", ["p1"], ["n1"]),
        ("q2", ["p2", "p3"], ["n2", "n3"]),
        ("q3", ["p4"], []),
        ("q4", ["p5", "p6"], []),
        ("q5", ["p7"], []),
    ]


def test_windows_files_with_bom_and_crlf_are_read(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps({"query": "q", "pos_doc": "p"}).encode() + b"\r\n")
    assert triples(read_training_data(path)) == [("q", ["p"], [])]
    tsv = tmp_path / "t.tsv"
    tsv.write_bytes(b"\xef\xbb\xbfq\tp\tn\r\n")
    assert triples(read_training_data(tsv)) == [("q", ["p"], ["n"])]


def test_corpus_id_round_trip_writes_metadata_parquet_and_ids(tmp_path):
    path = tmp_path / "ds" / "train.json"
    mining = {"args": {"margin": 0.95, "num_negs": 5}}
    write_corpus_id_json(EXAMPLES, path, corpus_dir_name="my_corpus", extra={"mining": mining})

    doc = json.loads(path.read_text())
    assert doc["corpus"] == [{"path": "./my_corpus/"}]
    assert doc["mining"] == mining
    assert doc["data"][0]["pos_doc"] == [{"id": passage_id(EXAMPLES[0].positives[0])}]
    meta = json.loads((tmp_path / "ds" / "my_corpus" / "merlin_metadata.json").read_text())
    assert meta == {"class": "TextQADataset", "corpus_id": "my_corpus"}
    table = pq.read_table(tmp_path / "ds" / "my_corpus" / "train.parquet")
    assert table.column_names == ["id", "text"]
    assert table.num_rows == 7  # "Cats purr." is shared by two examples and stored once

    back = read_corpus_id_json(path)
    assert triples(back) == triples(EXAMPLES)
    assert [ex.query_id for ex in back] == ["q0", "q1", "q2"]
    assert back[1].positive_ids == [passage_id(t) for t in EXAMPLES[1].positives]
    assert back[1].negative_ids == [passage_id(t) for t in EXAMPLES[1].negatives]


def test_corpus_id_keeps_known_ids_and_question_ids(tmp_path):
    make_corpus(tmp_path / "corpus", DOCS)
    src = make_corpus_id(tmp_path, [record("qa", "capital of France?", ["d1"], ["d2", "d3"])])
    write_corpus_id_json(read_corpus_id_json(src), tmp_path / "out" / "train.json")
    [ex] = read_corpus_id_json(tmp_path / "out" / "train.json")
    assert (ex.query_id, ex.positive_ids, ex.negative_ids) == ("qa", ["d1"], ["d2", "d3"])


def test_corpus_id_accepts_mined_scores_upstream_corpus_object_and_missing_corpus_id(tmp_path):
    make_corpus(tmp_path / "corpus", DOCS)
    rec = {"question_id": "q0", "question": "capital?", "pos_doc": [{"id": "d1", "score": 0.8}]}
    rec["neg_doc"] = [{"id": "d2", "score": 0.4}]
    path = tmp_path / "train.json"
    path.write_text(json.dumps({"corpus": {"path": "./corpus/"}, "data": [rec], "mining": {"args": {}}}))
    assert triples(read_corpus_id_json(path)) == [("capital?", [DOCS["d1"]], [DOCS["d2"]])]


def test_corpus_path_resolves_against_the_json_file_not_the_cwd(tmp_path, monkeypatch):
    make_corpus(tmp_path / "ds" / "data" / "corpus", DOCS)
    path = make_corpus_id(tmp_path / "ds", [record("q0", "capital?", ["d1"])], corpus_path="./data/corpus/")
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    assert read_corpus_id_json(path)[0].positives == [DOCS["d1"]]
    assert read_corpus_id_json(Path("..") / "ds" / "train.json")[0].positives == [DOCS["d1"]]


def test_corpus_path_may_be_absolute(tmp_path):
    corpus = make_corpus(tmp_path / "shared" / "corpus", DOCS)
    (tmp_path / "ds").mkdir()
    path = make_corpus_id(tmp_path / "ds", [record("q0", "capital?", ["d1"])], corpus_path=str(corpus))
    assert read_corpus_id_json(path)[0].positives == [DOCS["d1"]]


def test_corpus_id_picks_the_corpus_each_record_names(tmp_path):
    make_corpus(tmp_path / "a", {"x": "text in a"}, corpus_id="A")
    make_corpus(tmp_path / "b", {"x": "text in b"}, corpus_id="B")
    path = tmp_path / "train.json"
    records = [record("q0", "one", ["x"], corpus_id="B"), record("q1", "two", ["x"], corpus_id="A")]
    path.write_text(json.dumps({"corpus": [{"path": "a"}, {"path": "b"}], "data": records}))
    assert [ex.positives for ex in read_corpus_id_json(path)] == [["text in b"], ["text in a"]]


def test_beir_round_trip_with_titles_and_header(tmp_path):
    dataset = BeirDataset(
        corpus={
            "d1": {"title": "Paris", "text": "Capital of France."},
            "d2": {"title": "", "text": "Berlin."},
        },
        queries={"q1": "capital of france", "q2": "unjudged query"},
        qrels={"q1": {"d1": 2, "d2": 0}},
    )
    write_beir(dataset, tmp_path / "beir", split="dev")
    assert (tmp_path / "beir" / "qrels" / "dev.tsv").read_text().splitlines() == [
        "query-id\tcorpus-id\tscore",
        "q1\td1\t2",
        "q1\td2\t0",
    ]
    assert read_beir(tmp_path / "beir", split="dev") == dataset
    [ex] = beir_to_training(dataset)
    assert (ex.query, ex.positives, ex.negatives) == (
        "capital of france",
        ["Paris Capital of France."],
        ["Berlin."],
    )
    assert (ex.query_id, ex.positive_ids, ex.negative_ids) == ("q1", ["d1"], ["d2"])


def test_training_to_beir_ids_corpus_and_qrels():
    dataset = training_to_beir(EXAMPLES)
    assert len(dataset.corpus) == 7
    assert dataset.corpus[passage_id("Cats purr.")] == {"title": "", "text": "Cats purr."}
    q1 = passage_id(EXAMPLES[1].query)
    assert dataset.queries[q1] == EXAMPLES[1].query
    assert [s for s in dataset.qrels[q1].values()] == [1, 1, 0, 0, 0]
    assert set(dataset.qrels[q1]) == {passage_id(t) for t in EXAMPLES[1].positives + EXAMPLES[1].negatives}


def test_training_to_beir_rejects_one_id_for_two_texts():
    ex1 = TrainingExample("q1", ["text a"], positive_ids=["same"])
    ex2 = TrainingExample("q2", ["text b"], positive_ids=["same"])
    with pytest.raises(DataFormatError, match=r'example 2: field "positive_ids": id "same"'):
        training_to_beir([ex1, ex2])


def test_triplets_jsonl_groups_lines_by_query(tmp_path):
    path = write_lines(
        tmp_path / "t.jsonl",
        json.dumps({"query": "q1", "positive": "p1", "negative": "n1"}),
        json.dumps({"anchor": "q2", "positive": "p2", "negative": "n2"}),
        json.dumps({"query": "q1", "positive": "p1", "negative": "n3"}),
        json.dumps({"query": "q1", "positive": "p4"}),
    )
    assert triples(read_triplets(path)) == [("q1", ["p1", "p4"], ["n1", "n3"]), ("q2", ["p2"], ["n2"])]


def test_triplets_tsv_with_header_and_pairs(tmp_path):
    path = write_lines(tmp_path / "t.tsv", "query\tpositive\tnegative", "q1\tp1\tn1", "q1\tp2\tn2", "q2\tp3")
    assert detect_format(path) == "triplets"
    assert triples(read_triplets(path)) == [("q1", ["p1", "p2"], ["n1", "n2"]), ("q2", ["p3"], [])]


def test_triplets_tsv_write_quotes_tabs_and_quotes(tmp_path):
    examples = [TrainingExample('say "hi"', ["tab\there", "two\nlines"], ["plain"])]
    write_triplets(examples, tmp_path / "t.tsv")
    assert triples(read_triplets(tmp_path / "t.tsv")) == triples(examples)


# --------------------------------------------------------------------------------------------- detect


def test_detect_format_each_kind(tmp_path):
    paths = {fmt: write_in(fmt, EXAMPLES, tmp_path / fmt) for fmt in formats.FORMATS}
    assert {fmt: detect_format(p) for fmt, p in paths.items()} == {f: f for f in formats.FORMATS}
    one_line = tmp_path / "one_line.json"
    one_line.write_text(json.dumps(json.loads(paths["corpus_id"].read_text())))
    assert detect_format(one_line) == "corpus_id"


def test_detect_format_rejects_unknown_content(tmp_path):
    with pytest.raises(DataFormatError, match=r"odd.jsonl:2: cannot tell the format"):
        detect_format(write_lines(tmp_path / "odd.jsonl", "", json.dumps({"title": "x"})))
    with pytest.raises(DataFormatError, match=r"notes.txt:1: cannot tell the format"):
        detect_format(write_lines(tmp_path / "notes.txt", "just words"))
    (tmp_path / "folder").mkdir()
    with pytest.raises(DataFormatError, match="not a BEIR folder"):
        detect_format(tmp_path / "folder")


# --------------------------------------------------------------------------------------------- errors

GOOD = json.dumps({"query": "q", "pos_doc": "p"})


@pytest.mark.parametrize(
    ("bad_line", "field", "message"),
    [
        ('{"query": "x", "pos_doc": ', None, "invalid JSON"),
        ('["not", "an", "object"]', None, "expected a JSON object, got array"),
        (json.dumps({"query": "x"}), "pos_doc", "is required"),
        (json.dumps({"pos_doc": "p"}), "query", "is required"),
        (json.dumps({"query": 7, "pos_doc": "p"}), "query", "must be a string, got number"),
        (json.dumps({"query": "  ", "pos_doc": "p"}), "query", "must not be empty"),
        (json.dumps({"query": "x", "pos_doc": ""}), "pos_doc", "must not be empty"),
        (json.dumps({"query": "x", "pos_doc": ["a", ""]}), "pos_doc[1]", "must not be empty"),
        (json.dumps({"query": "x", "pos_doc": []}), "pos_doc", "needs at least one positive"),
        (json.dumps({"query": "x", "pos_doc": [{"txt": "a"}]}), "pos_doc[0].text", "is required"),
        (json.dumps({"query": "x", "pos_doc": "p", "neg_doc": [3]}), "neg_doc[0]", "must be a string"),
    ],
)
def test_inline_errors_name_file_line_and_field(tmp_path, bad_line, field, message):
    path = write_lines(tmp_path / "train.jsonl", GOOD, "", bad_line, GOOD)
    with pytest.raises(DataFormatError) as err:
        read_training_data(path)
    expected = "train.jsonl:3: " + (f'field "{field}": ' if field else "") + message
    assert expected in str(err.value)
    assert (err.value.line, err.value.field) == (3, field)


@pytest.mark.parametrize("content", ["", "\n  \n"])
def test_empty_files_are_errors(tmp_path, content):
    for name in ("train.jsonl", "train.json", "t.tsv"):
        (tmp_path / name).write_text(content)
        with pytest.raises(DataFormatError, match=f"{name}: file is empty"):
            validate(tmp_path / name)


def test_corpus_id_broken_json_reports_line(tmp_path):
    path = tmp_path / "train.json"
    path.write_text('{\n  "corpus": [{"path": "./corpus/"}],\n  "data": [\n    {"question": }\n  ]\n}\n')
    with pytest.raises(DataFormatError, match=r"train.json:4: invalid JSON"):
        read_training_data(path)


def test_corpus_id_unknown_doc_id_names_record_field_and_id(tmp_path):
    make_corpus(tmp_path / "corpus", DOCS)
    records = [record("q0", "a", ["d1"]), record("q1", "b", ["d2"], ["d3", "nope"])]
    with pytest.raises(DataFormatError) as err:
        read_corpus_id_json(make_corpus_id(tmp_path, records))
    assert 'train.json: record 2: field "neg_doc[1].id": unknown corpus id "nope"' in str(err.value)


def test_corpus_id_unknown_corpus_names_record_and_id(tmp_path):
    make_corpus(tmp_path / "corpus", DOCS)
    path = make_corpus_id(tmp_path, [record("q0", "a", ["d1"], corpus_id="other")])
    with pytest.raises(DataFormatError, match=r'record 1: field "corpus_id": unknown corpus id "other"'):
        read_corpus_id_json(path)


def test_corpus_id_duplicate_question_id(tmp_path):
    make_corpus(tmp_path / "corpus", DOCS)
    path = make_corpus_id(tmp_path, [record("q0", "a", ["d1"]), record("q0", "b", ["d2"])])
    with pytest.raises(
        DataFormatError, match=r'record 2: field "question_id": duplicate .*first used by record 1'
    ):
        read_corpus_id_json(path)


def test_corpus_id_duplicate_corpus_doc_id(tmp_path):
    folder = make_corpus(tmp_path / "corpus", DOCS)
    pq.write_table(pa.table({"id": ["d1", "d1"], "text": ["a", "b"]}), folder / "train.parquet")
    path = make_corpus_id(tmp_path, [record("q0", "a", ["d1"])])
    with pytest.raises(DataFormatError, match=r'train.parquet: row 2: field "id": duplicate id "d1"'):
        read_corpus_id_json(path)


def test_corpus_id_bad_corpus_folder(tmp_path):
    path = make_corpus_id(tmp_path, [record("q0", "a", ["d1"])])
    with pytest.raises(DataFormatError, match=r"merlin_metadata.json: missing"):
        read_corpus_id_json(path)
    folder = make_corpus(tmp_path / "corpus", DOCS)
    pq.write_table(pa.table({"id": ["d1"], "body": ["a"]}), folder / "train.parquet")
    with pytest.raises(DataFormatError, match=r'train.parquet: field "text": column is missing'):
        read_corpus_id_json(path)


def test_corpus_id_record_errors(tmp_path):
    make_corpus(tmp_path / "corpus", DOCS)
    rec = record("q1", "b", [])
    with pytest.raises(DataFormatError, match=r'record 2: field "pos_doc": needs at least one positive'):
        read_corpus_id_json(make_corpus_id(tmp_path, [record("q0", "a", ["d1"]), rec]))
    rec = {"question_id": "q0", "question": "", "pos_doc": [{"id": "d1"}]}
    with pytest.raises(DataFormatError, match=r'record 1: field "question": must not be empty'):
        read_corpus_id_json(make_corpus_id(tmp_path, [rec]))


def make_beir(tmp_path, corpus_lines, query_lines, qrels_lines) -> Path:
    folder = tmp_path / "beir"
    (folder / "qrels").mkdir(parents=True)
    write_lines(folder / "corpus.jsonl", *map(json.dumps, corpus_lines))
    write_lines(folder / "queries.jsonl", *map(json.dumps, query_lines))
    write_lines(folder / "qrels" / "test.tsv", "query-id\tcorpus-id\tscore", *qrels_lines)
    return folder


CORPUS = [{"_id": "d1", "title": "", "text": "one"}, {"_id": "d2", "text": "two"}]
QUERIES = [{"_id": "q1", "text": "first"}, {"_id": "q2", "text": "second"}]


@pytest.mark.parametrize(
    ("corpus", "queries", "qrels", "expected"),
    [
        (
            CORPUS,
            QUERIES,
            ["q1\td1\t1", "q9\td2\t1"],
            'qrels/test.tsv:3: field "query-id": unknown query id "q9"',
        ),
        (
            CORPUS,
            QUERIES,
            ["q1\td1\t1", "q2\tdx\t1"],
            'test.tsv:3: field "corpus-id": unknown corpus id "dx"',
        ),
        (CORPUS, QUERIES, ["q1\td1\thigh"], 'test.tsv:2: field "score": must be an integer'),
        (CORPUS, QUERIES, ["q1\td1"], "test.tsv:2: expected 3 tab-separated columns"),
        (CORPUS, QUERIES, ["q1\td1\t1", "q1\td1\t0"], 'test.tsv:3: field "corpus-id": duplicate judgement'),
        (
            CORPUS + [{"_id": "d1", "text": "again"}],
            QUERIES,
            [],
            'corpus.jsonl:3: field "_id": duplicate id "d1"',
        ),
        (
            CORPUS,
            QUERIES + [{"_id": "q1", "text": "x"}],
            [],
            'queries.jsonl:3: field "_id": duplicate id "q1"',
        ),
        (CORPUS, [{"_id": "q1", "text": ""}], [], 'queries.jsonl:1: field "text": must not be empty'),
        (
            [{"_id": "d1", "title": "", "text": " "}],
            QUERIES,
            [],
            'corpus.jsonl:1: field "text": must not be empty',
        ),
        ([{"text": "no id"}], QUERIES, [], 'corpus.jsonl:1: field "_id": is required'),
        (CORPUS, QUERIES, [], "test.tsv: has no judgements"),
    ],
)
def test_beir_errors_name_file_line_and_field(tmp_path, corpus, queries, qrels, expected):
    folder = make_beir(tmp_path, corpus, queries, qrels)
    with pytest.raises(DataFormatError) as err:
        validate(folder)
    assert expected in str(err.value)


def test_beir_missing_split_names_the_file(tmp_path):
    folder = make_beir(tmp_path, CORPUS, QUERIES, ["q1\td1\t1"])
    with pytest.raises(DataFormatError, match=r"qrels/dev.tsv: missing"):
        read_beir(folder, split="dev")


def test_beir_with_one_non_test_split_is_still_readable(tmp_path):
    folder = make_beir(tmp_path, CORPUS, QUERIES, ["q1\td1\t1"])
    (folder / "qrels" / "test.tsv").rename(folder / "qrels" / "train.tsv")
    assert triples(read_training_data(folder)) == [("first", ["one"], [])]


def test_triplet_errors_name_file_line_and_field(tmp_path):
    path = write_lines(tmp_path / "t.tsv", "q1\tp1\tn1", "q2\tp2\tn2\textra")
    with pytest.raises(DataFormatError, match=r"t.tsv:2: expected 2 or 3 tab-separated columns, got 4"):
        read_triplets(path)
    path = write_lines(tmp_path / "t.tsv", "q1\tp1\tn1", "q2\t \tn2")
    with pytest.raises(DataFormatError, match=r't.tsv:2: field "positive": must not be empty'):
        read_triplets(path)
    path = write_lines(
        tmp_path / "t.jsonl", json.dumps({"query": "q", "positive": "p"}), json.dumps({"query": "q"})
    )
    with pytest.raises(DataFormatError, match=r't.jsonl:2: field "positive": is required'):
        read_training_data(path)
    path = write_lines(tmp_path / "h.tsv", "query\tpositive\tnegative")
    with pytest.raises(DataFormatError, match="h.tsv: has no triplets"):
        read_triplets(path)


def test_writers_check_examples(tmp_path):
    bad = [TrainingExample("q", ["p"], positive_ids=["a", "b"])]
    with pytest.raises(DataFormatError, match=r'example 1: field "positive_ids": has 2 ids for 1 passages'):
        write_corpus_id_json(bad, tmp_path / "train.json")
    dup = [TrainingExample("a", ["p"], query_id="x"), TrainingExample("b", ["p"], query_id="x")]
    with pytest.raises(DataFormatError, match=r'example 2: field "query_id": duplicate question id "x"'):
        write_corpus_id_json(dup, tmp_path / "train.json")
    with pytest.raises(DataFormatError, match="no examples to write"):
        write_inline_jsonl([], tmp_path / "empty.jsonl")
    assert sorted(p.name for p in tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------------------ validate


def test_validate_summaries(tmp_path):
    assert validate(write_in("inline", EXAMPLES, tmp_path)) == {
        "format": "inline",
        "examples": 3,
        "queries": 3,
        "corpus": 7,
        "positives": 4,
        "negatives": 4,
        "min_negatives": 0,
    }
    folder = make_beir(tmp_path, CORPUS, QUERIES, ["q1\td1\t1", "q2\td2\t1"])
    write_lines(folder / "qrels" / "dev.tsv", "query-id\tcorpus-id\tscore", "q1\td2\t1")
    assert validate(folder) == {"format": "beir", "queries": 2, "corpus": 2, "qrels": {"dev": 1, "test": 2}}


def test_validate_checks_every_beir_split(tmp_path):
    folder = make_beir(tmp_path, CORPUS, QUERIES, ["q1\td1\t1"])
    write_lines(folder / "qrels" / "dev.tsv", "query-id\tcorpus-id\tscore", "q1\tghost\t1")
    with pytest.raises(DataFormatError, match=r'dev.tsv:2: field "corpus-id": unknown corpus id "ghost"'):
        validate(folder)


def test_convert_rejects_unknown_target(tmp_path):
    with pytest.raises(ValueError, match="unknown format 'csv'"):
        convert(write_in("inline", EXAMPLES, tmp_path), tmp_path / "x", "csv")


# -------------------------------------------------------------------------------------------- atomic


def late_bad_examples():
    return EXAMPLES + [TrainingExample("fine query", ["ok"]), TrainingExample("late", ["ok", ""])]


def test_failed_write_leaves_no_file_and_no_temp(tmp_path):
    out = tmp_path / "out.jsonl"
    with pytest.raises(
        DataFormatError, match=r'out.jsonl: example 5: field "positives\[1\]": must not be empty'
    ):
        write_inline_jsonl(late_bad_examples(), out)
    assert list(tmp_path.iterdir()) == []


def test_failed_write_keeps_the_old_file(tmp_path):
    out = tmp_path / "out.jsonl"
    out.write_text("old contents\n")

    def interrupted():
        yield from EXAMPLES
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        write_triplets(interrupted(), out)
    with pytest.raises(DataFormatError):
        write_inline_jsonl(late_bad_examples(), out)
    assert out.read_text() == "old contents\n"
    assert leftovers(tmp_path) == []


def test_failed_beir_write_keeps_the_old_folder(tmp_path):
    folder = tmp_path / "beir"
    write_beir(training_to_beir(EXAMPLES), folder)
    before = {p.relative_to(folder): p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    broken = BeirDataset({"d1": {"title": "", "text": "one"}}, {"q1": "first"}, {"q1": {"d1": 1, "ghost": 1}})
    with pytest.raises(DataFormatError, match=r'beir: field "qrels": unknown corpus id "ghost"'):
        write_beir(broken, folder)
    assert {p.relative_to(folder): p.read_bytes() for p in folder.rglob("*") if p.is_file()} == before
    assert leftovers(tmp_path) == []


def test_convert_failing_mid_write_leaves_old_corpus_id_output_untouched(tmp_path, monkeypatch):
    src = write_in("inline", EXAMPLES, tmp_path / "in")
    out = tmp_path / "out" / "train.json"
    convert(write_in("inline", EXAMPLES[:1], tmp_path / "old"), out, "corpus_id")
    old_json = out.read_bytes()
    old_parquet = (tmp_path / "out" / "corpus" / "train.parquet").read_bytes()

    def no_space(*args, **kwargs):
        raise OSError("No space left on device")

    monkeypatch.setattr(formats.pq, "write_table", no_space)
    with pytest.raises(OSError, match="No space left"):
        convert(src, out, "corpus_id")
    assert out.read_bytes() == old_json
    assert (tmp_path / "out" / "corpus" / "train.parquet").read_bytes() == old_parquet
    assert leftovers(tmp_path / "out") == []

    fresh = tmp_path / "fresh" / "train.json"
    with pytest.raises(OSError):
        convert(src, fresh, "corpus_id")
    assert list(fresh.parent.iterdir()) == []


def test_atomic_write_swaps_a_folder_in_whole(tmp_path):
    target = tmp_path / "target"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with atomic_write(target) as tmp:
        tmp.mkdir()
        (tmp / "new.txt").write_text("new")
        assert not (target / "new.txt").exists()
    assert [p.name for p in target.iterdir()] == ["new.txt"]
    assert leftovers(tmp_path) == []


def test_writers_refuse_to_replace_unrelated_folders(tmp_path):
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "notes.txt").write_text("precious")
    with pytest.raises(FileExistsError, match="refusing to replace"):
        write_beir(training_to_beir(EXAMPLES), tmp_path / "home")
    with pytest.raises(FileExistsError, match="refusing to replace"):
        write_corpus_id_json(EXAMPLES, tmp_path / "train.json", corpus_dir_name="home")
    assert (tmp_path / "home" / "notes.txt").read_text() == "precious"
    assert not (tmp_path / "train.json").exists()
