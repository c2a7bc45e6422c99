"""Tokenize a corpus in parallel into a token store (see store.py), splitting documents by a stable hash.

Documents stream from the readers in chunks; worker processes tokenize the chunks in order; the
main process appends each document's tokens to its split's file and records its windows. Memory
stays bounded by a few chunks whatever the corpus size.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pnlm.files.atomic import atomic_dir
from pnlm.data.readers import ReadStats
from pnlm.data.workers import WorkerDied, ordered_map
from pnlm.data.store import FORMAT, SPLITS, VERSION, TokenStore, token_dtype, window_bounds, write_meta
from pnlm.errors import InputError
from pnlm.tokenizer import Tokenizer, load_tokenizer

CHUNK_DOCUMENTS = 64
CHUNK_CHARACTERS = 4 << 20


def split_of(text: str, valid_fraction: float, test_fraction: float) -> str:
    """train, valid or test, from the document's sha1: the same document lands in the same split on every run."""
    position = int.from_bytes(hashlib.sha1(text.encode("utf-8", "surrogatepass")).digest()[:8], "big") / 2.0**64
    if position < test_fraction:
        return "test"
    if position < test_fraction + valid_fraction:
        return "valid"
    return "train"


@dataclass
class PrepareStats:
    documents: dict[str, int] = field(default_factory=lambda: {s: 0 for s in SPLITS})
    tokens: dict[str, int] = field(default_factory=lambda: {s: 0 for s in SPLITS})
    windows: dict[str, int] = field(default_factory=lambda: {s: 0 for s in SPLITS})
    empty_documents: int = 0
    seconds: float = 0.0

    @property
    def total_tokens(self) -> int:
        return sum(self.tokens.values())


_worker_tokenizer: Tokenizer | None = None


def _init_worker(tokenizer_path: str) -> None:
    global _worker_tokenizer
    _worker_tokenizer = load_tokenizer(tokenizer_path)


def _encode_chunk(texts: list[str], valid_fraction: float, test_fraction: float) -> list[tuple[str, np.ndarray]]:
    """(split, [BOS] + ids + [EOS]) for each document, in order."""
    assert _worker_tokenizer is not None
    ids = _worker_tokenizer.encode_batch(texts)  # Python ints: the chunk's size bounds them (_chunks)
    bos, eos = _worker_tokenizer.bos_id, _worker_tokenizer.eos_id
    return [(split_of(text, valid_fraction, test_fraction), np.array([bos, *doc, eos], dtype=np.uint32))
            for text, doc in zip(texts, ids)]


def _chunks(documents: Iterable[str], stats: PrepareStats) -> Iterator[list[str]]:
    """Documents in chunks of at most CHUNK_DOCUMENTS of them and CHUNK_CHARACTERS of text (a document
    longer than that alone): what a worker holds while it tokenizes, about 36 bytes a token."""
    chunk: list[str] = []
    size = 0
    for text in documents:
        if not text.strip():
            stats.empty_documents += 1
            continue
        if chunk and size + len(text) > CHUNK_CHARACTERS:
            yield chunk
            chunk, size = [], 0
        chunk.append(text)
        size += len(text)
        if len(chunk) == CHUNK_DOCUMENTS:
            yield chunk
            chunk, size = [], 0
    if chunk:
        yield chunk


class _SplitWriter:
    def __init__(self, folder: Path, split: str, dtype: np.dtype, context: int) -> None:
        self.folder, self.split, self.dtype, self.context = folder, split, dtype, context
        self.file = open(folder / f"{split}.tokens", "wb")
        # Windows go to a raw file as they come, so memory does not grow with the corpus.
        self.windows_file = open(folder / f".{split}.windows.raw", "wb")
        self.count = 0
        self.offset = 0

    def add(self, tokens: np.ndarray) -> int:
        self.file.write(tokens.astype(self.dtype, copy=False).tobytes())
        bounds = np.array(window_bounds(len(tokens), self.context), dtype=np.int64).reshape(-1, 2)
        bounds[:, 0] += self.offset
        self.windows_file.write(bounds.tobytes())
        self.offset += len(tokens)
        self.count += len(bounds)
        return len(bounds)

    def close(self) -> None:
        for f in (self.file, self.windows_file):
            f.flush()
            os.fsync(f.fileno())
            f.close()
        raw = self.folder / f".{self.split}.windows.raw"
        index = np.lib.format.open_memmap(self.folder / f"{self.split}.windows.npy", mode="w+", dtype=np.int64,
                                          shape=(self.count, 2))
        if self.count:
            index[:] = np.memmap(raw, dtype=np.int64, mode="r").reshape(-1, 2)
        index.flush()
        del index
        raw.unlink()


def prepare_store(documents: Iterable[str], tokenizer: Tokenizer, out: str | Path, context: int,
                  valid_fraction: float = 0.05, test_fraction: float = 0.05, workers: int | None = None,
                  sources: list[str] | None = None, read_stats: ReadStats | None = None,
                  on_progress: Callable[[int, int], None] | None = None) -> tuple[TokenStore, PrepareStats]:
    """Tokenize documents into a new token store at out (written atomically); on_progress(documents, tokens).

    read_stats: the readers' counts (empty documents, bad records skipped), recorded in meta.json.
    """
    if not 2 <= context <= 1 << 20:
        raise InputError(f"context must be between 2 and {1 << 20}, got {context}")
    if not (0 <= valid_fraction < 1 and 0 <= test_fraction < 1 and valid_fraction + test_fraction < 1):
        raise InputError("valid and test fractions must be in [0, 1) and leave some documents for train")
    workers = max(1, workers or os.cpu_count() or 1)
    dtype = token_dtype(tokenizer.vocab_size)
    stats = PrepareStats()
    start = time.perf_counter()
    with atomic_dir(out) as folder:
        writers = {split: _SplitWriter(folder, split, dtype, context) for split in SPLITS}
        chunks = ((chunk, valid_fraction, test_fraction) for chunk in _chunks(documents, stats))
        try:
            # In the documents' order, a few chunks a worker ahead: memory stays bounded however fast they come.
            for encoded in ordered_map(_encode_chunk, chunks, workers, "tokenizing documents", _init_worker,
                                       (str(tokenizer.path),)):
                for split, tokens in encoded:
                    stats.documents[split] += 1
                    stats.tokens[split] += len(tokens)
                    stats.windows[split] += writers[split].add(tokens)
                if on_progress:
                    on_progress(sum(stats.documents.values()), stats.total_tokens)
        except WorkerDied as died:
            raise WorkerDied(f"{died}; no store was written: run the command again, perhaps with fewer --workers"
                             ) from None
        for writer in writers.values():
            writer.close()
        if read_stats is not None:
            stats.empty_documents += read_stats.empty
        if not sum(stats.documents.values()):
            skipped = [f"{stats.empty_documents} empty ones skipped"]
            if read_stats is not None and read_stats.bad:
                skipped.append(f"{read_stats.bad} bad records skipped")
            if read_stats is not None and read_stats.bad_files:
                skipped.append(f"{len(read_stats.bad_files)} files skipped, the first: {read_stats.bad_files[0]}")
            raise InputError(f"no documents to prepare ({'; '.join(skipped)})")
        stats.seconds = time.perf_counter() - start
        meta = {
            "format": FORMAT, "version": VERSION, "tokenizer_sha256": tokenizer.sha256,
            "vocab_size": tokenizer.vocab_size, "context": context, "dtype": dtype.name,
            "bos_id": tokenizer.bos_id, "eos_id": tokenizer.eos_id,
            "splits": {s: {"documents": stats.documents[s], "tokens": stats.tokens[s], "windows": stats.windows[s]}
                       for s in SPLITS},
            "fractions": {"valid": valid_fraction, "test": test_fraction},
            "empty_documents_skipped": stats.empty_documents,
            "bad_records_skipped": read_stats.bad if read_stats is not None else 0,
            "sources": sources or [],
        }
        tokenizer.copy_to(folder)
        write_meta(folder, meta)
    return TokenStore(out, verify=False), stats
