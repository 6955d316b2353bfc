"""Read, write, validate and convert the dataset formats embedforge accepts (NVIDIA's, BEIR, triplets).

Formats:
  inline     JSONL, one ``{"query"|"question", "pos_doc", "neg_doc"}`` object per line (NeMo Customizer).
  corpus_id  JSON ``{"corpus": [{"path"}], "data": [...]}`` whose records point by id into a corpus folder
             holding ``merlin_metadata.json`` and parquet files with ``id``, ``text`` (NeMo AutoModel).
  beir       folder with ``corpus.jsonl``, ``queries.jsonl`` and ``qrels/<split>.tsv`` (evaluation).
  triplets   JSONL ``{"query"|"anchor", "positive", "negative"}`` or TSV query, positive[, negative] (SPECTER).

Every reader checks what it reads (through ``records``) and raises ``DataFormatError`` naming the file, the 1-based line or
record and the field, so a user can fix the data without reading this code. Every writer goes through
``atomic_write``: a failed or interrupted conversion leaves the old output (or nothing), never half a file.

Deliberately not here: chunking documents (corpus.py), mining negatives (mining.py), repeating negatives
up to a count (finetune/trainer.py), downloads. JSONL and TSV are streamed line by line; corpus-ID JSON is one JSON
document and is loaded whole, as upstream does. Mining scores on corpus-ID docs are dropped on read (a
``TrainingExample`` has no place for them); a ``"mining"`` block survives only if passed back via ``extra``.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from embedforge.atomic import atomic_write
from embedforge.data.dataset import (  # re-exported: the data the formats hold
    BeirDataset,
    PassageIds,
    TrainingExample,
    check_example,
    passage_id,
    passage_text,
)
from embedforge.data.records import (  # DataFormatError is re-exported: readers catch it from here
    DataFormatError,
    ident_field,
    iter_jsonl,
    json_kind,
    load_json,
    nonblank_lines,
    required_field,
    text_field,
)
from embedforge.errors import EmbedforgeError

FORMATS = ("inline", "corpus_id", "beir", "triplets")
QRELS_HEADER = "query-id\tcorpus-id\tscore"


class OutputExistsError(EmbedforgeError, FileExistsError):
    """The output path holds something embedforge did not write; it is never replaced."""


# ------------------------------------------------------------------------------------------ file access


def _refuse_foreign_folder(folder: Path, marker: str) -> None:
    """Writers replace whole folders; never let a wrong destination wipe someone's unrelated files."""
    if folder.exists() and (
        not folder.is_dir() or (any(folder.iterdir()) and not (folder / marker).exists())
    ):
        raise OutputExistsError(f"{folder} exists and has no {marker}; refusing to replace it")


def _write_jsonl(f, obj) -> None:
    f.write(json.dumps(obj, ensure_ascii=False) + "\n")


# ---------------------------------------------------------------------------------------------- inline


def _passages(path, n, value, name) -> list[str]:
    """``pos_doc``/``neg_doc`` come as a string, ``{"text": ...}``, or a list of either."""
    items = value if isinstance(value, list) else [value]
    texts = []
    for i, item in enumerate(items):
        where = f"{name}[{i}]" if isinstance(value, list) else name
        if isinstance(item, dict):
            where += ".text"
            if "text" not in item:
                raise DataFormatError(path, "is required", n, where)
            item = item["text"]
        texts.append(text_field(path, n, item, where))
    return texts


def read_inline_jsonl(path) -> list[TrainingExample]:
    examples = []
    for n, obj in iter_jsonl(path):
        key = "query" if "query" in obj or "question" not in obj else "question"
        query = text_field(path, n, required_field(path, n, obj, key), key)
        positives = _passages(path, n, required_field(path, n, obj, "pos_doc"), "pos_doc")
        if not positives:
            raise DataFormatError(path, "needs at least one positive", n, "pos_doc")
        neg = obj.get("neg_doc")
        negatives = [] if neg is None or neg == "" or neg == [] else _passages(path, n, neg, "neg_doc")
        examples.append(TrainingExample(query, positives, negatives))
    return examples


def write_inline_jsonl(examples: Iterable[TrainingExample], path) -> None:
    """Customizer's own form: ``pos_doc`` a string when there is one positive, ``neg_doc`` a list."""
    n = 0
    with atomic_write(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        for n, ex in enumerate(examples, 1):
            check_example(ex, path, n)
            pos = ex.positives[0] if len(ex.positives) == 1 else ex.positives
            _write_jsonl(f, {"query": ex.query, "pos_doc": pos, "neg_doc": ex.negatives})
        if n == 0:
            raise DataFormatError(path, "no examples to write")


# ------------------------------------------------------------------------------------------- corpus_id


def _read_corpus_folder(folder: Path) -> tuple[str, dict[str, str]]:
    """Return (corpus id from merlin_metadata.json, {doc id: text}) from every parquet in the folder."""
    meta_path = folder / "merlin_metadata.json"
    if not meta_path.is_file():
        raise DataFormatError(meta_path, "missing: a corpus folder needs merlin_metadata.json")
    meta = load_json(meta_path)
    if not isinstance(meta, dict):
        raise DataFormatError(meta_path, f"expected a JSON object, got {json_kind(meta)}")
    if meta.get("class") != "TextQADataset":
        raise DataFormatError(meta_path, f'must be "TextQADataset", got {meta.get("class")!r}', field="class")
    corpus_id = ident_field(meta_path, None, required_field(meta_path, None, meta, "corpus_id"), "corpus_id")
    files = sorted(folder.glob("*.parquet"))
    if not files:
        raise DataFormatError(folder, "corpus folder has no .parquet file")
    texts: dict[str, str] = {}
    for file in files:
        missing = {"id", "text"} - set(pq.read_schema(file).names)
        if missing:
            raise DataFormatError(file, "column is missing", field=sorted(missing)[0])
        table = pq.read_table(file, columns=["id", "text"])
        column_ids, column_texts = table["id"].to_pylist(), table["text"].to_pylist()
        for row, (doc_id, text) in enumerate(zip(column_ids, column_texts, strict=True), 1):
            doc_id = ident_field(file, row, doc_id, "id", "row")
            if doc_id in texts:
                raise DataFormatError(file, f'duplicate id "{doc_id}"', row, "id", unit="row")
            texts[doc_id] = text_field(file, row, text, "text", "row")
    return corpus_id, texts


def _load_corpora(path: Path, spec) -> dict[str, dict[str, str]]:
    """Corpus paths are relative to the JSON file's folder, so a dataset can be moved as a whole."""
    entries = [spec] if isinstance(spec, dict) else spec
    if not isinstance(entries, list) or not entries:
        raise DataFormatError(path, 'must be a non-empty list of {"path": ...}', field="corpus")
    corpora: dict[str, dict[str, str]] = {}
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise DataFormatError(path, f"must be an object, got {json_kind(entry)}", field=f"corpus[{i}]")
        rel = text_field(path, None, required_field(path, None, entry, "path"), f"corpus[{i}].path")
        corpus_id, texts = _read_corpus_folder(path.parent / rel)
        if corpus_id in corpora:
            raise DataFormatError(path, f'duplicate corpus id "{corpus_id}"', field=f"corpus[{i}].path")
        corpora[corpus_id] = texts
    return corpora


def _doc_refs(path, r, rec, name, texts: dict[str, str]) -> tuple[list[str], list[str]]:
    """Resolve ``[{"id": ...}, ...]`` against the corpus; return (ids, texts)."""
    refs = rec.get(name) or []
    if not isinstance(refs, list):
        raise DataFormatError(path, f"must be an array, got {json_kind(refs)}", r, name, unit="record")
    ids = []
    for i, ref in enumerate(refs):
        where = f"{name}[{i}]"
        if not isinstance(ref, dict):
            raise DataFormatError(path, f"must be an object, got {json_kind(ref)}", r, where, unit="record")
        doc_id = ident_field(path, r, required_field(path, r, ref, "id", "record"), f"{where}.id", "record")
        if doc_id not in texts:
            raise DataFormatError(path, f'unknown corpus id "{doc_id}"', r, f"{where}.id", unit="record")
        ids.append(doc_id)
    return ids, [texts[i] for i in ids]


def read_corpus_id_json(path) -> list[TrainingExample]:
    path = Path(path)
    doc = load_json(path)
    if not isinstance(doc, dict):
        raise DataFormatError(path, f"expected a JSON object, got {json_kind(doc)}")
    corpora = _load_corpora(path, required_field(path, None, doc, "corpus"))
    data = required_field(path, None, doc, "data")
    if not isinstance(data, list) or not data:
        raise DataFormatError(path, "must be a non-empty array of records", field="data")
    examples, seen_qids = [], {}
    for r, rec in enumerate(data, 1):
        if not isinstance(rec, dict):
            raise DataFormatError(path, f"expected an object, got {json_kind(rec)}", r, unit="record")
        key = "question" if "question" in rec or "query" not in rec else "query"
        query = text_field(path, r, required_field(path, r, rec, key, "record"), key, "record")
        qid = rec.get("question_id")
        if qid is not None:
            qid = ident_field(path, r, qid, "question_id", "record")
            if qid in seen_qids:
                msg = f'duplicate question_id "{qid}" (first used by record {seen_qids[qid]})'
                raise DataFormatError(path, msg, r, "question_id", unit="record")
            seen_qids[qid] = r
        if "corpus_id" not in rec and len(corpora) == 1:
            texts = next(iter(corpora.values()))
        else:
            corpus_id = ident_field(
                path, r, required_field(path, r, rec, "corpus_id", "record"), "corpus_id", "record"
            )
            if corpus_id not in corpora:
                msg = f'unknown corpus id "{corpus_id}" (known: {", ".join(sorted(corpora))})'
                raise DataFormatError(path, msg, r, "corpus_id", unit="record")
            texts = corpora[corpus_id]
        pos_ids, positives = _doc_refs(path, r, rec, "pos_doc", texts)
        if not positives:
            raise DataFormatError(path, "needs at least one positive", r, "pos_doc", unit="record")
        neg_ids, negatives = _doc_refs(path, r, rec, "neg_doc", texts)
        examples.append(TrainingExample(query, positives, negatives, qid, pos_ids, neg_ids))
    return examples


def write_corpus_id_json(
    examples: Iterable[TrainingExample], path, corpus_dir_name="corpus", extra: dict | None = None
) -> None:
    """Write the JSON file and, next to it, the corpus folder (named ``corpus_dir_name``, also its corpus id).

    Passage ids are the examples' known ids, else ``passage_id(text)``. The corpus folder is replaced
    whole, so two JSON files in one folder need different ``corpus_dir_name`` values. ``extra`` adds
    top-level keys (e.g. the ``"mining"`` block).
    """
    path = Path(path)
    corpus_dir = path.parent / corpus_dir_name
    _refuse_foreign_folder(corpus_dir, "merlin_metadata.json")
    ids, records, seen_qids = PassageIds(), [], set()
    for n, ex in enumerate(examples, 1):
        check_example(ex, path, n)
        qid = ex.query_id if ex.query_id is not None else f"q{n - 1}"
        if qid in seen_qids:
            raise DataFormatError(path, f'duplicate question id "{qid}"', n, "query_id", unit="example")
        seen_qids.add(qid)
        pos = ids.add_all(ex.positives, ex.positive_ids, path, n, "positives")
        neg = ids.add_all(ex.negatives, ex.negative_ids, path, n, "negatives")
        records.append(
            {
                "question_id": qid,
                "question": ex.query,
                "corpus_id": corpus_dir_name,
                "pos_doc": [{"id": i} for i in pos],
                "neg_doc": [{"id": i} for i in neg],
            }
        )
    if not records:
        raise DataFormatError(path, "no examples to write")
    doc = {**(extra or {}), "corpus": [{"path": f"./{corpus_dir_name}/"}], "data": records}
    # Inner block exits first: the corpus folder is in place before the JSON that points into it.
    with atomic_write(path) as tmp_json, atomic_write(corpus_dir) as tmp_dir:
        tmp_dir.mkdir()
        meta = {"class": "TextQADataset", "corpus_id": corpus_dir_name}
        (tmp_dir / "merlin_metadata.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        table = pa.table({"id": list(ids.texts), "text": list(ids.texts.values())})
        pq.write_table(table, tmp_dir / "train.parquet")
        tmp_json.write_text(json.dumps(doc, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")


# ------------------------------------------------------------------------------------------------ beir


def _beir_file(folder: Path, rel: str) -> Path:
    file = folder / rel
    if not file.is_file():
        raise DataFormatError(
            file, "missing: a BEIR folder needs corpus.jsonl, queries.jsonl, qrels/<split>.tsv"
        )
    return file


def _read_beir_texts(folder: Path) -> tuple[dict[str, dict], dict[str, str]]:
    corpus: dict[str, dict] = {}
    file = _beir_file(folder, "corpus.jsonl")
    for n, obj in iter_jsonl(file):
        doc_id = ident_field(file, n, required_field(file, n, obj, "_id"), "_id")
        if doc_id in corpus:
            raise DataFormatError(file, f'duplicate id "{doc_id}"', n, "_id")
        title, text = obj.get("title") or "", required_field(file, n, obj, "text")
        for name, value in (("title", title), ("text", text)):
            if not isinstance(value, str):
                raise DataFormatError(file, f"must be a string, got {json_kind(value)}", n, name)
        if not (title.strip() or text.strip()):
            raise DataFormatError(file, "must not be empty", n, "text")
        corpus[doc_id] = {"title": title, "text": text}
    queries: dict[str, str] = {}
    file = _beir_file(folder, "queries.jsonl")
    for n, obj in iter_jsonl(file):
        query_id = ident_field(file, n, required_field(file, n, obj, "_id"), "_id")
        if query_id in queries:
            raise DataFormatError(file, f'duplicate id "{query_id}"', n, "_id")
        queries[query_id] = text_field(file, n, required_field(file, n, obj, "text"), "text")
    return corpus, queries


def _read_qrels(file: Path, queries, corpus) -> dict[str, dict[str, int]]:
    """Tab-separated query-id, corpus-id, integer score; a first line that is not data is the header."""
    qrels: dict[str, dict[str, int]] = {}
    for i, (n, line) in enumerate(nonblank_lines(file)):
        cols = line.rstrip("\r\n").split("\t")
        if len(cols) != 3:
            raise DataFormatError(
                file, f"expected 3 tab-separated columns ({QRELS_HEADER!r}), got {len(cols)}", n
            )
        query_id, doc_id, score = (c.strip() for c in cols)
        try:
            score = int(score)
        except ValueError:
            if i == 0:
                continue
            raise DataFormatError(file, f"must be an integer, got {score!r}", n, "score") from None
        if query_id not in queries:
            raise DataFormatError(file, f'unknown query id "{query_id}"', n, "query-id")
        if doc_id not in corpus:
            raise DataFormatError(file, f'unknown corpus id "{doc_id}"', n, "corpus-id")
        if doc_id in qrels.setdefault(query_id, {}):
            raise DataFormatError(file, f'duplicate judgement for "{query_id}", "{doc_id}"', n, "corpus-id")
        qrels[query_id][doc_id] = score
    if not qrels:
        raise DataFormatError(file, "has no judgements")
    return qrels


def read_beir(path, split="test") -> BeirDataset:
    folder = Path(path)
    qrels_file = _beir_file(folder, f"qrels/{split}.tsv")
    corpus, queries = _read_beir_texts(folder)
    return BeirDataset(corpus, queries, _read_qrels(qrels_file, queries, corpus))


def _default_split(folder) -> str:
    """Use "test" if present, else the only split: a conversion needs one split and must not guess."""
    splits = sorted(p.stem for p in (Path(folder) / "qrels").glob("*.tsv"))
    if "test" in splits or not splits:
        return "test"
    if len(splits) == 1:
        return splits[0]
    raise DataFormatError(Path(folder) / "qrels", f"several splits ({', '.join(splits)}) and none is 'test'")


def write_beir(dataset: BeirDataset, path, split="test") -> None:
    """Write a complete BEIR folder, replacing an existing one only after everything is written."""
    folder = Path(path)
    _refuse_foreign_folder(folder, "corpus.jsonl")
    with atomic_write(folder) as tmp:
        (tmp / "qrels").mkdir(parents=True)
        with open(tmp / "corpus.jsonl", "w", encoding="utf-8") as f:
            for doc_id, doc in dataset.corpus.items():
                _write_jsonl(f, {"_id": doc_id, "title": doc.get("title") or "", "text": doc["text"]})
        with open(tmp / "queries.jsonl", "w", encoding="utf-8") as f:
            for query_id, text in dataset.queries.items():
                _write_jsonl(f, {"_id": query_id, "text": text})
        with open(tmp / "qrels" / f"{split}.tsv", "w", encoding="utf-8") as f:
            f.write(QRELS_HEADER + "\n")
            for query_id, rels in dataset.qrels.items():
                for doc_id, score in rels.items():
                    if query_id not in dataset.queries:
                        raise DataFormatError(folder, f'unknown query id "{query_id}"', field="qrels")
                    if doc_id not in dataset.corpus:
                        raise DataFormatError(folder, f'unknown corpus id "{doc_id}"', field="qrels")
                    f.write(f"{query_id}\t{doc_id}\t{int(score)}\n")


def training_to_beir(examples: Iterable[TrainingExample]) -> BeirDataset:
    """Corpus = unique positives and negatives; qrels score 1 for positives and 0 for negatives.

    Score 0 means "judged not relevant": retrieval metrics ignore it, and it lets hard negatives survive a
    round trip through BEIR. Ids are the examples' known ids, else ``passage_id`` of the text.
    """
    ids, queries, qrels = PassageIds(), {}, {}
    for n, ex in enumerate(examples, 1):
        check_example(ex, "examples", n)
        qid = ex.query_id if ex.query_id is not None else passage_id(ex.query)
        if queries.setdefault(qid, ex.query) != ex.query:
            raise DataFormatError(
                "examples", f'query id "{qid}" has two texts', n, "query_id", unit="example"
            )
        rels = qrels.setdefault(qid, {})
        for pid in ids.add_all(ex.positives, ex.positive_ids, "examples", n, "positives"):
            rels[pid] = 1
        for pid in ids.add_all(ex.negatives, ex.negative_ids, "examples", n, "negatives"):
            rels.setdefault(pid, 0)
    corpus = {pid: {"title": "", "text": text} for pid, text in ids.texts.items()}
    return BeirDataset(corpus, queries, qrels)


def beir_to_training(dataset: BeirDataset) -> list[TrainingExample]:
    """One example per judged query: score > 0 are positives (most relevant first), score <= 0 negatives.

    A passage is ``title + " " + text`` (each stripped; just the text without a title), the same string
    ``evaluate.passage_text`` embeds, so training and evaluation see identical passages.
    """
    examples = []
    for qid, rels in dataset.qrels.items():
        ranked = sorted(rels.items(), key=lambda kv: -kv[1])
        pos_ids = [d for d, s in ranked if s > 0]
        neg_ids = [d for d, s in ranked if s <= 0]
        if not pos_ids:
            continue
        positives, negatives = ([passage_text(dataset.corpus[d]) for d in ids] for ids in (pos_ids, neg_ids))
        examples.append(TrainingExample(dataset.queries[qid], positives, negatives, qid, pos_ids, neg_ids))
    return examples


# -------------------------------------------------------------------------------------------- triplets


def _triplet_rows(path) -> Iterator[tuple[int, str, str, str | None]]:
    """Yield (line, query, positive, negative or None) from JSONL or TSV, told apart by the first line."""
    path = Path(path)
    first = next(nonblank_lines(path))[1]
    if first.lstrip().startswith("{"):
        for n, obj in iter_jsonl(path):
            key = "query" if "query" in obj or "anchor" not in obj else "anchor"
            query = text_field(path, n, required_field(path, n, obj, key), key)
            positive = text_field(path, n, required_field(path, n, obj, "positive"), "positive")
            neg = obj.get("negative")
            yield (
                n,
                query,
                positive,
                None if neg is None or neg == "" else text_field(path, n, neg, "negative"),
            )
        return
    with open(path, encoding="utf-8-sig", newline="") as f:
        reader = csv.reader(f, delimiter="\t")
        for cols in reader:
            n = reader.line_num
            if not any(c.strip() for c in cols):
                continue
            if n == 1 and [c.strip().lower() for c in cols[:2]] in (
                ["query", "positive"],
                ["anchor", "positive"],
            ):
                continue
            if len(cols) not in (2, 3):
                raise DataFormatError(path, f"expected 2 or 3 tab-separated columns, got {len(cols)}", n)
            query, positive = text_field(path, n, cols[0], "query"), text_field(path, n, cols[1], "positive")
            neg = cols[2] if len(cols) == 3 and cols[2].strip() else None
            yield n, query, positive, neg


def read_triplets(path) -> list[TrainingExample]:
    """Lines with the same query become one example (positives and negatives deduplicated, in order)."""
    groups: dict[str, TrainingExample] = {}
    for _, query, positive, negative in _triplet_rows(path):
        ex = groups.setdefault(query, TrainingExample(query, []))
        if positive not in ex.positives:
            ex.positives.append(positive)
        if negative is not None and negative not in ex.negatives:
            ex.negatives.append(negative)
    if not groups:
        raise DataFormatError(path, "has no triplets, only a header")
    return list(groups.values())


def write_triplets(examples: Iterable[TrainingExample], path) -> None:
    """JSONL, or TSV when ``path`` ends in .tsv. Each example takes max(#positives, #negatives) lines,
    pairing them cyclically, so reading back yields the same positives and negatives."""
    tsv, n = Path(path).suffix.lower() == ".tsv", 0
    with atomic_write(path) as tmp, open(tmp, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f, delimiter="\t", lineterminator="\n")
        for n, ex in enumerate(examples, 1):
            check_example(ex, path, n)
            pos, neg = ex.positives, ex.negatives
            for k in range(max(len(pos), len(neg))):
                row = {"query": ex.query, "positive": pos[k % len(pos)]}
                if neg:
                    row["negative"] = neg[k % len(neg)]
                if tsv:
                    writer.writerow(row.values())
                else:
                    _write_jsonl(f, row)
        if n == 0:
            raise DataFormatError(path, "no examples to write")


# ------------------------------------------------------------------------------------ detect / convert


def detect_format(path) -> str:
    """Tell the format from content (first line or folder layout), not from the file name alone."""
    path = Path(path)
    if path.is_dir():
        if (path / "corpus.jsonl").is_file():
            return "beir"
        raise DataFormatError(path, "folder is not a BEIR folder (no corpus.jsonl)")
    n, line = next(nonblank_lines(path))
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        if path.suffix.lower() == ".jsonl":
            raise DataFormatError(path, f"invalid JSON: {e.msg} (column {e.colno})", n) from None
        if line.lstrip().startswith("{"):
            return "corpus_id"  # one JSON document spread over several lines
        if "\t" in line:
            return "triplets"
        raise DataFormatError(
            path, "cannot tell the format: neither JSON, JSONL nor tab-separated", n
        ) from None
    if isinstance(obj, dict):
        if "data" in obj or "corpus" in obj:
            return "corpus_id"
        if "pos_doc" in obj:
            return "inline"
        if "positive" in obj:
            return "triplets"
    msg = 'cannot tell the format: expected "pos_doc" (inline), "positive" (triplets) or "data" (corpus-ID JSON)'
    raise DataFormatError(path, msg, n)


_READERS = {"inline": read_inline_jsonl, "corpus_id": read_corpus_id_json, "triplets": read_triplets}
_WRITERS = {"inline": write_inline_jsonl, "corpus_id": write_corpus_id_json, "triplets": write_triplets}


def read_training_data(path) -> list[TrainingExample]:
    """Any format, auto-detected; a BEIR folder gives one example per query with a relevant passage."""
    fmt = detect_format(path)
    if fmt == "beir":
        return beir_to_training(read_beir(path, _default_split(path)))
    return _READERS[fmt](path)


def _training_summary(fmt, examples) -> dict:
    return {
        "format": fmt,
        "examples": len(examples),
        "queries": len({ex.query for ex in examples}),
        "corpus": len({t for ex in examples for t in ex.positives + ex.negatives}),
        "positives": sum(len(ex.positives) for ex in examples),
        "negatives": sum(len(ex.negatives) for ex in examples),
        "min_negatives": min(len(ex.negatives) for ex in examples),
    }


def validate(path) -> dict:
    """Read everything (every qrels split of a BEIR folder); raise on the first problem, else summarise."""
    fmt = detect_format(path)
    if fmt != "beir":
        return _training_summary(fmt, _READERS[fmt](path))
    folder = Path(path)
    files = sorted((folder / "qrels").glob("*.tsv")) or [_beir_file(folder, "qrels/test.tsv")]
    corpus, queries = _read_beir_texts(folder)
    qrels = {f.stem: sum(map(len, _read_qrels(f, queries, corpus).values())) for f in files}
    return {"format": "beir", "queries": len(queries), "corpus": len(corpus), "qrels": qrels}


def convert(src, dst, to: str) -> dict:
    """Convert ``src`` (any format) to ``to``; the output appears complete or not at all."""
    if to not in FORMATS:
        raise DataFormatError(dst, f"unknown format {to!r}; choose one of {', '.join(FORMATS)}")
    src_fmt = detect_format(src)
    if to == "beir":
        if src_fmt == "beir":
            dataset = read_beir(src, _default_split(src))
        else:
            dataset = training_to_beir(_READERS[src_fmt](src))
        write_beir(dataset, dst)
        counts = {"queries": len(dataset.queries), "corpus": len(dataset.corpus)}
        return {"from": src_fmt, "format": to, "path": str(dst), **counts}
    examples = read_training_data(src)
    _WRITERS[to](examples, dst)
    return {"from": src_fmt, "format": to, "path": str(dst), "examples": len(examples)}
