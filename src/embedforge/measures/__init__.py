"""Measures the stages share: how retrieval is scored and whether a difference is real.

``metrics`` names the metrics, cut-offs and the headline metric; ``search`` is exact top-k over unit vectors
(eval, mining, sdg's round trip); ``significance`` the paired bootstrap CI and sign-flip p-value of a gain;
``general_check`` the general-domain check (Lee news similarity) that shows a fine-tune kept its general
quality. Import a module by its path (``from embedforge.measures.significance import verdict``).
"""
