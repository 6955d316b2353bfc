"""The embedding server: NVIDIA NIM / OpenAI-compatible ``/v1/embeddings`` with dynamic batching.

* ``runtime``: the model behind the server (``TorchRuntime``, ``OnnxRuntime``, ``load_runtime``).
* ``batcher``: merges concurrent requests into token-budgeted model calls; bounded queue (429).
* ``app``: the FastAPI app (``create_app``): routes, validation, limits, auth, metrics.
* ``server``: ``serve(model, host, port, **settings)`` with uvicorn, ``ServerThread`` for tests.

Checking a served model against its offline evaluation is ``embedforge.verify``.
"""

from embedforge.serve.runtime import EmbeddingRuntime, OnnxRuntime, TorchRuntime, load_runtime
from embedforge.serve.server import ServerThread, serve

__all__ = ["EmbeddingRuntime", "OnnxRuntime", "ServerThread", "TorchRuntime", "load_runtime", "serve"]
