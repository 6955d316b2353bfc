"""Data: documents in, training and evaluation files in and out.

``corpus`` reads a folder of documents into passages (``markup`` turns each format into text and headings);
``formats`` reads, writes, validates and converts the dataset files (NVIDIA's inline JSONL, corpus-ID JSON,
BEIR, triplets) over the in-memory examples of ``dataset`` and the record checks of ``records``.
Import a module by its path (``from embedforge.data.formats import read_beir``).
"""
