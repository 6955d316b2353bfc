"""``embedforge run``: every stage in one run folder, each skipped when its inputs and config are unchanged.

``run`` wires the stages (``run_pipeline``); ``plan`` is the plan it prints first (counts and estimated
time per stage); ``ray_backend`` spreads a run's generation and corpus embedding over a Ray cluster
(``embedforge run --ray``), Ray imported only then.
"""

from embedforge.pipeline.run import run_pipeline

__all__ = ["run_pipeline"]
