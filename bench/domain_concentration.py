"""The paper's tables 8 and 9 on your data: top-cluster share and entropy of each domain vs the generic set.

    python bench/domain_concentration.py --generic STORE --clusters CLUSTERS DOMAIN_STORE... [--split test]

Labels each domain store with the clusters (`pnlm data assign`, embeddings cached in the store)
and prints a markdown table, generic first.
"""

from __future__ import annotations

import argparse
import math
import time

from pnlm.clustering import assign_clusters, histogram_report, load_clusters
from pnlm.data.store import TokenStore


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("domains", nargs="+", help="domain token stores")
    parser.add_argument("--generic", required=True, help="the generic store the clusters were fit on (labelled)")
    parser.add_argument("--clusters", required=True)
    parser.add_argument("--split", default="test")
    args = parser.parse_args()

    clusters = load_clusters(args.clusters)
    generic = TokenStore(args.generic)
    rows = [("generic", histogram_report(generic.cluster_ids(args.split), clusters.k), 0.0)]
    for path in args.domains:
        start = time.perf_counter()
        report = assign_clusters(path, None, args.clusters, split=args.split)
        rows.append((TokenStore(path).name, report, time.perf_counter() - start))
    print(f"k = {clusters.k}, split = {args.split}, entropy in nats (uniform: ln k = {math.log(clusters.k):.2f})\n")
    print("| set | windows | top cluster | top-cluster share | entropy | assign s |")
    print("|---|---|---|---|---|---|")
    for name, report, seconds in rows:
        print(f"| {name} | {report['windows']:,} | {report['top_cluster']} | {report['top_share']:.1%} | "
              f"{report['entropy']:.2f} | {seconds:.0f} |")


if __name__ == "__main__":
    main()
