"""Tests for `make demo`: its recipe, and base vs tuned on real questions with its report."""

from __future__ import annotations

import json

import pytest

from embedforge.config import STAGE_CONFIGS, load_config
from embedforge.data.formats import BeirDataset, write_beir
from embedforge.demo.run import (
    REAL_DIR,
    RECIPE,
    evaluate_real_questions,
    format_real_questions,
    real_question_verdict,
    verify_on_real_questions,
    write_demo_report,
)
from embedforge.evaluate.retrieval import compare_models
from embedforge.export import export_onnx
from embedforge.models.bi_encoder import BiEncoder
from embedforge.pipeline.run import MARKER
from tiny_models import tiny_bert

# eight questions, each with one answer among sixteen Perl-FAQ-like documents
FAQ = {
    "How do I sort a hash by value?": "Use sort with a block comparing the hash values: sort { $h{$a} <=> $h{$b} } keys %h.",
    "How do I read a file line by line?": "Open the file and loop with while (my $line = <$fh>) to read one line per iteration.",
    "How can I remove duplicate elements from an array?": "Use a hash as a seen set: grep { !$seen{$_}++ } @array keeps the first of each.",
    "How do I get the current date and time?": "Call localtime in list context to get seconds, minutes, hours, day, month and year.",
    "How do I send email from Perl?": "Use a module such as Email::Sender or pipe the message to the sendmail program.",
    "How do I make a regular expression case-insensitive?": "Add the /i modifier to the match operator so letters match either case.",
    "How do I find the length of a string?": "The length function returns the number of characters in a string.",
    "How do I connect to a database?": "The DBI module connects to databases with DBI->connect and a data source name.",
}
DISTRACTORS = [
    "The print function writes a list of strings to a filehandle, STDOUT by default.",
    "Formats declare report layouts with picture lines and argument lines.",
    "The tr operator transliterates characters, replacing each in one list by its partner.",
    "Signals are delivered to a process and handled through the %SIG hash.",
    "Packages give each module its own namespace for global variables and subroutines.",
    "The sprintf function formats numbers and strings according to a template.",
    "Here-documents quote a block of lines up to a terminator string.",
    "The die function raises an exception with a message that eval can catch.",
]


def test_demo_recipe_loads_with_heading_pairs_and_real_question_budget():
    configs = {
        stage: load_config(stage, RECIPE, [], train_data="-")
        if stage == "finetune"
        else load_config(stage, RECIPE)
        for stage in ("sdg", "prep", "finetune", "eval", "export")
    }
    assert set(configs) <= set(STAGE_CONFIGS)
    assert configs["prep"].heading_pairs is True
    assert 40 <= configs["sdg"].max_passages <= 100  # ~2 s a passage: 1.5-3.5 of the 15 minutes
    assert configs["sdg"].max_documents == 0  # the whole Perl documentation folder is the corpus
    assert configs["finetune"].base_model == "minilm"
    assert configs["finetune"].validation_split == 0.0
    assert configs["finetune"].n_passages == configs["prep"].num_negatives + 1
    assert configs["export"].quantize == "int8"


@pytest.fixture(scope="module")
def faq_beir(tmp_path_factory):
    corpus = {f"faq/{i:03d}.txt": {"title": "", "text": a} for i, a in enumerate(FAQ.values())}
    corpus |= {f"perlfunc/{i:03d}.txt": {"title": "", "text": t} for i, t in enumerate(DISTRACTORS)}
    queries = {f"q{i}": q for i, q in enumerate(FAQ)}
    qrels = {f"q{i}": {f"faq/{i:03d}.txt": 1} for i in range(len(FAQ))}
    folder = tmp_path_factory.mktemp("faq") / "beir"
    write_beir(BeirDataset(corpus, queries, qrels), folder)
    return folder


def _finetuned_run(tmp_path, key: str):
    """A run folder whose finetune stage finished with ``key``; its "tuned" model is a random tiny BERT."""
    model = tiny_bert(tmp_path / "run" / "finetune" / "model")
    (tmp_path / "run" / "finetune" / MARKER).write_text(json.dumps({"key": key, "status": "finished"}))
    return tmp_path / "run", model


def test_real_questions_scored_saved_skipped_and_reported(tmp_path, faq_beir, minilm):
    run, model = _finetuned_run(tmp_path, "k1")
    loaded = {"minilm": minilm, str(model): BiEncoder.load(model, name=str(model), max_seq_length=48)}
    results = evaluate_real_questions(run, faq_beir, RECIPE, loaded=loaded)

    base, tuned = results["models"]["minilm"], results["models"][str(model)]
    assert results["baseline"] == "minilm"
    assert base["num_queries"] == 8 and base["num_passages"] == 16
    assert base["metrics"]["ndcg@10"] > 0.9  # MiniLM finds these answers
    assert tuned["metrics"]["ndcg@10"] < base["metrics"]["ndcg@10"] - 0.3  # random weights do not
    assert "general_check" not in base  # the held-out eval already ran it
    test = results["significance"][str(model)]["ndcg@10"]
    assert test["n"] == 8 and test["significant"] and test["ci95"][1] < 0
    saved = json.loads((run / REAL_DIR / "eval_results.json").read_text())
    assert saved["models"]["minilm"]["metrics"] == base["metrics"]
    assert (run / REAL_DIR / "eval_report.md").is_file()

    line = real_question_verdict(results)
    assert line.startswith(f"{model} vs minilm: nDCG@10 -")
    assert line.endswith(f"{test['better']} queries better / {test['worse']} worse of 8: significant loss")
    text = format_real_questions(results, {"queries": 8, "documents": 16})
    assert text.splitlines()[0] == (
        "questions people wrote: the Perl FAQ, 8 questions over 16 documents (never seen by the pipeline)"
    )
    assert "| ndcg@10 |" in text and line + "." in text

    # unchanged tuned model and questions: read back, nothing encoded (no model is loaded to encode with)
    again = evaluate_real_questions(run, faq_beir, RECIPE, loaded={"minilm": None, str(model): None})
    assert again["models"]["minilm"]["metrics"] == base["metrics"]
    # a re-trained model (new finetune key) is scored again
    (run / "finetune" / MARKER).write_text(json.dumps({"key": "k2", "status": "finished"}))
    before = json.loads((run / REAL_DIR / MARKER).read_text())["key"]
    evaluate_real_questions(run, faq_beir, RECIPE, loaded=loaded)
    assert json.loads((run / REAL_DIR / MARKER).read_text())["key"] != before

    # the demo report: real questions first, then the generated held-out questions
    (run / "eval").mkdir()
    (run / "eval" / "eval_results.json").write_text(json.dumps(saved))
    report = write_demo_report(run, results, {"queries": 8, "documents": 16, "source": "Debian perl-doc"})
    body = report.read_text()
    assert body.index("## Questions people wrote") < body.index("## Generated questions on held-out pages")
    assert body.count("| paired test vs minilm |") == 2 and line + "." in body


def test_int8_is_decided_on_the_real_questions_and_read_back(tmp_path, faq_beir, minilm):
    run = tmp_path / "run"
    export_onnx(minilm, run / "export", quantize="int8", speed=False)
    compare_models({"tuned": minilm}, faq_beir, run / REAL_DIR, progress=False)
    for stage, key in (("export", "e1"), (REAL_DIR, "r1")):
        (run / stage / MARKER).write_text(json.dumps({"key": key, "status": "finished"}))

    report = verify_on_real_questions(run, faq_beir, "int8")
    assert report["model"] == "minilm" and report["reference"]["name"] == "tuned"
    assert report["paired"]["queries"] == 8 and report["dataset"]["queries"] == 8
    assert report["decided_by"].endswith("; the queries: the Perl FAQ's real questions")
    saved = run / REAL_DIR / "verify_int8.json"
    assert json.loads(saved.read_text())["served_metrics"] == report["served_metrics"]

    # unchanged export and real-question eval: read back, not served again
    saved.write_text(json.dumps({**json.loads(saved.read_text()), "seconds": -1.0}))
    assert verify_on_real_questions(run, faq_beir, "int8")["seconds"] == -1.0
    # a new export is verified again
    (run / "export" / MARKER).write_text(json.dumps({"key": "e2", "status": "finished"}))
    assert verify_on_real_questions(run, faq_beir, "int8")["seconds"] >= 0
