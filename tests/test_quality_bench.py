"""benchmarks/quality.py: the spread and verdict over seeds, and the shared sdg stage the pipeline skips."""

import importlib.util
import json
from pathlib import Path

import pytest

from embedforge.errors import EmbedforgeError
from embedforge.pipeline.run import MARKER, Pipeline, run_pipeline

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "quality.py"
spec = importlib.util.spec_from_file_location("quality_bench", SCRIPT)
quality = importlib.util.module_from_spec(spec)
spec.loader.exec_module(quality)


def seed(gain, tuned, ci_low, pearson_base, pearson_tuned, synthetic=0.2, mpnet=0.815):
    return {
        "real": {"gain": gain, "tuned": tuned, "ci95": [ci_low, ci_low + 0.05], "mpnet": mpnet},
        "synthetic": {"gain": synthetic},
        "general": {"base": pearson_base, "tuned": pearson_tuned, "drop": pearson_base - pearson_tuned},
    }


def test_spread_is_mean_sample_std_min_max():
    row = quality.spread([0.1, 0.2, 0.6])
    assert row["mean"] == pytest.approx(0.3)
    assert row["std"] == pytest.approx(0.26457513, abs=1e-8)  # sample (n - 1) std
    assert (row["min"], row["max"], row["n"]) == (0.1, 0.6, 3)
    assert quality.spread([0.4])["std"] is None


def test_claim_holds_only_when_every_criterion_does():
    good = [seed(0.12, 0.82, 0.01, 0.656, 0.650), seed(0.10, 0.81, 0.02, 0.656, 0.647)]
    verdict = quality.aggregate(good)
    assert verdict["holds"] and all(verdict["checks"].values())
    assert verdict["stats"]["real_gain"]["mean"] == pytest.approx(0.11)
    assert verdict["stats"]["pearson_drop"]["max"] == pytest.approx(0.009)

    # mean gain 9.5% < 10%, one CI touches 0, mean tuned below MPNet, one Pearson drop of 0.0103
    bad = [seed(0.12, 0.80, 0.01, 0.656, 0.650), seed(0.07, 0.79, -0.001, 0.6564, 0.6461)]
    checks = quality.aggregate(bad)["checks"]
    assert not any(checks.values())
    assert not quality.aggregate(bad)["holds"]
    # scored on other questions per seed (--user-questions), MPNet's mean is over the seeds' own sets
    other_sets = [
        seed(0.12, 0.82, 0.01, 0.656, 0.650, mpnet=0.80),
        seed(0.10, 0.81, 0.02, 0.656, 0.647, mpnet=0.84),
    ]
    assert quality.aggregate(other_sets)["mpnet_ndcg@10"] == pytest.approx(0.82)
    assert quality.aggregate(other_sets)["checks"]["mean tuned nDCG@10 >= MPNet's"] is False


def test_seeds_come_from_seeds_not_overrides():
    assert quality.seed_overrides(1, 0, ["finetune.epochs=1"]) == [
        "sdg.seed=0",
        "prep.seed=1",
        "finetune.seed=1",
        "finetune.epochs=1",
    ]
    with pytest.raises(EmbedforgeError, match="prep.seed"):
        quality.seed_overrides(1, 1, ["prep.seed=7"])


def _sdg_key(corpus: Path, run: Path, overrides: list[str]) -> str:
    pipe = Pipeline(str(corpus), str(run), "minilm_cpu", overrides)
    cfg = pipe.config("sdg")
    return pipe.key("sdg", cfg, pipe.inputs("sdg"))


def test_shared_sdg_is_skipped_in_the_other_seeds_run(tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "faq.md").write_text("# How do I sort a hash?\n\nUse sort on its keys, then read each value.\n")
    first, other = tmp_path / "seed0", tmp_path / "seed1"
    # the first seed's finished sdg stage, with the marker the pipeline writes
    key = _sdg_key(corpus, first, quality.seed_overrides(0, 0, []))
    (first / "sdg").mkdir(parents=True)
    (first / "sdg" / "pairs.jsonl").write_text('{"question": "q", "pos_doc": ["p"]}\n')
    (first / "sdg" / MARKER).write_text(json.dumps({"key": key, "status": "finished", "seconds": 600.0}))

    # its own seed would generate again; the shared one has the same key in the other run folder
    assert _sdg_key(corpus, other, quality.seed_overrides(1, 1, [])) != key
    assert _sdg_key(corpus, other, quality.seed_overrides(1, 0, [])) == key

    quality.share_sdg(first, other)
    assert json.loads((other / "sdg" / MARKER).read_text())["key"] == key  # else run_pipeline would generate
    summary = run_pipeline(str(corpus), str(other), "minilm_cpu", quality.seed_overrides(1, 0, []), ["sdg"])
    assert summary["sdg"] == {"skipped": True}
    assert (other / "sdg" / "pairs.jsonl").read_text() == (first / "sdg" / "pairs.jsonl").read_text()
    assert (
        Pipeline(str(corpus), str(other), "minilm_cpu", quality.seed_overrides(1, 0, [])).config("prep").seed
        == 1
    )


def test_section_replaces_only_the_text_between_the_markers(tmp_path):
    doc = tmp_path / "benchmarks.md"
    doc.write_text(f"# Benchmarks\n\nbefore\n{quality.START}\nold numbers\n{quality.END}\nafter\n")
    quality.write_section(doc, f"{quality.START}\nnew numbers\n{quality.END}")
    assert doc.read_text() == f"# Benchmarks\n\nbefore\n{quality.START}\nnew numbers\n{quality.END}\nafter\n"


def test_a_failed_run_names_its_folder_and_records_no_memory(tmp_path):
    run = tmp_path / "seed0"
    with pytest.raises(EmbedforgeError, match=r"embedforge run for .*seed0 failed \(exit 2\)"):
        quality.run_seed(tmp_path / "no-corpus", run, "minilm_cpu", quality.seed_overrides(0, 0, []))
    assert not (run / "peak_memory.json").exists()


def _write(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


def _scored(scores: list[float]) -> dict:
    return {"per_query": {f"q{i}": {"ndcg@10": v} for i, v in enumerate(scores)}}


def test_a_seed_summary_reads_markers_both_evaluations_and_peak_memory(tmp_path):
    run = tmp_path / "seed1"
    for stage, seconds in (("sdg", 600.0), ("prep", 5.0), ("finetune", 900.0), ("eval", 40.0)):
        config = {"seed": 0 if stage == "sdg" else 1} if stage != "eval" else {}
        _write(
            run / stage / MARKER, {"key": stage, "status": "finished", "seconds": seconds, "config": config}
        )
    general = {"minilm": 0.656, "tuned": 0.650}
    _write(
        run / "eval" / "eval_results.json",
        {
            "baseline": "minilm",
            "models": {
                n: {"num_queries": 76, "metrics": {"ndcg@10": v}, "general_check": {"pearson": general[n]}}
                for n, v in (("minilm", 0.50), ("tuned", 0.55))
            },
            "deltas": {"tuned": {"ndcg@10": {"rel": 0.10}}},
        },
    )
    base = {"minilm": _scored([0.5, 0.5, 1.0, 0.0]), "mpnet": _scored([1.0, 1.0, 1.0, 1.0])}
    tuned = _scored([1.0, 0.5, 1.0, 0.5])
    significance = {"base": 0.5, "model": 0.75, "diff": 0.25, "rel": 0.5, "ci95": [0.0, 0.5], "p": 0.25}
    _write(
        run / "perlfaq" / "eval_results.json",
        {
            "baseline": "minilm",
            "models": {**base, "tuned seed 1": tuned},
            "significance": {"tuned seed 1": {"ndcg@10": significance}},
        },
    )
    _write(run / "peak_memory.json", {"runs": [1500.0, 2100.5]})

    s = quality.summarize_seed(1, run, {"models": base}, first_sdg_key="sdg")
    assert s["stage_seeds"] == {"sdg": 0, "prep": 1, "finetune": 1} and s["sdg_shared"]
    assert (s["real"]["base"], s["real"]["tuned"], s["real"]["gain"]) == (0.5, 0.75, 0.5)
    assert s["real"]["vs_mpnet"]["diff"] == pytest.approx(0.75 - 1.0)  # tuned vs MPNet, paired per query
    assert s["synthetic"]["gain"] == 0.10 and s["synthetic"]["ci95"] is None
    assert s["general"]["drop"] == pytest.approx(0.006)
    assert s["stage_seconds"] == {"sdg": 600.0, "prep": 5.0, "finetune": 900.0, "eval": 40.0}
    assert s["peak_memory_mib"] == 2100.5
    assert not quality.summarize_seed(1, run, {"models": base}, first_sdg_key="other")["sdg_shared"]

    # with --user-questions only the held-out questions count, for base, tuned and MPNet alike
    _write(run / quality.HELD_OUT, ["q0", "q3"])
    s = quality.summarize_seed(1, run, {"models": base}, first_sdg_key="sdg")
    assert (s["real"]["queries"], s["real"]["base"], s["real"]["tuned"], s["real"]["mpnet"]) == (
        2,
        0.25,
        0.75,
        1.0,
    )
    assert s["real"]["gain"] == pytest.approx(2.0) and s["real"]["vs_mpnet"]["diff"] == pytest.approx(-0.25)


def test_user_questions_are_a_seeded_share_of_the_real_ones_and_the_rest_are_held_out(tmp_path):
    from embedforge.data.formats import BeirDataset, write_beir

    queries = {f"q{i}": f"How do I do thing {i}?" for i in range(10)}
    qrels = {q: {f"perlfaq4/{i:03d}.txt": 1} for i, q in enumerate(queries)}
    write_beir(BeirDataset({d: {"title": "", "text": "x"} for r in qrels.values() for d in r}, queries, qrels),
               tmp_path / "beir")  # fmt: skip
    override = quality.give_questions(tmp_path / "beir", tmp_path / "seed3", 3, 0.5)
    given_file = tmp_path / "seed3" / quality.USER_QUESTIONS
    assert override == f"prep.user_questions={given_file}"
    given = [json.loads(line) for line in given_file.read_text().splitlines()]
    held = json.loads((tmp_path / "seed3" / quality.HELD_OUT).read_text())
    assert len(given) == len(held) == 5 and not {g["id"] for g in given} & set(held)
    assert all(g["question"] == queries[g["id"]] and g["document"] == sorted(qrels[g["id"]]) for g in given)
    before = given_file.read_bytes()  # the same bytes again (prep's cache key), another set for another seed
    quality.give_questions(tmp_path / "beir", tmp_path / "seed3", 3, 0.5)
    assert given_file.read_bytes() == before
    quality.give_questions(tmp_path / "beir", tmp_path / "seed4", 4, 0.5)
    assert json.loads((tmp_path / "seed4" / quality.HELD_OUT).read_text()) != held
    with pytest.raises(EmbedforgeError, match="between 0 and 1"):
        quality.give_questions(tmp_path / "beir", tmp_path / "seed5", 5, 1.0)
