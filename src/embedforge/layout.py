"""File names one stage writes and a later stage reads, so neither imports the other's code to find them."""

# The sdg stage's outputs (read by prep).
SDG_PASSAGES_FILE = "passages.jsonl"
SDG_PAIRS_FILE = "pairs.jsonl"
SDG_DROPPED_FILE = "sdg_dropped.jsonl"
SDG_REPORT_FILE = "sdg_report.json"
