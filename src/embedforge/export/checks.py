"""What an export must pass before it is kept, and what a reduced-precision copy is measured by.

* the saved tokenizer, reloaded, tokenizes exactly as the model does;
* parity with the PyTorch ``BiEncoder`` on mixed-length batches (very short and truncated-long texts
  together, batch 1 and a full batch, full and smaller ``dimensions``, queries and passages);
* for an int8 / fp16 copy: mean cosine to fp32 on 32 probe texts, how much a vector depends on its batch,
  texts/s, and the nDCG@10 / Recall@10 delta on a BEIR folder.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from embedforge.errors import EmbedforgeError
from embedforge.export.encoder import OnnxEncoder
from embedforge.export.folder import INPUT_NAMES, OUTPUT_NAME

# max abs difference per vector element allowed for fp16 weights vs PyTorch fp32 (measured ~5e-4 on MiniLM)
FP16_TOLERANCE = 5e-3
# a reduced-precision copy whose mean cosine to fp32 on the probe texts is lower fails the export
MIN_QUANTIZED_COSINE = 0.95


class ExportError(EmbedforgeError, RuntimeError):
    """An export that failed a check; ``report`` holds what was measured (nothing was written to the output)."""

    def __init__(self, message: str, report: dict[str, Any] | None = None):
        super().__init__(message)
        self.report = report or {}


_LONG_TEXT = " ".join(
    (
        "PostgreSQL keeps old row versions until VACUUM removes them, so a table that sees many updates grows "
        "until autovacuum catches up; VACUUM FULL rewrites the whole table into a new file and returns the "
        "space to the operating system, but it takes an exclusive lock for as long as it runs."
    ).split()
    * 12
)  # ~560 words: longer than any model's usual token limit, so truncation is part of the check

PARITY_TEXTS = (  # padded together in one batch: 1-token texts next to one cut at the model's token limit
    "a",
    _LONG_TEXT,
    "ok?",
    "How do I reclaim disk space after deleting many rows?",
    "Streaming replication ships write-ahead log records to a standby server.",
    "x y",
)

PROBE_TEXTS = (  # 32 mixed texts: quality of reduced-precision copies and the speed figure
    "how do I free space taken by deleted rows in postgres?",
    "what makes sourdough rise?",
    "why does the sea level go up and down every day?",
    "green tea water temperature",
    "ok",
    "VACUUM reclaims storage occupied by dead tuples in PostgreSQL tables.",
    "A B-tree index speeds up lookups and range scans on a column.",
    "The write-ahead log records every change before it reaches the data files.",
    "Sourdough bread rises with wild yeast and lactic acid bacteria.",
    "Ocean tides are caused by the gravitational pull of the moon and, to a lesser degree, the sun.",
    "Stars fuse hydrogen into helium in their cores.",
    "Lubricate a bicycle chain every few hundred kilometres, more often after riding in the rain.",
    "Boil pasta in salted water until al dente, then drain it and toss it with the sauce.",
    "error: could not connect to server: Connection refused",
    "SELECT count(*) FROM orders WHERE created_at > now() - interval '1 day';",
    "Die Katze schläft auf dem Sofa.",
    "how many partitions should a kafka topic have",
    "Photosynthesis converts light energy into chemical energy stored in glucose.",
    "What is the capital of Australia?",
    "Canberra was chosen as a compromise between Sydney and Melbourne.",
    "refund policy for damaged items",
    "Items that arrive damaged can be returned within 30 days for a full refund or a replacement.",
    "The mitochondria is the powerhouse of the cell.",
    "best way to learn python",
    "Python's list comprehensions build lists from iterables in a single readable expression.",
    "A heat pump moves heat from outside air into the house, even when it is cold outside.",
    "symptoms of vitamin D deficiency",
    "Fatigue, bone pain and muscle weakness can be signs of low vitamin D levels.",
    "?",
    _LONG_TEXT[: len(_LONG_TEXT) // 2],
    "Transformers use self-attention to relate every token in a sequence to every other token.",
    "how to reset a router to factory settings",
)


def max_graph_diff(reference: OnnxEncoder, other: Path, texts: Sequence[str] = PARITY_TEXTS) -> float:
    """Max abs difference between ``reference`` and the graph file ``other`` on one mixed-length batch."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(other), options, providers=["CPUExecutionProvider"])
    tokens = reference.tokenizer(
        list(texts), padding=True, truncation=True, max_length=reference.max_seq_length, return_tensors="np"
    )
    feed = {name: tokens[name].astype(np.int64) for name in INPUT_NAMES}
    got = session.run([OUTPUT_NAME], feed)[0]
    return float(np.abs(got - reference.run(feed["input_ids"], feed["attention_mask"])).max())


def parity_dims(matryoshka_dims: Sequence[int], dimension: int) -> list[int]:
    """The full size and up to two smaller supported sizes (the smallest and a middle one)."""
    smaller = sorted(d for d in matryoshka_dims if d < dimension)
    picks = {dimension}
    if smaller:
        picks |= {smaller[0], smaller[len(smaller) // 2]}
    return sorted(picks, reverse=True)


def parity_check(
    encoder,
    onnx_encoder: OnnxEncoder,
    dims: Sequence[int],
    tolerance: float,
    texts: Sequence[str] = PARITY_TEXTS,
) -> dict[str, Any]:
    """Max abs difference, ONNX vs the PyTorch ``BiEncoder``, on mixed-length batches of size 1 and N.

    The ONNX rows keep the given order, so very short and truncated-long texts are padded together. Every
    size in ``dims`` is checked on the full batch, for queries and passages (passages skipped when the
    prompts are equal); the full size uses the graph's default ``dimensions`` and is also checked one text at
    a time. PyTorch runs the same batches. ``passed`` also needs every ONNX vector to be unit-norm within 1e-4.
    """
    texts = list(texts)
    kinds = ["query"] if encoder.prompts["query"] == encoder.prompts["passage"] else ["query", "passage"]
    by_dimension: dict[str, float] = {}
    by_batch_size: dict[str, float] = {}
    worst_norm = 0.0
    for dim in dims:
        arg = None if dim == encoder.dimension else dim
        batch_sizes = sorted({1, len(texts)}) if dim == encoder.dimension else [len(texts)]
        for kind in kinds:
            torch_encode = encoder.encode_queries if kind == "query" else encoder.encode_passages
            for batch_size in batch_sizes:
                # the same batches on both sides: with left padding and absolute positions (BERT) a vector
                # depends on how much padding its batch needs
                expected = torch_encode(texts, dimensions=arg, batch_size=batch_size)
                got = onnx_encoder.encode(
                    texts, encoder.prompts[kind], batch_size=batch_size, dimensions=arg, sort_by_length=False
                )
                if got.shape != expected.shape:
                    raise ExportError(
                        f"ONNX output shape {got.shape} != PyTorch {expected.shape} at dim {dim}"
                    )
                diff = float(np.abs(got.astype(np.float64) - expected).max())
                by_dimension[str(dim)] = max(by_dimension.get(str(dim), 0.0), diff)
                by_batch_size[str(batch_size)] = max(by_batch_size.get(str(batch_size), 0.0), diff)
                worst_norm = max(worst_norm, float(np.abs(np.linalg.norm(got, axis=1) - 1.0).max()))
    worst = max(by_dimension.values())
    tokens = onnx_encoder.tokenizer(texts, truncation=True, max_length=onnx_encoder.max_seq_length)
    return {
        "reference": "BiEncoder (PyTorch) encode",
        "tolerance": tolerance,
        "max_abs_diff": worst,
        "max_norm_error": worst_norm,
        "passed": bool(worst <= tolerance and worst_norm <= 1e-4),
        "by_dimension": by_dimension,
        "by_batch_size": by_batch_size,
        "kinds": kinds,
        "num_texts": len(texts),
        "token_lengths": [len(ids) for ids in tokens["input_ids"]],
    }


def check_tokenizer(encoder, onnx_encoder: OnnxEncoder, info: dict[str, Any]) -> None:
    """The saved tokenizer, reloaded, must give the token ids the model itself gets (prompts included).

    A tokenizer changed in memory (say a decoder's BOS/EOS switches) may not survive ``save_pretrained``;
    this names that cause instead of leaving it to show up as a parity difference.
    """
    transformer = encoder.model[0]
    for kind in ("query", "passage"):
        texts = [encoder.prompts[kind] + t for t in PARITY_TEXTS]
        expected = transformer.preprocess(texts) if hasattr(transformer, "preprocess") else None
        if expected is None:
            expected = transformer.tokenize(texts)
        got = onnx_encoder.tokenizer(
            texts, padding=True, truncation=True, max_length=onnx_encoder.max_seq_length, return_tensors="np"
        )
        for key in ("input_ids", "attention_mask"):
            want = np.asarray(expected[key])
            if want.shape != got[key].shape or not np.array_equal(want, got[key]):
                row = 0 if want.shape != got[key].shape else int(np.argmax((want != got[key]).any(axis=1)))
                model_ids = np.asarray(expected["input_ids"])[row][
                    np.asarray(expected["attention_mask"])[row] > 0
                ]
                saved_ids = got["input_ids"][row][got["attention_mask"][row] > 0]
                raise ExportError(
                    f"the saved tokenizer does not reproduce the model's tokenization ({kind} text {row}: "
                    f"model {model_ids[:10].tolist()}, reloaded {saved_ids[:10].tolist()}, padding "
                    f"{transformer.tokenizer.padding_side} vs {onnx_encoder.tokenizer.padding_side}); "
                    "a setting changed on the tokenizer in memory was not saved",
                    info,
                )


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a.astype(np.float64) * b).sum(axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def quality_vs_fp32(
    fp32: OnnxEncoder, other: OnnxEncoder, texts: Sequence[str] = PROBE_TEXTS, dims: Sequence[int] = ()
) -> dict[str, Any]:
    """Cosine of ``other``'s vectors to fp32's, queries and passages, at full size and at each of ``dims``."""
    result: dict[str, Any] = {"probe_texts": len(texts)}
    for dim in [fp32.dimension, *[d for d in dims if d != fp32.dimension]]:
        options = {"dimensions": None if dim == fp32.dimension else dim, "batch_size": 8}
        cos = np.concatenate(
            [
                _cosines(other.encode_queries(texts, **options), fp32.encode_queries(texts, **options)),
                _cosines(other.encode_passages(texts, **options), fp32.encode_passages(texts, **options)),
            ]
        )
        entry = {"mean_cosine_to_fp32": float(cos.mean()), "min_cosine_to_fp32": float(cos.min())}
        if dim == fp32.dimension:
            result.update(entry)
        else:
            result.setdefault("by_dimension", {})[str(dim)] = entry
    return result


def batch_consistency(encoder: OnnxEncoder, texts: Sequence[str] = PROBE_TEXTS) -> float:
    """Min cosine between each text embedded alone and inside one batch of all ``texts``.

    fp32 and the per-row int8 give ~1.0. A graph that quantizes activations with one scale per tensor (per
    batch, as onnxruntime's ``quantize_dynamic`` does) makes a vector depend on what it was batched with
    (padding included), so a server that batches requests would return different vectors for one text.
    """
    alone = encoder.encode_passages(texts, batch_size=1)
    together = encoder.encode_passages(texts, batch_size=len(texts))
    return float(_cosines(alone, together).min())


def measure_speed(encoder: OnnxEncoder, texts: Sequence[str] = PROBE_TEXTS, repeats: int = 2) -> float:
    """Texts per second for one batch of ``texts`` (tokenization included), best of ``repeats`` after a warm-up."""
    encoder.encode_passages(texts, batch_size=len(texts))
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        encoder.encode_passages(texts, batch_size=len(texts))
        best = min(best, time.perf_counter() - start)
    return len(texts) / best


BEIR_METRICS = ("ndcg@10", "recall@10")
PAIRED_TOLERANCE = 0.01  # NVIDIA's deploy tolerance for nDCG@k at k >= 5, as verify uses


def beir_scores(encoder: OnnxEncoder, dataset) -> tuple[dict[str, float], dict[str, float]]:
    """(mean nDCG@10 and Recall@10, per-query nDCG@10) on a BEIR dataset."""
    from embedforge.evaluate.retrieval import evaluate_dataset

    result = evaluate_dataset(encoder, dataset, ks=(1, 5, 10), progress=False)
    per_query = {q: float(v["ndcg@10"]) for q, v in result["per_query"].items()}
    return {m: float(result["metrics"][m]) for m in BEIR_METRICS}, per_query


def paired_vs_fp32(fp32: dict[str, float], other: dict[str, float], tolerance: float) -> dict[str, Any]:
    """The copy's per-query nDCG@10 minus fp32's: mean, paired 95% CI, p, and whether the CI shows the copy
    within ``tolerance`` of fp32 (``significance.within_tolerance``; on a few dozen queries it cannot)."""
    from embedforge.measures.significance import paired_comparison, within_tolerance

    result = paired_comparison(fp32, other)
    return {k: result[k] for k in ("n", "diff", "ci95", "p")} | within_tolerance(result, tolerance)


def measure_variant(
    fp32: OnnxEncoder,
    other: OnnxEncoder,
    *,
    dims: Sequence[int],
    fp32_speed: float | None = None,
    beir: dict | None = None,
) -> dict[str, Any]:
    """A reduced-precision copy against fp32: cosines (full size and ``dims``), batch dependence, file
    sizes, texts/s when ``fp32_speed`` (fp32's, measured once) is given, and with ``beir``
    (``{"dataset", "split", "data", "fp32", "fp32_per_query"}``) the metric deltas and the paired CI of
    the per-query nDCG@10 difference judged against ``PAIRED_TOLERANCE``."""
    variant = other.variant
    report: dict[str, Any] = quality_vs_fp32(fp32, other, dims=dims)
    report["min_cosine_alone_vs_batched"] = batch_consistency(other)
    if fp32_speed is not None:
        report["speed"] = {
            "batch": len(PROBE_TEXTS),
            "fp32_texts_per_s": fp32_speed,
            f"{variant}_texts_per_s": round(measure_speed(other), 1),
            "note": "in-process onnxruntime CPU, one batch of mixed texts, tokenization included",
        }
    report["file_mb"] = {
        "fp32": round(fp32.model_file.stat().st_size / 1e6, 1),
        variant: round(other.model_file.stat().st_size / 1e6, 1),
    }
    if beir is not None:
        scores, per_query = beir_scores(other, beir["data"])
        report["beir"] = {
            "dataset": beir["dataset"],
            "split": beir["split"],
            "fp32": beir["fp32"],
            variant: scores,
            "delta": {m: scores[m] - beir["fp32"][m] for m in BEIR_METRICS},
            "paired_ndcg@10": paired_vs_fp32(beir["fp32_per_query"], per_query, PAIRED_TOLERANCE),
        }
    return report
