"""The embedding server: NVIDIA NIM / OpenAI-compatible ``/v1/embeddings`` with dynamic batching.

* ``runtime``: the model behind the server (``TorchRuntime``, ``OnnxRuntime``, ``load_runtime``).
* ``batcher``: merges concurrent requests into token-budgeted model calls; bounded queue (429).
* ``routes``: the routers (embeddings, models, health and metrics); ``api``: their errors and shared state.
* ``metrics``: Prometheus metrics and the middleware that checks the API key and records each request.
* ``app``: ``create_app`` wires the routers, middleware and batcher to one runtime.
* ``server``: ``run_serve(ServeConfig)`` (what ``embedforge serve`` runs) and ``serve(model, host, port,
  **settings)`` with uvicorn, ``ServerThread`` for tests.

Checking a served model against its offline evaluation is ``embedforge.verify``.
"""

from embedforge.serve.runtime import EmbeddingRuntime, OnnxRuntime, TorchRuntime, load_runtime
from embedforge.serve.server import ServerThread, serve

__all__ = ["EmbeddingRuntime", "OnnxRuntime", "ServerThread", "TorchRuntime", "load_runtime", "serve"]
