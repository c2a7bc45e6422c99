"""What the methods with experts share (projected networks, pnlm/methods/projected.py; hard mixtures,
pnlm/methods/mixture.py): the clusters a run records, a domain's histogram over them, which expert a
domain gets, and the plain SLM handed out for it.

A domain store labelled with the run's clusters (`pnlm data assign`) gives a histogram p; the expert is
its most frequent cluster (auto), a given index, or, for a PN, the mixture E_p = p @ E (histogram).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pnlm.clustering.histogram import histogram_report
from pnlm.data.store import TokenStore
from pnlm.errors import PnlmError
from pnlm.training.loop import BEST, LATEST
from pnlm.model.spec import MAX_EXPERTS, ModelSpec
from pnlm.tokenizer import Tokenizer


def clusters_record(record: Any, source: str) -> dict[str, Any]:
    """The clusters a run records (`Clusters.store_info()`), checked before anything is looked up in it."""
    if (not isinstance(record, dict) or not isinstance(record.get("clusters"), str)
            or not isinstance(record.get("centroids_sha256"), str) or isinstance(record.get("k"), bool)
            or not isinstance(record.get("k"), int) or not 1 <= record["k"] <= MAX_EXPERTS):
        raise PnlmError(f"{source}: its clusters record needs clusters (a path), k (1 to {MAX_EXPERTS}) and "
                        f"centroids_sha256, not {record!r}"[:400])
    return record


def final_checkpoint(run: Path) -> Path:
    """RUN/best when the run evaluated, else RUN/latest; a checkpoint folder is its own."""
    if (run / "manifest.json").is_file():
        return run
    for name in (BEST, LATEST):
        if (run / name / "manifest.json").is_file():
            return run / name
    raise PnlmError(f"{run}: holds no finished checkpoint (best/ or latest/)")


@dataclass
class Instantiated:
    spec: ModelSpec
    weights: dict[str, np.ndarray]
    tokenizer: Tokenizer
    method: str
    report: dict[str, Any]


def check_labelled(store: TokenStore, clusters: dict[str, Any], split: str = "train") -> np.ndarray:
    """The split's cluster labels, if they come from these clusters (`Clusters.store_info()`); else
    a clear error with the command that labels the store."""
    info, ids = store.clusters_info(), store.cluster_ids(split)
    if ids is None or info is None or info.get("centroids_sha256") != clusters.get("centroids_sha256"):
        raise PnlmError(f"{store.path}: its {split} split is not labelled with the clusters {clusters.get('clusters')}; "
                        f"run `pnlm data assign {store.path} --clusters {clusters.get('clusters')} --split {split}` "
                        f"(the store `pnlm data cluster` ran on is labelled already)")
    return ids


def domain_histogram(domain: str | Path, clusters: dict[str, Any]) -> dict[str, Any]:
    """The domain's train-split histogram over the run's clusters, checking the labels are theirs."""
    return histogram_report(check_labelled(TokenStore(domain), clusters), int(clusters["k"]))


def chosen_index(choice: str, k: int, report: dict[str, Any]) -> int:
    """The expert an "auto" choice (the domain's top cluster) or an index names, checked against k."""
    try:
        index = report["top_cluster"] if choice == "auto" else int(choice)
    except ValueError:
        raise PnlmError(f"--expert {choice!r}: expected auto, histogram or an index from 0 to {k - 1}") from None
    if not 0 <= index < k:
        raise PnlmError(f"--expert {index}: the run has {k} experts (0 to {k - 1})")
    return index
