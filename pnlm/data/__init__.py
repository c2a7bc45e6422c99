"""Reading corpora: streaming readers for JSONL, plain text and Parquet."""

from pnlm.data.readers import TXT_MODES, ReadStats, iter_documents

__all__ = ["TXT_MODES", "ReadStats", "iter_documents"]
