"""How fast one model call is per text, by its padded size: the evidence behind ``max_batch_tokens``.

The serving benchmark's 512 mixed-length manual passages (``serve_speed.build_texts``) are tokenized as the
server does (passage prompt, truncate END), sorted by length and cut as the batcher cuts a round
(longest x count <= budget), for budgets from 256 to 8,192 padded tokens. Each runtime embeds all of them
(twice; the faster pass counts) and the script reports texts/s per budget:

* ``onnx-fp32`` / ``onnx-int8``: the serving runtime on a fresh ``embedforge export minilm --quantize int8``;
* ``onnx-int8-no-attention-fusion``: the export's int8 recipe with ``embedforge.export.attention_fusion`` off
  (onnxruntime's own fusions only), to measure what the attention fusion buys;
* ``torch-fp32``: the PyTorch serving runtime (``TorchRuntime("minilm")``).

    .venv/bin/python benchmarks/batch_budget.py [--out docs/bench/batch_budget.json]

Run it on an idle machine: it is a throughput measurement.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

BUDGETS = (256, 512, 1024, 2048, 4096, 8192)


def sweep(runtime, texts: list[str]) -> dict:
    from embedforge.serve.batcher import length_sorted_calls

    sequences = [t.ids for t in runtime.tokenize(texts, "passage", "END")]
    out = {}
    for budget in BUDGETS:
        batches = [runtime.pad(call) for call in length_sorted_calls(sequences, budget)]
        runtime.embed(*batches[0])  # warm-up
        best = float("inf")
        for _ in range(2):
            started = time.perf_counter()
            for input_ids, mask in batches:
                runtime.embed(input_ids, mask)
            best = min(best, time.perf_counter() - started)
        out[str(budget)] = {"calls": len(batches), "texts_per_s": round(len(texts) / best, 1)}
        print(f"  budget {budget:5d}: {len(batches):4d} calls {len(texts) / best:7.1f} texts/s", flush=True)
    return out


def int8_without_attention_fusion(export: Path, work: Path) -> Path:
    """A copy of the export whose int8 graph is the export's recipe with the attention fusion off."""
    from embedforge.export.folder import MODEL_FILES
    from embedforge.export.quantize import fuse_for_onnxruntime, quantize_int8

    folder = work / "no-attention-fusion"
    shutil.copytree(export, folder)
    fuse_for_onnxruntime(folder / MODEL_FILES["fp32"], work / "fused.onnx", external=False, attention=False)
    quantize_int8(work / "fused.onnx", folder / MODEL_FILES["int8"], external=False)
    return folder


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--texts", type=int, default=512)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--out", default=str(ROOT / "docs/bench/batch_budget.json"))
    args = parser.parse_args()

    from serve_speed import build_texts

    from embedforge.export import export_onnx
    from embedforge.serve.runtime import OnnxRuntime, TorchRuntime

    texts, source = build_texts(args.texts, args.seed)
    work = Path(tempfile.mkdtemp(prefix="batch_budget_"))
    results: dict = {
        "command": " ".join([".venv/bin/python", "benchmarks/batch_budget.py", *sys.argv[1:]]),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{os.cpu_count()} CPU cores",
        "load_before": [round(x, 2) for x in os.getloadavg()],
        "texts": {"count": len(texts), "source": source},
        "budgets": list(BUDGETS),
        "runtimes": {},
    }
    try:
        export = work / "export"
        export_onnx("minilm", export, quantize="int8", speed=False)
        plain = int8_without_attention_fusion(export, work)
        runtimes = {
            "onnx-fp32": lambda: OnnxRuntime(export),
            "onnx-int8": lambda: OnnxRuntime(export, precision="int8"),
            "onnx-int8-no-attention-fusion": lambda: OnnxRuntime(plain, precision="int8"),
            "torch-fp32": lambda: TorchRuntime("minilm"),
        }
        for name, make in runtimes.items():
            print(name, flush=True)
            results["runtimes"][name] = sweep(make(), texts)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    results["load_after"] = [round(x, 2) for x in os.getloadavg()]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(results, indent=2) + "\n")
    tmp.replace(out)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
