"""Experiment: the soup of experts against the SLM and the projected network at `small` (issue 31,
docs/results/soup.md).

    python bench/soup_vs_pn.py --data STORE --clusters CLUSTERS --tokenizer TOK --grid GRID --out DIR \
        [--seeds 0,1] [--lr 1e-3] [--steps 1500] [--evals 5] [--domain-tokens 32000] [--reuse-embeddings DIR ...]

The generic data, steps, batch (8 windows of the store's context) and learning rate of the SLM and PN runs of
bench/pn_ablation.py's grid in GRID (runs/slm-lr{lr}-s{seed}-{steps},
runs/pn-mixed-shared-lr{lr}-s{seed}-{steps}): this script pretrains the soup (`soup-small`) alike into
DIR/runs/soup-lr{lr}-s{seed}-{steps}, with the same evaluations (--evals: the grid's), then for every
shared-corpora domain (its first --max-documents documents, split 80/10/10, its train split cut to
--domain-tokens, labelled with CLUSTERS) and every seed: the SLM, PN's top-cluster expert and the soup's model
for the domain's histogram, evaluated on the domain's test split before and after fine-tuning (torch, early
stopping, with plans/cpu-small.toml's [finetune] settings). Every step leaves a record (DIR/records/*.json): a
rerun continues, a killed pretraining resumes from its checkpoint. Then DIR/results.csv, DIR/summary.md and DIR/curves.png. --reuse-embeddings: finished MiniLM
caches of stores holding the same tokens (another experiment's domain stores), copied instead of embedding the
windows again.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import filecmp
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

from pnlm.experiment.plan import load_plan
from pnlm.files.atomic import atomic_file
from pn_ablation import eval_every  # the grid's evaluations (about 8, the last at the last step): the same steps

ROOT = Path(__file__).resolve().parents[1]
CORPORA = ROOT.parent / "shared" / "corpora"
DOMAINS = {"arxiv": "arxiv_science", "freelaw": "freelaw_legal", "github": "github_code", "gutenberg": "gutenberg_books",
           "openwebtext": "openwebtext_news", "stackexchange": "stackexchange_techdocs",
           "wikipedia": "wikipedia_encyclopedic"}
METHODS = ("slm", "pn", "soup")
PLAN = ROOT / "plans" / "cpu-small.toml"  # its [finetune] settings are the cells'


def record(path: Path, work):
    """work() once: its JSON result kept at path (written whole, then renamed)."""
    if path.is_file():
        return json.loads(path.read_text())
    result = work()
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path) as f:
        f.write((json.dumps(result, indent=2) + "\n").encode())
    return result


def run_name(method: str, lr: float, seed: int, steps: int) -> str:
    return f"{'pn-mixed-shared' if method == 'pn' else method}-lr{lr:g}-s{seed}-{steps}"


def evaluations(run: Path) -> list[tuple[int, float]]:
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x.strip()]
    return [(r["step"], r["val_ppl"]) for r in lines if "val_ppl" in r]


def pretrain_soup(args, seed: int) -> Path:
    run = args.out / "runs" / run_name("soup", args.lr, seed, args.steps)
    command = [str(Path(sys.executable).parent / "pnlm"), "pretrain", "--method", "soup", "--model", "soup-small",
               "--data", str(args.data), "--clusters", str(args.clusters), "--backend", "torch",
               "--steps", str(args.steps), "--batch-size", "8", "--lr", f"{args.lr:g}", "--seed", str(seed),
               "--eval-every", str(eval_every(args.steps, args.evals)), "--checkpoint-every", str(max(args.steps // 4, 1)),
               "--out", str(run), "--resume", "--json"]
    if not any(step == args.steps for step, _ in (evaluations(run) if (run / "metrics.jsonl").is_file() else [])):
        print(" ".join(command), flush=True)
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return run


def reuse_embeddings(store: Path, sources: list[Path]) -> None:
    """Copy a finished embedding cache from a store with byte-identical windows."""
    if (store / "embeddings").is_dir():
        return
    for source in sources:
        if all((source / f).is_file() and filecmp.cmp(source / f, store / f, shallow=False)
               for f in ("train.tokens", "valid.tokens", "test.tokens", "tokenizer.model")):
            finished = [d for d in (source / "embeddings").glob("*") if all((d / f"{s}.npy").is_file()
                                                                             for s in ("train", "valid", "test"))]
            for cache in finished:
                target = store / "embeddings" / cache.name
                target.mkdir(parents=True)
                for f in ["embedder.json"] + [f"{s}.npy" for s in ("train", "valid", "test")]:
                    shutil.copy2(cache / f, target / f)
                print(f"{store}: embeddings copied from {source}", flush=True)
                return


def domain_store(args, domain: str) -> Path:
    import pnlm
    from pnlm.api.data import ReadOptions

    folder = args.out / "domains" / domain
    record(args.out / "records" / f"{domain}.prepare.json", lambda: pnlm.prepare(
        [CORPORA / f"{DOMAINS[domain]}.jsonl.gz"], args.tokenizer, args.context, folder / "full", overwrite=True,
        valid_fraction=0.1, test_fraction=0.1, read=ReadOptions(max_documents=args.max_documents)).to_json())
    reuse_embeddings(folder / "full", [s / domain / "full" for s in args.reuse_embeddings])
    record(args.out / "records" / f"{domain}.assign.json", lambda: pnlm.assign(
        folder / "full", args.clusters, all_splits=True, split="train").to_json())
    size = folder / str(args.domain_tokens)
    record(args.out / "records" / f"{domain}.{args.domain_tokens}.json", lambda: pnlm.subset(
        folder / "full", args.domain_tokens, size, overwrite=True).to_json())
    return size


def cell(args, method: str, seed: int, domain: str, store: Path, runs: dict) -> dict:
    import pnlm

    name = f"{run_name(method, args.lr, seed, args.steps)}-{domain}"  # a record per pretraining it starts from
    folder = args.out / "cells" / name

    def work() -> dict:
        shutil.rmtree(folder, ignore_errors=True)  # a killed cell starts again
        folder.mkdir(parents=True)
        expert = ""
        if method == "slm":
            base = runs[method] / "latest"
        else:  # PN: its top cluster's expert (the paper's); the soup: the model for the domain's histogram
            chosen = pnlm.instantiate(runs[method] / "latest", folder / "base", domain=store, expert="auto")
            base, expert = folder / "base", chosen.report.get("expert", "histogram")
        before = pnlm.evaluate(base, store, split="test", backend="torch").macro_ppl
        summary = pnlm.finetune(base, store, folder / "ft", backend="torch", seed=seed,
                                **dataclasses.asdict(load_plan(PLAN).finetune))
        tuned = folder / "ft" / ("best" if (folder / "ft" / "best").is_dir() else "latest")
        after = pnlm.evaluate(tuned, store, split="test", backend="torch").macro_ppl
        return {"method": method, "seed": seed, "domain": domain, "expert": expert, "pretrained_ppl": before,
                "finetuned_ppl": after, "finetune_steps": summary.steps}

    print(f"cell {name}", flush=True)
    return record(args.out / "records" / f"cell-{name}.json", work)


def entropy(domain_record: dict) -> float:
    shares = [s for s in domain_record["histogram"] if s > 0]
    return -sum(s * math.log(s) for s in shares)


def report(args, rows: list[dict], runs_by_seed: dict) -> None:
    with open(args.out / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    ent = {d: entropy(json.loads((args.out / "records" / f"{d}.assign.json").read_text())) for d in args.domains}
    order = sorted(args.domains, key=lambda d: -ent[d])
    high = order[:2]
    mean = {}
    for r in rows:
        mean.setdefault((r["method"], r["domain"], "pretrained_ppl"), []).append(r["pretrained_ppl"])
        mean.setdefault((r["method"], r["domain"], "finetuned_ppl"), []).append(r["finetuned_ppl"])
    avg = {k: sum(v) / len(v) for k, v in mean.items()}
    lines = [f"Before and after fine-tuning on {args.domain_tokens:,} tokens of each domain, test perplexity, mean of "
             f"seeds {', '.join(map(str, args.seeds))}; `small`, {args.steps:,} pretraining steps of 8 windows, lr "
             f"{args.lr:g}. Domains by the entropy of their train histogram over the clusters (nats), highest first.",
             "", "| domain | entropy | SLM | PN (top cluster) | soup (histogram) | soup ÷ SLM | soup ÷ PN | "
             "after: SLM | PN | soup |", "|---|---|---|---|---|---|---|---|---|---|"]
    for d in order:
        b = {m: avg[(m, d, "pretrained_ppl")] for m in METHODS}
        a = {m: avg[(m, d, "finetuned_ppl")] for m in METHODS}
        lines.append(f"| {d}{' (high)' if d in high else ''} | {ent[d]:.2f} | {b['slm']:.2f} | {b['pn']:.2f} | "
                     f"{b['soup']:.2f} | {b['soup'] / b['slm']:.3f} | {b['soup'] / b['pn']:.3f} | {a['slm']:.2f} | "
                     f"{a['pn']:.2f} | {a['soup']:.2f} |")
    macro = {m: sum(avg[(m, d, "finetuned_ppl")] for d in order) / len(order) for m in METHODS}
    beats_slm = [d for d in order if avg[("soup", d, "pretrained_ppl")] < avg[("slm", d, "pretrained_ppl")]]
    beats_pn_high = [d for d in high if avg[("soup", d, "pretrained_ppl")] < avg[("pn", d, "pretrained_ppl")]]
    per_seed = []
    for seed in args.seeds:
        seed_rows = [r for r in rows if r["seed"] == seed]
        by = {(r["method"], r["domain"]): r for r in seed_rows}
        per_seed.append(f"seed {seed}: soup below the SLM before fine-tuning on "
                        f"{sum(by[('soup', d)]['pretrained_ppl'] < by[('slm', d)]['pretrained_ppl'] for d in order)} "
                        f"of {len(order)}; macro after fine-tuning SLM "
                        f"{sum(by[('slm', d)]['finetuned_ppl'] for d in order) / len(order):.2f}, PN "
                        f"{sum(by[('pn', d)]['finetuned_ppl'] for d in order) / len(order):.2f}, soup "
                        f"{sum(by[('soup', d)]['finetuned_ppl'] for d in order) / len(order):.2f}")
    lines += ["", f"Before fine-tuning, the soup's model is below the SLM on {len(beats_slm)} of {len(order)} domains "
              f"({', '.join(beats_slm) or 'none'}) and below PN's top-cluster expert on {len(beats_pn_high)} of the 2 "
              f"highest-entropy ({', '.join(high)}). After fine-tuning, macro perplexity: SLM {macro['slm']:.2f}, PN "
              f"{macro['pn']:.2f}, soup {macro['soup']:.2f}.", ""] + [f"- {x}" for x in per_seed]
    lines += ["", "Generic validation perplexity at the end of pretraining (each method's own validation: PN mixed "
              "batches, each row its cluster's expert; the soup the model for the generic histogram):", ""]
    for seed, runs in runs_by_seed.items():
        lines.append(f"- seed {seed}: " + ", ".join(f"{m} {evaluations(runs[m])[-1][1]:.2f}" for m in METHODS))
    (args.out / "summary.md").write_text("\n".join(lines) + "\n")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for seed, runs in runs_by_seed.items():
        for m, style in zip(METHODS, ("-", "--", ":")):
            points = evaluations(runs[m])
            axes[0].plot(*zip(*points), style, marker="o", label=f"{m} s{seed}")
    axes[0].set_xlabel("pretraining step")
    axes[0].set_ylabel("generic validation perplexity")
    axes[0].set_yscale("log")
    axes[0].legend(fontsize=7)
    x = range(len(order))
    for i, m in enumerate(METHODS):
        axes[1].bar([j + (i - 1) * 0.27 for j in x], [avg[(m, d, "pretrained_ppl")] / avg[("slm", d, "pretrained_ppl")]
                                                      for d in order], 0.27, label=m)
    axes[1].axhline(1.0, color="gray", lw=0.8)
    axes[1].set_xticks(list(x), order, rotation=30, fontsize=8)
    axes[1].set_ylabel("test perplexity ÷ SLM's, before fine-tuning")
    axes[1].set_ylim(0.8, 1.15)
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(args.out / "curves.png", dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--clusters", type=Path, required=True)
    parser.add_argument("--tokenizer", type=Path, required=True)
    parser.add_argument("--grid", type=Path, required=True, help="bench/pn_ablation.py's --out (SLM and PN runs)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--lr", type=float, default=1e-3)  # the SLM's and PN's best at small
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--evals", type=int, default=5, help="evaluations of the pretraining: the grid's --evals")
    parser.add_argument("--context", type=int, default=128)
    parser.add_argument("--domain-tokens", type=int, default=32000)
    parser.add_argument("--max-documents", type=int, default=300)
    parser.add_argument("--domains", default=",".join(DOMAINS))
    parser.add_argument("--reuse-embeddings", type=Path, nargs="*", default=[],
                        help="folders of domain stores (DOMAIN/full) whose finished embeddings may be copied")
    parser.add_argument("--pretrain-only", action="store_true")
    args = parser.parse_args()
    args.seeds = [int(s) for s in args.seeds.split(",")]
    args.domains = args.domains.split(",")
    args.out.mkdir(parents=True, exist_ok=True)
    runs_by_seed = {seed: {"soup": pretrain_soup(args, seed)} for seed in args.seeds}
    if args.pretrain_only:
        return
    stores = {d: domain_store(args, d) for d in args.domains}
    for seed, runs in runs_by_seed.items():
        for method in ("slm", "pn"):
            run = args.grid / "runs" / run_name(method, args.lr, seed, args.steps)
            done = (run / "metrics.jsonl").is_file() and any(step == args.steps for step, _ in evaluations(run))
            if not done:
                sys.exit(f"{run}: not finished; run bench/pn_ablation.py with --budgets {args.steps} first")
            runs[method] = run
    rows = [cell(args, m, seed, d, stores[d], runs_by_seed[seed]) for seed in args.seeds for d in args.domains
            for m in METHODS]
    report(args, rows, runs_by_seed)


if __name__ == "__main__":
    main()
