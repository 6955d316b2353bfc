"""Evaluation jobs (retriever over BEIR): placeholder until the evaluator lands."""
