"""Tests for embedforge.data.corpus (reading, HTML cleaning, sentence splitting, chunking) and the demo dataset builder."""

from __future__ import annotations

import hashlib
import logging

import pytest

from embedforge.data.corpus import (
    Document,
    chunk_document,
    estimate_tokens,
    html_to_text,
    load_corpus,
    passage_id,
    read_documents,
    split_sentences,
)
from embedforge.data.markup import man_to_text, plain_to_text

# ------------------------------------------------------------------------------------------------ sentences


def test_split_sentences_basic_and_punctuation():
    assert split_sentences("One here. Two there! Three? Four.") == [
        "One here.",
        "Two there!",
        "Three?",
        "Four.",
    ]


def test_split_sentences_keeps_abbreviations_together():
    text = "Use a tool, e.g. a wrench. Dr. Smith agreed, i.e. fully. See Fig. 3 for details. Next one."
    assert split_sentences(text) == [
        "Use a tool, e.g. a wrench.",
        "Dr. Smith agreed, i.e. fully.",
        "See Fig. 3 for details.",
        "Next one.",
    ]


def test_split_sentences_never_splits_decimals_or_versions():
    text = "Pi is about 3.14 here. Upgrade to v2.0.1 or 15.4 first. Done."
    assert split_sentences(text) == ["Pi is about 3.14 here.", "Upgrade to v2.0.1 or 15.4 first.", "Done."]


def test_split_sentences_initials_and_lowercase_continuation():
    assert split_sentences("Written by J. R. Tolkien. The end is near. it continues here.") == [
        "Written by J. R. Tolkien.",
        "The end is near. it continues here.",
    ]


def test_split_sentences_unicode_and_cjk():
    text = "Café au lait coûte 3,50 €. Ça va? Größe ändern… Fertig.\n\n東京は大きい。大阪も大きい！"
    assert split_sentences(text) == [
        "Café au lait coûte 3,50 €.",
        "Ça va?",
        "Größe ändern…",
        "Fertig.",
        "東京は大きい。",
        "大阪も大きい！",
    ]


def test_split_sentences_blank_lines_end_sentences_and_whitespace_is_normalised():
    assert split_sentences("A heading\n\nfirst  line\ncontinues here.\n\n\n") == [
        "A heading",
        "first line continues here.",
    ]
    assert split_sentences("") == []
    assert split_sentences("  \n\n ") == []


# ------------------------------------------------------------------------------------------------ chunking


def _doc(text: str, headings: tuple[str, ...] = (), doc_id: str = "d.txt") -> Document:
    return Document(doc_id, f"/x/{doc_id}", "T", text, headings)


def _sentences(n: int, words: int = 9) -> str:
    return " ".join(
        f"Sentence {i} " + " ".join(f"w{i}x{j}" for j in range(words - 2)) + "." for i in range(n)
    )


def test_chunks_have_five_sentences_by_default():
    passages = chunk_document(_doc(_sentences(12)))
    assert [len(split_sentences(p.text)) for p in passages] == [5, 5, 2]
    assert all(p.doc_id == "d.txt" and p.title == "T" for p in passages)


def test_chunk_ids_are_sha1_of_text_and_stable():
    doc = _doc(_sentences(7))
    first, again = chunk_document(doc), chunk_document(doc)
    assert [p.passage_id for p in first] == [p.passage_id for p in again]
    for p in first:
        assert p.passage_id == hashlib.sha1(p.text.encode()).hexdigest()[:16] == passage_id(p.text)
        assert len(p.passage_id) == 16


def test_token_cap_is_respected_with_a_custom_counter():
    calls = []

    def count_chars(text: str) -> int:  # a deliberately different unit: characters
        calls.append(text)
        return len(text)

    passages = chunk_document(_doc(_sentences(20)), max_tokens=150, min_words=1, count_tokens=count_chars)
    assert calls, "the custom counter must be used"
    assert passages and all(len(p.text) <= 150 for p in passages)
    # nothing is lost: every word of the input is in some passage
    assert " ".join(p.text for p in passages).split() == _sentences(20).split()


def test_one_huge_sentence_is_split_by_words_under_the_cap():
    sentence = " ".join(f"word{i}" for i in range(1000)) + "."
    passages = chunk_document(_doc(sentence), max_tokens=64)
    assert len(passages) > 1
    assert all(estimate_tokens(p.text) <= 64 for p in passages)
    assert " ".join(p.text for p in passages).split() == sentence.split()


def test_one_huge_word_is_split_by_characters():
    word = "".join(chr(ord("a") + i % 26) for i in range(500))  # no two 50-char pieces are equal
    passages = chunk_document(_doc(word), max_tokens=50, min_words=1, count_tokens=len)
    assert "".join(p.text for p in passages) == word
    assert all(len(p.text) <= 50 for p in passages)


def test_near_empty_chunks_are_merged_or_dropped():
    # A section of 3 short words alone is dropped; a short tail is merged into the previous passage.
    doc = _doc("Tiny bit here.\n\nNext\n\n" + _sentences(6), headings=("Next",))
    passages = chunk_document(doc, min_words=10)  # each sentence has 9 words
    assert len(passages) == 1
    assert "Tiny" not in passages[0].text
    assert passages[0].text.startswith("Next Sentence 0") and passages[0].text.endswith(_sentences(6)[-40:])
    assert len(split_sentences(passages[0].text)) == 6  # 5 + the merged one-sentence tail
    assert chunk_document(doc, min_words=10, max_tokens=70) != passages  # no room to merge: tail dropped
    assert all(len(p.text.split()) >= 10 for p in chunk_document(doc, min_words=10, max_tokens=70))


def test_chunks_never_cross_headings_and_record_the_section():
    second = _sentences(2, words=10)
    doc = _doc(f"Intro\n\n{_sentences(2)}\n\nSecond part\n\n{second}", headings=("Intro", "Second part"))
    with_heads = chunk_document(doc)
    assert [p.section for p in with_heads] == ["Intro", "Second part"]
    assert with_heads[0].text.startswith("Intro Sentence 0")
    without = chunk_document(doc, include_headings=False)
    assert without[1].text == second and without[1].section == "Second part"


def test_duplicate_passages_are_kept_once():
    same = _sentences(3)
    doc = _doc(f"A\n\n{same}\n\nB\n\n{same}", headings=("A", "B"))
    assert len(chunk_document(doc, include_headings=False)) == 1


def test_invalid_arguments_raise():
    with pytest.raises(ValueError):
        chunk_document(_doc("x"), sentences_per_chunk=0)


# ------------------------------------------------------------------------------------------------ HTML

PAGE = """<!DOCTYPE html><html><head><title>9.4. String Functions</title>
<style>body { color: red }</style><script>var tracking = "SECRET_SCRIPT";</script></head>
<body>
<div class="navheader"><a href="prev.html">Prev</a> NAVIGATION_TEXT</div>
<nav><ul><li>Home</li><li>MENU_TEXT</li></ul></nav>
<div class="toc"><dl><dt>TOC_ENTRY</dt></dl></div>
<h2 class="title">9.4. String Functions</h2>
<p>This section describes functions for strings.
   They are   useful&nbsp;&amp; fast.</p>
<div class="note"><h3 class="title">Note</h3><p>Concatenation accepts non-string input.</p></div>
<h3>9.4.1. format</h3>
<p>The function <code>format</code> produces output.<br>It is like sprintf.</p>
<table><tr><td>lower</td><td>converts to lower case</td></tr></table>
<pre>SELECT 1;
SELECT 2;</pre>
<footer>COPYRIGHT_FOOTER</footer>
<div role="navigation">ROLE_NAV</div>
<div class="navfooter"><hr><a href="next.html">Next</a></div>
</body></html>"""


def test_html_to_text_drops_boilerplate_and_keeps_headings_as_lines():
    page = html_to_text(PAGE)
    assert page.title == "9.4. String Functions"
    for junk in (
        "SECRET_SCRIPT",
        "color: red",
        "NAVIGATION_TEXT",
        "MENU_TEXT",
        "TOC_ENTRY",
        "COPYRIGHT_FOOTER",
        "ROLE_NAV",
        "Prev",
        "Next",
    ):
        assert junk not in page.text
    lines = page.text.split("\n\n")
    assert "9.4. String Functions" in lines and "9.4.1. format" in lines
    assert page.headings == ("9.4. String Functions", "9.4.1. format")  # "Note" label is not a section
    assert "This section describes functions for strings. They are useful & fast." in lines
    assert "lower | converts to lower case" in lines
    assert "SELECT 1;\nSELECT 2;" in lines


def test_html_void_tags_inside_skipped_blocks_do_not_break_skipping():
    page = html_to_text("<div class='nav'><img src=x><br>NAV<div>inner</div></div><p>Body text stays.</p>")
    assert page.text == "Body text stays."


# ------------------------------------------------------------------------------------------------ reading


@pytest.fixture()
def folder(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "page.html").write_text(PAGE, encoding="utf-8")
    (tmp_path / "guide.md").write_text(
        "---\ntitle: x\n---\n# Install Guide\n\nRun the [installer](http://x) now. It is `fast`.\n\n"
        "```bash\n# not a heading\nmake install\n```\n\nSetup\n-----\n\nThen configure it please.\n",
        encoding="utf-8",
    )
    (tmp_path / "notes.rst").write_text(
        "=====\nNotes\n=====\n\n.. note::\n\n   Read :ref:`the docs <docs>` first.\n\nUsage\n-----\n\nCall it.\n",
        encoding="utf-8",
    )
    (tmp_path / "plain.txt").write_text("Ünïcödé text — naïve café. 東京。", encoding="utf-8")
    (tmp_path / "empty.txt").write_text("", encoding="utf-8")
    (tmp_path / "blob.txt").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
    (tmp_path / "latin1.txt").write_bytes("caf\xe9 cr\xe8me".encode("latin-1"))
    (tmp_path / "image.png").write_bytes(b"\x89PNG\x00")  # unsupported suffix: ignored, not reported
    (tmp_path / ".hidden").mkdir()
    (tmp_path / ".hidden" / "secret.txt").write_text("hidden", encoding="utf-8")
    return tmp_path


def test_read_documents_reads_formats_and_reports_skips(folder, caplog):
    with caplog.at_level(logging.WARNING, logger="embedforge.data.corpus"):
        docs, skipped = read_documents(folder)
    by_id = {d.doc_id: d for d in docs}
    assert sorted(by_id) == ["guide.md", "notes.rst", "plain.txt", "sub/page.html"]
    reasons = dict(skipped)
    assert set(reasons) == {"blob.txt", "empty.txt", "latin1.txt"}
    assert "binary" in reasons["blob.txt"]
    assert "UTF-8" in reasons["latin1.txt"]
    assert "empty" in reasons["empty.txt"]
    assert sum("skipping" in r.message for r in caplog.records) == 3

    md = by_id["guide.md"]
    assert md.title == "Install Guide" and md.headings == ("Install Guide", "Setup")
    assert "Run the installer now. It is fast." in md.text and "# not a heading" in md.text
    assert "title: x" not in md.text and "http" not in md.text and "-----" not in md.text
    rst = by_id["notes.rst"]
    assert rst.headings == ("Notes", "Usage") and "Read the docs first." in rst.text
    assert ".." not in rst.text and "=====" not in rst.text
    assert by_id["plain.txt"].title == "plain" and "naïve café" in by_id["plain.txt"].text
    assert by_id["sub/page.html"].title == "9.4. String Functions"


def test_read_documents_missing_folder_raises(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_documents(tmp_path / "nope")


def test_load_corpus_dedups_across_documents_keeping_the_first(tmp_path):
    body = _sentences(4)
    (tmp_path / "a.txt").write_text(body, encoding="utf-8")
    (tmp_path / "b.txt").write_text(body, encoding="utf-8")
    (tmp_path / "c.txt").write_text(_sentences(3, words=10), encoding="utf-8")
    result = load_corpus(tmp_path, sentences_per_chunk=5)
    assert [d.doc_id for d in result.documents] == ["a.txt", "b.txt", "c.txt"]
    assert [p.doc_id for p in result.passages] == ["a.txt", "c.txt"]
    assert len({p.passage_id for p in result.passages}) == len(result.passages)
    assert result.skipped == []


ASCIIDOC = """git-frob(1)
===========

NAME
----
git-frob - Frobnicate the index

[[description]]
DESCRIPTION
-----------
This command frobnicates the index so that the working tree and the next commit
agree; see linkgit:git-add[1] for what the index holds.

--dry-run::
\tShow what would be frobnicated without doing it, for a look before a real run.

== Examples

Frobnicate everything in the current tree and show each path as it goes by.
"""

PLAIN = """Configuring the build server

The build server reads its settings from one file in the home folder, written in
the same format as the project's own configuration.

export VISUAL=nano

Cleaning old artifacts
The cleaner runs nightly and removes every artifact older than thirty days unless pinned.

If you wanted text and not lines, you would use

    my $text = do { local $/; <$fh> };
"""

MAN = r""".\" a comment
.TH FROB 1 "2024" "frob 1.0"
.SH NAME
frob \- frobnicate files
.SH DESCRIPTION
.B frob
reads each
.I file
and frobnicates it, see
.BR git (1).
.SS Exit status
Zero when every file was frobnicated, \fBnon-zero\fR otherwise.
"""


def test_asciidoc_titles_become_headings_and_markup_lines_go():
    text, headings = plain_to_text(ASCIIDOC)
    assert headings == ("git-frob(1)", "NAME", "DESCRIPTION", "Examples")
    assert "git-add(1)" in text and "linkgit" not in text and "[[description]]" not in text
    assert "--dry-run\n" in text + "\n" and "-----" not in text


def test_a_plain_title_line_over_prose_is_a_heading_but_code_and_lead_ins_are_not():
    text, headings = plain_to_text(PLAIN)
    # a title needs a blank line under it, a capital, no code punctuation and prose after it
    assert headings == ("Configuring the build server",)
    assert "Cleaning old artifacts" in text and "export VISUAL=nano" in text


def test_man_page_sections_are_headings_and_fonts_keep_their_words():
    text, headings = man_to_text(MAN)
    assert headings == ("FROB", "NAME", "DESCRIPTION", "Exit status")
    assert "git(1)." in text and "non-zero otherwise" in text and "\\f" not in text and "comment" not in text


def test_read_documents_finds_the_headings_of_text_asciidoc_and_man_files(tmp_path):
    (tmp_path / "frob.adoc").write_text(ASCIIDOC)
    (tmp_path / "build.txt").write_text(PLAIN)
    (tmp_path / "frob.1").write_text(MAN)
    docs = {d.doc_id: d for d in read_documents(tmp_path)[0]}
    assert set(docs) == {"frob.adoc", "build.txt", "frob.1"}
    assert docs["build.txt"].title == "Configuring the build server"
    assert docs["frob.adoc"].title == "git-frob(1)" and "DESCRIPTION" in docs["frob.adoc"].headings
    assert docs["frob.1"].headings[-1] == "Exit status"
    sections = {p.section for p in chunk_document(docs["frob.1"], include_headings=False)}
    assert {"DESCRIPTION", "Exit status"} <= sections  # NAME's one line is too short for a passage
