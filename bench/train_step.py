"""Benchmark: one training step (forward, backward, clip, AdamW) of a preset, torch CPU vs MLX, side by side.

    python bench/train_step.py [--model tiny] [--batch-size 8] [--steps 20] [--rounds 3] [--json OUT]

Both backends get the same weights and batches; rounds alternate torch and MLX so that load from
other processes hits both alike. Also times MLX with its own reference BLAS (PNLM_BLAS=off) in a
subprocess, to show what the BLAS loader buys.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

import numpy as np


def time_steps(step, batches: np.ndarray, steps: int) -> float:
    step(batches[0, :, :-1], batches[0, :, 1:])  # compile / warm up
    start = time.perf_counter()
    for i in range(steps):
        b = batches[(i + 1) % len(batches)]
        step(b[:, :-1], b[:, 1:])
    return (time.perf_counter() - start) / steps


def build(backend: str, spec, weights, optimizer):
    if backend == "mlx":
        from pnlm.backends.mlx.model import Transformer
        from pnlm.backends.mlx.train_step import TrainStep
    else:
        from pnlm.backends.torch.model import Transformer
        from pnlm.backends.torch.train_step import TrainStep
    model = Transformer(spec)
    model.load_canonical(weights)
    return TrainStep(model, optimizer)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--no-reference", action="store_true", help="skip timing MLX with its reference BLAS")
    parser.add_argument("--only", choices=["torch", "mlx"], help=argparse.SUPPRESS)
    parser.add_argument("--json", help="write the results here as JSON")
    args = parser.parse_args()

    import pnlm.backends.mlx as mlx_backend  # loads the BLAS before anything imports mlx.core
    import torch

    from pnlm.model.spec import OptimizerSpec, load_spec
    from pnlm.checkpoints.weights import init_weights

    torch.set_num_threads(args.threads)
    spec = load_spec(args.model)
    weights = init_weights(spec, seed=0)
    batches = np.random.default_rng(0).integers(0, spec.vocab_size, (4, args.batch_size, spec.context + 1))
    backends = [args.only] if args.only else ["torch", "mlx"]
    steps = {name: build(name, spec, weights, OptimizerSpec()) for name in backends}
    times: dict[str, list[float]] = {name: [] for name in backends}
    for _ in range(args.rounds):
        for name in backends:
            times[name].append(time_steps(steps[name], batches, args.steps))
    ms = {name: statistics.median(t) * 1e3 for name, t in times.items()}
    if args.only:
        print(json.dumps(ms))
        return
    if not args.no_reference:
        env = {**os.environ, "PNLM_BLAS": "off"}
        reference = subprocess.run([sys.executable, __file__, "--model", args.model, "--batch-size", str(args.batch_size),
                                    "--steps", str(max(2, args.steps // 10)), "--rounds", "1", "--threads",
                                    str(args.threads), "--only", "mlx"], env=env, capture_output=True, text=True, check=True)
        ms["mlx_reference_blas"] = json.loads(reference.stdout.strip().splitlines()[-1])["mlx"]
    tokens = args.batch_size * spec.context
    result = {
        "model": args.model, "batch_size": args.batch_size, "context": spec.context, "threads": args.threads,
        "ms_per_step": {k: round(v, 1) for k, v in ms.items()},
        "tokens_per_s": {k: round(tokens / v * 1e3) for k, v in ms.items()},
        "mlx_over_torch": round(ms["mlx"] / ms["torch"], 2),
        **({"mlx_reference_blas_over_torch": round(ms["mlx_reference_blas"] / ms["torch"], 1)}
           if "mlx_reference_blas" in ms else {}),
        "blas": mlx_backend.BLAS.library, "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.system()}",
        "torch": torch.__version__,
    }
    print(json.dumps(result, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
