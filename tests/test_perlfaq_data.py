"""The POD parser and the perlfaq benchmark builder, on hand-written POD pages."""

from __future__ import annotations

import hashlib
import json

import pytest

from embedforge.data.corpus import load_corpus
from embedforge.data.formats import read_beir
from embedforge.demo import perlfaq_data
from embedforge.demo.perlfaq_data import PodSection, build_perlfaq, collect, parse_pod, pod_inline

FAQ = """=head1 NAME

perlfaq4 - Data Manipulation

=head1 Data: Numbers

=head2 How do I round a number?

Use C<sprintf()> or B<printf>, see L<perlfunc/sprintf> and L<the docs|perlop>.
It costs E<lt>1 second and handles C<< $x->{y} >> and I<nested B<codes>>.

    printf("%.3f", 3.1415926535);   # prints 3.142

=over 4

=item *

Mind the rounding of X<rounding>binary fractions.

=back

=begin html

<p>dropped</p>

=end html

=for comment dropped as well

=head2 Why is int() broken?

Because C<int()> truncates towards 0.

=cut
"""


def test_pod_inline_renders_formatting_codes():
    assert pod_inline("Use C<sprintf()> or B<printf>") == "Use sprintf() or printf"
    assert pod_inline("C<< $x->{y} >> and C<<< a >> b >>>") == "$x->{y} and a >> b"
    assert pod_inline('L<perlfunc/sprintf>, L<text|perlop>, L<perlop/"Quote Ops">') == (
        '"sprintf" in perlfunc, text, "Quote Ops" in perlop'
    )
    assert pod_inline("E<lt>E<gt>E<sol>E<verbar>E<eacute>E<0x41>E<65>") == "<>/|éAA"
    assert pod_inline("X<index>Z<>I<a B<b> c>\n  next line") == "a b c next line"
    assert pod_inline("a < b and 2 > 1") == "a < b and 2 > 1"


def test_parse_pod_cuts_sections_keeps_verbatim_drops_begin_and_for():
    sections = parse_pod(FAQ)
    assert [(s.heading, s.level) for s in sections] == [
        ("NAME", 1),
        ("Data: Numbers", 1),
        ("How do I round a number?", 2),
        ("Why is int() broken?", 2),
    ]
    assert sections[1].text == ""
    answer = sections[2].text
    assert answer.split("\n\n") == [
        'Use sprintf() or printf, see "sprintf" in perlfunc and the docs. '
        "It costs <1 second and handles $x->{y} and nested codes.",
        '    printf("%.3f", 3.1415926535);   # prints 3.142',
        "Mind the rounding of binary fractions.",
    ]
    assert "dropped" not in answer and "round a number" not in answer
    assert sections[3] == PodSection("Why is int() broken?", 2, "Because int() truncates towards 0.")


def test_parse_pod_splits_item_entries_with_several_signatures():
    pod = (
        "=head2 Alphabetical Listing\n\n=over\n\n=item chomp VARIABLE\n\n=item chomp\n\n"
        "Removes a trailing newline.\n\n=over\n\n=item inner\n\nNested.\n\n=back\n\n"
        "=item chop\n\n\n\nRemoves the last character.\n\n=back\n"
    )
    sections = parse_pod(pod, split_items=True)
    assert [(s.heading, s.level, s.text) for s in sections] == [
        ("Alphabetical Listing", 2, ""),
        ("chomp VARIABLE", 0, "Removes a trailing newline.\n\ninner\n\nNested."),
        ("chop", 0, "Removes the last character."),
    ]
    assert len(parse_pod(pod)) == 1  # without split_items the items stay in the body


def _fake_pod_dir(tmp_path):
    words = "one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen"
    pod_dir = tmp_path / "usr/share/perl/5.36.0/pod"
    pod_dir.mkdir(parents=True)
    for name in perlfaq_data.FAQ_PODS + perlfaq_data.DISTRACTOR_PODS:
        (pod_dir / f"{name}.pod").write_text(f"=head1 NAME\n\n{name} - {words}\n\n")
    (pod_dir / "perlfaq4.pod").write_text(
        f"=head1 NAME\n\nperlfaq4 - {words}\n\n=head2 How do I round?\n\nUse sprintf, {words}.\n\n"
        f"=head2 Too short?\n\nSee perlop.\n\n=head2 How do I truncate?\n\nUse int, {words}.\n"
    )
    (pod_dir / "perlfunc.pod").write_text(
        f"=head2 Functions\n\n=over\n\n=item sprintf FORMAT, LIST\n\nFormats a string, {words}.\n\n"
        f"=item int EXPR\n\nUse int, {words}.\n\n=back\n"
    )
    return pod_dir


def test_collect_queries_answers_and_distractors(tmp_path):
    dataset, headings = collect(_fake_pod_dir(tmp_path))
    assert dataset.queries == {"perlfaq4-q001": "How do I round?", "perlfaq4-q003": "How do I truncate?"}
    assert dataset.qrels == {
        "perlfaq4-q001": {"perlfaq4/001.txt": 1},
        "perlfaq4-q003": {"perlfaq4/003.txt": 1},
    }
    # NAME sections and a 2-word answer are dropped; the perlfunc entry identical to an answer is one doc
    assert sorted(dataset.corpus) == ["perlfaq4/001.txt", "perlfaq4/003.txt", "perlfunc/001.txt"]
    assert headings["perlfunc/001.txt"] == "sprintf FORMAT, LIST"
    assert all(doc["title"] == "" for doc in dataset.corpus.values())


def test_build_perlfaq_writes_docs_beir_and_checksums(tmp_path, monkeypatch):
    pod_dir = _fake_pod_dir(tmp_path / "src")
    monkeypatch.setattr(perlfaq_data, "fetch_perl_pods", lambda cache_dir: pod_dir)
    paths = build_perlfaq(tmp_path / "out")
    files = sorted(str(p.relative_to(paths.docs)) for p in paths.docs.rglob("*") if p.is_file())
    # answers are heading-free text files; a distractor page is one Markdown file with its section headings
    assert files == ["perlfaq4/001.txt", "perlfaq4/003.txt", "perlfunc.md"]
    text = "".join(p.read_text() for p in paths.docs.rglob("*") if p.is_file())
    assert "How do I" not in text  # no question reaches the documents the pipeline reads
    corpus = load_corpus(paths.docs)
    assert {(p.doc_id, p.title, p.section) for p in corpus.passages if p.doc_id == "perlfunc.md"} == {
        ("perlfunc.md", "perlfunc", "sprintf FORMAT, LIST")
    }
    beir = read_beir(paths.beir)
    assert set(beir.corpus) == {"perlfaq4/001.txt", "perlfaq4/003.txt", "perlfunc/001.txt"}
    assert len(beir.queries) == 2
    assert (paths.docs / "perlfaq4/001.txt").read_text().strip() == beir.corpus["perlfaq4/001.txt"]["text"]
    manifest = json.loads(paths.manifest.read_text())
    assert (manifest["queries"], manifest["documents"], manifest["distractor_documents"]) == (2, 3, 1)
    corpus_sha = hashlib.sha256((paths.beir / "corpus.jsonl").read_bytes()).hexdigest()
    assert manifest["sha256"]["beir/corpus.jsonl"] == corpus_sha
    monkeypatch.setattr(perlfaq_data, "fetch_perl_pods", lambda cache_dir: pytest.fail("rebuilt"))
    assert build_perlfaq(tmp_path / "out") == paths  # the manifest marks a finished build
