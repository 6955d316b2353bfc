"""benchmarks/devsets.py: each FAQ's questions and answers parsed from its native format, the questions kept
out of the documents the pipeline reads, and the suite's verdict over sets."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def _load(name):
    sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    return module


devsets, suite = _load("devsets"), _load("quality_suite")
LONG = "It is answered here at enough length to count as an answer to someone's question, with detail."

R_FAQ = f"""<h2 class="chapter">1 Introduction</h2><h3 class="section">1.1 Legalese</h3><p>{LONG}</p>
<h2 class="chapter">2 R Basics</h2><h3 class="section">2.1 What is R?</h3><p>R is a system. {LONG}</p>
<h4 class="subsection">2.1.1 How can R be installed (Unix-like)</h4><p>Build it. {LONG}</p>"""
ZSH_FAQ = f"""<h1>Chapter 3: How to get various things to work</h1>
<h2>3.1: Why does <code>$var</code> where <code>var="foo bar"</code> not do what I expect?</h2><p>{LONG}</p>"""
SQLITE_FAQ = f"""<ol><li><a href="#q1">How do I create an AUTOINCREMENT field?</a></li></ol><a name="q1"></a>
<p><b>(1) How do I create an AUTOINCREMENT field?</b></p><blockquote><p>Declare it. {LONG}</p></blockquote>
<hr>"""
GIT_FAQ = f"""Configuration
-------------

[[user-name]]
What should I put in `user.name`?::
\tYour personal name. {LONG}
+
See linkgit:git-config[1].

[[other]]
How do I configure a different editor?::
\tSet core.editor. {LONG}
"""


def test_each_faq_gives_its_questions_with_answers_and_chapter_titles():
    r = devsets.r_faq(R_FAQ)
    assert [f.question for f in r] == ["What is R?", "How can R be installed (Unix-like)"]  # not chapter 1
    assert r[0].title == "R FAQ: R Basics" and "R is a system" in devsets.html_text(r[0].answer)
    zsh = devsets.zsh_faq(ZSH_FAQ)
    assert [f.question for f in zsh] == ['Why does $var where var="foo bar" not do what I expect?']
    assert zsh[0].title == "Z shell FAQ: How to get various things to work"
    sqlite = devsets.sqlite_faq(SQLITE_FAQ)
    assert [f.question for f in sqlite] == ["How do I create an AUTOINCREMENT field?"]
    assert devsets.html_text(sqlite[0].answer).startswith("Declare it.")
    git = devsets.git_faq(GIT_FAQ)
    assert [f.question for f in git] == [
        "What should I put in user.name?",
        "How do I configure a different editor?",
    ]
    assert git[0].title == "Git FAQ: Configuration"
    text = devsets.adoc_text(git[0].answer)
    assert "git-config(1)" in text and "[[" not in text and "\n+\n" not in text


def test_a_part_writes_answers_without_their_questions_and_distractor_sections_to_beir(tmp_path):
    root = tmp_path / "pkg"
    root.mkdir()
    (root / "FAQ.html").write_text(SQLITE_FAQ)
    (root / "guide.html").write_text(f"<h1>Guide</h1><p>{LONG}</p><h2>Details</h2><p>Short.</p>")
    part = devsets.Part("x-doc", "", "FAQ.html", devsets.sqlite_faq, "*.html", ())
    data = devsets.BeirDataset({}, {}, {})
    docs = tmp_path / "docs"
    assert devsets.collect_part(part, root, docs, data) == 1
    answer = (docs / "faq" / "000.html").read_text()
    assert (
        "AUTOINCREMENT field?" not in answer and "Declare it." in answer
    )  # the question never reaches the docs
    assert (docs / "guide.html").is_file() and not (docs / "FAQ.html").exists()
    assert data.qrels == {"q000": {"faq/000.html": 1}}
    assert set(data.corpus) == {"faq/000.html", "guide.html#001"}  # "Short." is no one's answer


def seed(rel, low, significant, held_diff, held_significant, drop=0.0):
    return {
        "real": {
            "rel": rel,
            "diff": rel / 2,
            "base": 0.5,
            "ci95": [low, low + 0.05],
            "significant": significant,
        },
        "held_out": {"diff": held_diff, "significant": held_significant},
        "agree": suite.sign({"diff": held_diff, "significant": held_significant})
        == suite.sign({"diff": rel, "significant": significant}),
        "general": {"drop": drop},
    }


def test_a_set_holds_only_when_every_seed_gains_and_its_own_report_agrees():
    good = [
        seed(0.06, 0.01, True, 0.03, True),
        seed(0.07, 0.02, True, 0.02, True),
        seed(0.065, 0.01, True, 0.02, True),
    ]
    verdict = suite.aggregate_set(good)
    assert verdict["holds"] and verdict["mean_gain"] == pytest.approx(0.065)
    assert not suite.aggregate_set(good[:2])["checks"]["3 seeds"]  # two seeds are not the claim
    assert verdict["smallest_clear_gain"] == pytest.approx(0.025 / 0.5)  # the CI's half-width over the base
    # the run's report claims a gain the real questions do not show: the set fails on agreement alone
    claims = [seed(0.06, 0.01, True, 0.03, True), seed(0.07, -0.01, False, 0.04, True)]
    failed = suite.aggregate_set(claims)["checks"]
    assert not failed["held-out verdict agrees in sign"] and not failed["every seed's CI above 0"]
    assert failed["no seed significantly worse"]
    worse = suite.aggregate_set([seed(-0.03, -0.06, True, -0.01, False)])["checks"]
    assert not worse["no seed significantly worse"]
    sets = {"a": {"aggregate": verdict}, "b": {"aggregate": suite.aggregate_set(claims)}}
    overall = suite.aggregate_suite(sets)
    assert not overall["holds"] and overall["mean_gain"] == pytest.approx((0.065 + 0.065) / 2)
    assert json.loads(json.dumps(overall)) == overall
