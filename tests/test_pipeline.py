"""`embedforge run` end to end: sdg (against the stub chat server) -> prep -> finetune -> eval in one run
folder, the document-level split, skipping of unchanged stages on a re-run (function and CLI), a changed
finetune setting re-running finetune and eval only, a stage re-run when the outputs it reads changed in an
earlier invocation, export + verify on the tuned model, bare overrides rejected, and the README's 5-minute tour
run as written on that run laid out as `make demo` leaves it. The tests read one run
folder; a test that changes a run works on its own copy, so they pass in any order."""

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from embedforge.errors import EmbedforgeError
from embedforge.measures.general_check import load_lee
from embedforge.pipeline.run import MARKER, describe_test_set, run_pipeline, write_run_report
from embedforge.serve.server import free_port
from sdg_stub import StubServer

MAIN_STAGES = ("sdg", "prep", "finetune", "eval")

# Six short documents (two .txt, four .md) on unrelated topics, each a couple of passages.
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
    "sourdough.txt": """Sourdough starter care. A sourdough starter is a culture of wild yeast and lactic acid
bacteria. Feed the starter with equal weights of flour and water once a day. A healthy starter doubles in
volume within six hours of feeding. Keep the jar loosely covered at room temperature. A grey liquid on top
means the starter is hungry and needs feeding soon.
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
    "violin.txt": """Violin strings lose their tone after about six months of daily playing. Replace one
string at a time to keep the bridge in place. Let new strings rest and tune them up slowly over several
days. Wipe rosin dust off the strings after every practice session. The soundpost transmits vibration from
the top plate to the back plate and must only be adjusted by a luthier.
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
opponent cannot checkmate. Blitz games give each player five minutes or less.

## Operating the clock
Press the clock with the same hand that moved the piece. Stopping the clock pauses both times while an
arbiter is called. Batteries should be changed before every tournament. A digital clock can store several
time control presets for club evenings.
""",
}

RECIPE = """\
name: pipeline-test
sdg:
  backend: openai
  model: stub-model
  base_url: {url}
  api_key_env: EMBEDFORGE_PIPELINE_TEST_NO_KEY
  concurrency: 4
  timeout: 10.0
  max_retries: 1
  questions_per_passage: 2
  judge: false
  roundtrip_top_k: 1000  # keeps every question, but embeds the corpus with the base model
  dedup_threshold: 1.0
prep:
  num_negatives: 2
  candidate_pool: 20
  test_fraction: 0.34
  batch_size: 16
finetune:
  max_steps: 2
  max_seq_length: 128  # >= the longest test passage: the served model rejects longer input in verify
  global_batch_size: 8
  validation_split: 0.0
  n_passages: 2
  warmup_steps: 0
  log_every: 1
eval:
  ks: [1, 5, 10]
  batch_size: 16
"""


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def markers(run: Path) -> dict[str, str]:
    return {p.parent.name: p.read_text() for p in sorted(run.glob(f"*/{MARKER}"))}


def files(run: Path) -> set[str]:
    return {str(p.relative_to(run)) for p in run.rglob("*") if p.is_file() and p.name != "report.md"}


@pytest.fixture(scope="module")
def stub():
    server = StubServer().start()
    server.state["down"] = False
    yield server
    server.stop()


@pytest.fixture(scope="module")
def first_run(tmp_path_factory, stub):
    """One full run of the default stages; returns (corpus, run_dir, recipe, summary)."""
    root = tmp_path_factory.mktemp("pipeline")
    corpus = root / "corpus"
    corpus.mkdir()
    for name, text in DOCS.items():
        (corpus / name).write_text(text)
    recipe = root / "recipe.yaml"
    recipe.write_text(RECIPE.format(url=stub.url))
    run = root / "run"
    summary = run_pipeline(str(corpus), str(run), str(recipe))
    return corpus, run, recipe, summary


@pytest.fixture
def run_copy(first_run, tmp_path):
    """A copy of the first run in another folder, for a test that changes it; returns (corpus, run, recipe)."""
    corpus, run, recipe, _ = first_run
    copy = tmp_path / "run"
    shutil.copytree(run, copy, symlinks=True)
    return corpus, copy, recipe


def test_run_writes_every_stage_a_marker_and_the_report(first_run):
    _, run, _, summary = first_run
    assert all("seconds" in summary[s] and not summary[s].get("skipped") for s in MAIN_STAGES)
    assert (run / "sdg" / "pairs.jsonl").exists() and read_jsonl(run / "sdg" / "pairs.jsonl")
    assert (run / "prep" / "train.json").exists()
    for name in ("corpus.jsonl", "queries.jsonl", "qrels/test.tsv"):
        assert (run / "prep" / "test_beir" / name).exists(), name
    assert (run / "finetune" / "model").is_dir() and any((run / "finetune" / "model").iterdir())
    results = json.loads((run / "eval" / "eval_results.json").read_text())
    assert results
    for stage in MAIN_STAGES:
        marker = json.loads((run / stage / MARKER).read_text())
        assert marker["status"] == "finished" and marker["key"] and marker["finished"], stage
    assert not (run / "export").exists() and not (run / "verify").exists()
    report = Path(summary["report"])
    assert report == run / "report.md"
    text = report.read_text()
    assert (
        "Base vs tuned on questions the LLM wrote for held-out documents (not written by people), searched in "
        "the whole corpus" in text
    )
    advice = json.loads((run / "recommendation.json").read_text())
    assert advice["model"] in (advice["base"], advice["tuned"]) and "## Recommendation" in text
    tuned = str(run / "finetune" / "model")
    assert f"| metric | minilm | {tuned} |" in text  # base vs tuned columns
    assert "| ndcg@10 |" in text and "| recall@10 |" in text
    assert "| lee pearson |" in text  # the general-domain check, base vs tuned
    general = {name: r["general_check"]["pearson"] for name, r in results["models"].items()}
    assert len(general) == 2 and all(0.3 < v < 0.9 for v in general.values())
    for stage in MAIN_STAGES:
        assert f"| {stage} | finished |" in text


def test_base_model_embeds_each_passage_once_per_run(first_run):
    _, run, _, summary = first_run
    passages = read_jsonl(run / "sdg" / "passages.jsonl")
    # sdg's round-trip filter embeds the whole corpus; mining (train documents) and the baseline eval
    # (the whole corpus) reuse those vectors instead of embedding them again; eval's general-domain check
    # embeds its own documents
    general_docs = len(load_lee()[0])
    test_docs = set(json.loads((run / "prep" / "prep_report.json").read_text())["split"]["test_documents"])
    train_passages = sum(p["doc_id"] not in test_docs for p in passages)
    assert summary["base_model_passages"] == {
        "embedded": len(passages) + general_docs,
        "reused": train_passages + len(passages),
    }


def test_test_questions_search_the_whole_corpus_and_only_test_documents_answer_them(first_run):
    _, run, _, _ = first_run
    passages = {p["passage_id"]: p for p in read_jsonl(run / "sdg" / "passages.jsonl")}
    pairs = read_jsonl(run / "sdg" / "pairs.jsonl")
    beir = run / "prep" / "test_beir"
    # the test corpus is every passage of the corpus, as a user searches it
    assert {row["_id"] for row in read_jsonl(beir / "corpus.jsonl")} == set(passages)
    test_docs = set(json.loads((run / "prep" / "prep_report.json").read_text())["split"]["test_documents"])
    assert test_docs and len(test_docs) < len({p["doc_id"] for p in passages.values()})
    test_ids = {pid for pid, p in passages.items() if p["doc_id"] in test_docs}
    test_queries = {row["_id"] for row in read_jsonl(beir / "queries.jsonl")}
    assert test_queries
    by_id = {p["question_id"]: p for p in pairs}
    for qid in test_queries:
        assert {passages[pid]["doc_id"] for pid in by_id[qid]["positive_ids"]} <= test_docs
    qrels = (beir / "qrels" / "test.tsv").read_text().splitlines()
    rows = [line.split("\t") for line in qrels if line and not line.startswith("query-id")]
    assert rows and all(q in test_queries and d in test_ids for q, d, *_ in rows)
    # no training query has a positive in a test document, and no test passage is in the training corpus
    train_queries = set(by_id) - test_queries
    assert train_queries
    for qid in train_queries:
        assert not {passages[pid]["doc_id"] for pid in by_id[qid]["positive_ids"]} & test_docs
    train = json.loads((run / "prep" / "train.json").read_text())
    train_corpus = {
        row["id"]: row["text"] for row in pq.read_table(run / "prep" / "corpus" / "train.parquet").to_pylist()
    }
    assert train_corpus and not set(train_corpus) & test_ids
    assert {passages[pid]["doc_id"] for pid in train_corpus}.isdisjoint(test_docs)
    used = {d["id"] for row in train["data"] for d in (*row["pos_doc"], *row["neg_doc"])}
    assert used <= set(train_corpus)
    assert {row["question_id"].partition("#")[0] for row in train["data"]} <= train_queries
    test_texts = [passages[pid]["text"] for pid in test_ids]
    for row in read_jsonl(run / "prep" / "train.jsonl"):
        for text in (row["pos_doc"], *row["neg_doc"]):
            assert not any(t in text for t in test_texts)


def test_second_run_skips_every_stage(first_run):
    corpus, run, recipe, _ = first_run
    before_markers, before_files = markers(run), files(run)
    summary = run_pipeline(str(corpus), str(run), str(recipe))
    assert all(summary[s] == {"skipped": True} for s in MAIN_STAGES)
    assert markers(run) == before_markers
    assert files(run) == before_files


def test_cli_run_skips_unchanged_stages(first_run):
    corpus, run, recipe, _ = first_run
    before = markers(run)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "embedforge.cli", "run", "--corpus", str(corpus), "--out", str(run)]
    done = subprocess.run(
        [*cmd, "--config", str(recipe)], capture_output=True, text=True, env=env, timeout=120
    )
    assert done.returncode == 0, done.stderr
    for stage in MAIN_STAGES:
        assert f"[{stage}] unchanged since" in done.stdout
    assert "run report:" in done.stdout
    assert markers(run) == before
    # a bare override (no stage prefix) is rejected with a message saying how to write it
    bad = subprocess.run(
        [*cmd, "--config", str(recipe), "learning_rate=1e-4"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert bad.returncode != 0
    assert "finetune.epochs=1" in bad.stdout + bad.stderr and "learning_rate=1e-4" in bad.stdout + bad.stderr


@pytest.fixture(scope="module")
def demo_layout(first_run, tmp_path_factory):
    """The files `make demo` leaves behind, laid out as the README's tour names them, from the first run:
    its corpus as .cache/perlfaq/docs, its held-out set as .cache/perlfaq/beir, the run as runs/demo (export
    and verify added with the recipe's int8), the recipe as recipes/demo_cpu.yaml, the venv as .venv.
    Returns (root, summary of the run that added export and verify)."""
    corpus, run, recipe, _ = first_run
    root = tmp_path_factory.mktemp("demo_layout")
    shutil.copytree(corpus, root / ".cache" / "perlfaq" / "docs")
    shutil.copytree(run / "prep" / "test_beir", root / ".cache" / "perlfaq" / "beir")
    shutil.copytree(run, root / "runs" / "demo", symlinks=True)
    (root / "recipes").mkdir()
    (root / "recipes" / "demo_cpu.yaml").write_text(recipe.read_text() + "export:\n  quantize: int8\n")
    (root / ".venv").symlink_to(Path(sys.prefix))
    stages = [*MAIN_STAGES, "export", "verify"]
    docs, demo = root / ".cache" / "perlfaq" / "docs", root / "runs" / "demo"
    summary = run_pipeline(str(docs), str(demo), str(root / "recipes" / "demo_cpu.yaml"), stages=stages)
    return root, summary


def test_export_and_verify_on_the_tuned_model_verify_every_graph_it_exports(demo_layout):
    root, summary = demo_layout
    run = root / "runs" / "demo"
    assert all(summary[s] == {"skipped": True} for s in MAIN_STAGES)
    assert "seconds" in summary["export"] and "seconds" in summary["verify"]
    assert (run / "export" / "model.onnx").exists() and (run / "export" / "model_int8.onnx").exists()
    for name in ("verify_report.json", "verify_report_int8.json"):
        report = json.loads((run / "verify" / name).read_text())
        assert report["passed"] is True, name
        assert report["metrics"] and all(r["diff"] <= r["tolerance"] for r in report["metrics"])
    for stage in ("export", "verify"):
        assert json.loads((run / stage / MARKER).read_text())["status"] == "finished"
    assert "| export | finished |" in (run / "report.md").read_text()


def readme_tour() -> str:
    """The README's 5-minute tour: the first bash block after its heading, as a user copies it."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    tour = readme[readme.index("## A 5-minute tour") :]
    return tour[tour.index("```bash\n") + len("```bash\n") : tour.index("\n```", tour.index("```bash"))]


def test_the_readme_tour_runs_as_written_on_what_the_demo_leaves(demo_layout):
    root, _ = demo_layout
    assert (root / ".venv" / "bin" / "activate").is_file(), "the tour activates the project's venv"
    port = str(free_port())  # the tour's port 8000 may be taken on this machine
    # verify waits 120 s for the server to get ready; a test machine running other work may need longer
    script = (
        readme_tour().replace("8000", port).replace("embedforge verify ", "embedforge verify timeout=600 ")
    )
    src = Path(__import__("embedforge").__file__).resolve().parents[1]  # the code under test, not an install
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(src)}
    env.pop("EMBEDFORGE_API_KEY", None)
    proc = subprocess.Popen(["bash", "-e", "-c", script], cwd=root, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    try:
        out, _ = proc.communicate(timeout=900)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)  # the backgrounded server, should the tour stop early
    assert proc.returncode == 0, out[-3000:]
    triplets = read_jsonl(root / "runs" / "tour" / "triplets.jsonl")
    train = read_jsonl(root / "runs" / "demo" / "prep" / "train.jsonl")
    # a line per negative (a row has one positive): triplets, not the rows again
    assert len(triplets) == sum(max(1, len(row["neg_doc"])) for row in train) > len(train)
    results = json.loads((root / "runs" / "tour" / "eval" / "eval_results.json").read_text())
    assert list(results["models"]) == ["minilm", "runs/demo/finetune/model"]
    assert all(set(map(int, r["per_dimension"])) == {64, 128, 384} for r in results["models"].values())
    assert '"valid": true' in out and "VERIFY PASSED" in out
    assert '"object":"embedding"' in out.replace(" ", "")  # curl's answer, cut at 300 bytes
    for stage in (*MAIN_STAGES, "export", "verify"):
        assert f"[{stage}] unchanged since" in out, stage


def test_changed_finetune_setting_reruns_finetune_and_eval_only(run_copy):
    corpus, run, recipe = run_copy
    before = markers(run)
    summary = run_pipeline(str(corpus), str(run), str(recipe), overrides=["finetune.learning_rate=5e-5"])
    assert summary["sdg"] == {"skipped": True} and summary["prep"] == {"skipped": True}
    assert "seconds" in summary["finetune"] and "seconds" in summary["eval"]
    after = markers(run)
    assert after["sdg"] == before["sdg"] and after["prep"] == before["prep"]
    for stage in ("finetune", "eval"):
        marker = json.loads(after[stage])
        assert marker["status"] == "finished" and marker["key"] != json.loads(before[stage])["key"]
    assert json.loads(after["finetune"])["config"]["learning_rate"] == 5e-5
    # the same override again: nothing to do
    again = run_pipeline(str(corpus), str(run), str(recipe), overrides=["finetune.learning_rate=5e-5"])
    assert all(again[s] == {"skipped": True} for s in MAIN_STAGES)


def test_a_stage_reruns_when_its_inputs_changed_in_an_earlier_invocation(run_copy):
    corpus, run, recipe = run_copy
    # a moved run folder is the same run: nothing to redo
    again = run_pipeline(str(corpus), str(run), str(recipe), stages=["eval"])
    assert again["eval"] == {"skipped": True} and again["report"] == str(run / "report.md")
    assert set(again) == {"eval", "report", "recommendation"}
    before = json.loads((run / "eval" / MARKER).read_text())
    tuned = run_pipeline(
        str(corpus), str(run), str(recipe), overrides=["finetune.learning_rate=5e-5"], stages=["finetune"]
    )
    assert "seconds" in tuned["finetune"]
    finetune_key = json.loads((run / "finetune" / MARKER).read_text())["key"]
    summary = run_pipeline(str(corpus), str(run), str(recipe), stages=["eval"])
    assert "seconds" in summary["eval"]  # the model eval read last time is gone
    after = json.loads((run / "eval" / MARKER).read_text())
    assert after["key"] != before["key"] and after["inputs"]["finetune"] == finetune_key
    assert run_pipeline(str(corpus), str(run), str(recipe), stages=["eval"])["eval"] == {"skipped": True}


def test_a_stage_whose_input_stage_never_finished_is_refused(run_copy):
    corpus, run, recipe = run_copy
    shutil.rmtree(run / "prep")
    with pytest.raises(EmbedforgeError, match=r"finetune reads .*prep.* run it first"):
        run_pipeline(str(corpus), str(run), str(recipe), stages=["finetune"])


def test_the_plan_counts_the_corpus_and_the_training_steps(first_run):
    from embedforge.pipeline.plan import estimate_run, format_plan
    from embedforge.pipeline.run import STAGES, Pipeline

    corpus, run, recipe, _ = first_run
    pipe = Pipeline(str(corpus), str(run), str(recipe))
    about, plans = estimate_run(str(corpus), pipe.config, STAGES, cuda=False)
    passages = len(read_jsonl(run / "sdg" / "passages.jsonl"))
    assert about == f"{len(DOCS)} documents, {passages} passages"
    by_stage = {p.stage: p for p in plans}
    assert list(by_stage) == list(STAGES)
    assert f"for {passages} passages" in by_stage["sdg"].what
    assert by_stage["sdg"].seconds is None  # a remote generator: not measured
    assert "-> 2 steps of" in by_stage["finetune"].what  # the recipe's max_steps
    assert all(by_stage[s].seconds > 0 for s in STAGES if s != "sdg")
    text = format_plan(str(recipe), about, plans)
    assert "not measured" in text and "for the measured stages: an estimate" in text
    # on a GPU, MiniLM's CPU timings do not apply: counts only
    assert all(p.seconds is None for p in estimate_run(str(corpus), pipe.config, STAGES, cuda=True)[1])


def test_the_plan_adds_a_teachers_or_the_anchors_cost_to_finetune(first_run):
    import dataclasses

    from embedforge.pipeline.plan import SECONDS, estimate_run
    from embedforge.pipeline.run import Pipeline

    corpus, run, recipe, _ = first_run
    pipe = Pipeline(str(corpus), str(run), str(recipe))

    def finetune_plan(**change):
        def config_of(stage):
            cfg = pipe.config(stage)
            return dataclasses.replace(cfg, **change) if stage == "finetune" else cfg

        return estimate_run(str(corpus), config_of, ["finetune"], cuda=False)[1][0]

    plain, taught = finetune_plan(distill_teacher=None), finetune_plan(distill_teacher="mpnet")
    assert "teacher" not in plain.what and "the mpnet teacher encodes ~" in taught.what
    assert taught.seconds > plain.seconds
    assert finetune_plan(distill_teacher="/my/teacher").seconds is None  # another teacher was never measured
    anchored = finetune_plan(anchor_weight=20.0, anchor_count=1000, anchor_batch=16)
    assert "+ 16 anchor texts" in anchored.what and "anchor" not in plain.what
    # the anchors embedded once and 16 more (short) texts in each of the 2 steps
    expected = 1000 * SECONDS["embed"] + 2 * 16 * SECONDS["train_text"]
    assert anchored.seconds - plain.seconds == pytest.approx(expected)


def test_the_plan_prices_the_round_trip_at_the_embed_models_rate(first_run):
    import dataclasses

    from embedforge.pipeline.plan import SECONDS, estimate_run
    from embedforge.pipeline.run import Pipeline

    corpus, run, recipe, _ = first_run
    pipe = Pipeline(str(corpus), str(run), str(recipe))
    passages = len(read_jsonl(run / "sdg" / "passages.jsonl"))

    def plans(embed_model):
        def config_of(stage):
            cfg = pipe.config(stage)
            if stage == "sdg":  # the local generator, whose rate is measured
                return dataclasses.replace(cfg, backend="local", model="", embed_model=embed_model)
            return cfg

        return {p.stage: p for p in estimate_run(str(corpus), config_of, ["sdg", "prep"], cuda=False)[1]}

    minilm, mpnet = plans("minilm"), plans("mpnet")
    assert (
        "round trip by mpnet" in mpnet["sdg"].what and "by " not in minilm["sdg"].what.split("round trip")[1]
    )
    extra = passages * (SECONDS["teacher_text"] - SECONDS["embed"])
    assert mpnet["sdg"].seconds - minilm["sdg"].seconds == pytest.approx(extra)
    # prep cannot reuse another model's vectors: it embeds its training passages itself
    assert mpnet["prep"].seconds > minilm["prep"].seconds
    assert plans("/my/encoder")["sdg"].seconds is None  # an encoder never measured


def test_a_run_without_questions_trains_and_tests_on_the_section_headings(first_run, tmp_path, capsys):
    corpus, _, recipe, _ = first_run
    run = tmp_path / "run"
    overrides = [
        "sdg.questions_per_passage=0",
        "prep.heading_pairs=true",
        "sdg.base_url=http://127.0.0.1:9/v1",
    ]
    summary = run_pipeline(str(corpus), str(run), str(recipe), overrides)  # the generator is never called
    assert all("seconds" in summary[s] for s in MAIN_STAGES)
    plan = capsys.readouterr().out
    assert "no questions (questions_per_passage 0)" in plan and "the test documents' headings are" in plan
    assert (run / "sdg" / "pairs.jsonl").read_text() == ""
    prep = json.loads((run / "prep" / "prep_report.json").read_text())
    assert prep["split"]["questions"]["train"] == 0 and prep["split"]["questions"]["heading_pairs"] > 0
    passages = {p["passage_id"]: p for p in read_jsonl(run / "sdg" / "passages.jsonl")}
    beir = run / "prep" / "test_beir"
    queries = [row["text"] for row in read_jsonl(beir / "queries.jsonl")]
    test_docs = set(prep["split"]["test_documents"])
    assert queries and len(queries) == prep["split"]["questions"]["test"]
    assert set(queries) <= {p["section"] for p in passages.values() if p["doc_id"] in test_docs}
    results = json.loads((run / "eval" / "eval_results.json").read_text())
    assert len(results["models"]) == 2
    for result in results["models"].values():
        assert result["num_queries"] == len(queries) and 0 <= result["metrics"]["ndcg@10"] <= 1


USER_QUESTIONS = {  # a person's wording, one per document
    "tides.md": "what time is high water in kestrel harbour",
    "sourdough.txt": "my starter has grey liquid on it, is it dead?",
    "zephyr.md": "why does my job run before someone else's",
    "violin.txt": "how often do violin strings need changing",
    "glacier.md": "how do they measure how much a glacier melts",
    "chess.md": "what happens when my time runs out in blitz",
}


def test_a_run_with_the_users_questions_tests_on_them_and_reruns_when_they_change(run_copy, capsys):
    corpus, run, recipe = run_copy
    questions = run.parent / "questions.jsonl"
    questions.write_text(
        "".join(json.dumps({"question": q, "document": d}) + "\n" for d, q in USER_QUESTIONS.items())
    )
    overrides = [f"prep.user_questions={questions}"]
    summary = run_pipeline(str(corpus), str(run), str(recipe), overrides, list(MAIN_STAGES))
    assert summary["sdg"] == {"skipped": True} and all("seconds" in summary[s] for s in MAIN_STAGES[1:])
    assert "your 6 questions split with the documents" in capsys.readouterr().out
    prep = json.loads((run / "prep" / "prep_report.json").read_text())
    user = prep["split"]["questions"]["user"]
    test_docs = set(prep["split"]["test_documents"])
    assert user == {"total": 6, "train": 6 - len(test_docs), "test": len(test_docs)}
    queries = [row["text"] for row in read_jsonl(run / "prep" / "test_beir" / "queries.jsonl")]
    assert sorted(queries) == sorted(q for d, q in USER_QUESTIONS.items() if d in test_docs)
    train = [row["query"] for row in read_jsonl(run / "prep" / "train.jsonl")]
    assert {q for d, q in USER_QUESTIONS.items() if d not in test_docs} <= set(train)
    results = json.loads((run / "eval" / "eval_results.json").read_text())
    assert all(r["num_queries"] == len(test_docs) for r in results["models"].values())
    assert (
        f"## Base vs tuned on your {len(test_docs)} questions on held-out documents"
        in (run / "report.md").read_text()
    )

    # the same file again: nothing to do; an edited one: prep and what reads it run again
    again = run_pipeline(str(corpus), str(run), str(recipe), overrides, ["sdg", "prep"])
    assert again["prep"] == {"skipped": True}
    questions.write_text(questions.read_text().replace("blitz", "a blitz game"))
    assert "seconds" in run_pipeline(str(corpus), str(run), str(recipe), overrides, ["sdg", "prep"])["prep"]


def test_the_plan_warns_when_other_work_fills_the_cores():
    from embedforge.pipeline.plan import busy_note

    assert busy_note(1.5, 2) is None and busy_note(2.0, 2) is None
    note = busy_note(11.2, 2)
    assert "load average 11.2 on 2 cores" in note and "sdg.threads=1" in note


def test_a_run_without_a_recipe_uses_the_one_sized_for_this_machine_and_prints_the_plan(tmp_path, capsys):
    from embedforge.cli import main
    from embedforge.config import default_recipe

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for name, text in DOCS.items():
        (corpus / name).write_text(text)
    assert main(["run", "--corpus", str(corpus), "--out", str(tmp_path / "run"), "--stages", "prep"]) == 2
    out = capsys.readouterr().out
    assert f"no recipe given: {default_recipe()}" in out
    assert f"plan (recipe {default_recipe()}); corpus: {len(DOCS)} documents" in out
    assert "an estimate" in out


def test_bare_override_is_rejected(tmp_path):
    (tmp_path / "corpus").mkdir()
    with pytest.raises(ValueError, match=r"name their stage.*learning_rate=1e-4"):
        run_pipeline(str(tmp_path / "corpus"), str(tmp_path / "run"), None, overrides=["learning_rate=1e-4"])
    with pytest.raises(ValueError, match="unknown stage"):
        run_pipeline(str(tmp_path / "corpus"), str(tmp_path / "run"), None, stages=["sdg", "deploy"])


def _cli_error(capsys, argv: list[str]) -> str:
    """Run the CLI in this process; it must exit with code 2 and end with one error line, no traceback
    (progress bars may come before it)."""
    from embedforge.cli import main

    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert [line for line in lines if line.startswith("error: ")] == lines[-1:], err
    return lines[-1]


def test_an_unreachable_question_generator_inside_run_ends_in_one_line(first_run, tmp_path, capsys):
    corpus, _, recipe, _ = first_run
    argv = ["run", "--corpus", str(corpus), "--out", str(tmp_path / "run"), "--config", str(recipe)]
    line = _cli_error(capsys, [*argv, "sdg.base_url=http://127.0.0.1:9/v1", "sdg.max_retries=0"])
    assert "connection error" in line.lower() and str(tmp_path / "run" / "sdg") in line


def test_a_failed_verify_inside_run_ends_in_one_line_naming_the_report(run_copy, capsys):
    corpus, run, recipe = run_copy
    argv = ["run", "--corpus", str(corpus), "--out", str(run), "--config", str(recipe), "--stages", "verify"]
    line = _cli_error(capsys, [*argv, "verify.tolerance=-1", "verify.tolerance_small_k=-1"])
    assert str(run / "verify" / "verify_report.json") in line and "drift" in line
    assert json.loads((run / "verify" / MARKER).read_text())["status"] == "started"


def test_leaking_negatives_end_prep_with_one_line_and_write_nothing(first_run, tmp_path, capsys, monkeypatch):
    from embedforge.prep import run as prep

    _, run, _, _ = first_run
    test_ids = [json.loads(line)["_id"] for line in (run / "prep" / "test_beir" / "corpus.jsonl").open()]
    real = prep.mine_hard_negatives

    def leaking(*args, **kwargs):
        """The real miner, then one negative from a test document, as a mining bug would add."""
        negatives, scores, stats = real(*args, **kwargs)
        negatives[0].append((test_ids[0], 0.5))
        return negatives, scores, stats

    monkeypatch.setattr(prep, "mine_hard_negatives", leaking)
    out = tmp_path / "prep"
    pairs = run / "sdg" / "pairs.jsonl"
    line = _cli_error(capsys, ["prep", "--pairs", str(pairs), "--out", str(out), "test_fraction=0.34"])
    assert "negatives_from_test_documents" in line and str(pairs) in line
    assert not out.exists()


def test_the_report_keeps_the_base_model_when_too_few_questions_tell_a_gain(tmp_path):
    # 8 held-out questions, the tuned model ahead on 5: p 0.09 and a wide interval, so no claim of a gain
    from embedforge.measures.significance import paired_comparison

    base = {f"q{i}": s for i, s in enumerate([0.5, 0.2, 0.8, 0.4, 0.6, 0.3, 0.9, 0.55])}
    tuned = {f"q{i}": s for i, s in enumerate([0.7, 0.5, 0.8, 0.6, 0.55, 0.5, 0.9, 0.8])}
    test = paired_comparison(base, tuned)
    run = tmp_path / "run"
    (run / "eval").mkdir(parents=True)
    (run / "prep").mkdir()
    models = {"minilm": 0.6564, "tuned": 0.6601}
    (run / "eval" / "eval_results.json").write_text(
        json.dumps(
            {
                "baseline": "minilm",
                "models": {n: {"general_check": {"pearson": p}} for n, p in models.items()},
                "significance": {"tuned": {"ndcg@10": test}},
            }
        )
    )
    split = {
        "questions": {"train": 40, "heading_pairs": 0, "user": {"test": 0}},
        "passages": {"total": 300, "test": 300},
    }
    (run / "prep" / "prep_report.json").write_text(json.dumps({"split": split}))
    report = write_run_report(run, {}).read_text()
    advice = json.loads((run / "recommendation.json").read_text())
    assert advice["model"] == "minilm" and not advice["use_tuned"]
    assert "**Keep the base model (`minilm`)**" in report
    assert "too few questions to tell (the 95% CI spans" in report
    assert "little training signal: 40 generated questions and 0 heading -> body pairs" in report


def test_verify_names_its_evidence_real_questions_only_when_prep_had_them(tmp_path):
    beir = tmp_path / "prep" / "test_beir"
    beir.mkdir(parents=True)
    assert describe_test_set(beir) == "generated or heading questions on held-out pages"
    report = {"split": {"questions": {"test": 0, "user": {"total": 40, "train": 28, "test": 12}}}}
    (tmp_path / "prep" / "prep_report.json").write_text(json.dumps(report))
    assert describe_test_set(beir) == "12 real questions (prep.user_questions) on held-out documents"
    report["split"]["questions"]["user"]["test"] = 0
    (tmp_path / "prep" / "prep_report.json").write_text(json.dumps(report))
    assert describe_test_set(beir) == "generated or heading questions on held-out pages"
