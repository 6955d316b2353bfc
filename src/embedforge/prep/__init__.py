"""The prep stage: sdg's question/passage pairs -> training data and a held-out BEIR test folder.

``run`` is the stage (``run_prep``: split by document, leak-free mining, the files it writes); ``mining``
finds hard negatives (exact search + NVIDIA's margin rule); ``heading_pairs`` turns section headings into
heading -> body training pairs.
"""

from embedforge.prep.run import run_prep

__all__ = ["run_prep"]
