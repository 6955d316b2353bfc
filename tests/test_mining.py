"""mining + prep: the margin rule on hand-made scores, real MiniLM mining, and prep end to end into finetune."""

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from embedforge.cli import main as cli_main
from embedforge.config import FinetuneConfig, PrepConfig, config_hash, load_config
from embedforge.data import formats
from embedforge.finetune.trainer import finetune
from embedforge.prep.mining import margin_threshold, mine_hard_negatives, score_summary, select_negatives
from embedforge.prep.run import read_pairs, read_passages, run_prep, split_documents

# ------------------------------------------------------------------------------ the margin rule, by hand

# One query's candidates, best first, as a search would return them. Positives: "p1" (0.80), "p2" (0.50).
# The numbers are chosen so the thresholds are exact in binary floating point (0.95 * 0.5, 0.5 - 0.25).
IDS = ["p1", "a", "p2", "b", "c", "d", "e"]
SCORES = [0.80, 0.60, 0.50, 0.475, 0.25, 0.20, 0.10]


def test_perc_skips_above_margin_times_lowest_positive_and_keeps_the_edge():
    # threshold = 0.95 * 0.50 = 0.475: "a" (0.60) is skipped, "b" (exactly 0.475) is kept.
    sel = select_negatives(IDS, SCORES, {"p1", "p2"}, 0.50, 3, 0.95, "perc")
    assert sel.negatives == [("b", 0.475), ("c", 0.25), ("d", 0.2)]
    assert sel.skipped_by_margin == 1
    assert sel.masked == 2
    assert margin_threshold(0.50, 0.95, "perc") == 0.475


def test_perc_edge_exactly_at_threshold_is_kept_just_above_is_skipped():
    # 0.5 * 0.8 = 0.4 exactly in binary floating point.
    sel = select_negatives(["x", "y", "z"], [0.4000001, 0.4, 0.1], set(), 0.8, 5, 0.5, "perc")
    assert sel.negatives == [("y", 0.4), ("z", 0.1)]
    assert sel.skipped_by_margin == 1


def test_abs_skips_above_lowest_positive_minus_margin():
    # threshold = 0.50 - 0.25 = 0.25: "a" and "b" are skipped, "c" (exactly 0.25) is kept.
    sel = select_negatives(IDS, SCORES, {"p1", "p2"}, 0.50, 2, 0.25, "abs")
    assert sel.negatives == [("c", 0.25), ("d", 0.2)]
    assert sel.skipped_by_margin == 2
    assert margin_threshold(0.50, 0.25, "abs") == 0.25
    # the edge, with exactly representable numbers: 0.75 - 0.25 = 0.5
    edge = select_negatives(["x", "y"], [0.5000001, 0.5], set(), 0.75, 5, 0.25, "abs")
    assert edge.negatives == [("y", 0.5)]
    assert edge.skipped_by_margin == 1


def test_positives_are_masked_even_below_the_threshold():
    sel = select_negatives(["n1", "p", "n2"], [0.3, 0.2, 0.1], {"p"}, 0.9, 5, 0.95, "perc")
    assert [i for i, _ in sel.negatives] == ["n1", "n2"]
    assert sel.masked == 1 and sel.skipped_by_margin == 0


def test_fewer_candidates_than_needed_returns_what_qualifies():
    sel = select_negatives(IDS, SCORES, {"p1", "p2"}, 0.50, 10, 0.95, "perc")
    assert [i for i, _ in sel.negatives] == ["b", "c", "d", "e"]
    assert select_negatives([], [], set(), 0.5, 5, 0.95, "perc").negatives == []


def test_skips_are_counted_only_until_the_list_is_full():
    # with one negative wanted the walk stops at "b"; nothing after it is examined
    sel = select_negatives(["a", "b", "c", "d"], [0.9, 0.5, 0.9, 0.9], set(), 0.7, 1, 0.95, "perc")
    assert sel.negatives == [("b", 0.5)]
    assert sel.skipped_by_margin == 1


def test_a_hand_made_score_matrix_row_by_row():
    """Three queries against five passages; candidates come from sorting each row, as a search would."""
    passages = ["d0", "d1", "d2", "d3", "d4"]
    matrix = np.array(
        [
            [0.90, 0.86, 0.85, 0.40, 0.10],  # q0: positive d0; threshold 0.855 -> d1 skipped, d2 kept
            [0.30, 0.60, 0.20, 0.58, 0.57],  # q1: positives d1, d3; lowest 0.58 -> threshold 0.551
            [0.10, 0.20, 0.30, 0.40, 0.50],  # q2: positive d0 scores lowest -> everything is skipped
        ]
    )
    positives = [{"d0"}, {"d1", "d3"}, {"d0"}]
    expected = [["d2", "d3"], ["d0", "d2"], []]
    skipped = [1, 1, 4]
    for q, row in enumerate(matrix):
        order = np.argsort(-row)
        min_pos = min(row[passages.index(p)] for p in positives[q])
        sel = select_negatives(
            [passages[i] for i in order], row[order].tolist(), positives[q], min_pos, 2, 0.95, "perc"
        )
        assert [i for i, _ in sel.negatives] == expected[q], q
        assert sel.skipped_by_margin == skipped[q], q
        assert all(s <= 0.95 * min_pos for _, s in sel.negatives)


def test_bad_margin_type_and_mismatched_lengths_are_rejected():
    with pytest.raises(ValueError, match="margin_type"):
        select_negatives(["a"], [0.1], set(), 0.5, 1, 0.95, "percent")
    with pytest.raises(ValueError, match="candidate ids"):
        select_negatives(["a", "b"], [0.1], set(), 0.5, 1, 0.95, "perc")


def test_score_summary_has_mean_and_percentiles():
    s = score_summary([0.0, 0.25, 0.5, 0.75, 1.0])
    assert s["count"] == 5 and s["mean"] == 0.5 and s["p50"] == 0.5 and s["min"] == 0.0 and s["max"] == 1.0
    assert s["p25"] == 0.25 and s["p5"] == 0.05 and s["p95"] == 0.95
    assert score_summary([]) == {"count": 0}


# ------------------------------------------------------------------------------ mining with real MiniLM

SMALL_CORPUS = {
    "eiffel": "The Eiffel Tower in Paris is 330 metres tall and was finished in 1889.",
    "eiffel_para": "Finished in 1889, the Eiffel Tower in Paris stands 330 metres tall.",
    "eiffel_dup": "The Eiffel Tower in Paris is 330 metres tall and was finished in 1889.",
    "louvre": "The Louvre in Paris is the most visited art museum in the world.",
    "notre": "Notre-Dame is a medieval cathedral on an island in the Seine in Paris.",
    "big_ben": "Big Ben is the nickname of the great bell of the clock tower in London.",
    "cn_tower": "The CN Tower in Toronto is a 553 metre tall concrete communications tower.",
    "sourdough": "Sourdough bread is leavened with a culture of wild yeast and lactic acid bacteria.",
    "espresso": "Espresso is brewed by forcing hot water through finely ground coffee under pressure.",
    "tides": "Ocean tides are caused mainly by the gravitational pull of the Moon.",
    "python": "Python lists are mutable sequences that can hold items of different types.",
    "mitosis": "During mitosis a single cell divides into two genetically identical daughter cells.",
}
QUERIES = ["How tall is the Eiffel Tower?", "How is espresso coffee made?"]
POSITIVES = [["eiffel"], ["espresso"]]


def test_mining_with_minilm_masks_positives_and_applies_the_margin(minilm):
    negatives, pos_scores, stats = mine_hard_negatives(
        minilm, QUERIES, POSITIVES, SMALL_CORPUS, num_negatives=3, margin=0.95, candidate_pool=4
    )
    # scores are the encoder's own cosines with its prompts
    q = minilm.encode_queries(QUERIES)
    p = minilm.encode_passages(list(SMALL_CORPUS.values()))
    exact = dict(zip(SMALL_CORPUS, (q @ p.T)[0].tolist(), strict=True))
    assert pos_scores[0][0] == pytest.approx(exact["eiffel"], abs=1e-5)
    for neg_id, score in negatives[0]:
        assert score == pytest.approx(exact[neg_id], abs=1e-5)
    for row, pos, ps in zip(negatives, POSITIVES, pos_scores, strict=True):
        ids = [i for i, _ in row]
        assert len(row) == 3 and len(set(ids)) == 3
        assert not set(ids) & set(pos)
        assert all(s <= 0.95 * min(ps) for _, s in row)
        assert [s for _, s in row] == sorted((s for _, s in row), reverse=True)  # hardest first
    # the paraphrase of the Eiffel positive scores like it: a likely false negative, skipped
    assert exact["eiffel_para"] > 0.95 * exact["eiffel"]
    assert "eiffel_para" not in [i for i, _ in negatives[0]]
    assert "eiffel_dup" not in [i for i, _ in negatives[0]]  # same text as the positive: masked
    assert stats["skipped_by_margin"] >= 1 and stats["queries_with_skips"] >= 1
    # hard negatives are topical: the other Paris / tower passages beat bread and biology
    assert negatives[0][0][0] in {"louvre", "notre", "cn_tower", "big_ben"}
    assert stats["rows_short"] == 0 and stats["missing_negatives"] == 0
    assert stats["positive_scores"]["count"] == 2 and stats["negative_scores"]["count"] == 6
    assert stats["negative_scores"]["mean"] < stats["positive_scores"]["mean"]


def test_mining_widens_a_short_search_and_reports_rows_that_stay_short(minilm):
    # candidate_pool=1: the first search cannot fill 5 negatives, the widened one can
    negatives, _, stats = mine_hard_negatives(
        minilm, QUERIES, POSITIVES, SMALL_CORPUS, num_negatives=5, candidate_pool=1
    )
    assert [len(r) for r in negatives] == [5, 5] and stats["rows_short"] == 0
    # abs margin 2.0: nothing can score below (positive - 2) on unit vectors, so every row stays empty
    negatives, _, stats = mine_hard_negatives(
        minilm,
        QUERIES,
        POSITIVES,
        SMALL_CORPUS,
        num_negatives=2,
        margin=2.0,
        margin_type="abs",
        exclude_ids_per_query=[{"louvre"}, set()],
    )
    assert negatives == [[], []]
    assert stats["rows_short"] == stats["rows_without_negatives"] == 2 and stats["missing_negatives"] == 4
    # excluded ids never come back
    negatives, _, _ = mine_hard_negatives(
        minilm, QUERIES, POSITIVES, SMALL_CORPUS, num_negatives=10, exclude_ids_per_query=[{"louvre"}, set()]
    )
    assert "louvre" not in [i for i, _ in negatives[0]]
    with pytest.raises(ValueError, match="not in the corpus"):
        mine_hard_negatives(minilm, QUERIES, [["eiffel"], ["nope"]], SMALL_CORPUS)


# ------------------------------------------------------------------------------ prep end to end

# 10 documents x 4 passages; each document gets 2-3 questions, the third one multi-positive (2-3 passages).
DOCS = {
    "volcanoes": (
        "Volcanoes",
        [
            "Mount Kelvar is a stratovolcano that last erupted in 1921 and buried two valley villages in ash.",
            "Basaltic lava from shield volcanoes flows far because its low silica content keeps it runny.",
            "Volcanologists measure sulfur dioxide emissions to predict when magma is rising toward the surface.",
            "The Kelvar observatory runs twelve seismometers that record small tremors around the crater.",
        ],
    ),
    "beekeeping": (
        "Beekeeping",
        [
            "A honeybee colony has a single queen that can lay up to two thousand eggs a day in summer.",
            "Beekeepers use smoke to calm bees because it masks the alarm pheromone released by guards.",
            "Varroa mites are parasites that weaken colonies by feeding on developing bee larvae.",
            "Oxalic acid treatments in late autumn reduce varroa mite numbers while the hive has no brood.",
        ],
    ),
    "sourdough": (
        "Sourdough baking",
        [
            "A sourdough starter is a mix of flour and water colonised by wild yeast and lactobacilli.",
            "Feeding the starter twice a day at room temperature keeps the yeast active and bubbly.",
            "Long cold fermentation in the fridge gives sourdough loaves a deeper and more sour flavour.",
            "Bakers score the dough with a razor blade so steam escapes and the loaf rises evenly.",
        ],
    ),
    "chess": (
        "Chess openings",
        [
            "The Sicilian Defence begins with 1.e4 c5 and leads to sharp, unbalanced middlegames.",
            "In the Queen's Gambit White offers the c4 pawn to gain control of the centre.",
            "Castling early moves the king to safety and connects the rooks on the back rank.",
            "An opening repertoire should match a player's style, tactical or positional.",
        ],
    ),
    "rail": (
        "High-speed rail",
        [
            "The Meridian Express line connects the two capitals in 94 minutes at up to 320 km/h.",
            "High-speed trains use continuous welded rail to avoid the joints that cause vibration.",
            "Overhead catenary wires supply 25 kilovolt alternating current to the locomotives.",
            "Meridian Express tickets are cheapest when bought at least three weeks before travel.",
        ],
    ),
    "tea": (
        "Tea processing",
        [
            "Green tea leaves are steamed or pan-fired soon after picking to stop oxidation.",
            "Black tea is fully oxidised, which turns the leaves dark and gives a malty taste.",
            "Oolong tea is partly oxidised and rolled into tight balls or long twisted strips.",
            "Tea bushes grown in shade produce more amino acids and a sweeter, less bitter cup.",
        ],
    ),
    "glaciers": (
        "Glaciers",
        [
            "The Sorvik glacier has retreated 1.2 kilometres since measurements began in 1950.",
            "Glaciers move downhill under their own weight by internal deformation and basal sliding.",
            "Crevasses open where glacier ice stretches as it flows over steep or uneven bedrock.",
            "Meltwater from the Sorvik glacier feeds the reservoir that powers the town's hydro plant.",
        ],
    ),
    "compilers": (
        "Compilers",
        [
            "A lexer turns source code into tokens such as identifiers, numbers and operators.",
            "The parser builds an abstract syntax tree from tokens according to the grammar.",
            "Register allocation maps an unlimited set of virtual registers onto the few real ones.",
            "Constant folding evaluates expressions like 2 * 3 at compile time instead of at run time.",
        ],
    ),
    "orchids": (
        "Orchid care",
        [
            "Phalaenopsis orchids prefer bright indirect light and die back in direct midday sun.",
            "Water orchids once a week and let the bark mix dry out between waterings.",
            "Orchid roots need air, so they are potted in coarse bark instead of garden soil.",
            "A drop in night temperature in autumn triggers phalaenopsis orchids to grow flower spikes.",
        ],
    ),
    "satellites": (
        "Satellites",
        [
            "Geostationary satellites orbit 35,786 kilometres above the equator once per day.",
            "Low Earth orbit satellites circle the planet every 90 minutes at a few hundred kilometres.",
            "Solar panels and batteries power satellites, with batteries covering the eclipse periods.",
            "Reaction wheels spin up or down to turn a satellite without using thruster fuel.",
        ],
    ),
}
QUESTIONS = {
    "volcanoes": [
        ("When did Mount Kelvar last erupt?", [0]),
        ("Why does basaltic lava flow so far?", [1]),
        ("How do scientists monitor Mount Kelvar for an eruption?", [2, 3]),
    ],
    "beekeeping": [
        ("How many eggs can a queen bee lay per day?", [0]),
        ("How do beekeepers fight varroa mites?", [2, 3]),
        ("Why do beekeepers use smoke?", [1]),
    ],
    "sourdough": [
        ("What is in a sourdough starter?", [0]),
        ("How do I keep a sourdough starter active and get a sour flavour?", [1, 2, 0]),
    ],
    "chess": [
        ("What are the first moves of the Sicilian Defence?", [0]),
        ("Why castle early in chess?", [2]),
        ("Which openings fight for the centre and suit a positional player?", [1, 3]),
    ],
    "rail": [
        ("How long does the Meridian Express take between the capitals?", [0]),
        ("What voltage do high-speed trains run on and why is the rail welded?", [2, 1]),
    ],
    "tea": [
        ("How is green tea processed?", [0]),
        ("What is the difference between black and oolong tea?", [1, 2]),
        ("Why is shade-grown tea sweeter?", [3]),
    ],
    "glaciers": [
        ("How far has the Sorvik glacier retreated?", [0]),
        ("How do glaciers move and why do crevasses form?", [1, 2]),
    ],
    "compilers": [
        ("What does a lexer do?", [0]),
        ("What happens after tokenizing: parsing and constant folding?", [1, 3]),
        ("What is register allocation?", [2]),
    ],
    "orchids": [
        ("How often should I water a phalaenopsis orchid?", [1]),
        ("What light and potting mix do orchids need?", [0, 2]),
        ("How do I make my orchid flower again?", [3]),
    ],
    "satellites": [
        ("How high do geostationary satellites orbit?", [0]),
        ("How are satellites powered and turned in orbit?", [2, 3]),
    ],
}


def write_fixture(folder):
    """pairs.jsonl + passages.jsonl in sdg's schema; returns (pairs path, passages path)."""
    folder.mkdir(parents=True, exist_ok=True)
    passages, pairs = [], []
    for doc_id, (title, texts) in DOCS.items():
        ids = [formats.passage_id(t) for t in texts]
        passages += [
            {"passage_id": i, "doc_id": doc_id, "text": t, "title": title}
            for i, t in zip(ids, texts, strict=True)
        ]
        for n, (question, positives) in enumerate(QUESTIONS[doc_id]):
            pairs.append(
                {
                    "question_id": f"{doc_id}-q{n}",
                    "question": question,
                    "positive_ids": [ids[k] for k in positives],
                    "doc_id": doc_id,
                    "query_type": "multi_hop" if len(positives) > 1 else "contextual",
                    "complexity": 2 + len(positives),
                    "hops": len(positives),
                    "scores": {"relevance": 9, "accuracy": 9, "overall": 8.5},
                }
            )
    pairs_path, passages_path = folder / "pairs.jsonl", folder / "passages.jsonl"
    pairs_path.write_text("".join(json.dumps(p) + "\n" for p in pairs))
    passages_path.write_text("".join(json.dumps(p) + "\n" for p in passages))
    return pairs_path, passages_path


@pytest.fixture(scope="module")
def prepped(tmp_path_factory):
    root = tmp_path_factory.mktemp("prep")
    pairs, passages = write_fixture(root / "sdg")
    config = PrepConfig(pairs=str(pairs), passages=str(passages), out=str(root / "out"))
    return config, run_prep(config)


def _doc_of_passages():
    return {formats.passage_id(t): doc for doc, (_, texts) in DOCS.items() for t in texts}


def test_prep_negatives_never_come_from_test_documents_nor_are_positives(prepped):
    config, report = prepped
    out = Path(config.out)
    doc_of = _doc_of_passages()
    test_docs = set(report["split"]["test_documents"])
    train_docs = set(report["split"]["train_documents"])
    assert test_docs and train_docs and not test_docs & train_docs
    assert test_docs | train_docs == set(DOCS)
    data = json.loads((out / "train.json").read_text())
    assert data["data"]
    for rec in data["data"]:
        pos = {d["id"] for d in rec["pos_doc"]}
        neg = [d["id"] for d in rec["neg_doc"]]
        assert len(neg) == 5
        assert not pos & set(neg)
        assert all(doc_of[n] in train_docs for n in neg)
        assert all(doc_of[p] in train_docs for p in pos)
        # no negative is a positive of ANY record of the same question (multi-positive queries)
        base = rec["question_id"].split("#")[0]
        all_pos = {
            d["id"] for r in data["data"] if r["question_id"].split("#")[0] == base for d in r["pos_doc"]
        }
        assert not all_pos & set(neg)
        assert all(isinstance(d["score"], float) for d in rec["pos_doc"] + rec["neg_doc"])
        min_pos = min(
            d["score"] for r in data["data"] if r["question_id"].split("#")[0] == base for d in r["pos_doc"]
        )
        assert all(d["score"] <= 0.95 * min_pos + 1e-6 for d in rec["neg_doc"])
    assert report["checks"] == {"negatives_from_test_documents": 0, "negatives_that_are_positives": 0}
    assert data["mining"]["args"]["negative_corpus"] == "train documents only"
    assert data["mining"]["args"]["margin"] == 0.95 and data["mining"]["args"]["margin_type"] == "perc"


def test_split_holds_out_a_share_of_the_questions_not_of_the_documents():
    # three manuals hold most questions, seventeen small pages a few each: 20% of the documents could
    # hold out 4 small pages (8 questions of 167), the question-balanced split holds out about 20% of them
    weights = {"manual-a": 50, "manual-b": 45, "manual-c": 38, **{f"page-{i:02d}": 2 for i in range(17)}}
    total = sum(weights.values())
    for seed in range(10):
        train, test = split_documents(weights, 0.2, seed, weights)
        held = sum(weights[d] for d in test)
        assert 0.15 * total <= held <= 0.3 * total, (seed, test)
        assert set(train) | set(test) == set(weights) and not set(train) & set(test)
    assert sum(weights[d] for d in split_documents(weights, 0.2, 0)[1]) < 0.2 * total  # by documents
    # one document over the whole share alone: the one closest to the share, never all documents
    assert split_documents({"a": 90, "b": 10}, 0.2, 3, {"a": 90, "b": 10}) == (["a"], ["b"])
    assert split_documents({"a": 90, "b": 80}, 0.2, 3, {"a": 90, "b": 80})[1] in (["a"], ["b"])


def test_prep_splits_by_document_deterministically(prepped, tmp_path):
    config, report = prepped
    split = report["split"]
    test_docs = set(split["test_documents"])
    assert split["documents"] == {
        "train": 10 - len(test_docs),
        "test": len(test_docs),
        "without_questions": 0,
    }
    # every question sits on the side of its document; the test side holds about 20% of them
    n_test = sum(len(QUESTIONS[d]) for d in test_docs)
    assert 0.15 <= n_test / sum(map(len, QUESTIONS.values())) <= 0.25
    assert split["questions"] == {
        "total": sum(map(len, QUESTIONS.values())),
        "train": sum(map(len, QUESTIONS.values())) - n_test,
        "heading_pairs": 0,
        "user": {"total": 0, "train": 0, "test": 0},
        "test": n_test,
        "generated_test_unused": 0,
        "test_roundtrip_dropped": 0,
        "dropped_cross_split": 0,
    }
    # same seed, same split and the same files; another seed, another split
    weights = {d: len(QUESTIONS[d]) for d in DOCS}
    assert split_documents(DOCS, 0.2, 42, weights) == (split["train_documents"], split["test_documents"])
    assert split_documents(list(DOCS)[::-1], 0.2, 42) == split_documents(DOCS, 0.2, 42)
    assert any(split_documents(DOCS, 0.2, s)[1] != split["test_documents"] for s in range(1, 5))
    again = PrepConfig(pairs=config.pairs, passages=config.passages, out=str(tmp_path / "again"))
    report2 = run_prep(again)
    assert report2["split"]["test_documents"] == split["test_documents"]
    for name in (
        "train.jsonl",
        "test_beir/corpus.jsonl",
        "test_beir/queries.jsonl",
        "test_beir/qrels/test.tsv",
    ):
        assert (tmp_path / "again" / name).read_text() == (Path(config.out) / name).read_text(), name
    first = json.loads((Path(config.out) / "train.json").read_text())["data"]
    second = json.loads((tmp_path / "again" / "train.json").read_text())["data"]
    assert first == second


def test_prep_tests_on_what_the_round_trip_dropped_but_never_trains_on_it(prepped, tmp_path):
    config, report = prepped
    test_docs, train_docs = report["split"]["test_documents"], report["split"]["train_documents"]
    ids = {doc: [formats.passage_id(t) for t in texts] for doc, (_, texts) in DOCS.items()}

    def dropped(qid, doc, rank, by="roundtrip"):
        question = f"dropped {qid} about {DOCS[doc][0]}?"
        return {
            "question_id": qid,
            "question": question,
            "positive_ids": [ids[doc][0]],
            "doc_id": doc,
            "roundtrip_rank": rank,
            "dropped_by": by,
        }

    rows = [
        dropped("in-test-rank-20", test_docs[0], 20),
        dropped("in-test-rank-500", test_docs[0], 500),
        dropped("in-test-dedup", test_docs[1], 3, by="dedup"),  # another filter dropped it: never
        dropped("in-train-rank-15", train_docs[0], 15),  # a training document: never
    ]
    sdg = tmp_path / "sdg"
    sdg.mkdir()
    for name in ("pairs.jsonl", "passages.jsonl"):
        (sdg / name).write_text(Path(getattr(config, name.split(".")[0])).read_text())
    (sdg / "sdg_dropped.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    n_test = report["split"]["questions"]["test"]

    def prep(out, **options):
        result = run_prep(PrepConfig(pairs=str(sdg / "pairs.jsonl"), out=str(tmp_path / out), **options))
        queries = [
            json.loads(line)["_id"] for line in (tmp_path / out / "test_beir" / "queries.jsonl").open()
        ]
        assert "dropped" not in (tmp_path / out / "train.jsonl").read_text()
        assert (tmp_path / out / "train.jsonl").read_text() == (Path(config.out) / "train.jsonl").read_text()
        assert result["split"]["test_documents"] == test_docs  # their documents were split already
        return result["split"]["questions"]["test_roundtrip_dropped"], queries

    count, queries = prep("all")  # default: every round-trip drop of a test document
    assert (
        count == 2 and {"in-test-rank-20", "in-test-rank-500"} <= set(queries) and len(queries) == n_test + 2
    )
    count, queries = prep("within100", test_roundtrip_top_k=100)
    assert count == 1 and "in-test-rank-20" in queries and "in-test-rank-500" not in queries
    count, queries = prep("none", test_roundtrip_top_k=0)
    assert count == 0 and len(queries) == n_test
    (sdg / "sdg_dropped.jsonl").write_text("")  # sdg dropped nothing
    count, queries = prep("nothing_dropped")
    assert count == 0 and len(queries) == n_test


def test_prep_unrolls_multi_positive_queries_with_shared_negatives(prepped):
    config, report = prepped
    train_docs = set(report["split"]["train_documents"])
    records = json.loads((Path(config.out) / "train.json").read_text())["data"]
    by_question = {}
    for rec in records:
        by_question.setdefault(rec["question_id"].split("#")[0], []).append(rec)
    expected = {f"{d}-q{n}": len(pos) for d in train_docs for n, (_, pos) in enumerate(QUESTIONS[d])}
    assert {q: len(recs) for q, recs in by_question.items()} == expected
    assert report["split"]["train_records"] == sum(expected.values()) == len(records)
    multi = [recs for recs in by_question.values() if len(recs) > 1]
    assert multi
    for recs in multi:
        assert len({r["question"] for r in recs}) == 1
        assert len({r["pos_doc"][0]["id"] for r in recs}) == len(recs)
        assert all(len(r["pos_doc"]) == 1 for r in recs)
        assert all(r["neg_doc"] == recs[0]["neg_doc"] for r in recs)  # same ids and same scores
        assert [r["question_id"] for r in recs] == [
            f"{r['question_id'].split('#')[0]}#{i}" for i, r in enumerate(recs)
        ]


def test_prep_outputs_validate_and_agree(prepped):
    config, report = prepped
    out = Path(config.out)
    summary = formats.validate(out / "train.json")
    assert summary["format"] == "corpus_id" and summary["examples"] == report["split"]["train_records"]
    assert summary["min_negatives"] == 5
    inline = formats.validate(out / "train.jsonl")
    assert inline["format"] == "inline" and inline["examples"] == summary["examples"]
    by_id = formats.read_corpus_id_json(out / "train.json")
    by_text = formats.read_inline_jsonl(out / "train.jsonl")
    assert [(e.query, e.positives, e.negatives) for e in by_id] == [
        (e.query, e.positives, e.negatives) for e in by_text
    ]
    # trained passages are "title text", the string eval embeds for a BEIR entry
    assert by_id[0].positives[0].split(" ")[0] in {title.split()[0] for title, _ in DOCS.values()}

    beir = formats.validate(out / "test_beir")
    test_docs = report["split"]["test_documents"]
    assert beir["format"] == "beir"
    assert beir["corpus"] == 4 * len(DOCS)  # the whole corpus: the test questions search what a user searches
    assert beir["queries"] == report["split"]["questions"]["test"]
    dataset = formats.read_beir(out / "test_beir")
    doc_of = _doc_of_passages()
    assert {doc_of[pid] for pid in dataset.corpus} == set(DOCS)
    assert {doc_of[pid] for rels in dataset.qrels.values() for pid in rels} <= set(test_docs)
    for d in test_docs:
        for n, (question, positives) in enumerate(QUESTIONS[d]):
            qid = f"{d}-q{n}"
            assert dataset.queries[qid] == question
            texts = DOCS[d][1]
            assert dataset.qrels[qid] == {formats.passage_id(texts[k]): 1 for k in positives}
    assert sum(map(len, dataset.qrels.values())) == report["split"]["test_qrels"]


def test_prep_can_test_in_the_test_documents_alone(prepped, tmp_path):
    config, report = prepped
    narrow = run_prep(replace(config, out=str(tmp_path / "out"), test_corpus="test_documents"))
    assert narrow["split"]["test_documents"] == report["split"]["test_documents"]
    dataset = formats.read_beir(tmp_path / "out" / "test_beir")
    doc_of = _doc_of_passages()
    assert {doc_of[pid] for pid in dataset.corpus} == set(report["split"]["test_documents"])
    assert narrow["split"]["passages"]["test"] == 4 * len(report["split"]["test_documents"])
    assert report["split"]["passages"]["test"] == 4 * len(DOCS)


def test_prep_report_has_the_stats(prepped):
    config, report = prepped
    out = Path(config.out)
    on_disk = json.loads((out / "prep_report.json").read_text())
    assert on_disk["config_hash"] == config_hash(config) == report["config_hash"]
    assert on_disk["config"]["margin"] == 0.95 and on_disk["config"]["seed"] == 42
    mining = on_disk["mining"]
    n_queries = report["split"]["questions"]["train"]
    assert mining["queries"] == n_queries
    assert mining["rows_short"] == 0 and mining["missing_negatives"] == 0
    assert mining["skipped_by_margin"] >= 0 and "queries_with_skips" in mining
    assert mining["negative_scores"]["count"] == 5 * n_queries
    for key in ("mean", "p5", "p25", "p50", "p75", "p95"):
        assert key in mining["positive_scores"] and key in mining["negative_scores"]
    assert mining["negative_scores"]["mean"] < mining["positive_scores"]["mean"]
    assert on_disk["query_types"]["train"]["multi_hop"] >= 1
    md = (out / "prep_report.md").read_text()
    for text in (
        report["config_hash"],
        "Split by document",
        "candidates skipped by the margin",
        "queries short of negatives",
        "| negatives |",
        "| positives |",
        "negatives from test documents: 0",
    ):
        assert text in md, text


def test_prep_reports_bad_input_with_file_and_line(tmp_path):
    pairs, passages = write_fixture(tmp_path)
    lines = pairs.read_text().splitlines()
    bad = json.loads(lines[2])
    bad["positive_ids"] = ["0000deadbeef0000"]
    pairs.write_text("\n".join(lines[:2] + [json.dumps(bad)] + lines[3:]) + "\n")
    with pytest.raises(formats.DataFormatError, match=r"pairs.jsonl:3: field \"positive_ids\[0\]\""):
        run_prep(PrepConfig(pairs=str(pairs), out=str(tmp_path / "out")))  # passages found next to pairs
    pairs.write_text('{"question_id": "a", "question": "x?", "positive_ids": []}\n')
    with pytest.raises(formats.DataFormatError, match="pairs.jsonl:1"):
        read_pairs(pairs)
    passages.write_text('{"passage_id": "p", "doc_id": "d"}\n')
    with pytest.raises(formats.DataFormatError, match='passages.jsonl:1: field "text"'):
        read_passages(passages)
    assert not (tmp_path / "out").exists()


def test_prep_config_and_cli_are_registered():
    config = load_config("prep", overrides=["margin_type=abs", "margin=0.1", "num_negatives=3"])
    assert isinstance(config, PrepConfig)
    assert (config.margin_type, config.margin, config.num_negatives, config.test_fraction) == (
        "abs",
        0.1,
        3,
        0.2,
    )
    assert cli_main(["prep"]) == 2  # no pairs: a clear error, not a traceback


def test_finetune_accepts_the_prep_output(prepped, tmp_path):
    config, _ = prepped
    settings = FinetuneConfig(
        train_data=str(Path(config.out) / "train.json"),
        output_dir=str(tmp_path / "ft"),
        max_steps=2,
        max_seq_length=32,
        validation_split=0.0,
        global_batch_size=8,
    )
    with pytest.warns(UserWarning, match="only 2 training steps"):
        summary = finetune(settings)
    assert summary["steps"] == 2
    assert (tmp_path / "ft" / "model" / "modules.json").is_file()
