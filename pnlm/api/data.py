"""The data steps of the workflow: a tokenizer, token stores (whole, or a domain's train split at a size),
clusters of the generic windows, and a domain's labels and histogram over them.

Each function writes its output whole (a temporary folder, then a rename), refuses an `out` that holds
anything pnlm did not write (and pnlm's own output unless overwrite=True), and returns a typed result.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pnlm.backend_loader import require_backend, resolve_backend
from pnlm.clustering.clusters import FitResult, assign_clusters, fit_clusters
from pnlm.clustering.embed import ProgressFn
from pnlm.clustering.ranks import Ranks, process_group
from pnlm.data.prepare import prepare_store
from pnlm.data.readers import TXT_MODES, ReadStats, iter_documents
from pnlm.data.store import TokenStore
from pnlm import values
from pnlm.errors import InputError, PnlmError
from pnlm.files.outputs import CLUSTERS, TOKEN_STORE, TOKENIZER, writing_output
from pnlm.files.run_lock import output_lock
from pnlm.tokenizer import Tokenizer, load_tokenizer, train_tokenizer as train_sentencepiece

PathLike = str | Path


@dataclass(frozen=True)
class ReadOptions:
    """How corpus files are read (pnlm/data/readers.py)."""

    text_field: str = "text"  # the JSONL key or Parquet column holding the text
    txt_mode: str = "file"  # .txt files: one document a "file", or one per "blank-line"-separated block
    skip_bad: bool = False  # skip and count malformed JSONL records instead of stopping at the first
    max_documents: int = 0  # read only the first N documents (0: all)

    def documents(self, inputs: Iterable[PathLike], stats: ReadStats) -> Iterator[str]:
        if self.txt_mode not in TXT_MODES:
            raise InputError(f"--txt-mode must be one of {', '.join(TXT_MODES)}, got {self.txt_mode!r}")
        values.whole("--max-documents", self.max_documents, 0)
        if not isinstance(self.text_field, str) or not self.text_field:
            raise InputError(f"--text-field must name a JSONL key or Parquet column, got {self.text_field!r}")
        documents = iter_documents([Path(p) for p in inputs], text_field=self.text_field, txt_mode=self.txt_mode,
                                   skip_bad=self.skip_bad, stats=stats)
        return itertools.islice(documents, self.max_documents) if self.max_documents else documents


@dataclass
class TokenizerResult:
    out: Path
    tokenizer: Tokenizer
    read: ReadStats = field(default_factory=ReadStats)

    def to_json(self) -> dict[str, Any]:
        return {"out": str(self.out), "vocab_size": self.tokenizer.vocab_size, "sha256": self.tokenizer.sha256,
                **self.read.to_json()}


def train_tokenizer(inputs: Iterable[PathLike], vocab_size: int, out: PathLike, *, max_sentences: int = 2_000_000,
                    read: ReadOptions = ReadOptions(), overwrite: bool = False,
                    on_document: Callable[[int], None] | None = None) -> TokenizerResult:
    """A SentencePiece BPE tokenizer (byte fallback, BOS/EOS, Llama settings) trained on corpus files.
    on_document(n) is called with the number of documents read so far."""
    inputs, out = [Path(p) for p in inputs], Path(out)
    with writing_output(out, TOKENIZER, overwrite, inputs):
        stats = ReadStats()
        documents = read.documents(inputs, stats)
        if on_document is not None:
            documents = _counted(documents, on_document)
        tokenizer = train_sentencepiece(documents, vocab_size, out, max_sentences=max_sentences)
    return TokenizerResult(out, tokenizer, stats)


def _counted(documents: Iterator[str], on_document: Callable[[int], None]) -> Iterator[str]:
    for n, document in enumerate(documents, 1):
        on_document(n)
        yield document


@dataclass
class PrepareResult:
    store: TokenStore
    empty_documents: int
    seconds: float
    tokens: int
    read: ReadStats = field(default_factory=ReadStats)

    def to_json(self) -> dict[str, Any]:
        return {"out": str(self.store.path), "context": self.store.context, "splits": self.store.meta["splits"],
                "empty_documents_skipped": self.empty_documents, **self.read.to_json(),
                "seconds": round(self.seconds, 2), "tokens_per_s": round(self.tokens / max(self.seconds, 1e-9))}


def prepare(inputs: Iterable[PathLike], tokenizer: PathLike, context: int, out: PathLike, *,
            valid_fraction: float = 0.05, test_fraction: float = 0.05, workers: int = 0,
            read: ReadOptions = ReadOptions(), overwrite: bool = False,
            on_progress: Callable[[int, int], None] | None = None) -> PrepareResult:
    """Tokenize corpus files in parallel into a memory-mapped token store with train/valid/test splits
    (by a stable hash of each document). Each document becomes [BOS] + tokens + [EOS], cut into windows of
    `context` tokens. on_progress(documents, tokens) as it goes; workers=0: one process per core."""
    inputs, out = [Path(p) for p in inputs], Path(out)
    with writing_output(out, TOKEN_STORE, overwrite, [*inputs, tokenizer]):
        tok = load_tokenizer(tokenizer)
        stats = ReadStats()
        store, prepared = prepare_store(read.documents(inputs, stats), tok, out, context, valid_fraction,
                                        test_fraction, workers=workers or None, sources=[str(p) for p in inputs],
                                        read_stats=stats, on_progress=on_progress)
    return PrepareResult(store, prepared.empty_documents, prepared.seconds, prepared.total_tokens, stats)


@dataclass
class SubsetResult:
    store: TokenStore

    def to_json(self) -> dict[str, Any]:
        return {"out": str(self.store.path), "splits": self.store.meta["splits"]}


def subset(store: PathLike, train_tokens: int, out: PathLike, *, overwrite: bool = False) -> SubsetResult:
    """A copy of a store whose train split keeps its first documents' windows up to ~train_tokens tokens
    (valid and test whole, cluster labels included): a domain's data at a given size."""
    from pnlm.data.subset import subset_store

    with writing_output(out, TOKEN_STORE, overwrite, [store]):
        return SubsetResult(subset_store(store, out, train_tokens))


@contextmanager
def rank_zero_guards(group: Ranks, *guards: Callable[[], AbstractContextManager]) -> Iterator[None]:
    """The output guards and locks, held by rank 0 of a torchrun job (by the one process alone): a refusal
    there is raised on every rank, so each stops with the same line instead of waiting for rank 0."""
    with ExitStack() as held:
        refusal = None
        if group.rank == 0:
            try:
                for guard in guards:
                    held.enter_context(guard())
            except PnlmError as exc:
                refusal = exc
        refusal = group.broadcast(refusal)
        if refusal is not None:
            raise refusal
        yield


def cluster(store: PathLike, k: int, out: PathLike, *, tokenizer: PathLike | None = None,
            embedder: PathLike | None = None, seed: int = 0, batch_size: int | None = None,
            precision: str = "auto", backend: str = "auto", workers: int | None = None, overwrite: bool = False,
            on_progress: ProgressFn | None = None) -> FitResult:
    """Embed the store's windows (cached in STORE/embeddings, resumable), k-means its train split into k
    clusters, write the clusters folder at out, and label every split of the store with its nearest cluster.
    backend: where windows are embedded (auto: cuda with an NVIDIA GPU, mlx on Apple silicon, torch
    elsewhere); batch_size None: sized to the device; workers None: processes decoding windows ahead of a GPU.
    Under torchrun every rank calls it and embeds its share. on_progress(what, done, total) as it goes."""
    values.seed(seed)
    values.whole("--k", k, 1)
    if batch_size is not None:
        values.whole("--batch-size", batch_size, 1)
    backend = resolve_backend(backend)
    require_backend(backend)
    group = process_group()
    with rank_zero_guards(group, lambda: writing_output(out, CLUSTERS, overwrite, [store, tokenizer, embedder]),
                          lambda: output_lock(store)):  # the labels are written into the store
        result = fit_clusters(store, tokenizer, k, out, embedder=embedder, seed=seed, batch_size=batch_size,
                              precision=precision, on_progress=on_progress, backend=backend, workers=workers,
                              group=group)
    group.close()
    return result


@dataclass
class Histogram:
    """A split's windows over the clusters: the paper's concentration measures (top share, entropy)."""

    split: str
    windows: int
    counts: list[int]
    histogram: list[float]
    top_cluster: int
    top_share: float
    entropy: float

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def assign(store: PathLike, clusters: PathLike, *, split: str = "test", all_splits: bool = False,
           tokenizer: PathLike | None = None, embedder: PathLike | None = None, batch_size: int | None = None,
           backend: str = "auto", workers: int | None = None, on_progress: ProgressFn | None = None) -> Histogram:
    """Label a store's windows (a domain's) with their nearest cluster, and report the split's histogram.
    all_splits: label every split (to train on the domain's clusters); the report is still of `split`.
    backend, batch_size, workers: as for cluster."""
    backend = resolve_backend(backend)
    require_backend(backend)
    group = process_group()
    with rank_zero_guards(group, lambda: output_lock(store)):  # the labels are written into the store
        report = assign_clusters(store, tokenizer, clusters, split=split, embedder=embedder, batch_size=batch_size,
                                 on_progress=on_progress, all_splits=all_splits, backend=backend, workers=workers,
                                 group=group)
    group.close()
    return Histogram(**report)
