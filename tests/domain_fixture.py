"""A tiny synthetic domain where fine-tuning measurably helps, for end-to-end tests (no downloads).

The domain is the maintenance log of a fleet of look-alike machines ("Ridge pump RX-41",
"Ridge pump RX-14", ...). Every machine has one passage per maintenance task (replace the intake filter,
recalibrate the pressure sensor, ...), and all passages share the same few templates, so passages about
different machines and tasks look alike. Queries name the machine and the task, but the task only by the
fleet's **hidden jargon**: made-up codenames ("a brisk tavomir on Ridge pump RX-41") that stand for the
plain words the passages use. A base model finds the machine but must guess the task among ~16 similar
passages; a short fine-tune learns the codename -> task mapping from training machines and carries it to
held-out machines, because train, validation and test cover the same jargon on different machines.

Measured numbers (base vs fine-tuned nDCG@10) are in the docstring of :func:`make_domain_fixture`.

Usage::

    from domain_fixture import make_domain_fixture
    paths = make_domain_fixture(tmp_path)  # {"train": ..., "val": ..., "test_beir": ..., ...}
"""

from __future__ import annotations

import json
import random
from pathlib import Path

# (plain phrasings used by passages) per maintenance task; the jargon for each is generated from the seed.
TASKS: list[tuple[str, ...]] = [
    ("replace the intake filter", "swap out the intake filter"),
    ("recalibrate the pressure sensor", "re-zero the pressure gauge"),
    ("drain the coolant loop", "empty the coolant circuit"),
    ("tighten the drive belt", "re-tension the drive belt"),
    ("grease the main bearings", "lubricate the main bearings"),
    ("flush the fuel injectors", "clean out the fuel injectors"),
    ("inspect the exhaust manifold for cracks", "look for cracks in the exhaust manifold"),
    ("reflash the controller firmware", "reinstall the control board software"),
    ("test the emergency shutdown valve", "trip the emergency stop valve"),
    ("wash the heat exchanger fins", "clean the radiator fins"),
    ("replace the backup battery", "fit a new standby battery"),
    ("align the motor shaft coupling", "line up the motor coupling"),
    ("check the hydraulic hoses for leaks", "look for leaking hydraulic lines"),
    ("rotate the operator access codes", "change the operator passwords"),
    ("measure vibration on the gearbox", "record gearbox vibration levels"),
    ("restart the cooling fan bank", "power-cycle the cooling fans"),
]

SITES = ["north", "south", "east", "west", "harbour", "river", "upper", "lower"]
TOOLS = [
    "a torque wrench",
    "the service laptop",
    "a multimeter",
    "a ladder",
    "the standard tool kit",
    "a flashlight",
]
LOGS = ["the blue logbook", "the shift report", "the site tracker", "the maintenance sheet"]
FAMILIES = [
    "Ridge pump",
    "Harbor pump",
    "Cedar compressor",
    "Delta compressor",
    "Mill blower",
    "Quarry blower",
]

PASSAGE_TEMPLATES = [
    "Crews at the {site} yard {task} on {entity} every {n} weeks. The job takes about {h} hours and needs "
    "{tool}. Record the result in {log} before the unit goes back into service.",
    "On {entity}, technicians {task} once every {n} weeks. Plan for roughly {h} hours of downtime and bring "
    "{tool}. The {site} yard supervisor signs off in {log}.",
    "For {entity} the schedule says to {task} at {n}-week intervals. Expect {h} hours of work with {tool}; "
    "afterwards note it in {log} and tell the {site} yard.",
]
QUERY_TEMPLATES = [
    "{jargon} on {entity}",
    "when is the {jargon} due for {entity}?",
    "how long does a {jargon} take on {entity}",
    "{entity} {jargon} interval",
    "what do I need for the {jargon} of {entity}",
]

_CONSONANTS = "bdfgklmnprstvz"
_VOWELS = "aeiou"


def _pseudo_word(rng: random.Random, syllables: int) -> str:
    return "".join(rng.choice(_CONSONANTS) + rng.choice(_VOWELS) for _ in range(syllables)) + rng.choice(
        "krnls"
    )


def _jargon(rng: random.Random) -> list[str]:
    """One unique two-word codename per task, e.g. "brisk tavomir" style but made of nonsense syllables."""
    names: set[str] = set()
    out = []
    while len(out) < len(TASKS):
        name = f"{_pseudo_word(rng, 1)} {_pseudo_word(rng, 2)}"
        if name not in names:
            names.add(name)
            out.append(name)
    return out


def _entities(rng: random.Random, count: int) -> list[str]:
    names: set[str] = set()
    out = []
    while len(out) < count:
        family = rng.choice(FAMILIES)
        letters = "".join(rng.choice("KMRSTX") for _ in range(2))
        name = f"{family} {letters}-{rng.randint(10, 99)}"
        if name not in names:
            names.add(name)
            out.append(name)
    return out


def _passages(rng: random.Random, entity: str) -> list[str]:
    texts = []
    for phrasings in TASKS:
        template = rng.choice(PASSAGE_TEMPLATES)
        texts.append(
            template.format(
                entity=entity,
                task=rng.choice(phrasings),
                site=rng.choice(SITES),
                n=rng.randint(2, 12),
                h=rng.randint(1, 8),
                tool=rng.choice(TOOLS),
                log=rng.choice(LOGS),
            )
        )
    return texts


def _query(rng: random.Random, jargon: str, entity: str) -> str:
    return rng.choice(QUERY_TEMPLATES).format(jargon=jargon, entity=entity)


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    with path.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def _inline_rows(
    rng: random.Random, entities: list[str], jargon: list[str], n_rows: int, n_neg: int
) -> list[dict]:
    candidates = []
    for entity in entities:
        texts = _passages(rng, entity)
        for t, text in enumerate(texts):
            negatives = rng.sample([x for i, x in enumerate(texts) if i != t], n_neg)
            candidates.append(
                {"query": _query(rng, jargon[t], entity), "pos_doc": text, "neg_doc": negatives}
            )
    return rng.sample(candidates, min(n_rows, len(candidates)))


def make_domain_fixture(
    out_dir: str | Path,
    seed: int = 0,
    train_machines: int = 20,
    val_machines: int = 3,
    test_machines: int = 10,
    train_pairs: int = 300,
    val_pairs: int = 40,
    test_queries: int = 120,
    negatives: int = 3,
) -> dict[str, Path]:
    """Write the synthetic domain under ``out_dir``; same ``seed`` -> byte-identical files.

    Files: ``train.jsonl`` and ``val.jsonl`` (inline JSONL: ``query``, ``pos_doc``, ``neg_doc`` with
    ``negatives`` hard negatives from the same machine), and ``test_beir/`` (``corpus.jsonl``,
    ``queries.jsonl``, ``qrels/test.tsv``) whose corpus is every passage of the held-out test machines.
    Train, validation and test machines are disjoint; the jargon is shared.

    Measured with all-MiniLM-L6-v2 (max_seq_length 128, 2 CPU threads on a shared 2-core machine),
    plain SentenceTransformerTrainer + MultipleNegativesRankingLoss(scale=50, i.e. temperature 0.02),
    batch 32, warmup 10%, test nDCG@10 (InformationRetrievalEvaluator, passage text only):

    ==========================================  =======  =====  ==========
    setting                                     seed     base   fine-tuned
    ==========================================  =======  =====  ==========
    1 epoch, lr 1e-4, 3 hard negatives          0        0.215  0.531 (35 s)
    1 epoch, lr 1e-4, 3 hard negatives          1        0.292  0.591 (31 s)
    2 epochs, lr 1e-4, 3 hard negatives         0        0.215  0.795 (56 s)
    1 epoch, lr 5e-5, max_seq_length 64         0        0.215  0.410 (34 s)
    1 epoch, lr 1e-4, in-batch negatives only   0        0.215  0.462 (10 s)
    ==========================================  =======  =====  ==========

    Returns:
        ``{"root", "train", "val", "test_beir", "jargon"}`` paths; ``jargon.json`` maps codename -> task.
    """
    rng = random.Random(seed)
    root = Path(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    jargon = _jargon(rng)
    machines = _entities(rng, train_machines + val_machines + test_machines)
    train_m = machines[:train_machines]
    val_m = machines[train_machines : train_machines + val_machines]
    test_m = machines[train_machines + val_machines :]

    paths = {"root": root, "train": root / "train.jsonl", "val": root / "val.jsonl"}
    _write_jsonl(paths["train"], _inline_rows(rng, train_m, jargon, train_pairs, negatives))
    _write_jsonl(paths["val"], _inline_rows(rng, val_m, jargon, val_pairs, negatives))

    beir = root / "test_beir"
    (beir / "qrels").mkdir(parents=True, exist_ok=True)
    corpus, queries = [], []
    for m, entity in enumerate(test_m):
        for t, text in enumerate(_passages(rng, entity)):
            pid = f"d{m:02d}-p{t:02d}"
            corpus.append({"_id": pid, "title": entity, "text": text})
            queries.append({"_id": f"q{m:02d}-{t:02d}", "text": _query(rng, jargon[t], entity), "pid": pid})
    queries = sorted(rng.sample(queries, min(test_queries, len(queries))), key=lambda q: q["_id"])
    _write_jsonl(beir / "corpus.jsonl", corpus)
    _write_jsonl(beir / "queries.jsonl", [{"_id": q["_id"], "text": q["text"]} for q in queries])
    with (beir / "qrels" / "test.tsv").open("w", encoding="utf-8") as f:
        f.write("query-id\tcorpus-id\tscore\n")
        f.writelines(f"{q['_id']}\t{q['pid']}\t1\n" for q in queries)
    paths["test_beir"] = beir
    paths["jargon"] = root / "jargon.json"
    paths["jargon"].write_text(
        json.dumps({j: task[0] for j, task in zip(jargon, TASKS, strict=True)}, indent=2) + "\n",
        encoding="utf-8",
    )
    return paths
