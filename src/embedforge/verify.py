"""The deploy check: does the served model retrieve like the checkpoint did offline?

``embedforge verify --url URL --beir DIR --reference runs/eval/eval_results.json`` embeds the BEIR corpus
and queries through the server's ``/v1/embeddings`` (batched, several requests in flight), scores retrieval
with the same code as ``embedforge eval`` (``evaluate.retrieve`` + ``evaluate.compute_metrics``) and compares
with one model's numbers in the offline report, using NVIDIA's tolerances: for nDCG@k and Recall@k,
``|served - reference| < 0.03`` when k < 5 and ``< 0.01`` when k >= 5.

It also checks every response: HTTP 200, the echoed model name, indices exactly 0..n-1, finite vectors, one
dimension across all responses (the requested one when ``dimensions`` is set), and, when the server has
``/v1/metadata`` (embedforge does), that it applies the same prompts as the reference model.

The metric differences are also judged per query: the paired 95% CI of the served-minus-reference nDCG@10
and Recall@10 (``significance``) decides when it can (inside the tolerance band: passed; outside it:
failed). On a few dozen queries the interval is usually wider than the band, and then the report says so
and NVIDIA's point tolerances decide, as named in ``decided_by``. An int8 graph checked against the fp32
eval is judged the same way, so "int8 matches fp32" is a statement with its sample size.

The result is a report dict (``passed``, ``checks``, ``metrics``, ``paired``, ``decided_by``) rendered as a
table; the CLI exits non-zero when anything failed.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from embedforge.config import VerifyConfig
from embedforge.data.formats import passage_text, read_beir
from embedforge.errors import EmbedforgeError
from embedforge.evaluate.retrieval import (
    DEFAULT_KS,
    MRR_CUTOFF,
    SIGNIFICANCE_METRICS,
    compute_metrics,
    per_query_metrics,
    retrieve,
)
from embedforge.measures.significance import paired_comparison, within_tolerance

logger = logging.getLogger(__name__)

API_KEY_ENV = "EMBEDFORGE_API_KEY"
COMPARED = ("ndcg", "recall")  # NVIDIA's deploy check compares these two families
SMALL_K = 5  # k < SMALL_K uses the looser tolerance


class VerifyError(EmbedforgeError, RuntimeError):
    """The server could not be used at all (unreachable, not ready, requests failing)."""


def _base_url(url: str) -> str:
    url = url.rstrip("/")
    return url[: -len("/v1")] if url.endswith("/v1") else url


def tolerance_for(k: int, small: float = 0.03, large: float = 0.01) -> float:
    """NVIDIA's deploy tolerance: ``small`` for k < 5, ``large`` for k >= 5."""
    return small if k < SMALL_K else large


# --------------------------------------------------------------------------------------------- reference


def load_reference(path, model: str | None = None, dimensions: int | None = None) -> dict[str, Any]:
    """One model's entry of an ``eval_results.json``: ``{"name", "metrics", "prompts", "dimension", "ks"}``.

    ``model`` picks the entry by name (default: the last model, usually the fine-tuned one); with
    ``dimensions`` the metrics for that Matryoshka size are used.
    """
    path = Path(path)
    try:
        results = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"reference {path} does not exist (run `embedforge eval` first)") from None
    except ValueError as err:
        raise ValueError(f"reference {path} is not valid JSON: {err}") from None
    models = results.get("models") if isinstance(results, dict) else None
    if not isinstance(models, dict) or not models:
        raise ValueError(
            f"reference {path} has no 'models' (expected eval_results.json from `embedforge eval`)"
        )
    if model is None:
        model = list(models)[-1]
    if model not in models:
        raise ValueError(f"reference {path} has no model '{model}'; it has {list(models)}")
    entry = models[model]
    metrics = entry["metrics"]
    full = int(entry.get("dimension") or 0)
    if dimensions is not None and dimensions != full:
        per_dim = {int(d): m for d, m in (entry.get("per_dimension") or {}).items()}
        if dimensions not in per_dim:
            raise ValueError(
                f"reference model '{model}' was not evaluated at {dimensions} dimensions "
                f"(it has {sorted(per_dim) or 'none'}); run `embedforge eval --dims {dimensions}`"
            )
        metrics = per_dim[dimensions]
    ks = (results.get("config") or {}).get("ks") or list(DEFAULT_KS)
    return {
        "name": model,
        "metrics": metrics,
        # per-query scores exist for the full size only
        "per_query": entry.get("per_query") if dimensions in (None, full) else None,
        "prompts": entry.get("prompts"),
        "dimension": full,
        "ks": [int(k) for k in ks],
        "path": str(path),
    }


# ------------------------------------------------------------------------------------------------ client


class EmbeddingsClient:
    """Sends batches to /v1/embeddings and records every contract violation it sees."""

    def __init__(self, url: str, model: str, api_key: str | None, timeout: float, encoding_format: str):
        import httpx

        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.http = httpx.Client(base_url=_base_url(url), headers=headers, timeout=timeout)
        self.model, self.encoding_format = model, encoding_format
        self.echoed: set[str] = set()
        self.index_problems: list[str] = []
        self.nonfinite = 0
        self.dims: set[int] = set()
        self.requests = 0

    def close(self) -> None:
        self.http.close()

    def embed(self, texts: Sequence[str], input_type: str, dimensions: int | None) -> np.ndarray:
        body: dict[str, Any] = {
            "model": self.model,
            "input": list(texts),
            "input_type": input_type,
            # offline eval truncates long passages at the end (sentence-transformers); ask the server to match
            "truncate": "END",
            "encoding_format": self.encoding_format,
        }
        if dimensions is not None:
            body["dimensions"] = dimensions
        response = self.http.post("/v1/embeddings", json=body)
        self.requests += 1
        if response.status_code != 200:
            raise VerifyError(f"POST /v1/embeddings answered {response.status_code}: {response.text[:500]}")
        payload = response.json()
        self.echoed.add(str(payload.get("model")))
        data = payload.get("data") or []
        indices = [d.get("index") for d in data]
        if sorted(i for i in indices if isinstance(i, int)) != list(range(len(texts))) or len(indices) != len(
            texts
        ):
            self.index_problems.append(
                f"{len(texts)} inputs got indices {indices[:10]}{'...' if len(indices) > 10 else ''}"
            )
        vectors: list[np.ndarray | None] = [None] * len(texts)
        for d in data:
            i = d.get("index")
            if isinstance(i, int) and 0 <= i < len(texts):
                vectors[i] = self._vector(d.get("embedding"))
        if any(v is None for v in vectors):
            raise VerifyError(f"a response for {len(texts)} inputs is missing embeddings")
        for v in vectors:
            self.dims.add(int(v.shape[0]))
            if not np.all(np.isfinite(v)):
                self.nonfinite += 1
        if len(self.dims) > 1:
            raise VerifyError(f"responses mix dimensions {sorted(self.dims)}")
        return np.stack(vectors).astype(np.float32)

    def _vector(self, value) -> np.ndarray:
        if isinstance(value, str):
            return np.frombuffer(base64.b64decode(value), dtype="<f4").astype(np.float32)
        return np.asarray(value, dtype=np.float32)


def embed_all(
    client: EmbeddingsClient, texts: list[str], input_type: str, dims, batch_size: int, concurrency: int
):
    """Embed ``texts`` through the server in batches, ``concurrency`` requests at a time, in input order."""
    batches = [texts[i : i + batch_size] for i in range(0, len(texts), batch_size)]
    if not batches:
        return np.zeros((0, 0), dtype=np.float32)
    with ThreadPoolExecutor(max(1, concurrency)) as pool:
        parts = list(pool.map(lambda b: client.embed(b, input_type, dims), batches))
    return np.concatenate(parts)


class ServedEncoder:
    """A served model behind the ``Encoder`` protocol: the same calls as a checkpoint, answered over
    ``/v1/embeddings`` in batches, ``concurrency`` requests at a time; ``client`` keeps its records of
    every response. The server applies its own prompts; ``prompts`` says which (from /v1/metadata)."""

    def __init__(self, client: EmbeddingsClient, concurrency: int = 4, prompts: dict[str, str] | None = None):
        self.client = client
        self.concurrency = concurrency
        self.prompts = dict(prompts or {"query": "", "passage": ""})
        self._dimension: int | None = None

    @property
    def name(self) -> str:
        return self.client.model

    @property
    def dimension(self) -> int:
        """The full size, asked once with a one-text request (kept out of ``client``'s records)."""
        if self._dimension is None:
            body = {"model": self.client.model, "input": ["dimension"], "input_type": "query"}
            response = self.client.http.post("/v1/embeddings", json=body)
            if response.status_code != 200:
                raise VerifyError(
                    f"POST /v1/embeddings answered {response.status_code}: {response.text[:500]}"
                )
            self._dimension = len(response.json()["data"][0]["embedding"])
        return self._dimension

    def encode_queries(
        self,
        texts: Sequence[str],
        *,
        batch_size: int = 32,
        dimensions: int | None = None,
        progress: bool = False,
    ) -> np.ndarray:
        """Query vectors from the server (``progress`` is accepted for the protocol; requests are logged)."""
        return embed_all(self.client, list(texts), "query", dimensions, batch_size, self.concurrency)

    def encode_passages(
        self,
        texts: Sequence[str],
        *,
        batch_size: int = 32,
        dimensions: int | None = None,
        progress: bool = False,
    ) -> np.ndarray:
        """Passage vectors from the server, as ``encode_queries``."""
        return embed_all(self.client, list(texts), "passage", dimensions, batch_size, self.concurrency)


def _wait_ready(client: EmbeddingsClient, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    last = "no answer"
    while True:
        try:
            r = client.http.get("/v1/health/ready")
            if r.status_code == 200:
                return "ready"
            last = f"HTTP {r.status_code}: {r.text[:200]}"
        except Exception as err:  # connection refused while the server starts
            last = f"{type(err).__name__}: {err}"
        if time.monotonic() > deadline:
            raise VerifyError(f"server at {client.http.base_url} is not ready after {timeout:.0f} s ({last})")
        time.sleep(0.5)


def _served_model(client: EmbeddingsClient) -> str:
    r = client.http.get("/v1/models")
    if r.status_code != 200:
        raise VerifyError(f"GET /v1/models answered {r.status_code}: {r.text[:300]}")
    data = r.json().get("data") or []
    if not data:
        raise VerifyError("GET /v1/models lists no model")
    return str(data[0]["id"])


def _served_prompts(client: EmbeddingsClient) -> dict[str, str] | None:
    try:
        r = client.http.get("/v1/metadata")
        if r.status_code == 200:
            prompts = (r.json().get("model") or {}).get("prompts")
            return dict(prompts) if isinstance(prompts, dict) else None
    except Exception:  # a server without our metadata: nothing to compare
        return None
    return None


# ------------------------------------------------------------------------------------------------ verify


def metric_rows(
    served: dict[str, float], reference: dict, ks: Sequence[int], tolerance_small_k: float, tolerance: float
) -> list[dict[str, Any]]:
    """One row per nDCG@k / Recall@k the reference has: served vs reference and NVIDIA's tolerance at k."""
    rows = []
    for family in COMPARED:
        for k in ks:
            name = f"{family}@{k}"
            if name not in reference:
                continue
            tol = tolerance_for(k, tolerance_small_k, tolerance)
            diff = abs(served[name] - float(reference[name]))
            rows.append({"metric": name, "k": k, "served": served[name], "reference": float(reference[name]),
                         "diff": diff, "tolerance": tol, "ok": diff < tol})  # fmt: skip
    return rows


def _check(name: str, ok: bool | None, detail: str) -> dict[str, Any]:
    """One row of the report's checks: passed (True), failed (False) or not compared (None)."""
    return {"name": name, "ok": ok, "detail": detail}


def _prompt_check(served_prompts: dict[str, str] | None, ref: dict[str, Any]) -> dict[str, Any]:
    """Does the server apply the reference model's prompts (when it says which, on /v1/metadata)?"""
    if served_prompts is None or not ref.get("prompts"):
        return _check("prompts", None, "not compared (no /v1/metadata prompts or none in the reference)")
    same = {k: served_prompts.get(k, "") for k in ("query", "passage")} == {
        k: ref["prompts"].get(k, "") for k in ("query", "passage")
    }
    return _check("prompts", same, f"served {served_prompts}, reference {ref['prompts']}")


def _embed_dataset(client: EmbeddingsClient, dataset, ref, config, checks: list) -> tuple | None:
    """Embed the corpus and the judged queries through the server: ``(queries, passages, query ids,
    passage ids)``, or None when the server could not be used (then the last check says why)."""
    try:
        checks.append(_check("health", True, _wait_ready(client, config.timeout)))
        client.model = config.model or _served_model(client)
        served_prompts = _served_prompts(client)
        checks.append(_prompt_check(served_prompts, ref))
        encoder = ServedEncoder(client, config.concurrency, served_prompts)
        judged = [str(q) for q, docs in dataset.qrels.items() if docs]
        query_ids = [q for q in judged if q in dataset.queries]
        doc_ids = [str(d) for d in dataset.corpus]
        logger.info(
            "embedding %d passages and %d queries through %s",
            len(doc_ids),
            len(query_ids),
            client.http.base_url,
        )
        wanted = {"batch_size": config.batch_size, "dimensions": config.dimensions}
        passages = encoder.encode_passages(
            [passage_text(dataset.corpus[d]) for d in dataset.corpus], **wanted
        )
        queries = encoder.encode_queries([dataset.queries[q] for q in query_ids], **wanted)
        checks.append(_check("requests", True, f"{client.requests} requests answered 200"))
        return queries, passages, query_ids, doc_ids
    except VerifyError as err:
        checks.append(_check("requests", False, str(err)))
        return None
    finally:
        client.close()


def _response_checks(client: EmbeddingsClient, want: int | None) -> list[dict[str, Any]]:
    """What every response had to get right: the echoed model, the indices, finite vectors, one dimension."""
    echoed, dims_seen = sorted(client.echoed), sorted(client.dims)
    problems = client.index_problems
    return [
        _check(
            "model name", echoed == [client.model], f"requested '{client.model}', responses said {echoed}"
        ),
        _check(
            "indices", not problems, "0..n-1 in every response" if not problems else "; ".join(problems[:5])
        ),
        _check(
            "finite",
            client.nonfinite == 0,
            "all vectors finite" if not client.nonfinite else f"{client.nonfinite} vectors with NaN/inf",
        ),
        _check(
            "dimension",
            len(dims_seen) == 1 and (want is None or dims_seen[0] == want),
            f"responses {dims_seen}, expected {want}",
        ),
    ]


def _score(vectors: tuple, dataset, ref: dict[str, Any], config, checks: list) -> dict[str, Any]:
    """Retrieval metrics of the served vectors against the reference's: the report's ``metrics`` rows, its
    ``served_metrics`` and the ``paired`` per-query judgement."""
    queries, passages, query_ids, doc_ids = vectors
    wanted_ks = sorted({int(k) for k in (config.ks or ref["ks"])})
    depth = max(max(wanted_ks), MRR_CUTOFF)
    run = retrieve(queries, passages, doc_ids, query_ids, top_k=depth)
    served_metrics = compute_metrics(dataset.qrels, run, wanted_ks)
    served_per_query = per_query_metrics(dataset.qrels, run, [10])  # the paired test's @10 metrics
    paired = paired_decision(served_per_query, ref["per_query"], config.tolerance)
    rows = metric_rows(served_metrics, ref["metrics"], wanted_ks, config.tolerance_small_k, config.tolerance)
    if not rows:
        checks.append(_check("metrics", False, f"no nDCG@k / Recall@k for k in {wanted_ks} in the reference"))
    return {"metrics": rows, "served_metrics": served_metrics, "paired": paired}


def verify(config: VerifyConfig, evidence: str | None = None) -> dict[str, Any]:
    """Evaluate the served model on ``config.beir`` and compare with ``config.reference`` (an
    ``eval_results.json``).

    ``evidence``: what the BEIR folder's questions are (``embedforge run`` says whether they are the user's
    own or generated), named in ``decided_by``.

    Returns:
        ``{"passed", "url", "model", "reference", "checks": [{"name", "ok", "detail"}], "metrics":
        [{"metric", "k", "served", "reference", "diff", "tolerance", "ok"}], "served_metrics", "seconds",
        "table"}``; also written to ``config.out`` as JSON when given.
    """
    started = time.perf_counter()
    ref = load_reference(config.reference, config.reference_model, config.dimensions)
    dataset = read_beir(config.beir, split=config.split)
    api_key = config.api_key if config.api_key is not None else os.environ.get(API_KEY_ENV) or None
    client = EmbeddingsClient(config.url, config.model or "", api_key, config.timeout, config.encoding_format)
    checks: list[dict[str, Any]] = []
    scored: dict[str, Any] = {"metrics": [], "served_metrics": {}, "paired": None}
    vectors = _embed_dataset(client, dataset, ref, config, checks)
    if vectors is not None:
        checks += _response_checks(client, config.dimensions or (ref["dimension"] or None))
        scored = _score(vectors, dataset, ref, config, checks)
    metrics_ok, decided_by = decide(scored["metrics"], scored["paired"])
    if evidence:
        decided_by += f"; the queries: {evidence}"
    report = {
        "passed": all(c["ok"] is not False for c in checks) and metrics_ok,
        "url": _base_url(config.url),
        "model": client.model,
        "dimensions": config.dimensions,
        "reference": {k: ref[k] for k in ("path", "name", "dimension", "prompts")},
        "dataset": {
            "beir": str(config.beir),
            "split": config.split,
            "queries": len(dataset.qrels),
            "passages": len(dataset.corpus),
        },  # fmt: skip
        "checks": checks,
        **scored,
        "decided_by": decided_by,
        "tolerances": {"k<5": config.tolerance_small_k, "k>=5": config.tolerance},
        "seconds": round(time.perf_counter() - started, 2),
    }
    report["table"] = format_report(report)
    if config.out:
        out = Path(config.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2) + "\n")
    return report


def paired_decision(
    served: dict[str, dict[str, float]], reference: dict[str, dict[str, float]] | None, tolerance: float
) -> dict[str, Any] | None:
    """Served minus reference per query, for nDCG@10 and Recall@10: the paired 95% CI judged against
    ``tolerance`` (``significance.within_tolerance``). None when the reference has no per-query scores."""
    if not reference:
        return None
    judged: dict[str, Any] = {}
    for metric in SIGNIFICANCE_METRICS:
        ref = {q: v[metric] for q, v in reference.items() if metric in v}
        result = paired_comparison(ref, {q: v[metric] for q, v in served.items() if metric in v})
        judged[metric] = {k: result[k] for k in ("n", "diff", "ci95", "p")} | within_tolerance(
            result, tolerance
        )
    verdicts = {entry["verdict"] for entry in judged.values()}
    verdict = "beyond" if "beyond" in verdicts else "within" if verdicts == {"within"} else "undecided"
    return {"verdict": verdict, "queries": judged[SIGNIFICANCE_METRICS[0]]["n"], "metrics": judged}


def decide(rows: list[dict[str, Any]], paired: dict[str, Any] | None) -> tuple[bool, str]:
    """(metrics ok, what decided): the paired CI when it can decide, else NVIDIA's point tolerances."""
    if not rows:
        return False, "nothing compared"
    points_ok = all(r["ok"] for r in rows)
    if paired is None:
        return points_ok, "NVIDIA's point tolerances (the reference has no per-query scores)"
    n = paired["queries"]
    if paired["verdict"] == "within":
        return True, f"the paired 95% CI over {n} queries (inside the tolerance)"
    if paired["verdict"] == "beyond":
        return False, f"the paired 95% CI over {n} queries (outside the tolerance)"
    reasons = "; ".join(f"{m}: {e['why']}" for m, e in paired["metrics"].items() if e["verdict"] != "within")
    return (
        points_ok,
        f"NVIDIA's point tolerances: the paired CI over {n} queries could not decide ({reasons})",
    )


def format_report(report: dict[str, Any]) -> str:
    """The readable table ``embedforge verify`` prints."""
    ref = report["reference"]
    lines = [
        f"served '{report['model']}' at {report['url']} vs reference '{ref['name']}' ({ref['path']})"
        + (f", {report['dimensions']} dims" if report.get("dimensions") else ""),
        "",
        f"{'check':<12} {'result':<6} detail",
    ]
    for c in report["checks"]:
        result = {True: "ok", False: "FAIL", None: "-"}[c["ok"]]
        lines.append(f"{c['name']:<12} {result:<6} {c['detail']}")
    if report["metrics"]:
        lines += ["", f"{'metric':<12} {'served':>8} {'reference':>10} {'|diff|':>8} {'< tol':>6}  result"]
        for r in report["metrics"]:
            lines.append(
                f"{r['metric']:<12} {r['served']:>8.4f} {r['reference']:>10.4f} {r['diff']:>8.4f} "
                f"{r['tolerance']:>6.2f}  {'ok' if r['ok'] else 'DRIFT'}"
            )
    for metric, entry in ((report.get("paired") or {}).get("metrics") or {}).items():
        low, high = entry["ci95"]
        lines.append(
            f"{metric} per query (served - reference): {entry['diff']:+.4f}, 95% CI [{low:+.4f}, {high:+.4f}] "
            f"over {entry['n']} queries: {entry['verdict']} +-{entry['tolerance']}"
        )
    drifted = [r["metric"] for r in report["metrics"] if not r["ok"]]
    failed = [c["name"] for c in report["checks"] if c["ok"] is False]
    lines += ["", f"decided by {report['decided_by']}"] if report.get("decided_by") else []
    lines.append("")
    if report["passed"]:
        lines.append(
            f"VERIFY PASSED: {len(report['metrics'])} metrics within tolerance ({report['seconds']} s)"
        )
    else:
        why = []
        if (report.get("paired") or {}).get("verdict") == "beyond":
            why.append("drift per query: the 95% CI of the difference lies outside the tolerance")
        elif drifted:
            why.append(f"drift in {', '.join(drifted)}")
        if failed:
            why.append(f"failed checks: {', '.join(failed)}")
        lines.append("VERIFY FAILED: " + ("; ".join(why) or "nothing compared"))
    return "\n".join(lines)


def run_verify(config: VerifyConfig, evidence: str | None = None) -> dict[str, Any]:
    """``embedforge verify``: ``verify`` once the config names its BEIR folder and reference."""
    if not config.beir:
        raise ValueError("verify needs a BEIR folder: --beir DIR")
    if not config.reference:
        raise ValueError("verify needs the offline results: --reference runs/eval/eval_results.json")
    return verify(config, evidence)
