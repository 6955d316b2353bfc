"""int8 export: per-row int8 (what ``export --quantize int8`` writes) vs onnxruntime's per-tensor dynamic int8.

    python benchmarks/int8_quality.py --parts batch,speed,layers        # a few minutes on 2 cores
    python benchmarks/int8_quality.py --parts quality --beir .cache/perlfaq/beir

Parts, each against the fp32 graph of the same export:

* ``batch``: min cosine of the probe texts embedded alone vs all in one batch vs each beside a long passage;
* ``quality``: nDCG@10 on a BEIR folder (the Perl FAQ's 298 real questions: ``embedforge.demo.perlfaq_data``)
  with the paired 95% CI and p of the per-query difference (``significance``);
* ``speed``: one thread, the same 8 passages, the graphs timed in turn in each of ``--rounds`` rounds,
  CPU time of the calling thread (steady on a shared machine), median: ratios;
* ``layers``: where the error comes from: each layer's output (relative L2 error vs fp32 over the real
  tokens of a few passages), and the vector's cosine to fp32 when only one kind of MatMul is quantized.

The per-tensor graph is rebuilt here as the export made it before (``quantize_dynamic`` on the fused graph,
MatMul and Attention, weights per channel). Results: printed and written as JSON to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from embedforge.data.formats import passage_text, read_beir
from embedforge.export import export_onnx
from embedforge.export.checks import _LONG_TEXT, PROBE_TEXTS
from embedforge.export.encoder import OnnxEncoder
from embedforge.export.quantize import fuse_for_onnxruntime
from embedforge.export.rowwise_int8 import quantize_rowwise

GRAPHS = ("fp32", "int8_per_tensor", "int8_per_row")


def build_graphs(model: str, work: Path) -> tuple[Path, dict[str, Path]]:
    """The export (fp32 + per-row int8) and beside it the fused fp32 and the per-tensor int8 graphs."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    folder = work / "export"
    if not folder.is_dir():
        export_onnx(model, folder, quantize="int8", speed=False)
    fused = work / "fused.onnx"
    if not fused.exists():
        fuse_for_onnxruntime(folder / "model.onnx", fused, external=False)
    per_tensor = work / "int8_per_tensor.onnx"
    if not per_tensor.exists():
        ops = {"op_types_to_quantize": ["MatMul", "Attention"], "per_channel": True}
        quantize_dynamic(str(fused), str(per_tensor), weight_type=QuantType.QInt8, **ops)
    graphs = {"fp32": folder / "model.onnx", "int8_per_tensor": per_tensor}
    graphs["int8_per_row"] = folder / "model_int8.onnx"
    return folder, graphs | {"fused": fused}


def session(graph: Path, threads: int = 0) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(str(graph), options, providers=["CPUExecutionProvider"])


def encoder(folder: Path, graph: Path, name: str) -> OnnxEncoder:
    """The export's encoder (tokenizer, prompts) running ``graph``."""
    enc = OnnxEncoder(folder, name=name)
    enc.session = session(graph)
    return enc


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a.astype(np.float64) * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def batch_part(folder: Path, graphs: dict[str, Path]) -> dict:
    texts = list(PROBE_TEXTS)
    out = {}
    for name in GRAPHS:
        enc = encoder(folder, graphs[name], name)
        alone = np.concatenate([enc.run_texts([t]) for t in texts])
        together = enc.run_texts(texts)
        beside = np.concatenate([enc.run_texts([t, _LONG_TEXT])[:1] for t in texts])
        out[name] = {
            "min_cosine_alone_vs_batch_of_32": float(_cosines(alone, together).min()),
            "min_cosine_alone_vs_beside_long": float(_cosines(alone, beside).min()),
        }
    return out


def quality_part(folder: Path, graphs: dict[str, Path], beir: str) -> dict:
    from embedforge.evaluate import evaluate_dataset
    from embedforge.measures.significance import paired_comparison

    dataset = read_beir(beir, split="test")
    scores, out = {}, {"beir": beir, "queries": len(dataset.qrels), "passages": len(dataset.corpus)}
    for name in GRAPHS:
        result = evaluate_dataset(encoder(folder, graphs[name], name), dataset, ks=(10,), progress=False)
        scores[name] = {q: v["ndcg@10"] for q, v in result["per_query"].items()}
        out[name] = {"ndcg@10": result["metrics"]["ndcg@10"]}
        if name != "fp32":
            paired = paired_comparison(scores["fp32"], scores[name])
            out[name]["vs_fp32"] = {k: paired[k] for k in ("n", "diff", "ci95", "p", "better", "worse")}
            out[name]["share_of_fp32"] = out[name]["ndcg@10"] / out["fp32"]["ndcg@10"]
    return out


def speed_part(folder: Path, graphs: dict[str, Path], passages: list[str], rounds: int) -> dict:
    """Each graph's CPU time per call, the graphs run in turn within every round (a ratio, not a rate).

    CPU time of the calling thread (onnxruntime runs a 1-thread session in it), not wall time: on a shared
    machine a preempted call's wall time grows, its CPU time does not.
    """
    enc = OnnxEncoder(folder)
    tokens = enc.tokenizer(passages, padding=True, truncation=True, max_length=128, return_tensors="np")
    feed = {"input_ids": tokens["input_ids"], "attention_mask": tokens["attention_mask"]}
    sessions = {name: session(graphs[name], threads=1) for name in GRAPHS}
    times: dict[str, list[float]] = {name: [] for name in GRAPHS}
    for round_ in range(rounds + 1):  # the first round warms up
        for name, s in sessions.items():
            start = time.thread_time()
            s.run(None, feed)
            if round_:
                times[name].append(time.thread_time() - start)
    median = {name: float(np.median(t)) for name, t in times.items()}
    out = {}
    for name in GRAPHS:
        out[name] = {
            "cpu_ms_per_call_median": round(median[name] * 1000, 1),
            "cpu_ms_per_call_best": round(min(times[name]) * 1000, 1),
            "speed_vs_int8_per_tensor": median["int8_per_tensor"] / median[name],
            "speed_vs_fp32": median["fp32"] / median[name],
        }
    out["call"] = (
        f"{len(passages)} passages x {feed['input_ids'].shape[1]} tokens, 1 thread, CPU time, "
        f"median of {rounds} interleaved rounds"
    )
    return out


def _with_layer_outputs(graph: Path, names: list[str], work: Path) -> Path:
    model = onnx.load(str(graph))
    model.graph.output.extend(
        onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None) for n in names
    )
    path = work / f"layers_{graph.name}"
    onnx.save(model, str(path))
    return path


def _layer_outputs(fused: Path) -> list[str]:
    """Each layer's output: the second SkipLayerNormalization of the layer (after the feed-forward)."""
    skips = [n.output[0] for n in onnx.load(str(fused)).graph.node if n.op_type == "SkipLayerNormalization"]
    return skips[1::2]


def _only(fused: Path, kind: str, work: Path) -> Path:
    """Per-row int8 on one kind of projection only (qkv, attention_output, ffn_input, ffn_output)."""
    path = work / f"only_{kind}.onnx"
    quantize_rowwise(fused, path, external=False, kinds=frozenset({kind}))
    return path


def layers_part(folder: Path, graphs: dict[str, Path], passages: list[str], work: Path) -> dict:
    names = _layer_outputs(graphs["fused"])
    enc = OnnxEncoder(folder)
    tokens = enc.tokenizer(passages, padding=True, truncation=True, max_length=256, return_tensors="np")
    feed = {"input_ids": tokens["input_ids"], "attention_mask": tokens["attention_mask"]}
    real = tokens["attention_mask"].astype(bool)

    def run(graph: Path) -> list[np.ndarray]:
        return session(_with_layer_outputs(graph, names, work)).run(None, feed)

    reference = run(graphs["fused"])
    out: dict = {"passages": len(passages), "layer_relative_error": {}, "cosine_when_only_one_kind": {}}
    for name in GRAPHS[1:]:
        got = run(graphs[name])
        errors = [
            float(np.linalg.norm((g - r)[real]) / np.linalg.norm(r[real]))
            for g, r in zip(got[1:], reference[1:], strict=True)
        ]
        out["layer_relative_error"][name] = [round(e, 4) for e in errors]
        out["layer_relative_error"][name + "_vector_cosine_min"] = float(_cosines(got[0], reference[0]).min())
    for kind in ("qkv", "attention_output", "ffn_input", "ffn_output"):
        got = session(_only(graphs["fused"], kind, work)).run(None, feed)[0]
        out["cosine_when_only_one_kind"][kind] = float(_cosines(got, reference[0]).mean())
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="minilm", help="known name or model folder to export")
    parser.add_argument("--work", default=".cache/int8_quality", help="export and graphs (reused)")
    parser.add_argument("--parts", default="batch,speed,layers")
    parser.add_argument("--beir", default=".cache/perlfaq/beir", help="BEIR folder for --parts quality")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--out", default=None, help="JSON file (default: WORK/results_PARTS.json)")
    args = parser.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    folder, graphs = build_graphs(args.model, work)
    passages = [passage_text(d) for d in list(read_beir(args.beir, split="test").corpus.values())[:8]]
    results: dict = {"model": args.model, "date": time.strftime("%Y-%m-%d %H:%M")}
    parts = args.parts.split(",")
    with tempfile.TemporaryDirectory(dir=work) as tmp:
        if "batch" in parts:
            results["batch"] = batch_part(folder, graphs)
        if "quality" in parts:
            results["quality"] = quality_part(folder, graphs, args.beir)
        if "speed" in parts:
            results["speed"] = speed_part(folder, graphs, passages, args.rounds)
        if "layers" in parts:
            results["layers"] = layers_part(folder, graphs, passages[:4], Path(tmp))
    text = json.dumps(results, indent=2)
    print(text)
    Path(args.out or work / f"results_{'_'.join(parts)}.json").write_text(text + "\n")


if __name__ == "__main__":
    main()
