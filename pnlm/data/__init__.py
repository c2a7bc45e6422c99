"""Data on disk: the readers of a user's documents (readers.py, parquet.py: txt, md, html, jsonl(.gz),
parquet, folders and globs; lines.py: text files as lines and paragraphs, a piece at a time), preparing a token store from them (prepare.py), the store itself
(store.py), its subsets (subset.py) and the samplers that draw windows from it (samplers.py)."""

from pnlm.data.readers import TXT_MODES, ReadStats, iter_documents

__all__ = ["TXT_MODES", "ReadStats", "iter_documents"]
