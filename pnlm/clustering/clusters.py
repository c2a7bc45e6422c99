"""The CLUSTERS folder: fit it on a generic store, load it, and label (assign) any store with it."""


from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pnlm.clustering.embed import EmbeddingRun, ProgressFn, as_store, as_tokenizer, check_tokenizer, embed_store
from pnlm.clustering.embedder import Embedder, resolve_embedder
from pnlm.clustering.histogram import histogram_report
from pnlm.clustering.kmeans import (MAX_FIT_WINDOWS, MAX_ITERATIONS, fit_sample, kmeans, label_chunks, nearest_centroid,
                                   restarts)
from pnlm.clustering.ranks import Ranks, SingleProcess, on_rank_zero, share
from pnlm.data.store import TokenStore
from pnlm.errors import InputError
from pnlm.files.atomic import atomic_dir
from pnlm.tokenizer import Tokenizer, file_sha256, load_tokenizer

FORMAT = "pnlm-clusters"
VERSION = 1
INFO_FILE = "clusters.json"
CENTROIDS_FILE = "centroids.npy"


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

    def embedder(self, path: str | Path | None = None, backend: str = "torch") -> Embedder:
        """The embedder the clusters were fit with (found at `path` when given), checked by its files' fingerprint."""
        recorded = self.info["embedder"]
        if path is None and not recorded.get("default"):
            path = recorded.get("path")
            if not path or not Path(path).is_dir():
                raise InputError(f"{self.path}: fit with the embedder at {path}, which is not there; "
                                 "pass --embedder with a copy of it")
        embedder = resolve_embedder(path, recorded.get("precision", "float32"), backend)
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
    except (ValueError, RecursionError) as exc:
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
    embedding: EmbeddingRun
    kmeans_backend: str
    kmeans_seconds: float

    @property
    def cached_splits(self) -> list[str]:
        return self.embedding.cached_splits

    @property
    def embed_seconds(self) -> float:
        return self.embedding.seconds

    def to_json(self) -> dict[str, Any]:
        return {"out": str(self.clusters.path), "k": self.clusters.k, "dim": self.clusters.dim,
                "embedder": self.clusters.info["embedder"], "windows": self.windows, "train": self.train,
                **self.embedding.to_json(), "kmeans": self.kmeans_backend,
                "kmeans_seconds": round(self.kmeans_seconds, 3)}


def open_store(store: TokenStore | str | Path, group: Ranks) -> TokenStore:
    """The store, its files checked against their sha256 once, by rank 0 (a mismatch stops every rank)."""
    if isinstance(store, TokenStore):
        return store
    on_rank_zero(group, lambda: as_store(store) and None)
    return as_store(store, verify=False)


def label_splits(embeddings: dict[str, np.ndarray], centroids: np.ndarray, group: Ranks) -> dict[str, np.ndarray]:
    """Every split's nearest-centroid labels, each rank labelling its share of the label chunks; whole on
    rank 0 ({} on the others)."""
    labels = {}
    for split, array in embeddings.items():
        mine = share(list(range(label_chunks(len(array)))), group.rank, group.world)
        part = nearest_centroid(array, centroids, range(mine[0], mine[-1] + 1) if mine else range(0))
        parts = group.gather(part)
        if group.rank == 0:
            labels[split] = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int32)
    return labels


def fit_clusters(store: TokenStore | str | Path, tokenizer: Tokenizer | str | Path | None, k: int, out: str | Path,
                 embedder: str | Path | None = None, seed: int = 0, batch_size: int | None = None,
                 max_fit_windows: int = MAX_FIT_WINDOWS, n_init: int | None = None, precision: str = "auto",
                 on_progress: ProgressFn | None = None, backend: str = "torch", workers: int | None = None,
                 group: Ranks | None = None) -> FitResult:
    """Embed the store's windows (cached), k-means its train split into k clusters, write CLUSTERS at out
    (atomically), and label every split of the store with its nearest centroid. tokenizer=None: the
    copy the store keeps. Under torchrun (group) every rank calls it: each embeds and labels its share,
    rank 0 fits k-means and writes the files, which are the ones a single process writes."""
    group = group or SingleProcess()
    store, out = open_store(store, group), Path(out)
    tokenizer = store.tokenizer() if tokenizer is None else as_tokenizer(tokenizer)
    check_tokenizer(store, tokenizer)
    train_windows = store.num_windows("train")
    if k < 1:
        raise InputError(f"k must be a positive number of clusters, got {k}")
    if k > train_windows:
        raise InputError(f"k={k} clusters but the train split of {store.path} has only {train_windows} windows")
    _check_out(out, store)
    resolved = resolve_embedder(embedder, precision, backend)

    embeddings, embedding = embed_store(store, tokenizer, resolved, batch_size, on_progress, backend=backend,
                                        workers=workers, group=group)

    start = time.perf_counter()

    def fit() -> tuple[np.ndarray, str, int]:  # once, on rank 0
        sample = fit_sample(embeddings["train"], seed, max(max_fit_windows, k))
        if on_progress:
            on_progress(f"k-means, k={k}", 0, len(sample))
        centroids, library = kmeans(sample, k, seed, n_init)
        if on_progress:
            on_progress(f"k-means, k={k}", len(sample), len(sample))
        return centroids, library, len(sample)

    centroids, library, fit_windows = on_rank_zero(group, fit)
    kmeans_seconds = time.perf_counter() - start

    labels = label_splits({split: embeddings[split] for split in store.splits}, centroids, group)
    train = on_rank_zero(group, lambda: histogram_report(labels["train"], k))
    info = {"format": FORMAT, "version": VERSION, "k": k, "dim": int(centroids.shape[1]), "seed": seed,
            "embedder": resolved.describe(), "store": str(store.path.resolve()),
            "tokenizer_sha256": store.tokenizer_sha256, "context": store.context,
            "tokenizer": {"path": str(tokenizer.path.resolve()), "sha256": tokenizer.sha256},
            "kmeans": {"library": library, "n_init": restarts(k, n_init), "max_iterations": MAX_ITERATIONS,
                       "fit_windows": fit_windows},
            "train_windows": train_windows, "train_counts": train["counts"], "train_histogram": train["histogram"]}

    def write() -> str:  # rank 0; every rank returns once the files are in place
        with atomic_dir(out) as folder:
            np.save(folder / CENTROIDS_FILE, centroids, allow_pickle=False)
            info["centroids_sha256"] = file_sha256(folder / CENTROIDS_FILE)
            (folder / INFO_FILE).write_text(json.dumps(info, indent=2) + "\n")
        store.write_cluster_ids(labels, Clusters(out, info, centroids).store_info())
        return info["centroids_sha256"]

    info["centroids_sha256"] = on_rank_zero(group, write)
    clusters = Clusters(out, info, centroids)
    windows = {split: store.num_windows(split) for split in store.splits}
    return FitResult(clusters, windows, train, embedding, library, kmeans_seconds)


def assign_clusters(store: TokenStore | str | Path, tokenizer: Tokenizer | str | Path | None, clusters_dir: str | Path,
                    split: str = "test", embedder: str | Path | None = None, batch_size: int | None = None,
                    on_progress: ProgressFn | None = None, all_splits: bool = False, backend: str = "torch",
                    workers: int | None = None, group: Ranks | None = None) -> dict[str, Any]:
    """Label `split` of a (domain) store (every split with all_splits) with existing clusters; report its histogram.

    Labels of other splits stay if they come from the same clusters, and are dropped otherwise (see
    TokenStore.write_cluster_ids). tokenizer=None: the one the clusters were fit with (at its
    recorded path), for a store prepared with it. The report (on every rank of a torchrun job):
    {"split", "windows", "counts", "histogram", "top_cluster", "top_share", "entropy"}.
    """
    group = group or SingleProcess()
    clusters = load_clusters(clusters_dir)
    store = open_store(store, group)
    tokenizer = clusters.tokenizer() if tokenizer is None else as_tokenizer(tokenizer)
    check_tokenizer(store, tokenizer)
    if not store.num_windows(split):
        raise InputError(f"{store.path}: the {split} split has no windows to report on; pick another with --split")
    resolved = clusters.embedder(embedder, backend)
    embeddings, _ = embed_store(store, tokenizer, resolved, batch_size, on_progress,
                                splits=None if all_splits else [split], backend=backend, workers=workers, group=group)
    for name, array in embeddings.items():
        if array.shape[1] != clusters.dim:
            raise InputError(f"{name} embeddings have dimension {array.shape[1]}, the clusters {clusters.dim}")
    labels = label_splits(embeddings, clusters.centroids, group)
    def write() -> dict[str, Any]:
        store.write_cluster_ids(labels, clusters.store_info())
        return {"split": split, **histogram_report(labels[split], clusters.k)}

    return on_rank_zero(group, write)
