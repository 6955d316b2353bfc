"""`embedforge run --ray ADDRESS`: the run's heavy loops on a Ray cluster, the same results as on one machine.

Two loops outgrow one process on a large corpus, and both are spread here without changing what they compute:

* question generation: ``RayGenerator`` deals each round of sdg's requests out over a pool of Ray actors,
  each holding one generator (a local model or one OpenAI-compatible client). sdg's driver keeps planning,
  parsing and its checkpoint, so a run stays resumable and a unit's questions depend on its passage only;
* corpus embedding (sdg's round trip, prep's mining, eval): ``RayEncoder.encode_passages`` runs Ray Data
  ``map_batches`` over an actor pool, each actor holding the model once; vectors stream back into one array in
  the input's order, so the driver holds the texts and the result and nothing in between.

Ray is imported here only, and only when a run asks for it: the single-machine path never loads it.
See https://docs.ray.io/en/latest/data/api/doc/ray.data.Dataset.map_batches.html for the actor pool.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable, Sequence
from urllib.parse import urlparse

import numpy as np

from embedforge.errors import EmbedforgeError

logger = logging.getLogger(__name__)

# seconds to reach the head before calling it unreachable (ray.init itself retries for minutes)
CONNECT_TIMEOUT = 5.0
EMBED_BATCH = 256  # passages per Ray Data batch: large enough that the per-batch overhead stays small
# fewer queries than this are embedded by the driver's own copy: starting a pool costs more than they do
QUERY_POOL_MIN = 4 * EMBED_BATCH


class RayUnavailableError(EmbedforgeError, RuntimeError):
    """Ray is not installed, or the cluster address cannot be reached."""


def _import_ray():
    try:
        import ray
    except ImportError as error:
        raise RayUnavailableError(
            "running on Ray needs the ray extra: pip install 'embedforge[ray]'"
        ) from error
    return ray


def _host_port(address: str) -> tuple[str, int] | None:
    """The head's host and port from ``host:port`` or ``ray://host:port`` (None for ``auto``)."""
    if address == "auto":
        return None
    parsed = urlparse(address if "://" in address else f"ray://{address}")
    if not parsed.hostname or not parsed.port:
        raise RayUnavailableError(f"Ray address '{address}' is not host:port, ray://host:port or auto")
    return parsed.hostname, parsed.port


def check_reachable(address: str) -> None:
    """Fail fast, naming the address, when nothing answers there (``ray.init`` would retry for minutes)."""
    target = _host_port(address)
    if target is None:
        return
    try:
        socket.create_connection(target, timeout=CONNECT_TIMEOUT).close()
    except OSError as error:
        raise RayUnavailableError(
            f"cannot reach the Ray cluster at '{address}' ({error}); start it (ray start --head) or fix --ray"
        ) from error


def connect(address: str) -> int:
    """Join the cluster at ``address`` (or keep the one this process already joined); returns its CPU count,
    the number of actors a pool gets."""
    ray = _import_ray()
    check_reachable(address)
    if not ray.is_initialized():
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        try:
            ray.init(address=address, logging_level="WARNING", log_to_driver=False)
        except ConnectionError as error:
            raise RayUnavailableError(f"cannot join the Ray cluster at '{address}': {error}") from error
    cpus = int(ray.cluster_resources().get("CPU", 1))
    logger.info("on Ray at %s: %d CPUs", address, cpus)
    return max(1, cpus)


# ------------------------------------------------------------------------------------------- generation


class _GeneratorActor:
    """One generator, built once on its worker."""

    def __init__(self, factory: Callable[[], object]):
        self.generator = factory()

    def name(self) -> str:
        return self.generator.name

    def generate(self, requests: list) -> list:
        return self.generator.generate(requests)

    def retries(self) -> int:
        return getattr(self.generator, "retries", 0)


class RayGenerator:
    """A generator (``generate(requests) -> results`` in order) whose requests run on ``workers`` actors.

    Args:
        factory: builds one generator (e.g. ``functools.partial(make_generator, config)``); it is pickled
            and called on each actor, so it must be importable there.
        workers: actors in the pool; sdg asks for this many times more requests per round.
    """

    def __init__(self, factory: Callable[[], object], workers: int):
        self.factory = factory
        self.workers = max(1, workers)
        self._actors: list | None = None
        self._retries = 0  # kept from the actors when they are closed

    def _pool(self) -> list:
        if self._actors is None:
            ray = _import_ray()
            actor = ray.remote(num_cpus=1)(_GeneratorActor)
            self._actors = [actor.remote(self.factory) for _ in range(self.workers)]
        return self._actors

    @property
    def name(self) -> str:
        ray = _import_ray()
        return ray.get(self._pool()[0].name.remote())

    @property
    def retries(self) -> int:
        if self._actors is None:
            return self._retries
        ray = _import_ray()
        return sum(ray.get([a.retries.remote() for a in self._actors]))

    def generate(self, requests: Sequence) -> list:
        """Contiguous slices, one per actor, joined back in request order."""
        ray = _import_ray()
        actors = self._pool()
        size = -(-len(requests) // len(actors)) or 1
        slices = [list(requests[i : i + size]) for i in range(0, len(requests), size)]
        futures = [actor.generate.remote(part) for actor, part in zip(actors, slices, strict=False)]
        return [result for part in ray.get(futures) for result in part]

    def close(self) -> None:
        """Kill the actors: they hold the cluster's CPUs, which the embedding pool needs next."""
        if self._actors is not None:
            ray = _import_ray()
            self._retries = self.retries
            for actor in self._actors:
                ray.kill(actor)
            self._actors = None


# ------------------------------------------------------------------------------------------- embedding


class _EmbedActor:
    """One encoder per actor, loaded once; a Ray Data batch in, its vectors out (with their row numbers)."""

    def __init__(self, model: str, options: dict, kind: str):
        from embedforge.models.bi_encoder import BiEncoder

        self.encoder = BiEncoder.load(model, **options)
        self.encode = self.encoder.encode_queries if kind == "query" else self.encoder.encode_passages

    def __call__(self, batch: dict) -> dict:
        vectors = self.encode(list(batch["text"]), batch_size=64)
        return {"row": batch["row"], "vector": vectors}


class RayEncoder:
    """A ``BiEncoder`` stand-in whose ``encode_passages``/``encode_queries`` run on a Ray Data actor pool.

    Attributes (``dimension``, ``prompts``, ``max_seq_length``) come from a copy loaded in the driver on first
    use; that copy also embeds fewer than ``query_pool_min`` queries (a few hundred short questions take less
    than starting the pool). Passages always go to the pool.
    """

    def __init__(
        self,
        model: str,
        workers: int,
        *,
        name: str | None = None,
        options: dict | None = None,
        query_pool_min: int = QUERY_POOL_MIN,
    ):
        self.query_pool_min = query_pool_min
        self.model = model
        self.workers = max(1, workers)
        self.options = {k: v for k, v in (options or {}).items() if v is not None}
        self.name = name or model
        self._local = None

    def __getattr__(self, attribute):
        if attribute.startswith("_"):
            raise AttributeError(attribute)
        if self._local is None:
            from embedforge.models.bi_encoder import BiEncoder

            self._local = BiEncoder.load(self.model, name=self.name, **self.options)
        return getattr(self._local, attribute)

    def encode_passages(self, texts: Sequence[str], **kwargs) -> np.ndarray:
        return self._encode(texts, "passage", **kwargs)

    def encode_queries(self, texts: Sequence[str], **kwargs) -> np.ndarray:
        if len(texts) < self.query_pool_min:
            return self.__getattr__("encode_queries")(texts, **kwargs)
        return self._encode(texts, "query", **kwargs)

    def _encode(self, texts, kind, *, batch_size=64, dimensions=None, progress=False) -> np.ndarray:
        from embedforge.models.matryoshka import unit_truncate

        texts = list(texts)
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        out = None
        for batch in self._batches(texts, kind, progress):
            vectors = np.asarray(batch["vector"], dtype=np.float32)
            if out is None:
                out = np.empty((len(texts), vectors.shape[1]), dtype=np.float32)
            out[np.asarray(batch["row"])] = vectors
        if dimensions is not None and not 0 < dimensions <= out.shape[1]:
            raise ValueError(f"dimensions must be in 1..{out.shape[1]}, got {dimensions}")
        return unit_truncate(out, dimensions)

    def _batches(self, texts: list[str], kind: str, progress: bool):
        """Ray Data batches of (row, vector), streamed as actors finish them (in any order). One block per
        batch: an actor pool hands out blocks, so a single block would go to one actor."""
        import pyarrow as pa

        ray = _import_ray()
        ray.data.DataContext.get_current().enable_progress_bars = progress
        starts = range(0, len(texts), EMBED_BATCH)
        rows = np.arange(len(texts))
        blocks = [
            pa.table({"row": rows[i : i + EMBED_BATCH], "text": texts[i : i + EMBED_BATCH]}) for i in starts
        ]
        dataset = ray.data.from_arrow(blocks).map_batches(
            _EmbedActor,
            fn_constructor_args=(self.model, self.options, kind),
            batch_size=EMBED_BATCH,
            concurrency=min(self.workers, -(-len(texts) // EMBED_BATCH)),
            num_cpus=1,
            batch_format="numpy",
        )
        return dataset.iter_batches(batch_size=None, batch_format="numpy")
