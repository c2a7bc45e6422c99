"""k-means on window embeddings (faiss when installed, else scikit-learn) and nearest-centroid labels."""


from __future__ import annotations


import numpy as np

from pnlm.errors import BackendError

N_INIT = 3
LABEL_CHUNK = 1 << 16


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


def fit_sample(embeddings: np.ndarray, seed: int, max_windows: int) -> np.ndarray:
    if len(embeddings) <= max_windows:
        return np.asarray(embeddings, dtype=np.float32)
    rows = np.sort(np.random.default_rng(seed).choice(len(embeddings), max_windows, replace=False))
    return np.asarray(embeddings[rows], dtype=np.float32)
