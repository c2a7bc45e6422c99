"""Benchmark: projected-network (and soup-of-experts) pretraining tokens/s ÷ SLM pretraining tokens/s at the
same inference size.

    python bench/pn_throughput.py [--model tiny] [--projections 4,8,4:4,16,4] [--soups 4,8] [--batches mixed]
                                  [--backends torch,mlx] [--steps 40] [--rounds 3] [--json OUT]

A soup (--soups banks,k: the model's MLPs in `banks` banks over k clusters) draws its batches as
`pnlm pretrain --method soup` does: each step's domain weights h, its rows from the clusters in proportions h.

Both run through the loop (pnlm/training/loop.py) on the sample books (2,048-piece tokenizer, context 256,
batch 8). The PN draws the SLM's batches and sends each row through its own cluster's expert
(--batches mixed, what `pnlm pretrain --method pn` does), or draws one cluster a batch (one-cluster).
The windows get random cluster labels here, uniform over the k clusters: the most experts a batch can
hold, the slowest case for mixed batches; labelling them with MiniLM would only add its time. Rounds alternate SLM and every PN, per backend, each run in a
fresh process; tokens/s is measured from the second logged step to the last (the first includes
compilation).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import tempfile
from pathlib import Path


def tokens_per_s(run: Path) -> float:
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    first, last = lines[1], lines[-1]
    return (last["tokens"] - first["tokens"]) / (last["elapsed_s"] - first["elapsed_s"])


def measure(backend: str, spec: dict, store_path: str, steps: int, batch_size: int, batches: str,
            threads: int, run: str) -> float:
    """One run in a process of its own: a process that trained another model first runs slower (its
    allocator's state), which would favour whichever model goes first."""
    import pnlm.backends.mlx  # noqa: F401  (loads the BLAS before anything imports mlx.core)
    import torch

    from pnlm.backends import make_train_step
    from pnlm.data.samplers import ClusterSampler, RoutedSampler
    from pnlm.data.store import TokenStore
    from pnlm.training.loop import TrainConfig
    from pnlm.training.runs import run_training
    from pnlm.model.spec import ModelSpec, OptimizerSpec
    from pnlm.checkpoints.weights import init_weights

    torch.set_num_threads(threads)
    spec = ModelSpec.from_dict(spec)
    store = TokenStore(store_path)
    config = TrainConfig(steps=steps, batch_size=batch_size, optimizer=OptimizerSpec(lr=1e-3), warmup_steps=steps // 10)
    sampler = None
    if spec.projection is not None:
        sampler = (RoutedSampler if batches == "mixed" else ClusterSampler)(store, batch_size, 0, spec.projection.k)
    if spec.soup is not None:
        from pnlm.methods.soup import SoupSampler

        sampler = SoupSampler(store, batch_size, 0, spec.soup)
    step_fn = make_train_step(backend, spec, init_weights(spec, 0), config.optimizer)
    method = "pn" if spec.projection else "soup" if spec.soup else "slm"
    run_training(step_fn, spec, store.tokenizer(), store, config, run, False, method, sampler=sampler)
    return tokens_per_s(Path(run))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--projections", default="4,8,4:4,16,4", help="h,k,m of each PN, separated by ':'")
    parser.add_argument("--soups", default="", help="banks,k of each soup of experts, separated by ':'")
    parser.add_argument("--batches", default="mixed", choices=["mixed", "one-cluster"])
    parser.add_argument("--backends", default="torch,mlx")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--json", help="write the results here as JSON")
    args = parser.parse_args()

    import multiprocessing

    import numpy as np

    import pnlm
    from pnlm.data import iter_documents
    from pnlm.data.prepare import prepare_store
    from pnlm.model.spec import Projection, Soup, load_spec
    from pnlm.tokenizer import train_tokenizer

    projections = [Projection(*map(int, p.split(","))) for p in filter(None, args.projections.split(":"))]
    soups = [Soup(*map(int, s.split(","))) for s in filter(None, args.soups.split(":"))]
    backends = args.backends.split(",")
    samples = sorted(str(p) for p in (Path(pnlm.__file__).parent / "sample_data").glob("*.jsonl.gz"))
    names = (["slm"] + [f"pn h={p.h} k={p.k} m={p.m}" for p in projections]
             + [f"soup n={s.banks} k={s.k}" for s in soups])
    variants = [None] + projections + soups
    results = {backend: {name: [] for name in names} for backend in backends}
    spawn = multiprocessing.get_context("spawn")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        tokenizer = train_tokenizer(iter_documents(samples), 2048, tmp / "tok")
        store = prepare_store(iter_documents(samples), tokenizer, tmp / "store", context=256,
                              valid_fraction=0.0, test_fraction=0.0, workers=1)[0]
        k_max = max([p.k for p in projections] + [s.k for s in soups] + [1])
        labels = np.random.default_rng(0).integers(0, k_max, store.num_windows("train")).astype(np.int32)
        slm = load_spec(args.model).with_vocab(tokenizer.vocab_size)
        for round_ in range(args.rounds):
            for backend in backends:
                for name, variant in zip(names, variants):
                    if variant is None:
                        spec = slm
                    elif isinstance(variant, Projection):
                        spec = dataclasses.replace(slm, projection=variant).validate()
                    else:
                        spec = dataclasses.replace(slm, soup=variant).validate()
                    if variant is not None:  # labels 0..k-1 of this model's k
                        store.write_cluster_ids({"train": labels % variant.k},
                                                {"k": variant.k, "centroids_sha256": f"random {variant.k}"})
                    run = tmp / f"{backend}-{round_}-{names.index(name)}"
                    with spawn.Pool(1) as pool:
                        rate = pool.apply(measure, (backend, spec.to_dict(), str(store.path), args.steps,
                                                    args.batch_size, args.batches, args.threads, str(run)))
                    results[backend][name].append(rate)
                    print(f"round {round_ + 1}: {backend:5} {name:18} {rate:10,.0f} tokens/s", flush=True)
    median = {b: {n: statistics.median(r) for n, r in by_name.items()} for b, by_name in results.items()}
    print(f"\n{args.model}, batch {args.batch_size} x 256 ({args.batches} batches), {args.steps} steps, {args.rounds} rounds, "
          f"{args.threads} threads ({platform.machine()}, {os.cpu_count()} cores); median tokens/s")
    for backend, rates in median.items():
        for name, rate in rates.items():
            print(f"{backend:5} {name:18} {rate:10,.0f}   ÷ slm {rate / rates['slm']:.3f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "runs": results, "median": median}, indent=2))


if __name__ == "__main__":
    main()
