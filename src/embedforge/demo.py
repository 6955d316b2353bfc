"""`make demo`: the main job end to end, ``embedforge run`` on the bundled default data and models.

The PostgreSQL 15 manual (Debian package, fetched into .cache/ without root) -> the local SmolLM2-135M
generator writes questions -> hard negatives mined from training pages -> MiniLM fine-tuned -> base vs
tuned retrieval on held-out pages, plus the general-domain check -> the tuned model exported to ONNX (fp32
and int8) -> each graph served on a loopback port and verified against the offline eval, so the int8 graph
it recommends serving is one it verified.
``recipes/demo_cpu.yaml`` subsamples the manual so this fits in 15 minutes on 2 CPU cores;
``benchmarks/quality.py`` is the larger run.
Everything lands in ``runs/demo``; a re-run skips the finished stages.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from embedforge.config import RECIPES_DIR
from embedforge.demo_data import fetch_postgres_manual
from embedforge.evaluate import format_table
from embedforge.export import EXPORT_FILE, format_summary
from embedforge.pipeline import STAGES, run_pipeline, served_precisions, verify_report_path

RECIPE = RECIPES_DIR / "demo_cpu.yaml"


def main(run_dir: str = "runs/demo", cache_dir: str = ".cache/demo") -> int:
    started = time.time()
    print(f"fetching the PostgreSQL 15 manual into {cache_dir}", flush=True)
    manual = fetch_postgres_manual(Path(cache_dir))
    recipe = os.environ.get("EMBEDFORGE_DEMO_RECIPE", str(RECIPE))
    print(f"embedforge run --corpus {manual} --out {run_dir} --config {recipe}", flush=True)
    summary = run_pipeline(str(manual), run_dir, recipe, stages=list(STAGES))
    run = Path(run_dir)
    results = json.loads((run / "eval" / "eval_results.json").read_text())
    prep = json.loads((run / "prep" / "prep_report.json").read_text())["split"]
    questions = prep["questions"]
    print()
    print(
        f"held-out pages: {prep['documents']['test']} ({questions['test'] + questions.get('test_roundtrip_dropped', 0)} "
        f"questions over {prep['passages']['test']} passages); trained on {questions['train']} questions "
        f"from {prep['documents']['train']} pages"
    )
    print(format_table(results))
    print(f"\nONNX export: {run / 'export'}")
    print(format_summary(json.loads((run / "export" / EXPORT_FILE).read_text())))
    verified = served_precisions(run / "export")
    for precision in verified:
        report = json.loads(verify_report_path(run / "verify" / "verify_report.json", precision).read_text())
        print(f"\n{precision}: " + report["table"])
    # every graph listed was served and verified above; the fastest one is the recommendation
    fastest = "int8" if "int8" in verified else "fp32"
    print(
        f"serve it: embedforge serve {run / 'export'} --port 8000 --precision {fastest}  (verified: {', '.join(verified)})"
    )
    print(f"\nreport: {summary['report']}  chart: {run / 'eval' / 'eval_chart.png'}")
    print(f"demo finished in {time.time() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
