"""k-means at the paper's importance-sampling scale: k = 1,024 on 1,000,000 embeddings of 384 dimensions
(float16, memory-mapped as pnlm caches them), fit on pnlm's sample and every vector labelled by streaming
over the file; the wall time and the peak RSS of the process, and the adjusted Rand index of the labels
against the planted clusters the vectors were drawn around.

    python bench/kmeans_scale.py [--vectors 1000000] [--k 1024] [--dim 384] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import tempfile
import time
from pathlib import Path

import numpy as np


def planted_embeddings(path: Path, vectors: int, k: int, dim: int, seed: int = 0) -> np.ndarray:
    """Unit vectors around k random unit centres (noise such that clusters overlap a little), written in chunks."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(k, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float16, shape=(vectors, dim))
    truth = rng.integers(0, k, vectors).astype(np.int32)
    for begin in range(0, vectors, 1 << 16):
        rows = truth[begin:begin + (1 << 16)]
        x = centres[rows] + rng.normal(scale=0.6 / np.sqrt(dim), size=(len(rows), dim)).astype(np.float32)
        out[begin:begin + len(rows)] = x / np.linalg.norm(x, axis=1, keepdims=True)
    out.flush()
    del out
    return truth


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vectors", type=int, default=1_000_000)
    parser.add_argument("--k", type=int, default=1024)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    from sklearn.metrics import adjusted_rand_score

    from pnlm.clustering.kmeans import MAX_FIT_WINDOWS, fit_sample, kmeans, nearest_centroid

    with tempfile.TemporaryDirectory() as work:
        path = Path(work) / "train.npy"
        truth = planted_embeddings(path, args.vectors, args.k, args.dim)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        embeddings = np.load(path, mmap_mode="r")
        started = time.perf_counter()
        sample = fit_sample(embeddings, 0, max(MAX_FIT_WINDOWS, args.k))
        centroids, library = kmeans(sample, args.k, seed=0)
        fitted = time.perf_counter()
        del sample
        labels = nearest_centroid(embeddings, centroids)
        done = time.perf_counter()
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    result = {"date": time.strftime("%Y-%m-%d"), "machine": os.uname().nodename, "cpus": os.cpu_count(),
              "vectors": args.vectors, "k": args.k, "dim": args.dim, "library": library,
              "fit_windows": min(args.vectors, max(MAX_FIT_WINDOWS, args.k)),
              "fit_seconds": round(fitted - started, 1), "label_seconds": round(done - fitted, 1),
              "total_seconds": round(done - started, 1), "peak_rss_gib": round(peak / 2**20, 2),
              "peak_rss_before_gib": round(before / 2**20, 2),
              "adjusted_rand_index": round(float(adjusted_rand_score(truth, labels)), 4)}
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
