"""The embedding server through a real uvicorn server on a loopback port: the OpenAI client unchanged,
raw HTTP for every field and error path, batching under concurrency, the bounded queue, auth, metrics,
the ONNX runtime, and `embedforge serve` shutting down gracefully with a request in flight."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import onnx as onnx_lib
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from embedforge.cli import main as cli_main
from embedforge.export import OnnxEncoder
from embedforge.models.bi_encoder import BiEncoder
from embedforge.serve import OnnxRuntime, TorchRuntime, load_runtime
from embedforge.serve.app import MISSING_INPUT_TYPE, create_app
from embedforge.serve.server import ServerThread, free_port

ATOL = 1e-5
TEXTS = [
    "How do I reclaim disk space after deleting rows in PostgreSQL?",
    "VACUUM reclaims storage occupied by dead tuples.",
    "Sourdough bread rises with wild yeast.",
    "Stars fuse hydrogen into helium in their cores.",
]
COOKING = "bread flour yeast oven dough butter sugar salt".split()
ASTRONOMY = "star planet orbit galaxy comet moon telescope nebula".split()
# 400 one-token words: cooking first, astronomy last, so START and END truncation give different vectors
LONG_TEXT = " ".join(COOKING * 25 + ASTRONOMY * 25)
API_KEY = "test-key-123"


@contextlib.contextmanager
def running(runtime, **settings):
    with ServerThread(create_app(runtime, settings)) as server:
        yield server


def _url(server) -> str:
    return server if isinstance(server, str) else server.url


def post(server, body, **kwargs) -> httpx.Response:
    return httpx.post(_url(server) + "/v1/embeddings", json=body, timeout=60, **kwargs)


def vectors_of(response: httpx.Response) -> np.ndarray:
    data = response.json()["data"]
    assert [d["index"] for d in data] == list(range(len(data)))
    rows = []
    for d in data:
        emb = d["embedding"]
        rows.append(np.frombuffer(base64.b64decode(emb), "<f4") if isinstance(emb, str) else np.asarray(emb))
    return np.asarray(rows, dtype=np.float32)


def metric_samples(server, **headers) -> dict[tuple[str, tuple], float]:
    text = httpx.get(_url(server) + "/v1/metrics", headers=headers, timeout=30).text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def start_tail_text(tokenizer, text: str, budget: int) -> str:
    """The text whose tokens are the last ``budget`` content tokens of ``text`` (checked to round-trip)."""
    content = tokenizer(text, add_special_tokens=False)["input_ids"]
    tail = content[-budget:]
    tail_text = tokenizer.decode(tail)
    assert tokenizer(tail_text, add_special_tokens=False)["input_ids"] == tail
    return tail_text


# ------------------------------------------------------------------------------------------ servers


@pytest.fixture(scope="module")
def sym():
    """minilm (no prompts) on PyTorch, with small limits so every limit is reachable."""
    runtime = TorchRuntime("minilm")
    with running(runtime, max_inputs=8, max_input_chars=3000, max_body_bytes=20_000) as server:
        yield server


@pytest.fixture(scope="module")
def asym_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("asym") / "model"
    BiEncoder.load("minilm", query_prompt="query: ", passage_prompt="passage: ").save(folder)
    return folder


@pytest.fixture(scope="module")
def asym_encoder(asym_dir) -> BiEncoder:
    return BiEncoder.load(asym_dir)


@pytest.fixture(scope="module")
def asym(asym_dir):
    """minilm saved with query/passage prompts (an asymmetric model), behind an API key."""
    runtime = TorchRuntime(asym_dir)
    with running(runtime, served_model_name="asym-minilm", api_key=API_KEY) as server:
        yield server


class Gated:
    """A real runtime whose model calls wait at a gate the test opens, and which records each call's size.

    With the gate closed the test knows the model is busy and decides what queues up behind it (checked on
    the batcher's own counters), so batching is asserted by order and counts, never by timing.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.gate, self.entered = threading.Event(), threading.Event()
        self.gate.set()
        self.calls: list[int] = []

    def _forward(self, input_ids, attention_mask, dimensions):
        self.calls.append(len(input_ids))
        self.entered.set()
        assert self.gate.wait(300), "the test never opened the gate"
        return super()._forward(input_ids, attention_mask, dimensions)

    @contextlib.contextmanager
    def closed(self):
        """Close the gate (forgetting earlier calls); it opens again on leaving, whatever happened."""
        self.calls.clear()
        self.entered.clear()
        self.gate.clear()
        try:
            yield self
        finally:
            self.gate.set()


class GatedRuntime(Gated, TorchRuntime):
    """minilm on PyTorch behind the gate."""


class GatedOnnxRuntime(Gated, OnnxRuntime):
    """An export folder on ONNX Runtime behind the gate."""


def wait_until(condition, what: str, timeout: float = 300) -> None:
    """Poll ``condition`` until it holds (the state is read, not guessed from elapsed time)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


@contextlib.contextmanager
def gated_server(**settings):
    """(server, runtime, batcher) for a ``GatedRuntime`` of minilm."""
    runtime = GatedRuntime("minilm")
    app = create_app(runtime, settings)
    with ServerThread(app) as server:
        yield server, runtime, app.state.batcher


@pytest.fixture(scope="module")
def gated():
    with gated_server(max_queue=6, max_inputs=2, max_wait_ms=1) as parts:
        yield parts


@pytest.fixture(scope="module")
def onnx_dir(tmp_path_factory) -> Path:
    """What `embedforge export minilm OUT --quantize int8` ships: fp32 and the fused int8 graph (int8 Q/K/V)."""
    folder = tmp_path_factory.mktemp("export") / "onnx"
    assert cli_main(["export", "minilm", str(folder), "speed=false", "--quantize", "int8"]) == 0
    return folder


@pytest.fixture(scope="module")
def onnx_server(onnx_dir):
    runtime = load_runtime(onnx_dir)
    assert isinstance(runtime, OnnxRuntime)
    with running(runtime) as server:
        yield server


# ------------------------------------------------------------------------------ the OpenAI client


def test_openai_client_default_base64_matches_in_process(sym, minilm):
    sent = []
    http = httpx.Client(event_hooks={"request": [lambda request: sent.append(json.loads(request.content))]})
    client = openai.OpenAI(base_url=sym.url + "/v1", api_key="unused", http_client=http, max_retries=0)
    result = client.embeddings.create(model="minilm", input=TEXTS, extra_body={"input_type": "query"})
    assert sent[-1]["encoding_format"] == "base64"  # what the client does when the caller leaves it out
    assert sent[-1]["input_type"] == "query"
    got = np.asarray([d.embedding for d in result.data], dtype=np.float32)
    np.testing.assert_allclose(got, minilm.encode_queries(TEXTS), atol=ATOL)
    assert [d.index for d in result.data] == [0, 1, 2, 3]
    assert result.model == "minilm" and result.object == "list"
    tokens = sum(len(minilm.model.tokenizer(t)["input_ids"]) for t in TEXTS)
    assert result.usage.prompt_tokens == tokens == result.usage.total_tokens


def test_openai_client_dimensions_and_float(sym, minilm):
    client = openai.OpenAI(base_url=sym.url + "/v1", api_key="unused", max_retries=0)
    result = client.embeddings.create(model="minilm", input=TEXTS[:2], dimensions=128)
    got = np.asarray([d.embedding for d in result.data], dtype=np.float32)
    assert got.shape == (2, 128)
    np.testing.assert_allclose(got, minilm.encode_queries(TEXTS[:2], dimensions=128), atol=ATOL)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    as_float = client.embeddings.create(model="minilm", input=TEXTS[0], encoding_format="float")
    np.testing.assert_allclose(as_float.data[0].embedding, minilm.encode_queries(TEXTS[:1])[0], atol=ATOL)


# --------------------------------------------------------------------------------------- raw HTTP


def test_float_and_base64_carry_the_same_vectors(sym):
    as_float = post(sym, {"model": "minilm", "input": TEXTS, "encoding_format": "float"})
    as_b64 = post(sym, {"model": "minilm", "input": TEXTS, "encoding_format": "base64", "user": "u1"})
    assert as_float.status_code == as_b64.status_code == 200
    assert isinstance(as_b64.json()["data"][0]["embedding"], str)
    np.testing.assert_array_equal(vectors_of(as_float), vectors_of(as_b64))  # base64 is exact float32
    body = as_float.json()
    assert body["object"] == "list" and body["model"] == "minilm"
    assert all(d["object"] == "embedding" for d in body["data"])
    assert set(body["usage"]) == {"prompt_tokens", "total_tokens"}


def test_single_string_and_symmetric_input_types(sym, minilm):
    one = post(sym, {"model": "minilm", "input": TEXTS[1]})
    assert one.status_code == 200 and len(one.json()["data"]) == 1
    np.testing.assert_allclose(vectors_of(one)[0], minilm.encode_passages(TEXTS[1:2])[0], atol=ATOL)
    # a symmetric model needs no input_type, and both types give the same vector
    passage = vectors_of(post(sym, {"model": "minilm", "input": TEXTS[1], "input_type": "passage"}))
    query = vectors_of(post(sym, {"model": "minilm-query", "input": TEXTS[1]}))
    np.testing.assert_allclose(passage, query, atol=ATOL)


def test_truncate_none_rejects_with_the_nim_message(sym, minilm):
    length = len(minilm.model.tokenizer(LONG_TEXT)["input_ids"])
    assert length > 256
    for body in (
        {"model": "minilm", "input": ["short", LONG_TEXT]},
        {"model": "minilm", "input": LONG_TEXT, "truncate": "NONE"},
    ):
        r = post(sym, body)
        assert r.status_code == 400
        assert r.json()["error"]["message"] == f"Input length {length} exceeds maximum allowed token size 256"
        assert r.json()["error"]["code"] == "input_too_long"


def test_truncate_end_and_start_equal_encoding_the_kept_tokens(sym, minilm):
    tok = minilm.model.tokenizer
    end = post(sym, {"model": "minilm", "input": [LONG_TEXT], "truncate": "END"})
    start = post(sym, {"model": "minilm", "input": [LONG_TEXT], "truncate": "START"})
    assert end.status_code == start.status_code == 200
    assert end.json()["usage"]["prompt_tokens"] == start.json()["usage"]["prompt_tokens"] == 256
    head_text = tok.decode(tok(LONG_TEXT, add_special_tokens=False)["input_ids"][:254])
    np.testing.assert_allclose(vectors_of(end)[0], minilm.encode_queries([head_text])[0], atol=ATOL)
    # END is what sentence-transformers does silently
    np.testing.assert_allclose(vectors_of(end)[0], minilm.encode_queries([LONG_TEXT])[0], atol=ATOL)
    tail_text = start_tail_text(tok, LONG_TEXT, 254)
    np.testing.assert_allclose(vectors_of(start)[0], minilm.encode_queries([tail_text])[0], atol=ATOL)
    assert float(vectors_of(start)[0] @ vectors_of(end)[0]) < 0.95  # different halves of the text were kept


ERRORS = [
    ({"model": "minilm", "input": []}, 400, "empty list"),
    ({"model": "minilm", "input": ""}, 400, "empty string"),
    ({"model": "minilm", "input": ["ok", ""]}, 400, "input[1] is an empty string"),
    ({"model": "minilm", "input": 5}, 400, "'input' must be a string or a list of strings"),
    ({"model": "minilm", "input": [1, 2]}, 400, "'input' must be a string or a list of strings"),
    ({"model": "minilm", "input": [["nested"]]}, 400, "'input' must be a string or a list of strings"),
    ({"model": "minilm", "input": None}, 400, "'input' must be a string or a list of strings"),
    ({"model": "minilm"}, 400, "'input' is required"),
    ({"input": "x"}, 400, "'model' is required"),
    ({"model": 7, "input": "x"}, 400, "'model'"),
    ({"model": "minilm", "input": "x", "dimensions": "128"}, 400, "'dimensions'"),
    ({"model": "minilm", "input": "x", "dimensions": True}, 400, "'dimensions'"),
    ({"model": "minilm", "input": "x", "dimensions": 100}, 400, "dimensions=100 is not supported"),
    ({"model": "minilm", "input": "x", "dimensions": 0}, 400, "dimensions=0 is not supported"),
    ({"model": "minilm", "input": "x", "dimensions": 768}, 400, "supported: [32, 64, 128, 256, 384]"),
    ({"model": "minilm", "input": "x", "encoding_format": "hex"}, 400, "'encoding_format' must be"),
    (
        {"model": "minilm", "input": "x", "truncate": "MIDDLE"},
        400,
        "'truncate' must be 'NONE', 'START' or 'END'",
    ),
    ({"model": "minilm", "input": "x", "truncate": "end"}, 400, "'truncate' must be"),
    ({"model": "minilm", "input": "x", "input_type": "document"}, 400, "'input_type' must be"),
    ({"model": "minilm", "input": "x", "user": 3}, 400, "'user'"),
    ({"model": "minilm", "input": "x", "temperature": 0.5}, 400, "unknown field 'temperature'"),
    ({"model": "minilm", "input": ["a"] * 9}, 400, "too many inputs: 9 in one request, at most 8"),
    ({"model": "minilm", "input": "x" * 3001}, 400, "input[0] has 3001 characters, at most 3000"),
    ({"model": "other-model", "input": "x"}, 404, "model 'other-model' is not served here"),
    ({"model": "minilm-passage", "input": "x", "input_type": "query"}, 400, "says input_type 'passage'"),
    ({"model": "minilm", "input": ["word " * 2000] * 4}, 413, "exceeds the limit of 20000 bytes"),
]


@pytest.mark.parametrize(("body", "status", "message"), ERRORS)
def test_invalid_requests_get_openai_style_errors(sym, body, status, message):
    r = post(sym, body)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert message in error["message"]
    assert (
        error["type"]
        == {400: "invalid_request_error", 404: "not_found_error", 413: "invalid_request_error"}[status]
    )


def test_malformed_bodies_and_routes(sym):
    for content in (b"{not json", b"", b"\xff\xfe", b"[1, 2]", b'"text"'):
        r = httpx.post(
            sym.url + "/v1/embeddings", content=content, headers={"content-type": "application/json"}
        )
        assert r.status_code == 400, content
        assert r.json()["error"]["code"] == "invalid_json"
    r = httpx.get(sym.url + "/v1/embeddings")
    assert r.status_code == 405 and "error" in r.json()
    r = httpx.get(sym.url + "/v1/nothing")
    assert r.status_code == 404 and r.json()["error"]["type"] == "not_found_error"
    # the server stays healthy after all of it
    assert post(sym, {"model": "minilm", "input": "still fine"}).status_code == 200


def test_info_endpoints(sym):
    get = lambda path: httpx.get(sym.url + path, timeout=30)  # noqa: E731
    assert get("/v1/health/ready").json() == {"object": "health.response", "message": "ready", "ready": True}
    live = get("/v1/health/live").json()
    assert live["object"] == "health.response" and live["live"] is True
    models = get("/v1/models").json()
    assert models["object"] == "list"
    assert models["data"][0]["id"] == "minilm" and models["data"][0]["object"] == "model"
    assert get("/v1/version").json()["release"]
    meta = get("/v1/metadata").json()
    assert meta["model"]["prompts"] == {"query": "", "passage": ""}
    assert meta["model"]["max_length"] == 256 and meta["model"]["dimension"] == 384
    assert meta["model"]["backend"] == "torch" and meta["model"]["asymmetric"] is False
    assert meta["limits"]["max_inputs"] == 8


# ------------------------------------------------------------------------------ asymmetric + auth


def test_asymmetric_model_needs_input_type(asym, asym_encoder):
    auth = {"Authorization": f"Bearer {API_KEY}"}
    r = post(asym, {"model": "asym-minilm", "input": TEXTS}, headers=auth)
    assert r.status_code == 400
    assert r.json()["error"]["message"] == MISSING_INPUT_TYPE
    assert MISSING_INPUT_TYPE == "'input_type' parameter is required for asymmetric models"

    query = post(asym, {"model": "asym-minilm", "input": TEXTS, "input_type": "query"}, headers=auth)
    passage = post(asym, {"model": "asym-minilm", "input": TEXTS, "input_type": "passage"}, headers=auth)
    by_suffix = post(asym, {"model": "asym-minilm-query", "input": TEXTS}, headers=auth)
    assert query.status_code == passage.status_code == by_suffix.status_code == 200
    assert by_suffix.json()["model"] == "asym-minilm"
    # prompts are applied server-side: clients send raw text
    np.testing.assert_allclose(vectors_of(query), asym_encoder.encode_queries(TEXTS), atol=ATOL)
    np.testing.assert_allclose(vectors_of(passage), asym_encoder.encode_passages(TEXTS), atol=ATOL)
    np.testing.assert_allclose(vectors_of(by_suffix), vectors_of(query), atol=ATOL)
    assert not np.allclose(vectors_of(query), vectors_of(passage), atol=1e-3)
    tok = asym_encoder.model.tokenizer
    assert query.json()["usage"]["prompt_tokens"] == sum(len(tok("query: " + t)["input_ids"]) for t in TEXTS)


def test_asymmetric_truncate_start_keeps_the_prompt(asym, asym_encoder):
    auth = {"Authorization": f"Bearer {API_KEY}"}
    body = {"model": "asym-minilm-query", "input": LONG_TEXT, "truncate": "START"}
    r = post(asym, body, headers=auth)
    assert r.status_code == 200
    tok = asym_encoder.model.tokenizer
    prompt_tokens = len(tok("query: ", add_special_tokens=False)["input_ids"])
    tail_text = start_tail_text(tok, LONG_TEXT, 254 - prompt_tokens)
    np.testing.assert_allclose(vectors_of(r)[0], asym_encoder.encode_queries([tail_text])[0], atol=ATOL)


def test_api_key(asym):
    body = {"model": "asym-minilm", "input": "x", "input_type": "query"}
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {API_KEY}"}):
        r = post(asym, body, headers=headers)
        assert r.status_code == 401
        assert r.json()["error"]["code"] == "invalid_api_key"
        assert r.headers["www-authenticate"] == "Bearer"
        assert httpx.get(asym.url + "/v1/models", headers=headers).status_code == 401
    # probes stay open; the right key works, also through the OpenAI client
    assert httpx.get(asym.url + "/v1/health/ready").status_code == 200
    assert httpx.get(asym.url + "/v1/health/live").status_code == 200
    assert post(asym, body, headers={"Authorization": f"Bearer {API_KEY}"}).status_code == 200
    client = openai.OpenAI(base_url=asym.url + "/v1", api_key=API_KEY, max_retries=0)
    result = client.embeddings.create(model="asym-minilm", input=["x"], extra_body={"input_type": "passage"})
    assert len(result.data[0].embedding) == 384
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=asym.url + "/v1", api_key="nope", max_retries=0).embeddings.create(
            model="asym-minilm", input=["x"], extra_body={"input_type": "passage"}
        )


def test_key_from_environment_and_restricted_dimensions(monkeypatch):
    monkeypatch.setenv("EMBEDFORGE_API_KEY", "env-key")
    with running(TorchRuntime("minilm"), dimensions=[128]) as server:
        body = {"model": "minilm", "input": "x", "dimensions": 128}
        assert post(server, body).status_code == 401
        assert post(server, body, headers={"Authorization": "Bearer env-key"}).status_code == 200
        r = post(server, {**body, "dimensions": 64}, headers={"Authorization": "Bearer env-key"})
        assert r.status_code == 400 and "supported: [128, 384]" in r.json()["error"]["message"]
        models = httpx.get(server.url + "/v1/models", headers={"Authorization": "Bearer env-key"}).json()
        assert models["data"][0]["dimensions"] == [128, 384]


# ---------------------------------------------------------------------------- batching and queue


def test_concurrent_clients_get_single_request_vectors(sym, minilm):
    words = "index vacuum replica backup table query planner lock".split()
    requests = []
    for i in range(16):
        texts = [
            " ".join(words[(i + j) % 8 :] + words[: (i * j) % 5]) + f" case {i}" for j in range(1 + i % 3)
        ]
        requests.append({"model": "minilm", "input": texts, "dimensions": [None, 128, 256, 384][i % 4]})
    single = [vectors_of(post(sym, {k: v for k, v in body.items() if v is not None})) for body in requests]

    with httpx.Client(timeout=60, limits=httpx.Limits(max_connections=32)) as client:

        def call(body):
            r = client.post(sym.url + "/v1/embeddings", json={k: v for k, v in body.items() if v is not None})
            assert r.status_code == 200, r.text
            return vectors_of(r)

        with ThreadPoolExecutor(16) as pool:
            concurrent = list(pool.map(call, requests * 2))

    for i, got in enumerate(concurrent):
        body = requests[i % 16]
        np.testing.assert_allclose(got, single[i % 16], atol=ATOL)
        expected = minilm.encode_queries(body["input"], dimensions=body["dimensions"])
        np.testing.assert_allclose(got, expected, atol=ATOL)


def _batches_of_3_or_4(server) -> float:
    samples = metric_samples(server)
    le4 = samples[("embedforge_batch_size_bucket", (("le", "4.0"),))]
    return le4 - samples[("embedforge_batch_size_bucket", (("le", "2.0"),))]


def test_requests_waiting_together_share_one_model_call(gated):
    server, runtime, batcher = gated
    before = _batches_of_3_or_4(server)
    with ThreadPoolExecutor(4) as pool, runtime.closed():
        first = pool.submit(post, server, {"model": "minilm", "input": ["first"]})
        assert runtime.entered.wait(300)  # the first request now occupies the model
        others = [pool.submit(post, server, {"model": "minilm", "input": [f"text {i}"]}) for i in range(3)]
        wait_until(lambda: batcher.queued == 3, "three inputs queued behind the busy model")
        runtime.gate.set()
        assert first.result().status_code == 200
        assert all(f.result().status_code == 200 for f in others)
    # the three requests that waited went through one model call of 3 inputs
    assert runtime.calls == [1, 3]
    assert _batches_of_3_or_4(server) == before + 1


def test_a_lone_request_does_not_wait_for_company():
    # with nobody else admitted there is nothing to wait for: the 10-minute max_wait is never paid (a
    # request that paid it would outlast the client's 60 s timeout and fail)
    with running(TorchRuntime("minilm"), max_wait_ms=600_000) as server:
        for text in ["warm", "alone", "alone again"]:
            assert post(server, {"model": "minilm", "input": [text]}).status_code == 200


def test_merged_requests_are_cut_into_calls_within_the_token_budget(minilm):
    # a round of merged requests is sorted by length and cut so that every model call pads to at most
    # max_batch_tokens (64 here), one long input alone excepted; the vectors are those of single requests
    words = "index vacuum replica backup table query planner lock".split()
    requests = [[" ".join(words[: 1 + (i * 3 + j) % 8]) for j in range(6)] for i in range(4)]
    with gated_server(max_batch_tokens=64, max_wait_ms=1) as (server, runtime, batcher):
        single = [vectors_of(post(server, {"model": "minilm", "input": texts})) for texts in requests]
        before = metric_samples(server)
        with ThreadPoolExecutor(5) as pool, runtime.closed():
            blocker = pool.submit(post, server, {"model": "minilm", "input": ["occupies the model"]})
            assert runtime.entered.wait(300)
            # the next four requests queue up behind it and are taken as one round
            pending = [pool.submit(post, server, {"model": "minilm", "input": t}) for t in requests]
            wait_until(lambda: batcher.queued == 24, "the 24 inputs queued behind the busy model")
            runtime.gate.set()
            merged = [f.result() for f in pending]
            assert blocker.result().status_code == 200
        after = metric_samples(server)
    calls = after[("embedforge_batch_tokens_count", ())] - before[("embedforge_batch_tokens_count", ())]
    within = (
        after[("embedforge_batch_tokens_bucket", (("le", "64.0"),))]
        - before[("embedforge_batch_tokens_bucket", (("le", "64.0"),))]
    )
    # the 24 queued inputs were sorted as one round: the calls are the cuts of their sorted lengths
    lengths = sorted(len(minilm.model.tokenizer(t)["input_ids"]) for texts in requests for t in texts)
    cuts, count = 1, 0
    for n in lengths:
        if count and n * (count + 1) > 64:
            cuts, count = cuts + 1, 0
        count += 1
    assert calls == 1 + cuts and within == calls  # the blocker's call, then the round's, all within 64
    assert len(runtime.calls) == calls and runtime.calls[0] == 1 and sum(runtime.calls) == 25
    for response, expected in zip(merged, single, strict=True):
        np.testing.assert_allclose(vectors_of(response), expected, atol=ATOL)


def test_full_queue_answers_429_and_recovers(gated):
    server, runtime, batcher = gated
    body = {"model": "minilm", "input": ["one", "two"]}
    before = metric_samples(server)
    with ThreadPoolExecutor(6) as pool, runtime.closed():
        first = pool.submit(post, server, body)
        assert runtime.entered.wait(300)  # 2 of the 6 places are taken while the model is busy
        rest = [pool.submit(post, server, body) for _ in range(5)]
        # room for two more requests of 2 inputs; the other three are turned away at once
        wait_until(
            lambda: sum(f.done() for f in rest) == 3 and batcher.admitted == 6, "3 admitted, 3 rejected"
        )
        runtime.gate.set()
        responses = [first.result(), *(f.result() for f in rest)]
    assert sorted(r.status_code for r in responses) == [200, 200, 200, 429, 429, 429]
    for r in responses:
        if r.status_code == 429:
            assert int(r.headers["retry-after"]) >= 1
            assert r.json()["error"]["type"] == "rate_limit_error"
            assert r.json()["error"]["code"] == "queue_full"
    assert httpx.get(server.url + "/v1/health/ready").status_code == 200
    assert post(server, body).status_code == 200
    samples = metric_samples(server)
    key = ("embedforge_errors_total", (("code", "429"),))
    assert samples[key] - before.get(key, 0) == 3
    assert samples[("embedforge_queue_depth", ())] == 0
    assert samples[("embedforge_inflight_inputs", ())] == 0
    assert batcher.admitted == 0 and batcher.queued == 0


def test_metrics_expose_counters(sym):
    assert post(sym, {"model": "minilm", "input": ["count me", "and me"]}).status_code == 200
    assert post(sym, {"model": "minilm", "input": []}).status_code == 400
    samples = metric_samples(sym)
    assert samples[("embedforge_requests_total", (("code", "200"), ("endpoint", "/v1/embeddings")))] >= 1
    assert samples[("embedforge_requests_total", (("code", "400"), ("endpoint", "/v1/embeddings")))] >= 1
    assert samples[("embedforge_errors_total", (("code", "400"),))] >= 1
    assert samples[("embedforge_request_latency_seconds_count", (("endpoint", "/v1/embeddings"),))] >= 2
    assert samples[("embedforge_batch_size_count", ())] >= 1
    assert samples[("embedforge_inputs_total", ())] >= 2
    assert samples[("embedforge_tokens_total", ())] > 0
    assert ("embedforge_queue_depth", ()) in samples


# ------------------------------------------------------------------------------------------ ONNX


def test_onnx_runtime_contract(onnx_dir, minilm):
    runtime = load_runtime(onnx_dir)
    assert isinstance(runtime, OnnxRuntime) and runtime.backend == "onnx-fp32"
    assert runtime.model_name == "minilm" and runtime.max_length == 256 and runtime.dimension == 384
    assert runtime.prompts == {"query": "", "passage": ""} and runtime.asymmetric is False
    assert runtime.supported_dimensions == [32, 64, 128, 256, 384]
    # the export's optional `dimensions` graph input is found and used
    assert "dimensions" in {i.name for i in runtime.session.get_overridable_initializers()}
    torch_runtime = load_runtime("minilm")
    assert isinstance(torch_runtime, TorchRuntime)
    tokens = torch_runtime.tokenize(TEXTS, "query")
    ids, mask = torch_runtime.pad([t.ids for t in tokens])
    for dims in (None, 64):
        onnx_vectors = runtime.embed(ids, mask, dims)
        torch_vectors = torch_runtime.embed(ids, mask, dims)
        assert onnx_vectors.dtype == np.float32 and onnx_vectors.shape == (4, dims or 384)
        np.testing.assert_allclose(onnx_vectors, torch_vectors, atol=ATOL)
        np.testing.assert_allclose(onnx_vectors, minilm.encode_queries(TEXTS, dimensions=dims), atol=ATOL)
    with pytest.raises(ValueError, match="needs an ONNX export"):
        load_runtime("minilm", precision="int8")


def test_onnx_server_matches_pytorch(onnx_server, sym, minilm):
    client = openai.OpenAI(base_url=onnx_server.url + "/v1", api_key="unused", max_retries=0)
    result = client.embeddings.create(model="minilm", input=TEXTS, extra_body={"input_type": "passage"})
    got = np.asarray([d.embedding for d in result.data], dtype=np.float32)
    np.testing.assert_allclose(got, minilm.encode_passages(TEXTS), atol=ATOL)
    small = client.embeddings.create(model="minilm", input=TEXTS, dimensions=128)
    got = np.asarray([d.embedding for d in small.data], dtype=np.float32)
    np.testing.assert_allclose(got, minilm.encode_queries(TEXTS, dimensions=128), atol=ATOL)
    for mode in ("START", "END"):
        body = {"model": "minilm", "input": [LONG_TEXT, TEXTS[0]], "truncate": mode}
        np.testing.assert_allclose(
            vectors_of(post(onnx_server, body)), vectors_of(post(sym, body)), atol=ATOL
        )
    meta = httpx.get(onnx_server.url + "/v1/metadata").json()
    assert meta["model"]["backend"] == "onnx-fp32"


def test_served_int8_export_matches_its_onnx_session(onnx_dir):
    """The int8 graph `embedforge export --quantize int8` ships, served on loopback to the OpenAI client."""
    int8_ops = [n.op_type for n in onnx_lib.load(str(onnx_dir / "model_int8.onnx")).graph.node]
    assert int8_ops.count("MultiHeadAttention") == 6 and "Softmax" not in int8_ops  # fused, int8 Q/K/V
    runtime = load_runtime(onnx_dir, precision="int8")
    assert runtime.backend == "onnx-int8"
    with running(runtime) as server:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
        before = metric_samples(server)
        full = client.embeddings.create(model="minilm", input=TEXTS, extra_body={"input_type": "passage"})
        small = client.embeddings.create(model="minilm", input=TEXTS, dimensions=128)
        after = metric_samples(server)
        assert httpx.get(server.url + "/v1/metadata").json()["model"]["backend"] == "onnx-int8"
    # each request ran as one model call of its 4 inputs
    calls = ("embedforge_batch_size_count", ())
    assert after[calls] - before[calls] == 2
    assert after[("embedforge_batch_size_sum", ())] - before[("embedforge_batch_size_sum", ())] == 8
    session = OnnxEncoder(onnx_dir, "int8")
    got = np.asarray([d.embedding for d in full.data], dtype=np.float32)
    np.testing.assert_allclose(got, session.encode_passages(TEXTS, batch_size=len(TEXTS)), atol=ATOL)
    got_small = np.asarray([d.embedding for d in small.data], dtype=np.float32)
    assert got_small.shape == (4, 128)
    expected_small = session.encode_queries(TEXTS, batch_size=len(TEXTS), dimensions=128)
    np.testing.assert_allclose(got_small, expected_small, atol=ATOL)
    fp32 = OnnxEncoder(onnx_dir).encode_passages(TEXTS, batch_size=len(TEXTS))
    cosines = np.sum(got * fp32, axis=1)
    assert cosines.min() > 0.98, cosines
    assert np.abs(got - fp32).max() > 1e-4  # really the int8 graph, not fp32


def _min_cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.min(np.sum(a * b, axis=1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)))


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_in_process_vector_does_not_depend_on_its_batch(onnx_dir, precision):
    """A text embedded alone, in a batch (either order) and between long passages: one vector."""
    encoder = OnnxEncoder(onnx_dir, precision)
    alone = np.concatenate([encoder.encode_passages([t]) for t in TEXTS])
    batched = encoder.encode(TEXTS, batch_size=len(TEXTS), sort_by_length=False)
    reversed_batch = encoder.encode(TEXTS[::-1], batch_size=len(TEXTS), sort_by_length=False)[::-1]
    beside_long = np.stack(
        [
            encoder.encode([LONG_TEXT, t, LONG_TEXT[:900]], batch_size=3, sort_by_length=False)[1]
            for t in TEXTS
        ]
    )
    for other in (batched, reversed_batch, beside_long):
        assert _min_cosine(alone, other) >= 0.99999


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_served_vector_does_not_depend_on_what_the_batcher_merges_it_with(onnx_dir, precision):
    """Through the server's dynamic batcher: requests queued behind a busy model are merged into one model
    call with two long passages, and each text still gets the vector it gets alone."""
    runtime = GatedOnnxRuntime(onnx_dir, precision=precision)
    app = create_app(runtime, {"max_wait_ms": 1, "max_batch_tokens": 4096})
    with ServerThread(app) as server:
        alone = np.concatenate([vectors_of(post(server, {"model": "minilm", "input": [t]})) for t in TEXTS])
        batched = vectors_of(post(server, {"model": "minilm", "input": TEXTS}))
        with ThreadPoolExecutor(6) as pool, runtime.closed():
            blocker = pool.submit(post, server, {"model": "minilm", "input": ["occupies the model"]})
            assert runtime.entered.wait(300)
            long_request = {"model": "minilm", "input": [LONG_TEXT, LONG_TEXT[:900]], "truncate": "END"}
            pending = [pool.submit(post, server, {"model": "minilm", "input": [t]}) for t in TEXTS]
            pending.append(pool.submit(post, server, long_request))
            wait_until(lambda: app.state.batcher.queued == 6, "the 6 inputs queued behind the busy model")
            runtime.gate.set()
            merged = np.concatenate([vectors_of(f.result()) for f in pending[:4]])
            assert blocker.result().status_code == 200 and pending[4].result().status_code == 200
    assert runtime.calls == [1, 6]  # the four texts and the two long passages went through one call
    assert _min_cosine(alone, batched) >= 0.99999 and _min_cosine(alone, merged) >= 0.99999


# ------------------------------------------------------------------------------ the CLI, shutdown


def test_cli_serve_finishes_in_flight_request_on_sigterm(tmp_path):
    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    env.pop("EMBEDFORGE_API_KEY", None)  # the key comes from the command line below
    # key=value overrides sit next to MODEL_DIR: argparse cannot split positionals around an option
    command = ["serve", "minilm", "api_key=k1", "max_inputs=256", "--port", str(port)]
    proc = subprocess.Popen(
        [sys.executable, "-m", "embedforge.cli", *command],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    auth = {"Authorization": "Bearer k1"}
    try:
        deadline = time.monotonic() + 300  # a loaded 2-core machine: imports and the warm-up call
        while True:
            assert proc.poll() is None, proc.stdout.read()
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(url + "/v1/health/ready", timeout=2).status_code == 200:
                    break
            assert time.monotonic() < deadline, "server did not get ready"
            time.sleep(0.2)
        assert post(url, {"model": "minilm", "input": "x"}).status_code == 401

        texts = [f"{i} " + " ".join(COOKING * 12) for i in range(96)]  # ~100 tokens each: about a second
        for _attempt in range(5):  # a request answered before the poll saw it admitted is sent again
            result = {}

            def big_request(result=result):
                result["response"] = httpx.post(
                    url + "/v1/embeddings",
                    json={"model": "minilm", "input": texts},
                    headers=auth,
                    timeout=300,
                )

            thread = threading.Thread(target=big_request)
            thread.start()
            admitted = False
            while thread.is_alive() and not admitted:  # until the server has admitted the request
                admitted = metric_samples(url, **auth).get(("embedforge_inflight_inputs", ()), 0) > 0
                time.sleep(0.02)
            if admitted:
                break
            thread.join()
        assert admitted, "every request was answered before the poll saw it in flight"
        proc.send_signal(signal.SIGTERM)
        thread.join(300)
        response = result["response"]
        assert response.status_code == 200
        assert len(response.json()["data"]) == 96
        # uvicorn re-raises the signal once it has shut down cleanly
        assert proc.wait(60) in (0, -signal.SIGTERM)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    log = proc.stdout.read()
    assert "Application shutdown complete" in log  # the lifespan drained the batcher
