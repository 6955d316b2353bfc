"""Turn raw generator output into clean, standalone questions, or say why not.

* :func:`clean_question` strips the chatter small models add ("Question:", "Q1.", numbering, bullets,
  quotes, Markdown bold), keeps the first question, and rejects what is not a usable search question:
  empty, cut off, too short or long, copied from the passage, garbage, or not standalone (it points at
  "the passage", "the text", "this document" ... instead of naming its subject).
* :func:`parse_json_reply` pulls the JSON object out of a chat reply (code fences, ``<think>`` blocks and
  prose around it are tolerated); anything else is malformed and the caller counts it.
* :func:`parse_scores` reads the judge's five 1-10 scores, from JSON or from ``name: 7`` lines.
* :func:`extractive_answer` picks the passage sentence(s) sharing the most words with a question: the
  answer for generators that only write questions (the local backend).
"""

from __future__ import annotations

import json
import re

from embedforge.data.corpus import split_sentences

SCORE_KEYS = ("relevance", "accuracy", "context_support", "clarity", "overall")

MIN_WORDS, MAX_WORDS = 4, 40

# References to the source instead of the subject: the question does not stand alone. Nouns that only name
# the source ("the passage") are rejected after any determiner; nouns with real uses in documentation
# ("the pages of a table", "the documents in a collection") only after "this", "above", "given"...
_SOURCE_ONLY = (
    r"passages?|excerpts?|paragraphs?|snippets?|chunks?|segments?|extracts?"
    r"|text(?!\s+(?:type|column|field|values?|data|search|format|mode|files?|editor|strings?|input))"
)
_SOURCE_WEAK = (
    r"documents?|documentation|sections?|pages?|articles?|contexts?|manual|guide|parts?|descriptions?|"
    r"information|materials?|author|writer|code|examples?|snippets?|tables? above"
)
_NOT_STANDALONE = re.compile(
    rf"\b(?:the|this|that|these|those|above|given|provided|following|previous|said)\s+(?:{_SOURCE_ONLY})\b"
    rf"|\b(?:this|these|above|given|provided|following|previous|said)\s+(?:{_SOURCE_WEAK})\b"
    rf"|\b(?:according to|based on|mentioned in|described in|stated in|discussed in|as per)\s+the\s+"
    rf"(?:{_SOURCE_WEAK})\b"
    r"|\b(?:mentioned|described|discussed|shown|listed|stated)\s+(?:above|here|earlier|below)\b"
    r"|\b(?:segment|part)\s+\d\b",
    re.IGNORECASE,
)
# Talk about the task instead of a question ("What do I need to know to answer this question?").
_META = re.compile(
    r"\bquestions?\b|\bdocumentation\b|\bof the following\b|\bthis (?:doc|feature)\b", re.IGNORECASE
)
# Words a question may start with when the generator forgot the question mark.
_INTERROGATIVE = re.compile(
    r"^(?:what|which|who|whom|whose|when|where|why|how|is|are|was|were|do|does|did|can|could|should|"
    r"would|will|may|must|has|have|had|shall|in what)\b",
    re.IGNORECASE,
)
# Content words that do not tie a question to its passage.
_GENERIC = frozenset(
    """option options step steps part parts described feature features command commands setting settings
    user users text task doc docs need know want best way default happens possible check values value
    order difference between following information work data""".split()
)
# Leading chatter: "Question:", "Q1.", "1.", "1)", "(a)", "- ", "* ", "> ", "#", "**Question 2:**".
_LEAD = re.compile(
    r"^\s*(?:"
    r"(?:here(?:'s| is) (?:a|one|my|the) (?:question|query)\s*[:\-]?)"
    r"|(?:sure[,!.]?\s*)"
    r"|(?:[*_]{1,2})?(?:question|query|q|user question|search query)\s*\d*\s*[:.)\-]\s*(?:[*_]{1,2})?"
    r"|\(?\d{1,2}[.):]\s+"
    r"|\([a-z]\)\s+"
    r"|[-*•>#]+\s*"
    r")",
    re.IGNORECASE,
)
_QUOTES = "\"'`“”‘’«»"
_THINK = re.compile(r"<think>.*?(?:</think>|$)", re.DOTALL | re.IGNORECASE)
_WORD = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]*")
_STOP = frozenset(
    """a an the of to in on for and or is are be by with as at it its this that these those from into can
    do does did how what which who when where why i my we you your if not no will would should could
    there their they them than then so such any all some use using used about after before while""".split()
)


def _strip_wrappers(text: str) -> str:
    previous = None
    while previous != text:
        previous = text
        text = _LEAD.sub("", text, count=1).strip()
        text = re.sub(r"^[*_]{1,2}|[*_]{1,2}$", "", text).strip()
        text = text.strip(_QUOTES).strip()
    return text


def _question_line(raw: str, truncated: bool, require_mark: bool) -> tuple[str | None, str]:
    """The reply's question line, cut after its first ``?`` (or given one), or None and why there is none."""
    text = _THINK.sub("", raw or "")
    lines = [_strip_wrappers(line) for line in text.splitlines()]
    lines = [line for line in lines if line]
    if not lines:
        return None, "empty"
    line = next((candidate for candidate in lines if "?" in candidate), lines[0])
    if "?" in line:
        return line[: line.index("?") + 1], "ok"
    if truncated:
        return None, "incomplete"
    if not require_mark and _INTERROGATIVE.match(line) and not re.search(r"[.:;!]\s|:$", line):
        return line.rstrip(" .;,!") + "?", "ok"
    return None, "not_a_question"


def _rejection(question: str, passage: str) -> str | None:
    """Why a cleaned question is unusable (garbage, length, not standalone, meta, copied, off topic), or None."""
    if "<|" in question or "{" in question or "[" in question or question.count('"') % 2:
        return "garbage"  # template tokens, placeholders, or a quote left open
    letters = sum(ch.isalpha() for ch in question)
    if letters < 0.5 * len(question):
        return "garbage"
    words = question.split()
    if len(words) < MIN_WORDS:
        return "too_short"
    if len(words) > MAX_WORDS:
        return "too_long"
    if _NOT_STANDALONE.search(question):
        return "not_standalone"
    if _META.search(question):
        return "meta"
    body = question[:-1].strip().lower()
    if passage:
        if len(words) >= 6 and body in " ".join(passage.split()).lower():
            return "copied"
        if not (_content_words(question) - _GENERIC) & _content_words(passage):
            return "off_topic"
    return None


def clean_question(
    raw: str, *, passage: str = "", truncated: bool = False, require_mark: bool = False
) -> tuple[str | None, str]:
    """Clean one generated question.

    Args:
        raw: the model's reply (for the local backend: the opening it was given plus its continuation).
        passage: the source text (of all positives); a "question" that is only a copied sentence of it, or
            that shares no content word with it, is rejected.
        truncated: the generator hit its token cap; a reply without a question mark is then cut off.
        require_mark: reject replies without a ``?`` (the local backend stops at the first ``?`` or line
            break, so a reply without one is a statement); otherwise a short reply that starts like a
            question ("Which option sets the port") gets its missing ``?``.

    Returns:
        ``(question, "ok")`` or ``(None, reason)`` with reason one of ``empty``, ``not_a_question``,
        ``incomplete``, ``too_short``, ``too_long``, ``not_standalone``, ``meta``, ``off_topic``,
        ``copied``, ``garbage``.

    Example:
        >>> clean_question('Question 1: "What does VACUUM reclaim?" It reclaims space.')
        ('What does VACUUM reclaim?', 'ok')
    """
    line, reason = _question_line(raw, truncated, require_mark)
    if line is None:
        return None, reason
    question = " ".join(_strip_wrappers(line).split())
    question = question.rstrip(_QUOTES).strip()
    if not question.endswith("?"):
        question += "?"
    question = re.sub(r"\s+\?$", "?", question)
    reason = _rejection(question, passage)
    if reason:
        return None, reason
    return question[0].upper() + question[1:], "ok"


def parse_json_reply(text: str | None) -> dict | list | None:
    """The JSON value in a chat reply, or None when there is none that parses.

    Tolerates ``<think>`` blocks, Markdown code fences and prose before or after the JSON.
    """
    if not text:
        return None
    text = _THINK.sub("", text).strip()
    fenced = re.search(r"```(?:json)?\s*(.*?)```", text, re.DOTALL)
    candidates = [fenced.group(1).strip()] if fenced else []
    candidates.append(text)
    for candidate in candidates:
        try:
            return json.loads(candidate)
        except (json.JSONDecodeError, ValueError):
            pass
        for opener, closer in (("{", "}"), ("[", "]")):
            start, end = candidate.find(opener), candidate.rfind(closer)
            if 0 <= start < end:
                try:
                    return json.loads(candidate[start : end + 1])
                except (json.JSONDecodeError, ValueError):
                    continue
    return None


def parse_scores(text: str | None) -> dict[str, float] | None:
    """The judge's scores as ``{relevance, accuracy, context_support, clarity, overall}`` clamped to 1-10.

    Reads a JSON object, or falls back to ``name: number`` pairs in free text. A missing ``overall`` is
    the mean of the others. Returns None when fewer than the overall score plus two criteria are found.
    """
    found: dict[str, float] = {}
    data = parse_json_reply(text)
    if isinstance(data, dict):
        for key in SCORE_KEYS:
            value = data.get(key, data.get(key.replace("_", " ")))
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                found[key] = float(value)
            elif isinstance(value, str) and re.fullmatch(r"\s*\d+(?:\.\d+)?\s*(?:/\s*10)?\s*", value):
                found[key] = float(value.split("/")[0])
    if len(found) < len(SCORE_KEYS) and text:
        for key in SCORE_KEYS:
            if key in found:
                continue
            pattern = key.replace("_", r"[_ ]")
            m = re.search(rf"\b{pattern}\b\W{{0,3}}\s*[:=]?\s*(\d+(?:\.\d+)?)", text, re.IGNORECASE)
            if m:
                found[key] = float(m.group(1))
    if "overall" not in found and len(found) >= 3:
        found["overall"] = sum(found.values()) / len(found)
    if "overall" not in found or len(found) < 3:
        return None
    scores = {k: round(min(10.0, max(1.0, v)), 2) for k, v in found.items()}
    return {k: scores[k] for k in SCORE_KEYS if k in scores}


def _content_words(text: str) -> set[str]:
    """Lower-cased content words, with the parts of compound names (``pg_dump`` -> pg_dump, pg, dump) and
    a crude plural fold (``tables`` -> table)."""
    words: set[str] = set()
    for token in _WORD.findall(text):
        token = token.lower().rstrip(".")
        for word in {token, *re.split(r"[_.\-]+", token)}:
            if len(word) > 2 and word not in _STOP:
                words.add(word[:-1] if len(word) > 4 and word.endswith("s") else word)
    return words


def extractive_answer(question: str, passages: list[str]) -> str:
    """The sentence of each passage that shares the most content words with ``question``, joined.

    Deterministic and model-free; used as the answer when the generator writes only questions.
    """
    wanted = _content_words(question)
    picked = []
    for passage in passages:
        sentences = split_sentences(passage) or [passage]
        best = max(sentences, key=lambda s: (len(wanted & _content_words(s)), -sentences.index(s)))
        picked.append(best)
    return " ".join(picked)
