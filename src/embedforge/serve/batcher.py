"""Dynamic batching: inputs from many concurrent requests share model calls, within a token budget.

How a request flows:

1. ``admit(n)`` reserves room for its ``n`` inputs in a bounded queue, counted in inputs from admission until
   the answer is ready. When the reservation would pass ``max_queue``, it raises ``QueueFullError`` at once
   (the server answers 429 with ``Retry-After``) instead of letting the queue and the latency grow.
2. ``tokenize`` runs the tokenizer on a worker thread, so the event loop keeps serving other clients.
3. ``embed`` puts the token sequences on the pending list and awaits their vectors.

The batch loop waits until the pending inputs fill ``max_batch_tokens``, the oldest has waited
``max_wait_ms``, or no other admitted request is still on its way (then it does not wait at all). It then
takes a round of inputs, first-come first-served, up to ``ROUND_CALLS`` model calls' worth of tokens, sorts
them by length and cuts them into model calls whose padded size (longest x count) stays within
``max_batch_tokens``, so short inputs are not padded to long ones. The per-call budget is small on purpose:
on a CPU, calls of about 1,000 padded tokens keep the activations in cache and run 1.5-1.7x faster per text
than calls of 8,000 (docs/benchmarks.md, serving); the round is larger so that sorting has inputs to choose from.
Model calls run one at a time on an inference thread (the model uses the CPU cores itself). Every input is
embedded at full size; each request truncates to its own ``dimensions`` afterwards.

``close`` stops admitting, finishes what is queued and stops the loop (graceful shutdown).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np

from embedforge.serve.runtime import EmbeddingRuntime, Tokenized

logger = logging.getLogger(__name__)

T = TypeVar("T")
ROUND_CALLS = 8  # a round takes up to this many model calls' worth of queued tokens to sort by length


def length_sorted_calls(items: Sequence[T], budget: int, length: Callable[[T], int] = len) -> list[list[T]]:
    """Sort by length and cut into model calls whose padded size (longest x count) stays within ``budget``;
    an item longer than the budget gets a call of its own."""
    calls: list[list[T]] = []
    current: list[T] = []
    for item in sorted(items, key=length):
        if current and length(item) * (len(current) + 1) > budget:
            calls.append(current)
            current = []
        current.append(item)
    if current:
        calls.append(current)
    return calls


class QueueFullError(RuntimeError):
    """The bounded queue has no room for a request's inputs; retry after ``retry_after`` seconds."""

    def __init__(self, requested: int, admitted: int, capacity: int, retry_after: int):
        self.requested, self.admitted, self.capacity, self.retry_after = (
            requested,
            admitted,
            capacity,
            retry_after,
        )
        super().__init__(
            f"server busy: {admitted} inputs queued or running, room for {capacity}; retry in {retry_after} s"
        )


class ShuttingDownError(RuntimeError):
    """The batcher is draining for shutdown and takes no new work."""


@dataclass
class _Group:
    """The inputs of one request: their vectors are filled in as batches finish."""

    size: int
    future: asyncio.Future
    vectors: np.ndarray | None = None
    remaining: int = 0


@dataclass
class _Item:
    ids: list[int]
    group: _Group
    index: int
    enqueued: float = field(default_factory=time.perf_counter)


class Ticket:
    """A reservation of queue room for one request's inputs; release it when the request is done."""

    def __init__(self, batcher: Batcher, n: int):
        self._batcher, self.n, self._released = batcher, n, False

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._batcher._release(self.n)

    def __enter__(self) -> Ticket:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


class Batcher:
    """Merges inputs from concurrent requests into token-budgeted model calls.

    Args:
        runtime: the loaded model.
        max_batch_tokens: padded tokens (longest sequence x count) per model call; one input longer than
            this still runs, alone. About 1,000 suits CPUs; GPUs want more.
        max_wait_ms: how long the first pending input waits for others before its batch runs anyway.
        max_queue: inputs admitted and not yet answered; beyond it requests get ``QueueFullError``.
        metrics: optional ``Metrics`` (``app.Metrics``) to record batch sizes and queue depth.
    """

    def __init__(
        self,
        runtime: EmbeddingRuntime,
        *,
        max_batch_tokens: int = 1024,
        max_wait_ms: float = 5.0,
        max_queue: int = 1024,
        metrics=None,
    ):
        if max_batch_tokens < 1 or max_queue < 1 or max_wait_ms < 0:
            raise ValueError("max_batch_tokens and max_queue must be >= 1 and max_wait_ms >= 0")
        self.runtime = runtime
        self.max_batch_tokens = int(max_batch_tokens)
        self.max_wait = float(max_wait_ms) / 1000.0
        self.max_queue = int(max_queue)
        self.metrics = metrics
        self._pending: deque[_Item] = deque()
        self._pending_tokens = 0
        self._admitted = 0
        self._busy = False
        self._closing = False
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._infer_pool = ThreadPoolExecutor(1, thread_name_prefix="embedforge-infer")
        self._tok_pool = ThreadPoolExecutor(1, thread_name_prefix="embedforge-tokenize")
        self._rate = 0.0  # inputs per second, smoothed; for Retry-After

    # ----------------------------------------------------------------------------------- lifecycle

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done() and not self._closing

    async def start(self, warmup: bool = True) -> None:
        """Start the batch loop (on the running event loop); ``warmup`` runs one tiny model call first."""
        self._wakeup = asyncio.Event()
        if warmup:
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(self._infer_pool, self.runtime.embed_texts, ["warm-up"])
        self._task = asyncio.create_task(self._loop(), name="embedforge-batcher")

    async def close(self, timeout: float = 30.0) -> None:
        """Stop admitting, finish every admitted request (up to ``timeout`` s), then stop the loop."""
        self._closing = True
        deadline = time.monotonic() + timeout
        while (self._pending or self._busy) and time.monotonic() < deadline:
            if self._task is None or self._task.done():
                break
            await asyncio.sleep(0.01)
        if self._pending:
            logger.warning("shutdown timeout: %d queued inputs dropped", len(self._pending))
            self._fail_all(ShuttingDownError("server shut down before this request ran"))
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        self._infer_pool.shutdown(wait=True)
        self._tok_pool.shutdown(wait=True)

    # ---------------------------------------------------------------------------------- admission

    @property
    def queued(self) -> int:
        """Inputs waiting for a model call."""
        return len(self._pending)

    @property
    def admitted(self) -> int:
        """Inputs admitted and not yet answered (queued, tokenizing or running)."""
        return self._admitted

    def admit(self, n: int) -> Ticket:
        """Reserve room for ``n`` inputs or raise ``QueueFullError`` / ``ShuttingDownError``."""
        if self._closing or self._task is None:
            raise ShuttingDownError("server is not accepting requests (starting or shutting down)")
        if self._admitted + n > self.max_queue:
            raise QueueFullError(n, self._admitted, self.max_queue, self.retry_after())
        self._admitted += n
        self._set_gauges()
        return Ticket(self, n)

    def _release(self, n: int) -> None:
        self._admitted -= n
        self._set_gauges()

    def retry_after(self) -> int:
        """Seconds until the queue has likely drained: queued inputs / recent throughput, 1 to 60."""
        if self._rate <= 0:
            return 1
        return int(min(60, max(1, math.ceil(self._admitted / self._rate))))

    def _set_gauges(self) -> None:
        if self.metrics is not None:
            self.metrics.queue_depth.set(len(self._pending))
            self.metrics.inflight.set(self._admitted)

    # ------------------------------------------------------------------------------------- work

    async def tokenize(self, texts: Sequence[str], input_type: str, truncate: str) -> list[Tokenized]:
        """``runtime.tokenize`` on the tokenizer thread."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._tok_pool, self.runtime.tokenize, texts, input_type, truncate)

    async def embed(self, sequences: Sequence[Sequence[int]]) -> np.ndarray:
        """Full-size unit vectors ``(len(sequences), dimension)`` for token sequences, batched with others."""
        if not sequences:
            return np.zeros((0, self.runtime.dimension), dtype=np.float32)
        if self._wakeup is None or self._task is None or self._task.done():
            raise ShuttingDownError("the batcher is not running")
        group = _Group(len(sequences), asyncio.get_running_loop().create_future(), remaining=len(sequences))
        for i, ids in enumerate(sequences):
            self._pending.append(_Item(list(ids), group, i))
            self._pending_tokens += len(ids)
        self._set_gauges()
        self._wakeup.set()
        return await group.future

    async def _loop(self) -> None:
        assert self._wakeup is not None
        loop = asyncio.get_running_loop()
        while True:
            if not self._pending:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            # give requests already admitted (still tokenizing) up to max_wait to join, unless the budget is
            # full; when every admitted input is pending there is nobody to wait for, so a lone client
            # (concurrency 1) pays no wait at all
            deadline = self._pending[0].enqueued + self.max_wait
            while (
                self._pending_tokens < self.max_batch_tokens
                and not self._closing
                and self._admitted > len(self._pending)
            ):
                left = deadline - time.perf_counter()
                if left <= 0:
                    break
                self._wakeup.clear()
                try:
                    await asyncio.wait_for(self._wakeup.wait(), left)
                except asyncio.TimeoutError:
                    break
            items = self._take()
            self._busy = True
            self._set_gauges()
            try:
                for chunk in self._chunks(items):
                    started = time.perf_counter()
                    try:
                        vectors = await loop.run_in_executor(self._infer_pool, self._run, chunk)
                    except Exception as err:  # a model failure fails these requests, not the server
                        logger.exception("model call failed for %d inputs", len(chunk))
                        self._fail(chunk, err)
                        continue
                    self._deliver(chunk, vectors)
                    elapsed = max(time.perf_counter() - started, 1e-6)
                    rate = len(chunk) / elapsed
                    self._rate = rate if self._rate <= 0 else 0.8 * self._rate + 0.2 * rate
            finally:
                self._busy = False

    def _take(self) -> list[_Item]:
        """First come, first served, up to ROUND_CALLS x max_batch_tokens real tokens (at least one input)."""
        items, tokens, budget = [], 0, ROUND_CALLS * self.max_batch_tokens
        while self._pending:
            n = len(self._pending[0].ids)
            if items and tokens + n > budget:
                break
            item = self._pending.popleft()
            items.append(item)
            tokens += n
            self._pending_tokens -= n
        return items

    def _chunks(self, items: list[_Item]) -> list[list[_Item]]:
        return length_sorted_calls(items, self.max_batch_tokens, lambda it: len(it.ids))

    def _run(self, chunk: list[_Item]) -> np.ndarray:
        input_ids, mask = self.runtime.pad([item.ids for item in chunk])
        vectors = self.runtime.embed(input_ids, mask, None)
        if self.metrics is not None:
            self.metrics.batch_size.observe(len(chunk))
            self.metrics.batch_tokens.observe(int(input_ids.size))
        return vectors

    def _deliver(self, chunk: list[_Item], vectors: np.ndarray) -> None:
        for item, vector in zip(chunk, vectors, strict=True):
            group = item.group
            if group.future.done():  # cancelled (client went away) or failed already
                continue
            if group.vectors is None:
                group.vectors = np.empty((group.size, vectors.shape[1]), dtype=np.float32)
            group.vectors[item.index] = vector
            group.remaining -= 1
            if group.remaining == 0:
                group.future.set_result(group.vectors)

    def _fail(self, chunk: list[_Item], err: BaseException) -> None:
        for item in chunk:
            if not item.group.future.done():
                item.group.future.set_exception(err)

    def _fail_all(self, err: BaseException) -> None:
        items = list(self._pending)
        self._pending.clear()
        self._pending_tokens = 0
        self._fail(items, err)
        self._set_gauges()
