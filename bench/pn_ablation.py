"""Ablation: projected networks with one-cluster or mixed batches, random or shared-start experts, beside the SLM.

    python bench/pn_ablation.py --data STORE --clusters CLUSTERS --out DIR [--workers 2] [--model tiny]
                                [--lrs 1e-3,2e-3,4e-3] [--seeds 0,1] [--budgets 400,1500]
                                [--ablation-lr 2e-3] [--projection 4,8,4] [--backend torch]
                                [--no-ablation] [--ceiling-ff D_FF]

Every run is one `pnlm pretrain` command (printed, and kept in DIR/commands.txt), run with --resume so
that a killed ablation continues where it stopped. The grid:
- slm and pn (mixed batches, shared start: the defaults) at every lr, seed and budget;
- the other three cells of {one-cluster, mixed} x {random, shared} at the first budget, --ablation-lr,
  every seed (not with --no-ablation);
- with --ceiling-ff, the dense ceiling: an SLM whose MLP is that wide (the PN's extra MLP weights used
  densely, at a higher inference cost), at --ablation-lr, every seed and budget.
--model is the SLM (a preset); the PN is it with --projection.
Then DIR/results.csv (validation perplexity at every evaluation of every run), DIR/summary.md (the
tables of docs/results/pn-ablation.md) and DIR/curves.png. Runs go --workers at a time, each on one
thread (OMP_NUM_THREADS=1), longest first.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

CEILING = "dense ceiling"
ARMS = {  # name: (method, batches, expert_similarity)
    "slm": ("slm", None, None),
    CEILING: ("slm", None, None),
    "pn mixed, shared": ("pn", "mixed", 0.9),
    "pn mixed, random": ("pn", "mixed", 0.0),
    "pn one-cluster, shared": ("pn", "one-cluster", 0.9),
    "pn one-cluster, random": ("pn", "one-cluster", 0.0),
}


def slug(text: str) -> str:
    return text.replace("pn ", "pn-").replace(", ", "-").replace(" ", "")


def spec_file(out: Path, model: str, similarity: float) -> Path:
    return out / f"pn-{model}-sim{similarity:g}.toml"


def ceiling_file(out: Path, model: str, d_ff: int) -> Path:
    return out / f"{model}-ff{d_ff}.toml"


def write_spec_files(args: argparse.Namespace) -> None:
    """Once, before any run starts (a run reads its spec while others start)."""
    h, k, m = args.projection
    for similarity in {arm[2] for arm in ARMS.values() if arm[2] is not None}:
        spec_file(args.out, args.model, similarity).write_text(
            f'[model]\npreset = "{args.model}"\n\n[model.projection]\nh = {h}\nk = {k}\nm = {m}\n'
            f"expert_similarity = {similarity}\n")
    if args.ceiling_ff:
        ceiling_file(args.out, args.model, args.ceiling_ff).write_text(
            f'[model]\npreset = "{args.model}"\nd_ff = {args.ceiling_ff}\n')


def runs(args: argparse.Namespace) -> list[dict]:
    grid = []
    for budget in args.budgets:
        for arm, (method, batches, similarity) in ARMS.items():
            main = arm in ("slm", "pn mixed, shared")
            if arm == CEILING and not args.ceiling_ff:
                continue
            if not main and arm != CEILING and (budget != args.budgets[0] or args.no_ablation):
                continue
            for lr in (args.lrs if main else [args.ablation_lr]):
                for seed in args.seeds:
                    grid.append({"arm": arm, "method": method, "batches": batches, "similarity": similarity,
                                 "lr": lr, "seed": seed, "steps": budget,
                                 "name": f"{slug(arm)}-lr{lr:g}-s{seed}-{budget}"})
    # Longest first; within a budget the cells to compare side by side together (the --ablation-lr first, seed
    # by seed, every arm), so that a grid stopped part way has its closest comparisons done.
    return sorted(grid, key=lambda run: (-run["steps"], run["lr"] != args.ablation_lr, run["seed"], run["lr"]))


def eval_every(steps: int, evals: int) -> int:
    """About `evals` evaluations, the last one at the last step."""
    every = max(steps // evals, 1)
    while steps % every:
        every -= 1
    return every


def command(run: dict, args: argparse.Namespace) -> list[str]:
    pnlm = str(Path(sys.executable).parent / "pnlm")
    model = args.model if run["arm"] == "slm" else (
        str(ceiling_file(args.out, args.model, args.ceiling_ff)) if run["arm"] == CEILING
        else str(spec_file(args.out, args.model, run["similarity"])))
    cmd = [pnlm, "pretrain", "--method", run["method"], "--model", model, "--data", str(args.data),
           "--backend", args.backend, "--steps", str(run["steps"]), "--batch-size", str(args.batch_size),
           "--lr", f"{run['lr']:g}", "--seed", str(run["seed"]), "--eval-every", str(eval_every(run["steps"], args.evals)),
           "--checkpoint-every", str(max(run["steps"] // 4, 1)), "--out", str(args.out / "runs" / run["name"]),
           "--resume", "--json"]
    if run["method"] == "pn":
        cmd += ["--clusters", str(args.clusters), "--pn-batches", run["batches"]]
    return cmd


def evaluations(run_dir: Path) -> list[tuple[int, float]]:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [(r["step"], r["val_ppl"]) for r in records if "val_ppl" in r]


def execute(run: dict, args: argparse.Namespace) -> None:
    run_dir = args.out / "runs" / run["name"]
    if any(step == run["steps"] for step, _ in evaluations(run_dir)):
        return
    started = time.time()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    result = subprocess.run(command(run, args), capture_output=True, text=True, env=env)
    if result.returncode:
        raise SystemExit(f"{run['name']} failed: {result.stderr.strip()}")
    done = evaluations(run_dir)
    print(f"{run['name']}: {done[-1][1] if done else float('nan'):.1f} ({time.time() - started:.0f} s)", flush=True)


def report(args: argparse.Namespace) -> None:
    rows = []
    for run in runs(args):
        for step, ppl in evaluations(args.out / "runs" / run["name"]):
            rows.append({**{k: run[k] for k in ("arm", "lr", "seed", "steps")}, "step": step, "val_ppl": ppl})
    with open(args.out / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["arm", "lr", "seed", "steps", "step", "val_ppl"])
        writer.writeheader()
        writer.writerows(rows)
    final = {}
    for row in rows:
        if row["step"] == row["steps"]:
            final.setdefault((row["arm"], row["steps"], row["lr"]), []).append(row["val_ppl"])
    lines = [f"Validation perplexity at the last step, mean of seeds {', '.join(map(str, args.seeds))} "
             f"(each seed in brackets).", ""]
    for budget in args.budgets:
        lines += [f"### {budget} steps", "", "| run | lr | ppl | seeds |", "|---|---|---|---|"]
        best = {}
        for (arm, steps, lr), values in sorted(final.items()):
            if steps != budget:
                continue
            mean = statistics.mean(values)
            lines.append(f"| {arm} | {lr:g} | {mean:.1f} | {' / '.join(f'{v:.1f}' for v in values)} |")
            if arm not in best or mean < best[arm][1]:
                best[arm] = (lr, mean)
        if "slm" in best and "pn mixed, shared" in best:
            (slm_lr, slm), (pn_lr, pn) = best["slm"], best["pn mixed, shared"]
            lines += ["", f"Best lr each: slm {slm:.1f} (lr {slm_lr:g}), pn {pn:.1f} (lr {pn_lr:g}): "
                          f"pn / slm = **{pn / slm:.3f}**"]
            if CEILING in best:
                lines.append(f"The dense ceiling (lr {best[CEILING][0]:g}): {best[CEILING][1]:.1f}, "
                             f"{best[CEILING][1] / slm:.3f} of the SLM's")
        lines.append("")
    (args.out / "summary.md").write_text("\n".join(lines))
    print("\n".join(lines))
    plot(args, rows)


def plot(args: argparse.Namespace, rows: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(args.budgets), figsize=(6 * len(args.budgets), 4.5), squeeze=False)
    colors = dict(zip(ARMS, ["black", "tab:gray", "tab:red", "tab:orange", "tab:blue", "tab:green"]))
    lrs = sorted({row["lr"] for row in rows})  # each learning rate its own shade and marker, lowest darkest
    shade = {lr: 1.0 - 0.6 * i / max(len(lrs) - 1, 1) for i, lr in enumerate(lrs)}
    markers = dict(zip(lrs, "os^vD"))
    for ax, budget in zip(axes[0], args.budgets):
        curves = {}
        for row in rows:
            if row["steps"] == budget:
                curves.setdefault((row["arm"], row["lr"], row["seed"]), []).append((row["step"], row["val_ppl"]))
        labelled = set()
        for (arm, lr, seed), points in sorted(curves.items()):
            steps, ppl = zip(*sorted(points))
            label = f"{arm}, lr {lr:g}"
            ax.plot(steps, ppl, color=colors[arm], alpha=shade[lr], marker=markers.get(lr), markersize=3,
                    linestyle="-" if seed == args.seeds[0] else "--", label=None if label in labelled else label)
            labelled.add(label)
        ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_ylabel("validation perplexity")
        ax.set_title(f"{budget} steps (solid: seed {args.seeds[0]}, dashed: others)")
        ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(args.out / "curves.png", dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--clusters", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--lrs", default="1e-3,2e-3,4e-3")
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--budgets", default="400,1500")
    parser.add_argument("--ablation-lr", type=float, default=2e-3)
    parser.add_argument("--projection", default="4,8,4")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--evals", type=int, default=8, help="evaluations per run")
    parser.add_argument("--backend", default="torch")
    parser.add_argument("--report-only", action="store_true")
    parser.add_argument("--model", default="tiny", help="the SLM: a preset (the PN projects it)")
    parser.add_argument("--no-ablation", action="store_true", help="only the SLM, the PN (and the ceiling)")
    parser.add_argument("--ceiling-ff", type=int, default=0, help="add the dense ceiling: an SLM of this d_ff")
    args = parser.parse_args()
    args.lrs = [float(x) for x in args.lrs.split(",")]
    args.seeds = [int(x) for x in args.seeds.split(",")]
    args.budgets = [int(x) for x in args.budgets.split(",")]
    args.projection = tuple(int(x) for x in args.projection.split(","))
    args.out.mkdir(parents=True, exist_ok=True)
    grid = runs(args)
    write_spec_files(args)
    (args.out / "commands.txt").write_text("".join(" ".join(command(run, args)) + "\n" for run in grid))
    if not args.report_only:
        with ThreadPoolExecutor(args.workers) as pool:
            list(pool.map(lambda run: execute(run, args), grid))
    report(args)


if __name__ == "__main__":
    main()
