"""Cluster histograms of a split's labels and what the paper reads off them (tables 8 and 9, importance weights)."""


from __future__ import annotations

from typing import Any

import numpy as np

from pnlm.errors import InputError


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
