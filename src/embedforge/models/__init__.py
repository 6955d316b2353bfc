"""Models: the ``Encoder`` protocol and what implements or serves it.

``encoder`` is the one interface every embedder offers; ``bi_encoder`` is the PyTorch one
(sentence-transformers), ``vector_memo`` a per-run memo of another encoder's passage vectors. ``registry``
locates the known models inside installed packages, ``llama_bidirectional`` the bidirectional Llama/Mistral
backbones, ``matryoshka`` the truncate-then-normalise rule, ``precision`` where bf16 is native.
Nothing is re-exported here: ``bi_encoder`` loads PyTorch, and the CLI imports ``registry`` at start-up, so
each module is imported by its path (``from embedforge.models.bi_encoder import BiEncoder``).
"""
