"""The prompts the generator and the judge see, and how each question's type and wording are chosen.

Two prompt families, one per kind of generator:

* **plain** (the local backend): one question per call. Small local models (SmolLM2-135M) cannot keep a JSON
  format or a list of rules, but they follow a short instruction well when the reply is already started for
  them. So each prompt ends with the first words of the answer (an *opening* such as "Which option",
  "What happens if", "I want to"), drawn per question from a list for its query type. This is what keeps
  questions from all starting "How do..." (with a single one-example prompt, 92% of SmolLM2's did).
* **json** (the openai backend): one call per passage (or passage group) asks for all of its questions as a
  JSON list with answers, query types, complexity and the segments each question uses.

Both families rotate several system personas and instruction phrasings, picked per question from a
random generator seeded by the run seed and the passage id, so a plan is the same on every run and on
every machine, and enlarging ``max_passages`` later keeps the plans of passages already done.

Query types (the recipe's mix per 10 questions: 3 multi-hop, 2 structural, 2 contextual, 3 free):

* ``multi_hop``: needs facts from two or three passages of one document; its positives are those passages.
* ``structural``: about how something is organised: the options, steps, parameters or parts a passage
  lists, the order of steps, the difference between two things.
* ``contextual``: asked from inside a concrete situation (what the user is trying to do or what went
  wrong) that the passage resolves.
* ``factual``: a direct question about one fact (the "free" share).

``question_style: user`` replaces the three single-passage types with one, ``user``: the plain questions
people type into a search box or an FAQ ("How do I", "Why does", "What is the difference between", "Can
I"), the forms the documentation style above leaves out on purpose.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field

PROMPT_VERSION = 1  # bump when prompts change: a checkpoint made with other prompts is not resumed

QUERY_TYPES = ("multi_hop", "structural", "contextual", "factual", "user")
# Shares of the single-passage questions per style (documentation, the recipe: 2 structural, 2 contextual,
# 3 free of the 7 non-multi-hop).
SINGLE_TYPE_WEIGHTS = {
    "documentation": {"structural": 2, "contextual": 2, "factual": 3},
    "user": {"user": 1},
}
# Complexity (2 = one direct fact ... 5 = several facts weighed together) each type is asked for.
COMPLEXITY_RANGE = {
    "factual": (2, 3),
    "structural": (2, 4),
    "contextual": (3, 4),
    "multi_hop": (4, 5),
    "user": (2, 3),
}


# Question openings per type: the start of the local model's reply (and suggestions in json mode). Chosen by
# trying them on SmolLM2-135M: situation-first openings ("When using ...") made it narrate instead of ask,
# so contextual questions open with a user's goal or problem ("What should I do if").
OPENINGS = {
    "factual": (
        "What is the default",
        "Which",
        "What does",
        "When does",
        "Why does",
        "Is it possible to",
        "Does",
        "Where",
        "How many",
        "What happens if",
        "Can I",
        "What is",
    ),
    "structural": (
        "What are the",
        "Which options",
        "What steps",
        "What is the difference between",
        "Which parameters",
        "In what order",
        "What are the possible values of",
        "Which settings",
    ),
    "contextual": (
        "What should I do if",
        "Which option should I use to",
        "What should I check when",
        "How should I",
        "Why do I get",
        "What is the best way to",
        "What do I need to",
    ),
    "multi_hop": (
        "How does",
        "What",
        "Which",
        "When",
        "Why",
        "What happens when",
        "Is it possible to",
    ),
    # how people phrase a question to a search box or an FAQ: a goal, a surprise, a comparison
    "user": (
        "How do I",
        "How can I",
        "Why does",
        "Why is",
        "Why doesn't",
        "What is the difference between",
        "Can I",
        "Is there a way to",
        "What's the best way to",
        "How do I get",
    ),
}

# Short instructions: a 135M model echoes long or abstract ones ("a question about a cause or a condition")
# back as its "question", so plain prompts carry no complexity hints and no rules it cannot follow.
_PLAIN_SYSTEMS = (
    "You write questions that users type into the search box of a documentation site.",
    "You are a software user asking short, precise questions.",
    "You write one search question about a technical document.",
)

_ONLY = "Reply with the question only."
_PLAIN_INSTRUCTIONS = {
    "factual": (
        f"Write one specific question that this documentation answers. Mention the exact feature or command "
        f"by name. {_ONLY}",
        f"Write a short question a user would search for that this text answers. Use the names it uses. {_ONLY}",
    ),
    "structural": (
        f"Write one question about the options, steps or parts described here. Mention them by name. {_ONLY}",
        f"Write one question about the settings or steps explained here, using their names. {_ONLY}",
    ),
    "contextual": (
        f"Write one question a user would ask in the middle of a task that this documentation helps with. "
        f"Mention the feature by name. {_ONLY}",
        f"Write one question a user would ask when they need this information for their work. Mention the "
        f"feature by name. {_ONLY}",
    ),
    "user": (
        f"Write one short question a user would ask that this documentation answers, in plain words. {_ONLY}",
        f"Write the question a person would type into a search box to find this text. Keep it short. {_ONLY}",
    ),
    "multi_hop": (
        f"Write one question that needs information from both parts to answer. Mention the feature by name. "
        f"{_ONLY}",
        f"Write one question whose answer combines facts from the parts above. Use the names they use. {_ONLY}",
    ),
}

# Several questions from one prompt: the types come from the forced openings of the numbered items.
_NUMBERED = "Reply with the numbered questions only."
_PLAIN_LIST_INSTRUCTIONS = {
    "single": (
        "Write {n} different questions that this documentation answers, one per line. Mention the exact "
        f"feature or command by name in each. {_NUMBERED}",
        "Write {n} different questions a user would search for that this text answers, one per line. Use "
        f"the names it uses. {_NUMBERED}",
    ),
    "user": (
        "Write {n} different short questions a user would ask that this documentation answers, one per "
        f"line, in plain words. {_NUMBERED}",
    ),
    "multi_hop": (
        "Write {n} different questions that each need information from more than one part to answer, one "
        f"per line. Mention the features by name. {_NUMBERED}",
    ),
}

_JSON_SYSTEMS = (
    "You create training data for a search engine over technical documentation. You reply with JSON only.",
    "You are a documentation expert writing realistic user questions with their answers. Reply with JSON only.",
)

_JSON_RULES = """Rules:
- Every question must stand alone: a reader who never saw these segments understands it. Name the product,
  command, option or concept it is about. Never write "the passage", "the text", "this document",
  "the segment", "the section" or "the author".
- Each question is answered by the segments, without outside knowledge.
- Vary the wording; no two questions start with the same word. Openings you may use: {openings}.
- "complexity" is 2 (one direct fact) to 5 (combines several facts or weighs alternatives).
- "answer" is one to three sentences supported by the segments.
- "uses" lists the numbers of the segments the question needs."""

_JSON_TASKS = (
    "Write {n} question(s) a user of this documentation could ask. Their types, in order: {types}.",
    "Produce {n} search question(s) that the segments answer, one per type in this order: {types}.",
)

_TYPE_DESCRIPTIONS = {
    "factual": "factual (one direct fact)",
    "structural": "structural (options, steps, parameters or parts, their order or differences)",
    "contextual": "contextual (asked from a concrete situation: what the user is doing or what went wrong)",
    "multi_hop": "multi_hop (needs facts from at least two different segments; uses lists them all)",
    "user": "user (short and plain, as a person types it into a search box: how do I, why does, can I)",
}

_JSON_SHAPE = (
    '{{"questions": [{{"question": "...?", "answer": "...", "query_type": "{first_type}", '
    '"complexity": 3, "uses": [1]}}]}}'
)

JUDGE_SYSTEM = (
    "You review question-answer pairs for a search dataset and score them strictly. Reply with JSON only."
)

_JUDGE_TASK = """{segments}

Question: {question}
Answer: {answer}

Score the pair from 1 (very poor) to 10 (excellent) on each criterion:
- relevance: a real user of this documentation would ask it, and it is about the segments' subject;
- accuracy: the answer is correct according to the segments;
- context_support: everything in the answer is supported by the segments, without outside knowledge;
- clarity: the question is clear and understandable without seeing the segments;
- overall: your overall judgement of the pair as training data.
Reply as {{"relevance": n, "accuracy": n, "context_support": n, "clarity": n, "overall": n}}"""


@dataclass(frozen=True)
class QuestionSpec:
    """What one question should be: its type, target complexity and (plain mode) its opening words."""

    query_type: str
    complexity: int
    opening: str
    variant: int  # which persona/instruction phrasing (index into the rotations)


@dataclass(frozen=True)
class UnitPlan:
    """The work for one anchor passage: questions about it alone, and multi-hop questions over a group.

    ``group`` holds the anchor first, then 1-2 neighbouring passages of the same document (empty when the
    unit has no multi-hop question).
    """

    passage_id: str
    single: tuple[QuestionSpec, ...]
    multi: tuple[QuestionSpec, ...] = ()
    group: tuple[str, ...] = field(default=())


def _spec(rng: random.Random, query_type: str, used_openings: set[str]) -> QuestionSpec:
    low, high = COMPLEXITY_RANGE[query_type]
    choices = [o for o in OPENINGS[query_type] if o not in used_openings] or list(OPENINGS[query_type])
    opening = rng.choice(choices)
    used_openings.add(opening)
    return QuestionSpec(query_type, rng.randint(low, high), opening, rng.randrange(1 << 16))


def plan_unit(
    passage_id: str,
    neighbours: list[str],
    questions: int,
    multi_hop_share: float,
    seed: int,
    style: str = "documentation",
) -> UnitPlan:
    """Decide the questions for one passage, deterministically from ``seed`` and the passage id.

    Args:
        passage_id: the anchor passage.
        neighbours: other passages of the same document in reading order, nearest first (candidates
            for a multi-hop group); empty means no multi-hop question is possible.
        questions: questions to ask for this passage.
        multi_hop_share: expected share of questions that are multi-hop (recipe: 0.3).
        seed: run seed.
        style: the single-passage question types: ``documentation`` or ``user`` (see the module docstring).
    """
    rng = random.Random(f"{seed}:{passage_id}")
    expected = max(0.0, min(1.0, multi_hop_share)) * questions
    n_multi = int(expected) + (rng.random() < expected - int(expected))
    n_multi = min(n_multi, questions) if neighbours else 0
    bag = [t for t, w in SINGLE_TYPE_WEIGHTS[style].items() for _ in range(w)]
    rng.shuffle(bag)
    used: set[str] = set()
    single = []
    for i in range(questions - n_multi):
        single.append(_spec(rng, bag[i % len(bag)], used))
    multi = tuple(_spec(rng, "multi_hop", used) for _ in range(n_multi))
    group: tuple[str, ...] = ()
    if multi:
        size = 3 if len(neighbours) >= 2 and rng.random() < 0.35 else 2
        group = (passage_id, *neighbours[: size - 1])
    return UnitPlan(passage_id, tuple(single), multi, group)


def _title(title: str) -> str:
    """A document title without its section number ("53.1. Overview" -> "Overview"): small models copy
    numbers into their questions."""
    return re.sub(r"^\s*(?:[A-Z]\.)?(?:\d+\.)+\d*\s+", "", title or "").strip()


def _clip(text: str, max_chars: int) -> str:
    """Cut ``text`` at a word boundary so prompts stay short (small models drift on long inputs)."""
    if len(text) <= max_chars:
        return text
    cut = text[:max_chars].rsplit(" ", 1)[0]
    return cut + " ..."


def plain_messages(
    specs: list[QuestionSpec], texts: list[str], title: str, max_chars: int
) -> tuple[list[dict[str, str]], str, tuple[str, ...]]:
    """Chat messages for a local model, the reply's forced start, and the follow-ups forced after each question.

    One prompt serves all ``specs`` (one prefill of the passage for several questions): with one spec the
    instruction is that type's; with several the model is asked for a numbered list and each item is
    started with its spec's opening (``"1. Which"``, then ``"\n2. What should I do if"`` ...), which is what
    gives each question its type. ``texts`` is one passage, or a multi-hop group (shown as numbered parts).
    """
    first = specs[0]
    system = _PLAIN_SYSTEMS[first.variant % len(_PLAIN_SYSTEMS)]
    title = _title(title)
    header = f'From the documentation "{title}":' if title else "Documentation:"
    if len(texts) == 1:
        body = _clip(texts[0], max_chars)
    else:
        share = max(200, max_chars // len(texts))
        body = "\n\n".join(f"Part {i}: {_clip(t, share)}" for i, t in enumerate(texts, 1))
    if len(specs) == 1:
        instructions = _PLAIN_INSTRUCTIONS[first.query_type]
        instruction = instructions[(first.variant // 7) % len(instructions)]
        prefix, follow_ups = first.opening, ()
    else:
        lists = _PLAIN_LIST_INSTRUCTIONS.get(first.query_type, _PLAIN_LIST_INSTRUCTIONS["single"])
        instruction = lists[(first.variant // 7) % len(lists)].format(n=len(specs))
        prefix = f"1. {first.opening}"
        follow_ups = tuple(f"\n{i}. {spec.opening}" for i, spec in enumerate(specs[1:], 2))
    user = f"{header}\n{body}\n\n{instruction}"
    return [{"role": "system", "content": system}, {"role": "user", "content": user}], prefix, follow_ups


def json_messages(
    specs: list[QuestionSpec], texts: list[str], title: str, section: str, max_chars: int
) -> list[dict[str, str]]:
    """Chat messages asking a capable model for all of ``specs`` at once, as JSON with answers."""
    variant = specs[0].variant if specs else 0
    system = _JSON_SYSTEMS[variant % len(_JSON_SYSTEMS)]
    task = _JSON_TASKS[(variant // 5) % len(_JSON_TASKS)]
    title = _title(title)
    lines = [f"Document: {title}" if title else "Document: (untitled)"]
    if section:
        lines.append(f"Section: {section}")
    share = max(300, max_chars // max(1, len(texts)))
    for i, text in enumerate(texts, 1):
        lines.append(f"\nSegment {i}:\n{_clip(text, share)}")
    types = ", ".join(_TYPE_DESCRIPTIONS[s.query_type] for s in specs)
    openings = ", ".join(f'"{s.opening}"' for s in specs)
    shape = _JSON_SHAPE.format(first_type=specs[0].query_type if specs else "factual")
    user = "\n".join(
        [
            *lines,
            "",
            task.format(n=len(specs), types=types),
            _JSON_RULES.format(openings=openings),
            f"Reply with this JSON shape only: {shape}",
        ]
    )
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


def judge_messages(question: str, answer: str, texts: list[str], max_chars: int) -> list[dict[str, str]]:
    """Chat messages asking for the five 1-10 scores of one pair."""
    share = max(300, max_chars // max(1, len(texts)))
    segments = "\n\n".join(f"Segment {i}:\n{_clip(t, share)}" for i, t in enumerate(texts, 1))
    user = _JUDGE_TASK.format(segments=segments, question=question, answer=answer or "(no answer given)")
    return [{"role": "system", "content": JUDGE_SYSTEM}, {"role": "user", "content": user}]
