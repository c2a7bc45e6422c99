"""Embedding windows/s on this machine, side by side: `pnlm data cluster` at a base commit (before a change)
and at this tree, alternating, on one store of generic windows of 1,024 tokens (the shared corpus), and
pnlm's backends (torch float32 and bfloat16, MLX) on the same windows.

    python bench/embed_throughput.py [--base COMMIT] [--documents 400] [--repeats 2] [--json OUT]

Each run embeds every window of the store from an empty cache (k = 2, so k-means costs nothing); the
figure is windows / embed_seconds as the command reports it, and the command's wall time beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GENERIC = ROOT.parent / "shared" / "corpora" / "generic.jsonl.gz"


def installed_layout(tree: Path, target: Path) -> Path:
    """pnlm as pip installs it (backends/ and cli/ inside pnlm/), importable with PYTHONPATH=target."""
    shutil.copytree(tree / "pnlm", target / "pnlm", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(tree / "backends", target / "pnlm" / "backends", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(tree / "cli", target / "pnlm" / "cli", ignore=shutil.ignore_patterns("__pycache__"))
    return target


def base_tree(commit: str, work: Path) -> Path:
    folder = work / "base"
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(folder), commit], check=True,
                   capture_output=True)
    return folder


def embed_once(layout: Path, store: Path, extra: list[str]) -> dict:
    shutil.rmtree(store / "embeddings", ignore_errors=True)
    out = store.parent / "clusters"
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "pnlm.cli", "data", "cluster", str(store), "--k", "2", "--out", str(out),
                           "--overwrite", "--json", *extra], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(layout)})
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(done.stderr[-2000:])
    report = json.loads(done.stdout)
    windows = sum(report["windows"].values())
    return {"windows": windows, "embed_seconds": report["embed_seconds"], "wall_seconds": round(wall, 1),
            "windows_per_s": round(windows / report["embed_seconds"], 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default="9f70038", help="the commit to compare with (before the change)")
    parser.add_argument("--documents", type=int, default=400, help="generic documents in the store")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--backends", default="", help="also these, e.g. 'torch:float32,mlx:float32'")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    import pnlm

    work = Path(tempfile.mkdtemp(prefix="embed-bench-"))
    try:
        pnlm.train_tokenizer([GENERIC], 8192, work / "tokenizer", read=pnlm.ReadOptions(max_documents=args.documents))
        pnlm.prepare([GENERIC], work / "tokenizer", 1024, work / "store", read=pnlm.ReadOptions(max_documents=args.documents))
        layouts = {"base": installed_layout(base_tree(args.base, work), work / "base-layout"),
                   "this": installed_layout(ROOT, work / "this-layout")}
        runs: dict[str, list] = {"base": [], "this": []}
        for _ in range(args.repeats):
            for name in ("base", "this"):
                runs[name].append(embed_once(layouts[name], work / "store", []))
                print(name, runs[name][-1], file=sys.stderr, flush=True)
        for spec in filter(None, args.backends.split(",")):
            backend, precision = spec.split(":")
            runs[spec] = [embed_once(layouts["this"], work / "store", ["--backend", backend, "--precision", precision])]
            print(spec, runs[spec][-1], file=sys.stderr, flush=True)
        best = {name: max(r["windows_per_s"] for r in rows) for name, rows in runs.items()}
        result = {"date": time.strftime("%Y-%m-%d"), "machine": os.uname().nodename, "base": args.base,
                  "runs": runs, "best_windows_per_s": best,
                  "this_over_base": round(best["this"] / best["base"], 3)}
        print(json.dumps(result, indent=2))
        if args.json:
            args.json.write_text(json.dumps(result, indent=2) + "\n")
    finally:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(work / "base")], capture_output=True)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
