"""Reading corpora: streaming readers for JSONL and plain text."""

from pnlm.data.readers import iter_documents

__all__ = ["iter_documents"]
