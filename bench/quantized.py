"""Benchmark: a checkpoint as float32, 8-bit and 4-bit MLX folders (pnlm export --format mlx), side by side:
size on disk, perplexity on a store's test split, generation tokens/s in pnlm (MLX), and one completion
through mlx_lm.server.

    python bench/quantized.py CKPT STORE [--json OUT]      (make demo: demo/hamlet-model demo/hamlet)
"""

from __future__ import annotations

import argparse
import json
import platform
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pnlm


def weights_mb(folder: Path) -> float:
    return sum(f.stat().st_size for f in folder.glob("*.safetensors")) / 1e6


def generation_tokens_per_s(folder: Path, rounds: int = 3) -> float:
    model = pnlm.load(folder, backend="mlx")
    model.generate("HAMLET.", max_tokens=16)  # warm-up (compilation)
    rates = []
    for _ in range(rounds):
        model.generate("HAMLET.", max_tokens=200)
        rates.append(model.last_stats.tokens_per_s)
    return sorted(rates)[len(rates) // 2]


def served_completion(folder: Path) -> dict:
    """Start mlx_lm.server on the folder, ask one completion, stop it."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "mlx_lm", "server", "--model", str(folder), "--port", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        request = json.dumps({"prompt": "HAMLET.", "max_tokens": 32, "temperature": 0.0}).encode()
        for _ in range(120):
            try:
                started = time.perf_counter()
                reply = urllib.request.urlopen(urllib.request.Request(
                    f"http://127.0.0.1:{port}/v1/completions", request, {"Content-Type": "application/json"}),
                    timeout=60).read()
                text = json.loads(reply)["choices"][0]["text"]
                return {"answered": True, "seconds": round(time.perf_counter() - started, 2), "text": text[:80]}
            except OSError:
                time.sleep(0.5)
        return {"answered": False}
    finally:
        server.terminate()
        server.wait()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("checkpoint")
    parser.add_argument("store")
    parser.add_argument("--json")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as work:
        for bits in (None, 8, 4):
            folder = pnlm.export_mlx(args.checkpoint, Path(work) / f"q{bits or 32}", quantize=bits)
            evaluation = pnlm.evaluate(folder, args.store, backend="mlx")
            rows.append({"bits": bits or 32, "group_size": 64 if bits else None, "weights_mb": round(weights_mb(folder), 3),
                         "test_ppl": round(evaluation.macro_ppl, 3),
                         "generate_tokens_per_s": round(generation_tokens_per_s(folder)),
                         "mlx_lm_server": served_completion(folder)})
            print(json.dumps(rows[-1]), flush=True)
    base = rows[0]
    for row in rows:
        row["size_vs_float32"] = round(row["weights_mb"] / base["weights_mb"], 3)
        row["ppl_vs_float32"] = round(row["test_ppl"] / base["test_ppl"] - 1, 4)
    result = {"date": time.strftime("%Y-%m-%d"), "machine": f"{platform.machine()}, {platform.system()}",
              "checkpoint": args.checkpoint, "store": args.store, "rows": rows}
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
