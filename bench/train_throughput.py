"""Benchmark: training tokens/s through the loop (pnlm/training/loop.py), torch CPU vs MLX CPU, side by side.

    python bench/train_throughput.py [--model tiny] [--steps 40] [--rounds 2] [--modes pretrain,finetune,lora,bf16]
                                     [--json OUT]

Modes: pretrain (all weights, warmup + cosine), finetune (all weights, constant rate), lora (rank 8
adapters on every linear layer, base frozen), bf16 (pretrain with bfloat16 compute). The data are
the sample books shipped in the package, tokenized with a 2,048-piece tokenizer at context 256.
Rounds alternate every (mode, backend) so that load from other processes hits all alike; tokens/s
is measured from the second logged step to the last (the first includes compilation).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
from pathlib import Path

MODES = ("pretrain", "finetune", "lora", "bf16")


def run_once(backend: str, mode: str, spec, weights, tokenizer, store, steps: int, batch_size: int,
             out: Path) -> float:
    from pnlm.backends import make_train_step
    from pnlm.model.lora import LoraSpec, init_adapters
    from pnlm.training.loop import TrainConfig
    from pnlm.training.runs import run_training
    from pnlm.model.spec import OptimizerSpec

    lora = LoraSpec(rank=8, alpha=16.0) if mode == "lora" else None
    config = TrainConfig(steps=steps, batch_size=batch_size, optimizer=OptimizerSpec(lr=1e-3),
                         warmup_steps=steps // 10, cosine=mode in ("pretrain", "bf16"))
    step_fn = make_train_step(backend, spec, weights, config.optimizer,
                              precision="bfloat16" if mode == "bf16" else "float32",
                              lora=lora, adapters=init_adapters(spec, lora) if lora else None)
    writer = None
    if lora is not None:
        from pnlm.checkpoints.adapter_checkpoint import AdapterWriter
        from pnlm.checkpoints.checkpoint import load_checkpoint, save_checkpoint

        base = save_checkpoint(out / "base", spec, weights, tokenizer)
        writer = AdapterWriter(base, load_checkpoint(base), lora, "slm")
    run_training(step_fn, spec, tokenizer, store, config, out / "run", False, "slm", writer=writer)
    lines = [json.loads(line) for line in (out / "run" / "metrics.jsonl").read_text().splitlines()]
    first, last = lines[1], lines[-1]
    return (last["tokens"] - first["tokens"]) / (last["elapsed_s"] - first["elapsed_s"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--json", help="write the results here as JSON")
    args = parser.parse_args()

    import pnlm.backends.mlx  # noqa: F401  (loads the BLAS before anything imports mlx.core)
    import torch

    import pnlm
    from pnlm.data import iter_documents
    from pnlm.data.prepare import prepare_store
    from pnlm.model.spec import load_spec
    from pnlm.tokenizer import train_tokenizer
    from pnlm.checkpoints.weights import init_weights

    torch.set_num_threads(args.threads)
    modes = [m for m in args.modes.split(",") if m]
    samples = sorted(str(p) for p in (Path(pnlm.__file__).parent / "sample_data").glob("*.jsonl.gz"))
    results: dict[str, dict[str, list[float]]] = {m: {"torch": [], "mlx": []} for m in modes}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        tokenizer = train_tokenizer(iter_documents(samples), 2048, tmp / "tok")
        store = prepare_store(iter_documents(samples), tokenizer, tmp / "store", context=256,
                              valid_fraction=0.0, test_fraction=0.0, workers=1)[0]
        spec = load_spec(args.model).with_vocab(tokenizer.vocab_size)
        weights = init_weights(spec, seed=0)
        for round_ in range(args.rounds):
            for mode in modes:
                for backend in ("torch", "mlx"):
                    out = tmp / f"{mode}-{backend}-{round_}"
                    rate = run_once(backend, mode, spec, weights, tokenizer, store, args.steps, args.batch_size, out)
                    results[mode][backend].append(rate)
                    print(f"round {round_ + 1}: {mode:8} {backend:5} {rate:10,.0f} tokens/s", flush=True)
    summary = {mode: {backend: statistics.median(rates) for backend, rates in by_backend.items()}
               for mode, by_backend in results.items()}
    print(f"\n{args.model}, batch {args.batch_size} x 256, {args.steps} steps, {args.rounds} rounds, "
          f"{args.threads} threads ({platform.machine()}, {os.cpu_count()} cores); median tokens/s")
    print(f"{'mode':10} {'torch':>10} {'mlx':>10} {'torch/mlx':>10}")
    for mode, rates in summary.items():
        print(f"{mode:10} {rates['torch']:10,.0f} {rates['mlx']:10,.0f} {rates['torch'] / rates['mlx']:10.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "runs": results, "median": summary}, indent=2))


if __name__ == "__main__":
    main()
