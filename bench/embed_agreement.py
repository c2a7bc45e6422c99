"""How alike the backends embed the shared generic corpus: windows of 1,024 tokens embedded by torch on the
CPU in float32 (the reference), and by each other backend and precision; the smallest and the mean cosine
to the reference, and how many windows the reference's k-means centroids label alike.

    python bench/embed_agreement.py [--documents 1600] [--k 16,64] [--runs torch:bfloat16,mlx:float32] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
GENERIC = ROOT.parent / "shared" / "corpora" / "generic.jsonl.gz"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--documents", type=int, default=1600)
    parser.add_argument("--k", default="16,64")
    parser.add_argument("--runs", default="torch:bfloat16,mlx:float32,mlx:bfloat16")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    import pnlm
    from pnlm.clustering import embed_windows, kmeans, nearest_centroid, resolve_embedder

    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        read = pnlm.ReadOptions(max_documents=args.documents)
        pnlm.train_tokenizer([GENERIC], 8192, work / "tok", read=read)
        pnlm.prepare([GENERIC], work / "tok", 1024, work / "store", valid_fraction=0, test_fraction=0, read=read)
        tokenizer = work / "store" / "tokenizer.model"

        def embed(backend: str, precision: str) -> tuple[np.ndarray, float]:
            # The cache knows a model and a precision, not a backend: each run from an empty one.
            shutil.rmtree(work / "store" / "embeddings", ignore_errors=True)
            started = time.perf_counter()
            array = embed_windows(work / "store", tokenizer, "train", resolve_embedder(None, precision, backend),
                                  backend=backend)
            return np.asarray(array, dtype=np.float32), time.perf_counter() - started

        reference, seconds = embed("torch", "float32")
        result = {"date": time.strftime("%Y-%m-%d"), "machine": os.uname().nodename, "windows": len(reference),
                  "reference": {"run": "torch:float32", "windows_per_s": round(len(reference) / seconds, 1)}, "runs": {}}
        centroids = {int(k): kmeans(reference, int(k), seed=0)[0] for k in args.k.split(",")}
        labels = {k: nearest_centroid(reference, c) for k, c in centroids.items()}
        for run in filter(None, args.runs.split(",")):
            backend, precision = run.split(":")
            other, seconds = embed(backend, precision)
            cosine = (reference * other).sum(axis=1) / np.linalg.norm(reference, axis=1) / np.linalg.norm(other, axis=1)
            result["runs"][run] = {
                "windows_per_s": round(len(other) / seconds, 1), "min_cosine": round(float(cosine.min()), 5),
                "mean_cosine": round(float(cosine.mean()), 6),
                "label_agreement": {f"k={k}": round(float((nearest_centroid(other, c) == labels[k]).mean()), 4)
                                    for k, c in centroids.items()}}
            print(run, result["runs"][run], flush=True)
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
