"""The eval stage: models scored on a held-out BEIR folder, side by side, with the significance of each gain.

``retrieval`` is the stage (``run_eval``; ``compare_models`` and ``evaluate_dataset`` for a script):
exact retrieval over the whole corpus and pytrec_eval's metrics; ``report`` formats the comparison
(a Markdown table, eval_report.md and a chart) and computes nothing.
"""

from embedforge.evaluate.retrieval import compare_models, evaluate_dataset, evaluate_encoder, run_eval

__all__ = ["compare_models", "evaluate_dataset", "evaluate_encoder", "run_eval"]
