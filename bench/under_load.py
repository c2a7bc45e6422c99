"""Benchmark: speed beside a busy neighbour. A busy loop (one core) at nice 19, then at normal priority,
against the quiet machine, in one run:

    python bench/under_load.py finetune [--steps 20] [--json OUT]   # the demo's LoRA fine-tune, MLX and torch
    python bench/under_load.py demo [--json OUT]                    # `make demo`, wall time (needs demo/ made once)

`finetune` runs `pnlm finetune` of demo/pretrain/latest on demo/hamlet (LoRA rank 16, as `make demo`), also
with OMP_NUM_THREADS=2 (every core, the old default) to show what choosing the threads from the free cores
buys; it needs `make demo` to have run once. Quote ratios to the quiet figure: these machines are shared.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PNLM = [sys.executable, "-m", "pnlm.cli"]
LOADS = ("quiet", "nice19", "normal")


def busy_loop(load: str) -> subprocess.Popen | None:
    if load == "quiet":
        return None
    return subprocess.Popen(["nice", "-n", "19" if load == "nice19" else "0", sys.executable, "-c", "while True: pass"])


def beside(load: str, run):
    loop = busy_loop(load)
    try:
        return run()
    finally:
        if loop is not None:
            loop.kill()
            loop.wait()


def finetune_tokens_per_s(backend: str, env: dict[str, str], steps: int) -> int:
    out = Path(tempfile.mkdtemp(prefix="under-load-")) / "run"
    argv = [*PNLM, "finetune", ROOT / "demo" / "pretrain" / "latest", "--data", ROOT / "demo" / "hamlet",
            "--backend", backend, "--lora-rank", 16, "--lr", 2e-3, "--steps", steps, "--eval-every", 10_000,
            "--out", out, "--json"]
    try:
        result = subprocess.run([str(a) for a in argv], capture_output=True, text=True, check=True,
                                env={**os.environ, **env}, cwd=ROOT)
    finally:
        shutil.rmtree(out.parent, ignore_errors=True)
    return round(json.loads(result.stdout)["tokens_per_s"])


def demo_seconds() -> float:
    start = time.perf_counter()
    subprocess.run(["make", "demo"], cwd=ROOT, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return round(time.perf_counter() - start, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=("finetune", "demo"))
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    clean = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    os.environ.clear()
    os.environ.update(clean)
    rows = {}
    if args.what == "finetune":
        for backend in ("mlx", "torch"):
            for name, env in (("free cores", {}), ("every core", {"OMP_NUM_THREADS": str(os.cpu_count())})):
                rows[f"{backend}, {name}"] = {load: beside(load, lambda: finetune_tokens_per_s(backend, env, args.steps))
                                              for load in LOADS}
    else:
        rows["make demo, seconds"] = {load: beside(load, demo_seconds) for load in LOADS}
    for name, row in rows.items():
        ratios = ", ".join(f"{load} {row[load]:,} ({row[load] / row['quiet']:.2f}x)" for load in LOADS)
        print(f"{name}: {ratios}", flush=True)
    if args.json:
        machine = f"{platform.machine()}, {os.cpu_count()} cores, {platform.system()}"
        args.json.write_text(json.dumps({"date": time.strftime("%Y-%m-%d"), "machine": machine, "rows": rows},
                                        indent=2) + "\n")


if __name__ == "__main__":
    main()
