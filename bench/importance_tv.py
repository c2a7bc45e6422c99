"""How close importance sampling gets the generic windows to each domain's cluster histogram.

    python bench/importance_tv.py --generic STORE --domains STORE... [--split test] [--steps 1000]
                                  [--batch-size 8] [--json OUT]

For every domain: the effective sample size of the importance weights over the generic train windows,
and the total variation between the histogram of the windows `steps` steps of the sampler draw and the
domain's histogram (of `--split`, labelled with the same clusters as the generic store).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--generic", required=True)
    parser.add_argument("--domains", nargs="+", required=True)
    parser.add_argument("--split", default="train")
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--json")
    args = parser.parse_args()

    from pnlm.clustering.histogram import cluster_histogram, entropy, top_share
    from pnlm.methods.importance import ImportanceSampler
    from pnlm.data.store import TokenStore

    generic = TokenStore(args.generic)
    k = int(generic.clusters_info()["k"])
    rows = []
    for path in args.domains:
        domain = TokenStore(path)
        if domain.clusters_info().get("centroids_sha256") != generic.clusters_info().get("centroids_sha256"):
            raise SystemExit(f"{path}: labelled with other clusters than {args.generic}")
        target = cluster_histogram(domain.cluster_ids(args.split), k)
        sampler = ImportanceSampler(generic, args.batch_size, 0, k, target)
        drawn = sampler.sampled_histogram(args.steps)
        rows.append({"domain": domain.name, "split": args.split, "windows": int(len(domain.cluster_ids(args.split))),
                     "top_share": top_share(target), "entropy": entropy(target),
                     "effective_sample_size": sampler.effective_sample_size(),
                     "generic_windows": generic.num_windows("train"), "draws": args.steps * args.batch_size,
                     "total_variation": float(0.5 * np.abs(drawn - target).sum()),
                     "generic_total_variation": float(0.5 * np.abs(sampler.generic_histogram - target).sum())})
    print("| domain | top share | ESS (of generic windows) | TV generic vs domain | TV resampled vs domain |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['domain']} | {r['top_share']:.1%} | {r['effective_sample_size']:,.0f} ({r['generic_windows']:,}) "
              f"| {r['generic_total_variation']:.3f} | {r['total_variation']:.4f} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "domains": rows}, indent=2))


if __name__ == "__main__":
    main()
