"""sdg: output cleaning, planning, filters, the OpenAI-compatible loop against a stub server (retries,
timeouts, 500s, garbage, resume after a crash), the CLI, and the real local generator (SmolLM2 via gguf)."""

import dataclasses
import json
import os
from pathlib import Path

import numpy as np
import pytest

from embedforge.cli import main as cli_main
from embedforge.config import ConfigError, SdgConfig, load_config
from embedforge.data.corpus import Passage
from embedforge.measures.search import positive_ranks
from embedforge.sdg import GeneratorError, GenRequest, OpenAIGenerator, SdgError, run_sdg
from embedforge.sdg import generators as G
from embedforge.sdg.checkpoint import CHECKPOINT_FILE
from embedforge.sdg.clean import clean_question, extractive_answer, parse_json_reply, parse_scores
from embedforge.sdg.filters import dedup_mask, rank_histogram
from embedforge.sdg.pipeline import generation_signature, plan_units, resolve
from embedforge.sdg.prompts import OPENINGS, plain_messages, plan_unit
from sdg_stub import StubServer

PAIR_KEYS = {
    "question_id", "question", "answer", "positive_ids", "doc_id", "query_type",
    "complexity", "hops", "scores", "roundtrip_rank", "generator",
}  # fmt: skip
SCORE_KEYS = {"relevance", "accuracy", "context_support", "clarity", "overall"}

# Six small documents, two sections each (one passage per section), on unrelated topics.
DOCS = {
    "tides.md": """# Harbor tide tables

## Reading the table
The Kestrel harbor tide table lists high and low water for every day of the year. Heights are given in
metres above chart datum. Times are local standard time and need one hour added in summer. Spring tides
arrive two days after a full or new moon. Neap tides have the smallest range between high and low water.

## Mooring rules
Boats longer than twelve metres must moor on the outer pontoon. The harbor master assigns berths each
morning at eight. Overnight mooring costs four euros per metre. Rafting more than three boats together is
forbidden. Fuel is sold at the north quay until six in the evening.
""",
    "sourdough.md": """# Sourdough baking

## Starter care
A sourdough starter is a culture of wild yeast and lactic acid bacteria. Feed the starter with equal weights
of flour and water once a day. A healthy starter doubles in volume within six hours of feeding. Keep the
jar loosely covered at room temperature. A grey liquid on top means the starter is hungry.

## Proofing the dough
Bulk fermentation of the dough takes four to six hours at room temperature. Stretch and fold the dough every
thirty minutes during the first two hours. The final proof can happen overnight in the refrigerator. Bake
the loaf in a preheated cast iron pot at two hundred fifty degrees. Remove the lid after twenty minutes.
""",
    "zephyr.md": """# Zephyr job scheduler

## Queues
The Zephyr scheduler places every submitted job in a named queue. The default queue accepts jobs up to
two hours long. The retry queue resubmits jobs that exit with a nonzero status. Jobs in the batch queue run
only at night. Administrators can pause a queue without cancelling its jobs.

## Priorities
Each job carries a priority between one and ten. Zephyr starts the job with the highest priority first.
Jobs of equal priority run in submission order. A user may lower but never raise the priority of a job.
The scheduler tick recomputes priorities every five minutes.
""",
    "violin.md": """# Violin maintenance

## Strings
Violin strings lose their tone after about six months of daily playing. Replace one string at a time to
keep the bridge in place. Steel E strings from the OFFTOPIC brand whistle less with a platinum coating. Let new
strings rest and tune them up slowly over several days. Wipe rosin dust off the strings after every practice session.

## Bridge and soundpost
The bridge should stand perpendicular to the violin top. A warped bridge must be replaced by a luthier.
The soundpost transmits vibration from the top plate to the back plate. Never adjust the soundpost
yourself. Humidity changes can make the soundpost fall over.
""",
    "glacier.md": """# Glacier monitoring

## Stakes
Researchers drill ablation stakes into the glacier surface each spring. The exposed stake length measures
how much ice melted over the summer. Stakes are read again in late September. A stake that melts out is
replaced at a new position. The base station records the readings from every stake.

## Weather stations
An automatic weather station on the glacier logs air temperature every ten minutes. It also measures wind
speed and incoming solar radiation. The station runs on a solar panel with a battery backup. Data are sent
by satellite once a day. Snow can bury the station in winter and stop the wind sensor.
""",
    "chess.md": """# Chess clocks

## Time controls
A chess clock shows the remaining time of both players. In a rapid game each player has fifteen minutes.
A Fischer increment adds a few seconds after every move. A player whose flag falls loses unless the
opponent cannot checkmate. LOWSCORE blitz games give each player five minutes or less.

## Operating the clock
Press the clock with the same hand that moved the piece. The REFER button shows the move counter on the
display. Stopping the clock pauses both times while an arbiter is called. Batteries should be changed
before every tournament. A digital clock can store several time control presets.
""",
}

# One-passage documents whose marker makes the stub misbehave (see sdg_stub.py).
FAILURE_DOCS = {
    "flaky.md": "# Relay\n\nThe FLAKY relay board switches twelve outputs. Each output carries two amperes at most. "
    "The board is configured over a serial console. Firmware updates take about a minute. Outputs keep their "
    "state through a reboot.\n",
    "slow.md": "# Kiln\n\nThe SLOW kiln controller ramps the temperature in programmed segments. A segment holds "
    "a target temperature for a set time. The controller stores ten programs. A door switch pauses the "
    "program when the kiln is opened. Thermocouples wear out after about two hundred firings.\n",
    "garbage.md": "# Beehives\n\nThe GARBAGE board of a beehive collects debris below the frames. Beekeepers "
    "count fallen mites on it each week. A hive with many mites needs treatment in late summer. Frames are "
    "inspected every ten days in spring. Queen cells mean the colony prepares to swarm.\n",
    "down.md": "# Lighthouse\n\nThe DOWN lighthouse lamp rotates once every ten seconds. Its beam reaches "
    "twenty nautical miles in clear weather. A backup lamp switches on when the main lamp fails. Keepers log "
    "visibility every three hours. The fog horn sounds twice a minute in fog.\n",
}


def write_corpus(folder: Path, docs: dict[str, str] = DOCS) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in docs.items():
        (folder / name).write_text(text)
    return folder


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def stub():
    server = StubServer().start()
    yield server
    server.stop()


def stub_config(tmp_path: Path, url: str, **kwargs) -> SdgConfig:
    values = dict(
        corpus=str(write_corpus(tmp_path / "docs")),
        out=str(tmp_path / "out"),
        backend="openai",
        model="stub-model",
        base_url=url,
        concurrency=4,
        timeout=1.0,
        max_retries=2,
        questions_per_passage=2,
        judge=False,
    )
    values.update(kwargs)
    return SdgConfig(**values)


# ------------------------------------------------------------------------------------------- cleaning


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ('Question 1: "What does VACUUM reclaim?" It reclaims space.', "What does VACUUM reclaim?"),
        ("**Question:** Which option sets the listen port?", "Which option sets the listen port?"),
        ("1. How do I restore a pg_dump archive?\n2. Another one?", "How do I restore a pg_dump archive?"),
        ("Sure! Here is a question: What is the default work_mem value?\nAnswer: 4MB", None),
        (
            "- 'Can I pause a Zephyr queue without cancelling jobs?'",
            "Can I pause a Zephyr queue without cancelling jobs?",
        ),
        ("Q: which port does the server listen on ?", "Which port does the server listen on?"),
    ],
)
def test_clean_strips_chatter_numbering_and_quotes(raw, expected):
    question, reason = clean_question(raw)
    if expected is None:  # the chatter line is skipped for the line holding the question
        expected = "What is the default work_mem value?"
    assert (question, reason) == (expected, "ok")


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("What does the passage say about tides?", "not_standalone"),
        ("According to the text, when are stakes read?", "not_standalone"),
        ("What is described in this document about violins?", "not_standalone"),
        ("Which option is mentioned above for mooring boats?", "not_standalone"),
        ("Can I search for harbor tides using the provided code?", "not_standalone"),
        ("What do I need to know to answer this question?", "meta"),
        ("Why?", "too_short"),
        ("", "empty"),
        ("The harbor master assigns berths each morning.", "not_a_question"),
        ("What is the {placeholder} of [feature]?", "garbage"),
        ('When you ask "What is the purpose of the harbor master?', "garbage"),
        ("How can I help you today?", "off_topic"),
    ],
)
def test_clean_rejects_what_is_not_a_standalone_question(raw, reason):
    passage = "The harbor master assigns berths each morning. Tides are listed in metres for violins."
    assert clean_question(raw, passage=passage) == (None, reason)


def test_clean_needs_a_question_mark_from_the_local_model_and_rejects_cut_off_or_copied_text():
    passage = "Jobs of equal priority run in submission order in the Zephyr scheduler."
    # a JSON-mode question that forgot its mark is repaired; the local model's statement is not
    assert clean_question("Which queue runs jobs at night", passage="queue jobs night")[0] == (
        "Which queue runs jobs at night?"
    )
    assert clean_question("Which queue runs jobs at night", require_mark=True)[1] == "not_a_question"
    assert clean_question("What happens when the Zephyr scheduler", truncated=True)[1] == "incomplete"
    copied = "Do jobs of equal priority run in submission order in the Zephyr scheduler?"
    assert clean_question(copied, passage=passage)[0] == copied
    assert clean_question("jobs of equal priority run in submission order?", passage=passage)[1] == "copied"
    # "the text type" is a database type, not a reference to the source
    assert clean_question("What is the maximum size of the text type in PostgreSQL?")[1] == "ok"


def test_json_and_score_parsing_tolerate_fences_prose_and_free_text():
    assert parse_json_reply('<think>plan</think>Here:\n```json\n{"questions": [1]}\n```') == {
        "questions": [1]
    }
    assert parse_json_reply('Sure! {"question": "Why?"} hope it helps') == {"question": "Why?"}
    assert parse_json_reply("{questions: [oops") is None
    scores = parse_scores(
        '{"relevance": 8, "accuracy": "9", "context_support": 12, "clarity": 7, "overall": 8}'
    )
    assert scores == {
        "relevance": 8.0,
        "accuracy": 9.0,
        "context_support": 10.0,
        "clarity": 7.0,
        "overall": 8.0,
    }
    assert parse_scores("Relevance: 6\nAccuracy: 8/10\nClarity - 7\nOverall: 7.5")["overall"] == 7.5
    assert parse_scores("relevance 9, accuracy 9, clarity 6")["overall"] == 8.0  # mean when overall missing
    assert parse_scores("I cannot score this.") is None
    assert (
        extractive_answer(
            "When are the ablation stakes read again?",
            [
                "Researchers drill stakes each spring. Stakes are read again in late September. Data go by satellite."
            ],
        )
        == "Stakes are read again in late September."
    )


# ------------------------------------------------------------------------------------------- planning


def test_plans_are_seeded_per_passage_mix_query_types_and_keep_groups_inside_a_document():
    passages = [
        Passage(f"p{d}-{i}", f"doc{d}", f"text {d} {i}", f"Doc {d}") for d in range(60) for i in range(5)
    ]
    config = SdgConfig(corpus="x", questions_per_passage=2, multi_hop_share=0.3, seed=7)
    plans = plan_units(passages, config)
    assert plans == plan_units(passages, config)  # deterministic
    specs = [s for p in plans for s in (*p.single, *p.multi)]
    share = {
        t: sum(s.query_type == t for s in specs) / len(specs)
        for t in ("multi_hop", "structural", "contextual", "factual")
    }
    assert 0.22 < share["multi_hop"] < 0.38
    assert 0.12 < share["structural"] < 0.28 and 0.12 < share["contextual"] < 0.28 and share["factual"] > 0.2
    for plan in plans:
        assert all(2 <= s.complexity <= 5 for s in (*plan.single, *plan.multi))
        if plan.multi:
            assert plan.group[0] == plan.passage_id and 2 <= len(plan.group) <= 3
            assert {g.split("-")[0] for g in plan.group} == {plan.passage_id.split("-")[0]}
    openings = [s.opening for p in plans for s in p.single]
    assert max(openings.count(o) for o in set(openings)) / len(openings) < 0.2  # no single dominant opening
    # a larger sample is a superset, and a passage's plan does not depend on the sample size
    small = {p.passage_id: p for p in plan_units(passages, SdgConfig(corpus="x", max_passages=20, seed=7))}
    large = {p.passage_id: p for p in plan_units(passages, SdgConfig(corpus="x", max_passages=50, seed=7))}
    assert len(small) == 20 and set(small) <= set(large)
    assert all(small[k] == large[k] for k in small)
    # a one-passage document cannot have a multi-hop question
    lone = plan_unit("solo", [], questions=3, multi_hop_share=1.0, seed=1)
    assert not lone.multi and len(lone.single) == 3


def test_user_style_asks_plain_user_questions_and_keeps_the_multi_hop_share():
    passages = [
        Passage(f"p{d}-{i}", f"doc{d}", f"text {d} {i}", f"Doc {d}") for d in range(40) for i in range(5)
    ]
    config = SdgConfig(
        corpus="x", questions_per_passage=2, multi_hop_share=0.3, question_style="user", seed=7
    )
    plans = plan_units(passages, config)
    single = [s for p in plans for s in p.single]
    multi = [s for p in plans for s in p.multi]
    assert single and all(s.query_type == "user" and s.opening in OPENINGS["user"] for s in single)
    assert len({s.opening for s in single}) == len(OPENINGS["user"])  # every opening is used
    assert 0.22 < len(multi) / (len(single) + len(multi)) < 0.38
    # the same passages and seed in the documentation style: same multi-hop draws, other single types
    other = dataclasses.replace(config, question_style="documentation")
    documentation = plan_units(passages, other)
    assert [len(p.multi) for p in documentation] == [len(p.multi) for p in plans]
    assert not any(s.query_type == "user" for p in documentation for s in p.single)
    # the local model is asked for short plain questions, each started with its user opening
    two = next(p for p in plans if len(p.single) == 2)
    messages, prefix, follow_ups = plain_messages(list(two.single), ["Sorting a list."], "Sort", 500)
    assert "short questions a user would ask" in messages[1]["content"]
    assert prefix == f"1. {two.single[0].opening}" and follow_ups == (f"\n2. {two.single[1].opening}",)
    # a checkpoint written in one style is not resumed in the other
    assert generation_signature(config, resolve(config)) != generation_signature(other, resolve(other))


def test_spread_gives_every_document_a_passage_before_any_gets_a_second():
    # one long reference page and 40 one-passage pages, as a documentation site often is
    passages = [Passage(f"big-{i}", "big", f"text {i}", "Big") for i in range(200)]
    passages += [Passage(f"page{d}-0", f"page{d}", f"text {d}", f"Page {d}") for d in range(40)]
    uniform = plan_units(passages, SdgConfig(corpus="x", max_passages=30, seed=3))
    assert sum(p.passage_id.startswith("big") for p in uniform) > 15  # the long page takes the budget
    spread = [
        p.passage_id
        for p in plan_units(passages, SdgConfig(corpus="x", max_passages=30, spread=True, seed=3))
    ]
    assert len(spread) == 30 and len({pid.split("-")[0] for pid in spread}) == 30  # 30 documents, once each
    more = [
        p.passage_id
        for p in plan_units(passages, SdgConfig(corpus="x", max_passages=60, spread=True, seed=3))
    ]
    assert set(spread) <= set(more) and sum(p.startswith("page") for p in more) == 40  # round one done first
    assert more == [
        p.passage_id
        for p in plan_units(passages, SdgConfig(corpus="x", max_passages=60, spread=True, seed=3))
    ]


# ------------------------------------------------------------------------------------------- filters


def test_dedup_drops_above_threshold_keeping_the_first_and_compares_only_with_kept(minilm):
    a = np.array([1.0, 0.0])
    b = np.array([np.cos(0.3), np.sin(0.3)])  # cos(a, b) = 0.955
    c = np.array([np.cos(0.6), np.sin(0.6)])  # cos(a, c) = 0.825, cos(b, c) = 0.955
    assert dedup_mask(np.stack([a, b, c]), 0.9).tolist() == [True, False, True]  # c survives: b was dropped
    assert dedup_mask(np.stack([a, b, c]), 1.0).all()
    questions = [
        "How do I back up a PostgreSQL database?",
        "How can I back up a PostgreSQL database?",  # cosine 0.99 with the first
        "Which port does the PostgreSQL server listen on?",
        "What is the best way to back up a PostgreSQL database?",  # 0.95
    ]
    keep = dedup_mask(minilm.encode_queries(questions), 0.9)
    assert keep.tolist() == [True, False, True, False]


def test_roundtrip_rank_is_the_best_positive_and_ties_count_against_it():
    queries = np.array([[1.0, 0.0], [0.0, 1.0]])
    passages = np.array([[0.9, 0.1], [1.0, 0.0], [0.5, 0.5], [0.2, 0.9], [0.0, 1.0]])
    assert positive_ranks(queries, passages, [[0], [2, 4]]) == [2, 1]
    assert positive_ranks(np.array([[1.0, 0.0]]), np.array([[1.0, 0.0], [1.0, 0.0]]), [[0]]) == [2]
    assert rank_histogram([1, 2, 3, 7, 50, 400]) == {"1": 1, "2-3": 2, "4-10": 1, "11-100": 1, ">100": 1}


# ------------------------------------------------------------------------------------------- openai backend


def test_openai_run_writes_the_schema_and_each_filter_removes_what_it_should(stub, tmp_path, minilm):
    config = stub_config(tmp_path, stub.url, judge=True, roundtrip_top_k=3, multi_hop_share=0.5)
    report = run_sdg(config, encoder=minilm, progress=False)
    out = Path(config.out)

    passages = read_jsonl(out / "passages.jsonl")
    assert passages and all(set(p) == {"passage_id", "doc_id", "text", "title", "section"} for p in passages)
    ids = {p["passage_id"]: p for p in passages}
    pairs = read_jsonl(out / "pairs.jsonl")
    assert pairs and len(pairs) == report["kept"]
    for pair in pairs:
        assert set(pair) == PAIR_KEYS
        assert pair["question"].endswith("?") and "passage" not in pair["question"]
        assert all(pid in ids for pid in pair["positive_ids"])
        assert pair["doc_id"] == ids[pair["positive_ids"][0]]["doc_id"]
        assert pair["query_type"] in ("multi_hop", "structural", "contextual", "factual")
        assert 2 <= pair["complexity"] <= 5 and pair["hops"] == len(pair["positive_ids"]) <= 3
        assert set(pair["scores"]) == SCORE_KEYS and pair["scores"]["overall"] >= 7.0
        assert 1 <= pair["roundtrip_rank"] <= 3
        assert pair["generator"] == "openai:stub-model"
    multi = [p for p in pairs if p["query_type"] == "multi_hop"]
    assert multi and all(p["hops"] == 2 and p["complexity"] >= 3 for p in multi)
    assert len({p["question_id"] for p in pairs}) == len(pairs)

    dropped = read_jsonl(out / "sdg_dropped.jsonl")
    by = {}
    for d in dropped:
        by.setdefault(d["dropped_by"], []).append(d)
    assert report["removed"]["cleaning"] == {"not_standalone": 1}  # the REFER passage's second question
    assert report["removed"]["judge"] == len(by["judge"]) and by["judge"]  # LOWSCORE questions
    assert all(d["scores"]["overall"] < 7.0 for d in by["judge"])
    assert any("sourdough" in d["question"] for d in by["roundtrip"])  # OFFTOPIC question
    assert all(d["roundtrip_rank"] > 3 for d in by["roundtrip"])
    assert report["removed"]["roundtrip"] == len(by["roundtrip"])
    assert report["removed"]["dedup"] == len(by.get("dedup", []))
    assert report["generated"] == (
        report["kept"]
        + sum(report["removed"]["cleaning"].values())
        + len(dropped)
        + report["malformed_outputs"]
    )
    assert report["roundtrip"]["kept_at_k"]["3"] == report["kept"]
    assert (
        sum(report["roundtrip"]["rank_histogram"].values()) == report["kept"] + report["removed"]["roundtrip"]
    )
    assert json.loads((out / "sdg_report.json").read_text())["kept"] == report["kept"]
    assert report["this_run"]["failed_requests"] == 0


def test_openai_failures_are_retried_skipped_reported_and_nothing_done_is_lost(stub, tmp_path, minilm):
    stub.state["down"] = True
    write_corpus(tmp_path / "docs", {**DOCS, **FAILURE_DOCS})
    config = stub_config(tmp_path, stub.url, roundtrip_top_k=0)
    report = run_sdg(config, encoder=minilm, progress=False)
    out = Path(config.out)
    records = read_jsonl(out / CHECKPOINT_FILE)
    done_text = {json.dumps(r) for r in records}
    # FLAKY (two 500s) and SLOW (a timeout) succeeded on retries; GARBAGE was counted as malformed;
    # the DOWN passage failed after its retries and is left pending, with a note
    assert report["malformed_outputs"] >= 1 and report["removed"]["cleaning"].get("malformed_output", 0) >= 1
    assert report["this_run"]["units_failed"] >= 1 and report["passages_pending"] >= 1
    assert report["this_run"]["failed_requests"] >= 1 and "run the same command again" in report["note"]
    assert report["this_run"]["retries"] >= 5  # FLAKY 2, SLOW 1, DOWN 2 (max_retries=2)
    flaky = [p for p in read_jsonl(out / "pairs.jsonl") if "FLAKY" in p["answer"] or "FLAKY" in p["question"]]
    slow = [p for p in read_jsonl(out / "pairs.jsonl") if "SLOW" in p["answer"] or "SLOW" in p["question"]]
    assert flaky and slow
    assert not any("DOWN" in p["answer"] for p in read_jsonl(out / "pairs.jsonl"))
    pending = report["passages_pending"]

    stub.state["down"] = False  # the endpoint recovers: a re-run generates only the missing passages
    again = run_sdg(config, encoder=minilm, progress=False)
    assert again["this_run"]["units_resumed"] == report["passages_done"]
    assert again["this_run"]["units_generated"] == pending
    assert again["passages_pending"] == 0 and "note" not in again
    records_after = read_jsonl(out / CHECKPOINT_FILE)
    assert {json.dumps(r) for r in records_after[: len(records)]} == done_text  # earlier work untouched
    units = [r["unit"] for r in records_after]
    assert len(units) == len(set(units))
    assert any("DOWN" in p["answer"] for p in read_jsonl(out / "pairs.jsonl"))
    stub.state["down"] = True


def _reference(tmp_path: Path, stub, minilm) -> list[dict]:
    stub.state["down"] = False
    config = stub_config(tmp_path / "ref", stub.url, roundtrip_top_k=10)
    run_sdg(config, encoder=minilm, progress=False)
    return read_jsonl(Path(config.out) / "pairs.jsonl")


def test_resume_after_the_server_dies_mid_run_equals_an_uninterrupted_run(stub, tmp_path, minilm):
    reference = _reference(tmp_path, stub, minilm)
    dying = StubServer().start()
    dying.state.update(down=False, die_after=4)
    config = stub_config(tmp_path / "run", dying.url, roundtrip_top_k=10, max_retries=1)
    try:
        first = run_sdg(config, encoder=minilm, progress=False)
        assert first["passages_pending"] > 0
    except SdgError as err:  # enough requests in a row failed: the run stops, work so far is saved
        assert "run again to resume" in str(err)
    finally:
        dying.stop()
    saved = read_jsonl(Path(config.out) / CHECKPOINT_FILE)
    assert 0 < len(saved) < 12
    revived = StubServer().start()  # a new server on another port: base_url may change between runs
    revived.state["down"] = False
    try:
        second = run_sdg(dataclass_replace(config, base_url=revived.url), encoder=minilm, progress=False)
    finally:
        revived.stop()
    assert second["this_run"]["units_resumed"] == len(saved) and second["passages_pending"] == 0
    assert read_jsonl(Path(config.out) / "pairs.jsonl") == reference
    stub.state["down"] = True


def dataclass_replace(config, **changes):
    import dataclasses

    return dataclasses.replace(config, **changes)


class _InterruptAfter:
    """Wraps a generator and raises KeyboardInterrupt on the n-th generate call (a Ctrl-C mid-run)."""

    def __init__(self, inner, calls: int):
        self.inner, self.left, self.name = inner, calls, inner.name

    def generate(self, requests):
        self.left -= 1
        if self.left < 0:
            raise KeyboardInterrupt
        return self.inner.generate(requests)


def test_resume_after_an_interrupt_and_a_torn_checkpoint_line_loses_and_duplicates_nothing(
    stub, tmp_path, minilm
):
    reference = _reference(tmp_path, stub, minilm)
    stub.state["down"] = False
    config = stub_config(tmp_path / "run", stub.url, roundtrip_top_k=10, concurrency=1)
    generator = OpenAIGenerator(stub.url, "stub-model", concurrency=1, timeout=1.0, max_retries=2, seed=42)
    with pytest.raises(KeyboardInterrupt):
        run_sdg(config, generator=_InterruptAfter(generator, 2), encoder=minilm, progress=False)
    checkpoint = Path(config.out) / CHECKPOINT_FILE
    saved = read_jsonl(checkpoint)
    assert 0 < len(saved) < 12
    with checkpoint.open("a") as f:  # the process died in the middle of writing the next record
        f.write('{"unit": "half-writ')
    report = run_sdg(config, generator=generator, encoder=minilm, progress=False)
    assert report["this_run"]["units_resumed"] == len(saved)
    units = [r["unit"] for r in read_jsonl(checkpoint)]
    assert len(units) == len(set(units)) == report["passages_selected"]
    assert read_jsonl(Path(config.out) / "pairs.jsonl") == reference
    # finished: a third run generates nothing and writes the same pairs
    assert run_sdg(config, generator=generator, encoder=minilm, progress=False)["this_run"]["requests"] == 0
    assert read_jsonl(Path(config.out) / "pairs.jsonl") == reference
    stub.state["down"] = True


def test_a_checkpoint_made_with_other_settings_is_refused_until_resume_is_off(stub, tmp_path, minilm):
    stub.state["down"] = False
    config = stub_config(tmp_path, stub.url, roundtrip_top_k=0, max_passages=3)
    run_sdg(config, encoder=minilm, progress=False)
    with pytest.raises(ConfigError, match="questions_per_passage"):
        run_sdg(dataclass_replace(config, questions_per_passage=3), encoder=minilm, progress=False)
    fresh = run_sdg(
        dataclass_replace(config, questions_per_passage=3, resume=False), encoder=minilm, progress=False
    )
    assert fresh["this_run"]["units_resumed"] == 0 and fresh["this_run"]["units_generated"] == 3
    stub.state["down"] = True


def test_endpoint_errors_stop_or_skip_without_pointless_retries(stub, tmp_path, minilm):
    with pytest.raises(GeneratorError, match="API key"):
        OpenAIGenerator(stub.url + "/unauthorized", "m", max_retries=3).generate(
            [GenRequest([{"role": "user", "content": "hi"}])]
        )
    before = stub.calls["badrequest"]
    result = OpenAIGenerator(stub.url + "/badrequest", "m", max_retries=3).generate(
        [GenRequest([{"role": "user", "content": "hi"}])]
    )[0]
    assert result.text is None and "HTTP 400" in result.error and stub.calls["badrequest"] == before + 1
    # nothing listens on the port: the run stops after a dozen failures in a row, with nothing saved
    config = stub_config(tmp_path, "http://127.0.0.1:9/v1", max_retries=0, roundtrip_top_k=0)
    with pytest.raises(SdgError, match="in a row"):
        run_sdg(config, encoder=minilm, progress=False)


def test_sdg_command_and_config(stub, tmp_path, capsys):
    assert load_config("sdg", overrides=["judge=true", "roundtrip_top_k=5"]).judge is True
    with pytest.raises(ConfigError):
        load_config("sdg", overrides=["backend=llama"])
    stub.state["down"] = False
    docs = write_corpus(tmp_path / "docs", {k: DOCS[k] for k in ("tides.md", "chess.md")})
    code = cli_main(
        ["sdg", "--corpus", str(docs), "--out", str(tmp_path / "out"), "--backend", "openai",
         "model=stub-model", f"base_url={stub.url}", "judge=false", "dedup_threshold=1.0", "roundtrip_top_k=0"]
    )  # fmt: skip
    stub.state["down"] = True
    assert code == 0
    printed = capsys.readouterr().out
    assert '"kept"' in printed and "pairs.jsonl" in printed
    assert read_jsonl(tmp_path / "out" / "pairs.jsonl")
    assert cli_main(["sdg", "--out", str(tmp_path / "x")]) == 2  # no corpus: a clear error


# ------------------------------------------------------------------------------------------- local backend


@pytest.fixture(scope="module")
def smollm():
    # float32: batched and one-at-a-time replies are then identical (in bfloat16 padding shifts the rounding)
    return G.LocalGenerator("smollm2-135m", batch_size=4, dtype="float32")


PASSAGES = [
    "The Zephyr scheduler places every submitted job in a named queue. The default queue accepts jobs up to "
    "two hours long. Jobs in the batch queue run only at night. Administrators can pause a queue without "
    "cancelling its jobs.",
    "A sourdough starter is a culture of wild yeast and lactic acid bacteria. Feed the starter with equal "
    "weights of flour and water once a day. A healthy starter doubles in volume within six hours of feeding.",
]


def _two_question_requests() -> list:
    from embedforge.sdg.prompts import QuestionSpec

    specs = [QuestionSpec("factual", 2, "Which", 0), QuestionSpec("contextual", 3, "What should I do if", 1)]
    requests = []
    for text in PASSAGES:
        messages, prefix, follow_ups = plain_messages(specs, [text], "Manual", 1500)
        assert prefix == "1. Which" and follow_ups == ("\n2. What should I do if",)
        requests.append(
            GenRequest(
                messages, prefix=prefix, follow_ups=follow_ups, max_new_tokens=48, stop_at_question=True
            )
        )
    return requests


def _assert_real_questions(results) -> None:
    assert len(results) == 2
    cleaned = []
    for result, text in zip(results, PASSAGES, strict=True):
        # one prompt, two questions: each part starts with its forced opening and stops at its question
        assert len(result.parts) == 2
        assert result.parts[0].startswith("1. Which") and result.parts[1].startswith(
            "\n2. What should I do if"
        )
        for part, cut in zip(result.parts, result.parts_truncated, strict=True):
            assert part.count("?") <= 1 and "\n" not in part.strip()
            question, _ = clean_question(part, passage="Manual " + text, truncated=cut, require_mark=True)
            if question:
                cleaned.append(question)
    assert len(cleaned) >= 2
    assert all(q.endswith("?") and len(q.split()) >= 4 and q[0].isupper() for q in cleaned)


def test_local_generator_writes_real_questions_in_batches(smollm):
    requests = _two_question_requests()
    results = smollm.generate(requests)
    _assert_real_questions(results)
    # batching is real and changes nothing: one prompt per call gives the same replies, in order
    alone = smollm.generate(requests, batch_size=1)
    assert [r.parts for r in alone] == [r.parts for r in results]


def test_local_generator_default_dtype_is_bf16_exactly_where_native_and_writes_real_questions():
    import torch

    from embedforge.models.precision import bf16_is_native

    generator = G.LocalGenerator("smollm2-135m", batch_size=4)
    assert generator.model.dtype == (torch.bfloat16 if bf16_is_native() else torch.float32)
    _assert_real_questions(generator.generate(_two_question_requests()))
    with pytest.raises(ValueError, match="dtype must be"):
        G.LocalGenerator("smollm2-135m", dtype="float16")


def test_local_sdg_run_end_to_end(smollm, tmp_path, minilm):
    docs = write_corpus(tmp_path / "docs", {"zephyr.md": DOCS["zephyr.md"]})
    config = SdgConfig(
        corpus=str(docs), out=str(tmp_path / "out"), questions_per_passage=2, max_new_tokens=48
    )
    report = run_sdg(config, generator=smollm, encoder=minilm, progress=False)
    assert report["generator"] == "local:smollm2-135m" and report["judge"] == {"enabled": False}
    assert report["passages_done"] == 2 and report["generated"] == 4
    assert report["this_run"]["requests"] <= 4  # a passage's questions share one prompt
    pairs = read_jsonl(tmp_path / "out" / "pairs.jsonl")
    assert report["kept"] == len(pairs)
    for pair in pairs:
        assert set(pair) == PAIR_KEYS and pair["question"].endswith("?") and pair["scores"] == {}
        assert pair["answer"] and pair["roundtrip_rank"] <= 10


def test_generation_threads_drop_to_one_only_on_a_busy_machine(monkeypatch):
    from embedforge.sdg import generators

    cores = os.cpu_count() or 1
    monkeypatch.setattr(generators.os, "getloadavg", lambda: (cores + 0.5, 0.0, 0.0))
    assert generators.generation_threads(default=cores) == 1
    monkeypatch.setattr(generators.os, "getloadavg", lambda: (cores - 0.5, 0.0, 0.0))
    assert generators.generation_threads(default=cores) == cores


def test_zero_questions_per_passage_writes_the_passages_and_loads_no_generator(tmp_path):
    class NoGenerator:
        name = "must-not-run"

        def generate(self, requests):
            raise AssertionError("sdg asked for questions with questions_per_passage 0")

    config = SdgConfig(corpus=str(write_corpus(tmp_path / "docs")), out=str(tmp_path / "out"),
                       questions_per_passage=0)  # fmt: skip
    report = run_sdg(config, generator=NoGenerator(), progress=False)
    passages = read_jsonl(tmp_path / "out" / "passages.jsonl")
    assert len(passages) == report["passages"] > len(DOCS)
    assert {p["doc_id"] for p in passages} == set(DOCS)
    assert (tmp_path / "out" / "pairs.jsonl").read_text() == ""
    assert report["generator"] == "none (questions_per_passage 0)"
    assert (report["passages_selected"], report["generated"], report["kept"]) == (0, 0, 0)
    assert report["this_run"]["requests"] == 0
    with pytest.raises(ConfigError, match="questions_per_passage must be >= 0"):
        run_sdg(dataclass_replace(config, questions_per_passage=-1), generator=NoGenerator())
