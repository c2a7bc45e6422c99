"""Benchmark: pnlm against mlx-lm on the same exported model, the same data and the same BLAS.

    python bench/vs_mlx_lm.py CKPT STORE [--steps 60] [--batch-size 8] [--tokens 200] [--rounds 2] [--json OUT]

CKPT is a plain pnlm checkpoint, exported here to the Hugging Face format for mlx-lm; STORE a token
store made with its tokenizer. Fine-tuning: `pnlm finetune --backend mlx` against
`mlx_lm lora --fine-tune-type full --num-layers -1` on the store's train windows (written out as one
text per window, so both see batches of the same windows' tokens), steady-state tokens/s (pnlm:
from the second logged step; mlx-lm: its reports after the first). mlx-lm's full fine-tuning leaves
the embeddings and the final norm frozen; pnlm trains them. Generation: greedy, from the same prompt,
`pnlm.load(..., backend="mlx").generate_ids` against `mlx_lm.stream_generate`, in one process.
Both run with the BLAS pnlm loads (mlx-lm in a process that imports pnlm.backends.mlx first).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MLX_LM_LORA = "import pnlm.backends.mlx, sys; from mlx_lm.lora import main; sys.argv = ['mlx_lm.lora'] + sys.argv[1:]; main()"


def pnlm_finetune(checkpoint: str, store: str, steps: int, batch_size: int, lr: float, out: Path) -> float:
    subprocess.run([sys.executable, "-m", "pnlm.cli", "finetune", checkpoint, "--data", store, "--backend", "mlx",
                    "--steps", str(steps), "--batch-size", str(batch_size), "--lr", str(lr), "--eval-every", "0",
                    "--no-early-stop", "--out", str(out), "--json"], check=True, capture_output=True, text=True)
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return (lines[-1]["tokens"] - lines[0]["tokens"]) / (lines[-1]["elapsed_s"] - lines[0]["elapsed_s"])


def mlx_lm_finetune(model: Path, data: Path, steps: int, batch_size: int, lr: float, context: int, out: Path) -> float:
    result = subprocess.run([sys.executable, "-c", MLX_LM_LORA, "--model", str(model), "--train", "--data", str(data),
                             "--fine-tune-type", "full", "--num-layers", "-1", "--batch-size", str(batch_size),
                             "--iters", str(steps), "--max-seq-length", str(context), "--learning-rate", str(lr),
                             "--steps-per-report", "10", "--steps-per-eval", str(10 * steps), "--val-batches", "1",
                             "--save-every", str(10 * steps), "--adapter-path", str(out)],
                            check=True, capture_output=True, text=True)
    text = re.sub(r"\x1b\[[0-9;]*m", "", result.stdout + result.stderr)
    # Report lines of mlx-lm 0.32's table: iter, train loss and its arrow, tok/s, tokens trained so far.
    rates = [float(x.replace(",", "")) for x in
             re.findall(r"^\s*\d+\s+[0-9.]+\s+\S\s+([0-9.,]+)\s+[0-9.]+[kM]?\s*$", text, re.M)]
    if len(rates) < 2:
        raise SystemExit(f"mlx_lm reported no throughput:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}")
    return statistics.mean(rates[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("store")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-4 / 3)
    parser.add_argument("--tokens", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--json")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import pnlm.backends.mlx  # noqa: F401  (the BLAS, before mlx.core)
    import pnlm
    from mlx_lm import load, stream_generate
    from pnlm.data.store import TokenStore
    from pnlm.checkpoints.hf import export_hf

    store = TokenStore(args.store)
    results: dict[str, list[float]] = {"pnlm_finetune": [], "mlx_lm_finetune": [], "pnlm_generate": [],
                                       "mlx_lm_generate": []}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        exported = export_hf(args.checkpoint, tmp / "hf")
        tokenizer = store.tokenizer()
        data = tmp / "data"
        data.mkdir()
        for split, name in (("train", "train"), ("valid", "valid")):
            with open(data / f"{name}.jsonl", "w") as f:
                for index in range(store.num_windows(split) or store.num_windows("train")):
                    window = store.window(split if store.num_windows(split) else "train", index)
                    f.write(json.dumps({"text": tokenizer.decode(window[1:] if window[0] == tokenizer.bos_id
                                                                 else window)}) + "\n")
        ours = pnlm.load(args.checkpoint, backend="mlx")
        theirs, their_tokenizer = load(str(exported))
        prompt = ours.tokenizer.encode("It is")
        for round_ in range(args.rounds):
            results["pnlm_finetune"].append(pnlm_finetune(args.checkpoint, args.store, args.steps, args.batch_size,
                                                          args.lr, tmp / f"ft-{round_}"))
            results["mlx_lm_finetune"].append(mlx_lm_finetune(exported, data, args.steps, args.batch_size, args.lr,
                                                              store.context, tmp / f"mlxlm-{round_}"))
            start = time.perf_counter()
            produced = len(list(ours.generate_ids(prompt, args.tokens, stop_at_eos=False)))
            results["pnlm_generate"].append(produced / (time.perf_counter() - start))
            start = time.perf_counter()
            produced = sum(1 for _ in stream_generate(theirs, their_tokenizer, prompt, max_tokens=args.tokens))
            results["mlx_lm_generate"].append(produced / (time.perf_counter() - start))
            print({k: round(v[-1]) for k, v in results.items()}, flush=True)
    median = {k: statistics.median(v) for k, v in results.items()}
    print(f"\n{args.checkpoint} on {args.store}; {platform.machine()}, {os.cpu_count()} cores; median of {args.rounds}")
    print(f"fine-tune tokens/s: pnlm {median['pnlm_finetune']:,.0f}, mlx-lm {median['mlx_lm_finetune']:,.0f}, "
          f"ratio {median['pnlm_finetune'] / median['mlx_lm_finetune']:.2f}")
    print(f"generate tokens/s:  pnlm {median['pnlm_generate']:,.0f}, mlx-lm {median['mlx_lm_generate']:,.0f}, "
          f"ratio {median['pnlm_generate'] / median['mlx_lm_generate']:.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "runs": results, "median": median}, indent=2))


if __name__ == "__main__":
    main()
