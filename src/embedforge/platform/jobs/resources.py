"""What a job asks of the node it runs on: shared by every executor, so no executor imports another."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Resources:
    """What one job asks of the node it runs on (NeMo's ``num_gpus``; CPUs from the platform's config)."""

    num_gpus: float = 0.0
    num_cpus: float = 1.0
