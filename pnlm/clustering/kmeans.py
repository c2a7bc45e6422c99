"""k-means on window embeddings (faiss, its GPU build where installed; scikit-learn where faiss cannot be
imported) and nearest-centroid labels, streamed over memory-mapped embeddings.

k-means is fit on a uniform sample of at most MAX_FIT_WINDOWS windows (256 a centroid at the paper's
k = 1,024 for importance sampling), with N_INIT starts of up to MAX_ITERATIONS Lloyd iterations, one start
from k = 256 on: on this 2-core machine, k = 1,024 on 1M windows fits and labels in minutes
(docs/benchmarks.md). Each start is seeded by k-means++ on at most SEEDING_WINDOWS of the sample: faiss's
own start (k random windows) leaves planted clusters merged and split (tests/test_cluster_scale.py);
the start with the lowest objective wins. Labels are computed LABEL_CHUNK windows at a time, so the embeddings are read
from the memory-mapped cache and never copied whole into memory; a job's ranks label whole chunks, so
each label is computed exactly as one process computes it.
"""


from __future__ import annotations

import numpy as np

from pnlm.errors import BackendError

N_INIT = 3
LARGE_K = 256  # from here on, one start: each costs k-fold more and the sample is k-fold larger
MAX_ITERATIONS = 50
MAX_FIT_WINDOWS = 1 << 18
SEEDING_WINDOWS = 1 << 15
LABEL_CHUNK = 1 << 16


def restarts(k: int, n_init: int | None) -> int:
    return n_init if n_init is not None else (N_INIT if k < LARGE_K else 1)


def kmeans_library() -> str:
    try:
        import faiss  # noqa: F401
    except ImportError:
        return "scikit-learn"
    return "faiss"


def kmeans_plus_plus(x: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """k starting centroids by greedy k-means++ (as scikit-learn seeds): each step draws 2 + log k candidates,
    each window with probability its squared distance to the nearest centroid so far, and keeps the one that
    lowers the sum of those distances most; from at most SEEDING_WINDOWS windows of x."""
    if len(x) > SEEDING_WINDOWS:
        x = x[np.sort(rng.choice(len(x), SEEDING_WINDOWS, replace=False))]
    candidates = 2 + int(np.log(k))
    norms = (x * x).sum(axis=1)

    def squared_distances(rows: np.ndarray) -> np.ndarray:  # (len(rows), windows)
        return np.maximum(norms[rows, None] - 2.0 * (x[rows] @ x.T) + norms[None, :], 0.0)

    chosen = [int(rng.integers(len(x)))]
    nearest = squared_distances(np.array(chosen))[0]
    for _ in range(1, k):
        total = float(nearest.sum())
        if total <= 0:  # every window sits on a centroid already: any other will do
            chosen.append(int(rng.integers(len(x))))
            continue
        drawn = np.searchsorted(np.cumsum(nearest), rng.random(candidates) * total).clip(0, len(x) - 1)
        options = np.minimum(nearest[None, :], squared_distances(drawn))
        best = int(np.argmin(options.sum(axis=1)))
        chosen.append(int(drawn[best]))
        nearest = options[best]
    return np.ascontiguousarray(x[chosen], dtype=np.float32)


def kmeans(x: np.ndarray, k: int, seed: int = 0, n_init: int | None = None) -> tuple[np.ndarray, str]:
    """Centroids (k, dim) float32 of x, and the library that ran Lloyd's iterations: faiss (on its GPU build's
    GPUs where there are some), else scikit-learn. Every start is seeded by k-means++ (kmeans_plus_plus)."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    rng = np.random.default_rng(seed)
    try:
        import faiss
    except ImportError:
        faiss = None
    if faiss is None:
        try:
            from sklearn.cluster import KMeans
        except ImportError:
            raise BackendError("k-means needs faiss or scikit-learn (pip install 'pnlm[data]')") from None
    best, best_objective, library = None, np.inf, "scikit-learn"
    for _ in range(restarts(k, n_init)):
        start = kmeans_plus_plus(x, k, rng)
        if faiss is not None:
            gpu = hasattr(faiss, "get_num_gpus") and faiss.get_num_gpus() > 0
            library = "faiss-gpu" if gpu else "faiss"
            # Every sampled window counts: the sample is ours to size (faiss would subsample to 256 a centroid).
            model = faiss.Kmeans(x.shape[1], k, niter=MAX_ITERATIONS, seed=seed, verbose=False, gpu=gpu,
                                 max_points_per_centroid=max(256, -(-len(x) // k)), min_points_per_centroid=1)
            objective = model.train(x, init_centroids=start)
            centroids = np.asarray(model.centroids, dtype=np.float32)
        else:
            fitted = KMeans(n_clusters=k, init=start, n_init=1, max_iter=MAX_ITERATIONS, random_state=seed).fit(x)
            objective, centroids = fitted.inertia_, fitted.cluster_centers_.astype(np.float32)
        if objective < best_objective:
            best, best_objective = centroids, objective
    return best, library


def nearest_centroid(embeddings: np.ndarray, centroids: np.ndarray, chunks: range | None = None) -> np.ndarray:
    """The cluster id (int32) of each embedding: the centroid nearest in L2, LABEL_CHUNK rows at a time
    (only the chunks given: a rank's share of them)."""
    centroids = np.asarray(centroids, dtype=np.float32)
    squared_norms = (centroids * centroids).sum(axis=1)
    chunks = range(label_chunks(len(embeddings))) if chunks is None else chunks
    begin_all = chunks.start * LABEL_CHUNK if len(chunks) else 0
    end_all = min(len(embeddings), chunks.stop * LABEL_CHUNK) if len(chunks) else 0
    ids = np.empty(max(0, end_all - begin_all), dtype=np.int32)
    for chunk in chunks:
        begin = chunk * LABEL_CHUNK
        x = np.asarray(embeddings[begin:begin + LABEL_CHUNK], dtype=np.float32)
        # ||x - c||^2 = ||x||^2 - 2 x.c + ||c||^2, and ||x||^2 does not change which c is nearest.
        ids[begin - begin_all:begin - begin_all + len(x)] = np.argmin(squared_norms - 2.0 * (x @ centroids.T), axis=1)
    return ids


def label_chunks(windows: int) -> int:
    return -(-windows // LABEL_CHUNK)


def fit_sample(embeddings: np.ndarray, seed: int, max_windows: int) -> np.ndarray:
    """Every window, or a uniform sample of max_windows of them (read row by row from the memory map)."""
    if len(embeddings) <= max_windows:
        return np.asarray(embeddings, dtype=np.float32)
    rows = np.sort(np.random.default_rng(seed).choice(len(embeddings), max_windows, replace=False))
    return np.asarray(embeddings[rows], dtype=np.float32)
