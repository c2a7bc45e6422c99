"""Which expert a domain should take from a projected network: `--expert auto` (its top cluster's)
against `--expert histogram` (E_p = p @ E, the domain's histogram mixing the experts), before and
after fine-tuning, on the pn cells of a `pnlm experiment run` (those finished so far).

    python bench/pn_expert_choice.py RESULTS_DIR [--out DIR] [--domain NAME]

For every PN pretraining (budget) and domain store of the run, instantiates the histogram expert,
evaluates it on the domain's test split, fine-tunes it with the plan's fine-tuning settings and
evaluates again, exactly as the runner does for `auto` (cli/experiment.py); the auto figures are the
run's own cells (RESULTS_DIR/cells/pn-*.json). Prints a markdown table and writes DIR/expert-choice.csv.
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import tempfile
from pathlib import Path


def pnlm(*args: str) -> dict:
    result = subprocess.run([str(Path(sys.executable).parent / "pnlm"), *args, "--json"], capture_output=True,
                            text=True)
    if result.returncode:
        raise SystemExit(f"pnlm {' '.join(args)}: {result.stderr.strip()}")
    return json.loads(result.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--domain", help="only this domain's cells")
    args = parser.parse_args()
    out = args.out or args.results
    plan = json.loads((args.results / "plan.json").read_text())
    ft, backend = plan["finetune"], plan["finetune_backend"]
    work = args.results / "work"
    auto = {}
    for cell in sorted((args.results / "cells").glob("pn-*.json")):  # the finished pn cells, as the runner wrote them
        r = json.loads(cell.read_text())["result"]
        if args.domain in (None, r["domain"]):
            auto[(str(r["budget_steps"]), r["domain"], str(r["domain_tokens"]))] = r
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for (budget, domain, tokens), cell in sorted(auto.items()):
            run, store = work / "pretrain" / f"pn-{budget}", work / "domains" / domain / tokens
            expert = Path(tmp) / f"{budget}-{domain}-{tokens}"
            pnlm("instantiate", str(run), "--domain", str(store), "--expert", "histogram", "--out", str(expert))

            def evaluate(checkpoint: Path) -> float:
                return pnlm("eval", str(checkpoint), "--data", str(store), "--split", "test", "--backend", backend,
                            "--batch-size", str(ft["batch_size"]))["macro_ppl"]

            before = evaluate(expert)
            pnlm("finetune", str(expert), "--data", str(store), "--backend", backend, "--out", f"{expert}-ft",
                 "--steps", str(ft["steps"]), "--batch-size", str(ft["batch_size"]), "--lr", str(ft["lr"]),
                 "--eval-every", str(ft["eval_every"]), "--patience", str(ft["patience"]),
                 "--seed", str(plan["seed"]))
            tuned = Path(f"{expert}-ft") / "best"
            after = evaluate(tuned if tuned.is_dir() else Path(f"{expert}-ft") / "latest")
            rows.append({"budget_steps": budget, "domain": domain, "domain_tokens": tokens,
                         "auto_expert": cell["expert"], "auto_pretrained_ppl": float(cell["pretrained_ppl"]),
                         "histogram_pretrained_ppl": before, "auto_finetuned_ppl": float(cell["finetuned_ppl"]),
                         "histogram_finetuned_ppl": after})
            print(rows[-1], flush=True)
    with open(out / f"expert-choice{'-' + args.domain if args.domain else ''}.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    print("\n| budget | domain | tokens | auto (expert) before → after | histogram before → after |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['budget_steps']} | {r['domain']} | {r['domain_tokens']} | {r['auto_pretrained_ppl']:.1f} "
              f"(#{r['auto_expert']}) → {r['auto_finetuned_ppl']:.1f} | {r['histogram_pretrained_ppl']:.1f} → "
              f"{r['histogram_finetuned_ppl']:.1f} |")


if __name__ == "__main__":
    main()
