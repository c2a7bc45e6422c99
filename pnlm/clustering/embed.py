"""Embedding a store's windows into its cache: on a CPU, a CUDA GPU or Apple silicon's, alone or as
one rank of a torchrun job, resumable chunk by chunk (the cache: pnlm/clustering/embedding_cache.py).

A window's text is its tokens decoded with the store's tokenizer. The embedder truncates the text to
its own limit (all-MiniLM-L6-v2: max_seq_length 256 word pieces), so a window of 1024 tokens is
embedded from roughly its first 150 to 250 words: enough to tell its topic, as in the paper.

Embeddings are cached in the store, so fitting another k, or assigning again, does not re-embed.
A store is written once (`pnlm data prepare` replaces the whole folder), so a cached file whose
shape matches the split is the embedding of that split. Within a chunk, windows are embedded longest
first in batches (as sentence-transformers does, so that a batch pads little); every run cuts a split
into the same chunks, so a chunk's rows do not depend on which process embedded it or when.
"""


from __future__ import annotations

import json
import os
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pnlm.backend_loader import load_sentence_encoder
from pnlm.clustering.embedder import Embedder, resolve_embedder
from pnlm.clustering.embedding_cache import SplitCache, cached_split
from pnlm.clustering.ranks import Ranks, SingleProcess, on_rank_zero, share
from pnlm.clustering.window_features import WindowFeatures, feature_stream
from pnlm.data.store import TokenStore
from pnlm.errors import InputError
from pnlm.files.atomic import atomic_file
from pnlm.tokenizer import Tokenizer, load_tokenizer

EMBEDDINGS_DIR = "embeddings"
EMBEDDER_FILE = "embedder.json"
MAX_AUTO_WORKERS = 8

# on_progress(description, windows done, windows in all): the first call of a description gives the
# windows done before this run (a resumed embedding), so a rate counts this run's windows only.
ProgressFn = Callable[[str, int, int], None]


@dataclass
class EmbeddingRun:
    """How a store was embedded: where, the splits the cache held already, and the windows each rank embedded."""

    device: str = ""
    cached_splits: list[str] = field(default_factory=list)
    resumed_windows: dict[str, int] = field(default_factory=dict)
    embedded_by_rank: list[int] = field(default_factory=list)
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {"device": self.device, "cached_splits": self.cached_splits, "resumed_windows": self.resumed_windows,
                "embedded_windows": sum(self.embedded_by_rank), "embedded_by_rank": self.embedded_by_rank,
                "embed_seconds": round(self.seconds, 3)}


def as_store(store: TokenStore | str | Path, verify: bool = True) -> TokenStore:
    """A store, every file checked against its sha256 (verify: by rank 0 alone in a torchrun job)."""
    return store if isinstance(store, TokenStore) else TokenStore(store, verify=verify)


def as_tokenizer(tokenizer: Tokenizer | str | Path) -> Tokenizer:
    return tokenizer if isinstance(tokenizer, Tokenizer) else load_tokenizer(tokenizer)


def check_tokenizer(store: TokenStore, tokenizer: Tokenizer) -> None:
    if tokenizer.sha256 != store.tokenizer_sha256:
        raise InputError(f"{tokenizer.path} (sha256 {tokenizer.sha256[:12]}…) is not the tokenizer of {store.path} "
                         f"(sha256 {store.tokenizer_sha256[:12]}…); pass the one the store was prepared with")


def cache_dir(store: TokenStore, embedder: Embedder) -> Path:
    return store.path / EMBEDDINGS_DIR / embedder.id


def cached_embeddings(store: TokenStore, split: str, embedder: Embedder) -> np.ndarray | None:
    """The cached embeddings of a split (memory-mapped), or None when there are none that fit the split."""
    return cached_split(cache_dir(store, embedder), split, store.num_windows(split))


def default_workers(backend: str) -> int:
    """Processes decoding windows ahead of the model: none beside a CPU model (it has the cores, and the
    decoding is about 1% of its time), a few per GPU (its ranks share the machine's cores)."""
    if backend in ("torch",) or (backend == "mlx" and os.uname().sysname != "Darwin"):
        return 0
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 2)
    per_rank = cores // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    return max(1, min(MAX_AUTO_WORKERS, per_rank - 1))


def embed_windows(store: TokenStore | str | Path, tokenizer: Tokenizer | str | Path, split: str,
                  embedder: Embedder | str | Path | None = None, batch_size: int | None = None,
                  on_progress: ProgressFn | None = None, backend: str = "torch") -> np.ndarray:
    """Normalized float16 embeddings (windows, dim) of a split's windows, memory-mapped from the store's
    cache; computed (and cached) only when the cache has none."""
    store, tokenizer = as_store(store), as_tokenizer(tokenizer)
    check_tokenizer(store, tokenizer)
    embedder = embedder if isinstance(embedder, Embedder) else resolve_embedder(embedder, backend=backend)
    embeddings, _ = embed_store(store, tokenizer, embedder, batch_size, on_progress, [split], backend=backend)
    return embeddings[split]


def embed_store(store: TokenStore, tokenizer: Tokenizer, embedder: Embedder, batch_size: int | None = None,
                on_progress: ProgressFn | None = None, splits: list[str] | None = None, backend: str = "torch",
                workers: int | None = None, group: Ranks | None = None) -> tuple[dict[str, np.ndarray], EmbeddingRun]:
    """Embeddings of the given splits (default: every split), each memory-mapped from the cache, and how
    they were made. Under torchrun (group) every rank calls it: each embeds its share of the chunks."""
    group = group or SingleProcess()
    splits = splits or store.splits
    run = EmbeddingRun(embedded_by_rank=[0] * group.world)
    folder = cache_dir(store, embedder)

    def to_embed() -> list[str]:  # rank 0's reading of the cache is every rank's
        todo = [split for split in splits if cached_embeddings(store, split, embedder) is None]
        for split in set(splits) - set(todo):  # a run killed between finishing a split and tidying its journals
            SplitCache.discard_files(folder, split)
        return todo

    todo = on_rank_zero(group, to_embed)
    run.cached_splits = [split for split in splits if split not in todo]
    if todo:
        if batch_size is not None and batch_size < 1:
            raise InputError(f"batch size must be at least 1, got {batch_size}")
        workers = default_workers(backend) if workers is None else workers
        if workers < 0:
            raise InputError(f"--workers must be 0 (decode in this process) or more, got {workers}")
        encoder = load_sentence_encoder(backend, str(embedder.path), embedder.precision)
        run.device = encoder.where

        def set_up() -> int:  # the cache folder, and one batch size for every rank: a chunk's rows depend on it
            _make_cache_dir(folder, embedder, encoder)
            return encoder.batch_size(batch_size)

        batch = on_rank_zero(group, set_up)
        features = WindowFeatures(str(store.path.resolve()), str(tokenizer.path.resolve()),
                                  str(embedder.path.resolve()), encoder.max_seq_length)
        start = time.perf_counter()
        mine = 0
        for split in todo:
            cache = SplitCache(folder, split, store.num_windows(split), encoder.dim, embedder.id)
            embedded, run.resumed_windows[split] = _embed_split(cache, features, encoder, batch, workers, group,
                                                                on_progress)
            mine += embedded
        run.seconds = time.perf_counter() - start
        gathered = group.gather(mine)
        run.embedded_by_rank = [int(n) for n in gathered] if gathered else run.embedded_by_rank
    embeddings = {split: cached_embeddings(store, split, embedder) for split in splits}
    missing = [split for split, array in embeddings.items() if array is None]
    if missing:
        raise InputError(f"{folder}: the embeddings of {', '.join(missing)} are missing or do not fit the store once "
                         "embedded; another job on the same store?")
    return embeddings, run


def _embed_split(cache: SplitCache, features: WindowFeatures, encoder: Any, batch_size: int, workers: int,
                 group: Ranks, on_progress: ProgressFn | None) -> tuple[int, int]:
    """Embed this rank's share of the split's missing chunks; rank 0 finishes the file once all are done.
    (windows this rank embedded, windows an earlier run had embedded)."""
    if cache.windows == 0:
        def write_empty() -> None:
            cache.discard()
            with atomic_file(cache.final) as f:
                np.save(f, np.zeros((0, cache.dim), dtype=np.float16), allow_pickle=False)
        on_rank_zero(group, write_empty)
        return 0, 0

    def pending_chunks() -> list[int]:  # one list for every rank, read before any rank writes
        cache.prepare()
        return sorted(set(range(cache.chunks)) - cache.done())

    pending = on_rank_zero(group, pending_chunks)
    resumed = cache.windows - sum(end - begin for begin, end in map(cache.bounds, pending))
    mine = share(pending, group.rank, group.world)
    windows = sum(end - begin for begin, end in map(cache.bounds, mine))
    description = f"embedding {cache.split}" + (f" (rank 0's share of {group.world})" if group.world > 1 else "")
    report = on_progress if group.rank == 0 else None
    done = 0
    if report:
        report(description, resumed if group.world == 1 else 0, cache.windows if group.world == 1 else windows)
    cache.open_for_writing(group.rank)
    try:
        ranges = ((chunk, *cache.bounds(chunk)) for chunk in mine)
        for chunk, rows in _embed_chunks(feature_stream(features, cache.split, ranges, workers), encoder,
                                         batch_size, cache.dim):
            cache.write(chunk, rows)
            done += len(rows)
            if report:
                report(description, (resumed if group.world == 1 else 0) + done,
                       cache.windows if group.world == 1 else windows)
    finally:
        cache.close()
    group.barrier()  # every rank's chunks on disk
    on_rank_zero(group, cache.finish)
    return done, int(resumed)


def _embed_chunks(chunks: Iterator[tuple[int, list[np.ndarray]]], encoder: Any, batch_size: int,
                  dim: int) -> Iterator[tuple[int, np.ndarray]]:
    """(chunk, float16 rows) for each chunk of token ids, its windows embedded longest first in batches. The
    batches of every chunk flow to the encoder as one stream, so a GPU has the next batch before it is done."""
    plan: deque = deque()  # (chunk, its rows, the rows of this batch, last batch of the chunk)

    def batches() -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for chunk, ids in chunks:
            lengths = np.array([len(row) for row in ids])
            order = np.argsort(-lengths, kind="stable")
            rows = np.empty((len(ids), dim), dtype=np.float32)
            for begin in range(0, len(order), batch_size):
                members = order[begin:begin + batch_size]
                width = int(lengths[members].max())
                padded = np.full((len(members), width), encoder.pad_id, dtype=np.int64)
                mask = np.zeros((len(members), width), dtype=np.int64)
                for row, member in enumerate(members):
                    padded[row, :lengths[member]] = ids[member]
                    mask[row, :lengths[member]] = 1
                plan.append((chunk, rows, members, begin + batch_size >= len(order)))
                yield padded, mask

    for embedded in encoder.encode(batches()):
        chunk, rows, members, last = plan.popleft()
        rows[members] = embedded
        if last:
            yield chunk, rows.astype(np.float16)


def _make_cache_dir(folder: Path, embedder: Embedder, encoder: Any) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        if not (folder / EMBEDDER_FILE).is_file():
            info = {**embedder.describe(), "dim": encoder.dim, "max_seq_length": encoder.max_seq_length,
                    "dtype": "float16", "normalized": True}
            with atomic_file(folder / EMBEDDER_FILE) as f:
                f.write((json.dumps(info, indent=2) + "\n").encode())
    except OSError as exc:
        raise InputError(f"{folder}: cannot write the embedding cache: {exc.strerror or exc}") from None
