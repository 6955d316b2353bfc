"""A stub OpenAI-compatible chat-completions server for the sdg tests (FastAPI + uvicorn on 127.0.0.1).

It answers generation prompts with JSON questions built from the prompt's segments, and judge prompts with
scores. Markers in a passage's text make it misbehave, keyed by content so the behaviour does not depend
on request order or concurrency:

* ``FLAKY``: HTTP 500 for the first two requests about that passage, then normal answers;
* ``SLOW``: the first request about it sleeps ``slow_seconds`` (longer than the client timeout);
* ``GARBAGE``: always a reply that is not JSON;
* ``DOWN``: HTTP 503 every time while ``state["down"]`` is true;
* ``REFER``: the last question of a single-passage request says "the passage" (must be rejected by cleaning);
* ``OFFTOPIC``: the first question is about bread baking (must fail the round-trip filter);
* ``LOWSCORE``: the judge gives its questions overall 4 (must fail the judge threshold).

``state["die_after"] = n`` makes the server stop serving after n generation requests (the process
"dies": later connections are refused).
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
import threading
import time
from collections import Counter

import uvicorn
from fastapi import FastAPI
from fastapi.responses import JSONResponse, PlainTextResponse

_SEGMENT = re.compile(
    r"Segment (\d+):\n(.*?)(?=\n\nSegment \d+:|\n\n[A-Z][a-z]+ \d+ |\n\nWrite |\n\nProduce |\Z)", re.S
)


def _words(text: str, n: int) -> str:
    return " ".join(re.sub(r"[^\w\s-]", " ", text).split()[:n])


def _sentences(text: str) -> list[str]:
    return [s for s in re.split(r"(?<=[.!?])\s+", text.strip()) if len(s.split()) >= 4]


def _questions(user: str) -> list[dict]:
    segments = [text.strip() for _, text in _SEGMENT.findall(user)]
    count = int(re.search(r"(?:Write|Produce) (\d+)", user).group(1))
    types = re.search(r"order: (.*?)\.\n", user).group(1)
    items = []
    for i in range(count):
        multi = "multi_hop" in types and len(segments) > 1
        first = _sentences(segments[0]) or [segments[0]]
        if multi:
            second = _sentences(segments[1]) or [segments[1]]
            question = f"How is {_words(first[0], 6)} related to {_words(second[-1], 6)}?"
            item = {"query_type": "multi_hop", "uses": [1, 2], "complexity": 4}
        else:
            sentence = first[(i + 1) % len(first)]
            question = f"What is true about {_words(sentence, 9)}?"
            item = {"query_type": "factual", "uses": [1], "complexity": 2 + i % 3}
        if "OFFTOPIC" in segments[0] and i == 0 and not multi:
            question = "How long should sourdough bread dough rest before baking?"
        if "REFER" in segments[0] and i == count - 1 and not multi:
            question = "What does the passage say about it?"
        item.update(question=question, answer=first[0])
        items.append(item)
    return items


class StubServer:
    """Start with ``start()``; ``url`` is the base URL (ending in /v1); ``state`` can be changed live."""

    def __init__(self, slow_seconds: float = 2.5):
        self.state = {"down": True, "die_after": None, "slow_seconds": slow_seconds}
        self.calls: Counter = Counter()
        self.lock = threading.Lock()
        self.app = self._build()
        self.server: uvicorn.Server | None = None
        self.thread: threading.Thread | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def _build(self) -> FastAPI:
        app = FastAPI()

        @app.post("/v1/chat/completions")
        async def chat(body: dict):
            user = body["messages"][-1]["content"]
            judge = "Score the pair" in user
            key = (judge, user)
            with self.lock:
                self.calls[key] += 1
                self.calls["total"] += 1
                if not judge:
                    self.calls["generation"] += 1
                attempt = self.calls[key]
                generation_calls = self.calls["generation"]
            die_after = self.state["die_after"]
            if die_after is not None and not judge and generation_calls > die_after:
                self.server.should_exit = True
                return PlainTextResponse("shutting down", status_code=503)
            if "DOWN" in user and self.state["down"]:
                return PlainTextResponse("unavailable", status_code=503)
            if "FLAKY" in user and attempt <= 2:
                return PlainTextResponse("internal error", status_code=500)
            if "SLOW" in user and attempt == 1:
                await asyncio.sleep(self.state["slow_seconds"])
            if judge:
                overall = 4 if "LOWSCORE" in user else 8
                content = json.dumps(
                    {"relevance": 8, "accuracy": 9, "context_support": 8, "clarity": 7, "overall": overall}
                )
            elif "GARBAGE" in user:
                content = "Sure! Here are some great questions: {questions: [oops"
            else:
                content = "```json\n" + json.dumps({"questions": _questions(user)}) + "\n```"
            return JSONResponse(
                {
                    "id": "stub",
                    "object": "chat.completion",
                    "model": body.get("model"),
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": content},
                            "finish_reason": "stop",
                        }
                    ],
                }
            )

        @app.post("/v1/unauthorized/chat/completions")
        async def unauthorized(body: dict):
            return JSONResponse({"error": "bad key"}, status_code=401)

        @app.post("/v1/badrequest/chat/completions")
        async def bad_request(body: dict):
            with self.lock:
                self.calls["badrequest"] += 1
            return JSONResponse({"error": "context too long"}, status_code=400)

        return app

    def start(self) -> StubServer:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        config = uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="error", lifespan="off")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.time() + 20
        while not self.server.started:
            if time.time() > deadline or not self.thread.is_alive():
                raise RuntimeError("stub server did not start")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.should_exit = True
        if self.thread is not None:
            self.thread.join(timeout=10)
