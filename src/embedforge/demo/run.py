"""`make demo`: the main job end to end, ``embedforge run`` on the Perl documentation, scored on real questions.

Debian's ``perl-doc`` (fetched into .cache/perlfaq without root, see ``embedforge.demo.perlfaq_data``) -> its
``docs/`` folder (the FAQ's answers without their question headings, plus 29 core manual pages) -> the local
SmolLM2-135M generator writes questions and section headings become heading -> body pairs -> hard
negatives mined from training pages -> MiniLM fine-tuned -> base vs tuned on held-out pages -> the tuned model
exported to ONNX (fp32 and int8) -> each graph served on a loopback port and verified against the offline
eval. Then base vs tuned on the Perl FAQ's 298 questions, written by people and never seen by the pipeline:
the number printed first, because generated questions on held-out pages are few and reward the
generator's style.
``recipes/demo_cpu.yaml`` sizes this to 15 minutes on 2 CPU cores; ``benchmarks/quality.py`` is the larger run.
Everything lands in ``runs/demo``; a re-run skips the finished stages.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from embedforge.atomic import write_json_atomic, write_text_atomic
from embedforge.config import RECIPES_DIR, config_hash, load_config
from embedforge.demo.perlfaq_data import build_perlfaq
from embedforge.evaluate.report import format_table
from embedforge.evaluate.retrieval import RESULTS_FILE, run_eval
from embedforge.export import EXPORT_FILE, format_summary
from embedforge.measures.metrics import PRIMARY_METRIC
from embedforge.measures.significance import verdict
from embedforge.pipeline.run import (
    MARKER,
    STAGES,
    corpus_fingerprint,
    run_pipeline,
    served_precisions,
    verify_report_path,
    verify_served,
)

RECIPE = RECIPES_DIR / "demo_cpu.yaml"
REAL_DIR = "real_questions"  # RUN_DIR/real_questions: base vs tuned on the FAQ's questions
REPORT = "demo_report.md"


def evaluate_real_questions(
    run_dir: str | Path, beir: str | Path, recipe: str | Path, *, loaded: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """Base vs tuned on a BEIR folder of real questions, written to ``RUN_DIR/real_questions``.

    The eval stage's settings from ``recipe`` (no general-domain check: the held-out eval ran it). Skipped
    when the tuned model (its finetune key), the BEIR files and the settings are unchanged, as a finished
    pipeline stage is. ``loaded``: encoders already in memory, keyed like ``run_eval``'s.
    """
    run = Path(run_dir)
    out = run / REAL_DIR
    base = load_config("finetune", recipe, [], train_data="-").base_model
    cfg = load_config(
        "eval",
        recipe,
        [],
        beir=str(beir),
        models=[base, str(run / "finetune" / "model")],
        out=str(out),
        general_check=False,
    )
    finetune_key = json.loads((run / "finetune" / MARKER).read_text())["key"]
    key = hashlib.sha256(
        f"{finetune_key} {corpus_fingerprint(beir)} {config_hash(cfg)}".encode()
    ).hexdigest()[:16]
    marker = out / MARKER
    if marker.is_file() and json.loads(marker.read_text()).get("key") == key:
        return json.loads((out / RESULTS_FILE).read_text())
    results = run_eval(cfg, loaded=loaded)
    results.pop("table")
    write_json_atomic(marker, {"key": key, "status": "finished"})
    return results


def verify_on_real_questions(run_dir: str | Path, beir: str | Path, precision: str) -> dict[str, Any]:
    """The served ``precision`` graph of the run's export against the tuned model's offline scores on the
    real questions (``RUN_DIR/real_questions/verify_<precision>.json``).

    The run's own held-out set is a few dozen generated questions, too few to tell int8 from fp32; the FAQ's
    questions decide instead (``verify``'s paired CI over all of them). Read back while the export and the
    real-question eval are unchanged.
    """
    run = Path(run_dir)
    out = run / REAL_DIR / f"verify_{precision}.json"
    keys = [json.loads((run / stage / MARKER).read_text())["key"] for stage in ("export", REAL_DIR)]
    key = hashlib.sha256(" ".join([*keys, precision]).encode()).hexdigest()[:16]
    if out.is_file() and json.loads(out.read_text()).get("key") == key:
        return json.loads(out.read_text())
    reference = run / REAL_DIR / RESULTS_FILE
    cfg = load_config("verify", None, [], beir=str(beir), reference=str(reference))
    report = verify_served(run / "export", precision, cfg, "the Perl FAQ's real questions")
    write_json_atomic(out, {**report, "key": key})
    return report


def real_question_verdict(results: Mapping[str, Any]) -> str:
    """The one line a new user should read: the tuned model's nDCG@10 gain on real questions, and whether
    it is significant."""
    base = results["baseline"]
    tuned = next(name for name in results["models"] if name != base)
    return verdict(tuned, base, results["significance"][tuned][PRIMARY_METRIC])


def format_real_questions(results: Mapping[str, Any], manifest: Mapping[str, Any]) -> str:
    """The title line (what the questions are, how many) and the base-vs-tuned table with its paired tests."""
    return (
        f"questions people wrote: the Perl FAQ, {manifest['queries']} questions over "
        f"{manifest['documents']:,} documents (never seen by the pipeline)\n" + format_table(results)
    )


def write_demo_report(run_dir: str | Path, real: Mapping[str, Any], manifest: Mapping[str, Any]) -> Path:
    """RUN_DIR/demo_report.md: real questions first, then the generated held-out questions, then links."""
    run = Path(run_dir)
    held_out = json.loads((run / "eval" / RESULTS_FILE).read_text())
    lines = [
        "# embedforge demo",
        "",
        f"Source: {manifest.get('source', 'Debian perl-doc')}.",
        "",
        "## Questions people wrote: the Perl FAQ",
        "",
        f"{manifest['queries']} questions (the FAQ's `=head2` headings) over {manifest['documents']:,} "
        "documents; each question's answer is the one relevant document. The pipeline read the answers "
        "without their headings and never saw a question.",
        "",
        format_table(real),
        "",
        f"Details: [{REAL_DIR}/eval_report.md]({REAL_DIR}/eval_report.md).",
        "",
        "## Generated questions on held-out pages",
        "",
        format_table(held_out),
        "",
        "Stage timings, training data and chart: [report.md](report.md).",
    ]
    path = run / REPORT
    write_text_atomic(path, "\n".join(lines) + "\n")
    return path


def main(run_dir: str = "runs/demo", cache_dir: str = ".cache/perlfaq") -> int:
    started = time.time()
    print(f"fetching Debian's perl-doc into {cache_dir} (apt-get download + dpkg-deb, no root)", flush=True)
    perlfaq = build_perlfaq(Path(cache_dir))
    manifest = json.loads(perlfaq.manifest.read_text())
    recipe = os.environ.get("EMBEDFORGE_DEMO_RECIPE", str(RECIPE))
    print(f"embedforge run --corpus {perlfaq.docs} --out {run_dir} --config {recipe}", flush=True)
    summary = run_pipeline(str(perlfaq.docs), run_dir, recipe, stages=list(STAGES))
    run = Path(run_dir)
    print(f"\n[real questions] base vs tuned on {perlfaq.beir}", flush=True)
    real = evaluate_real_questions(run, perlfaq.beir, recipe)
    report = write_demo_report(run, real, manifest)

    print()
    print(format_real_questions(real, manifest))
    results = json.loads((run / "eval" / RESULTS_FILE).read_text())
    prep = json.loads((run / "prep" / "prep_report.json").read_text())["split"]
    questions = prep["questions"]
    print(
        f"\ngenerated questions on held-out pages: {prep['documents']['test']} pages "
        f"({questions['test'] + questions.get('test_roundtrip_dropped', 0)} questions over "
        f"{prep['passages']['test']} passages); trained on {questions['train']} generated questions from "
        f"{prep['documents']['train']} pages and {questions.get('heading_pairs', 0)} heading -> body pairs"
    )
    print(format_table(results))
    print(f"\nONNX export: {run / 'export'}")
    print(format_summary(json.loads((run / "export" / EXPORT_FILE).read_text())))
    passed = []  # every graph listed was served and verified on the held-out questions
    for precision in served_precisions(run / "export"):
        verify = json.loads(verify_report_path(run / "verify" / "verify_report.json", precision).read_text())
        print(f"\n{precision}: " + verify["table"])
        if verify.get("passed"):
            passed.append(precision)
    fastest, decided = "fp32", ""
    if "int8" in served_precisions(run / "export"):  # the real questions decide int8 vs fp32
        real_int8 = verify_on_real_questions(run, perlfaq.beir, "int8")
        print("\nint8 on the Perl FAQ's real questions: " + real_int8["table"])
        fastest = "int8" if real_int8["passed"] else "fp32"
        decided = f"; int8 vs fp32 decided by {real_int8['decided_by']}"
    print(
        f"serve it: embedforge serve {run / 'export'} --port 8000 --precision {fastest}  "
        f"(passed verify on the held-out questions: {', '.join(passed)}{decided})"
    )
    print(f"\nreport: {report} (run: {summary['report']})  chart: {run / REAL_DIR / 'eval_chart.png'}")
    print(f"on questions people wrote: {real_question_verdict(real)}.")
    print(f"demo finished in {time.time() - started:.0f} s")
    return 0
