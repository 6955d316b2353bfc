"""embedforge: customize text-embedding models for a domain, on a laptop CPU or a GPU cluster."""

__version__ = "0.2.0"
