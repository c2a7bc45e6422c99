"""Experts of a projected network (PN) or a hard mixture (mix): which clusters a run was pretrained on,
and the plain SLM that a domain gets from it.

    PN run:   RUN/latest, RUN/best   checkpoints of the whole projected network; config.json records
                                     the clusters (path, k, sha256 of the centroids) in "clusters"
    mix run:  RUN/mix.json           k, the clusters, the spec of every expert
              RUN/expert-07/         an ordinary SLM run (latest/, best/, metrics.jsonl) on cluster 7 only

A domain store labelled with the same clusters (`pnlm data assign`) gives a histogram p; the expert is
its most frequent cluster (auto), a given index, or, for a PN, the mixture E_p = p @ E (histogram).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pnlm.atomic import atomic_file
from pnlm.json_object import read_json_object
from pnlm.checkpoint import load_checkpoint
from pnlm.cluster.histogram import histogram_report
from pnlm.data.store import TokenStore
from pnlm.errors import PnlmError
from pnlm.loop import BEST, LATEST
from pnlm.projection import expert_vector, instantiate
from pnlm.spec import MAX_EXPERTS, ModelSpec
from pnlm.tokenizer import Tokenizer

MIX_FILE = "mix.json"


def expert_dir(run: str | Path, expert: int) -> Path:
    return Path(run) / f"expert-{expert:02d}"


def write_mix_file(run: Path, k: int, clusters: dict[str, Any], spec: ModelSpec) -> None:
    run.mkdir(parents=True, exist_ok=True)
    with atomic_file(run / MIX_FILE) as f:
        f.write((json.dumps({"format": "pnlm-mix", "k": k, "clusters": clusters, "spec": spec.to_dict()},
                            indent=2) + "\n").encode())


@dataclass
class MixDescription:
    k: int
    clusters: dict[str, Any]
    spec: ModelSpec


def read_mix_file(run: Path) -> MixDescription:
    """A mixture run's mix.json: read bounded, every field checked, or one line naming the file."""
    path = run / MIX_FILE
    try:
        data = read_json_object(path, 1 << 20, PnlmError)  # bounded: a mixture's description is small
    except OSError as exc:
        raise PnlmError(f"{path}: not a readable mixture description ({exc.strerror or exc})") from None
    k = data.get("k")
    if data.get("format") != "pnlm-mix" or isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= MAX_EXPERTS:
        raise PnlmError(f"{path}: not a pnlm mixture description (format \"pnlm-mix\", k from 1 to {MAX_EXPERTS})")
    clusters = clusters_record(data.get("clusters"), str(path))
    if clusters["k"] != k:
        raise PnlmError(f"{path}: k is {k} but its clusters have {clusters['k']}")
    return MixDescription(k, clusters, ModelSpec.from_dict(data.get("spec"), source=str(path)))


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


def instantiate_expert(run: str | Path, domain: str | Path | None, expert: str) -> Instantiated:
    """The plain SLM a domain gets from a PN or mix run. expert: "auto", "histogram" or an index."""
    run = Path(run)
    is_mix = (run / MIX_FILE).is_file()
    if is_mix:
        description = read_mix_file(run)
        clusters, k = description.clusters, description.k
    else:
        final = final_checkpoint(run)
        checkpoint = load_checkpoint(final)
        if checkpoint.spec.projection is None:
            raise PnlmError(f"{run}: neither a projected network nor a mixture run; it is already a plain model")
        clusters, k = checkpoint.extra.get("clusters"), checkpoint.spec.projection.k
        if expert in ("auto", "histogram"):
            clusters = clusters_record(clusters, str(final / "config.json"))
    report: dict[str, Any] = {"run": str(run), "kind": "mix" if is_mix else "pn", "choice": expert}
    if expert in ("auto", "histogram"):
        if domain is None:
            raise PnlmError(f"--expert {expert} needs the domain's store (--domain)")
        report.update(domain=str(domain), **domain_histogram(domain, clusters))
    if expert == "histogram" and is_mix:
        raise PnlmError("--expert histogram mixes a projected network's experts; a hard mixture has no such blend")
    if expert == "histogram":
        vector = expert_vector(checkpoint.weights, histogram=np.array(report["histogram"]))
    else:
        try:
            index = report["top_cluster"] if expert == "auto" else int(expert)
        except ValueError:
            raise PnlmError(f"--expert {expert!r}: expected auto, histogram or an index from 0 to {k - 1}") from None
        if not 0 <= index < k:
            raise PnlmError(f"--expert {index}: the run has {k} experts (0 to {k - 1})")
        report["expert"] = index
        if is_mix:
            source = final_checkpoint(expert_dir(run, index))
            chosen = load_checkpoint(source)
            report["source"] = str(source)
            return Instantiated(chosen.spec, chosen.weights, chosen.tokenizer, "slm-mix", report)
        vector = expert_vector(checkpoint.weights, expert=index)
    spec = checkpoint.spec
    return Instantiated(spec.plain(), instantiate(checkpoint.weights, spec, vector), checkpoint.tokenizer,
                        "slm-pn", report)
