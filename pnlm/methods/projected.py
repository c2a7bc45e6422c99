"""SLM-pn, the projected network: every MLP matrix of the SLM is a mixture of h basis matrices, whose
coefficients come from a learned expert embedding per cluster (pnlm/model/projection.py: the algebra, in numpy,
the oracle of both backends). Pretrained over the generic set's clusters (each row through its own
cluster's expert); a domain instantiates the plain SLM of its top cluster's expert (or the mixture of
experts its histogram weights, E_p = p @ E) and fine-tunes it. Inference costs the SLM's.

A run's config.json records the clusters (path, k, sha256 of the centroids) and the kind of batches.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np

from pnlm.checkpoints.checkpoint import ModelWriter, load_checkpoint
from pnlm.clustering.clusters import Clusters
from pnlm.data.samplers import ClusterSampler, RoutedSampler
from pnlm.errors import PnlmError
from pnlm.methods.experts import Instantiated, chosen_index, clusters_record, domain_histogram, final_checkpoint
from pnlm.model.projection import expert_vector, instantiate as instantiate_weights
from pnlm.training.runs import Pretraining, TrainSummary
from pnlm.model.spec import Projection

# How pretraining batches are drawn: "mixed" (the SLM's batches, each row through its cluster's expert) or
# "one-cluster" (every batch one cluster's: the ablation of docs/results/pn-ablation.md).
BATCHES = {"mixed": RoutedSampler, "one-cluster": ClusterSampler}


def projection_for(text: str | None, preset: Projection | None, k: int) -> Projection:
    """--projection "h,k,m"; else the preset's h and m with the clusters' k."""
    if text is None:
        if preset is None:
            raise PnlmError("--method pn needs --projection h,k,m (or a pn-* preset)")
        return dataclasses.replace(preset, k=k)
    try:
        h, k_given, m = (int(part) for part in text.split(","))
    except ValueError:
        raise PnlmError(f"--projection {text!r}: expected three integers h,k,m such as 4,16,8") from None
    if k_given != k:
        raise PnlmError(f"--projection has k={k_given} experts but the clusters have k={k}")
    if preset is not None:  # the spec's other settings (expert_similarity) stay
        return dataclasses.replace(preset, h=h, k=k, m=m)
    return Projection(h=h, k=k, m=m)


def pretrain(job: Pretraining, clusters: Clusters, projection: str | None, batches: str) -> TrainSummary:
    if batches not in BATCHES:
        raise PnlmError(f"--pn-batches {batches!r}: expected one of {', '.join(BATCHES)}")
    spec = job.spec.with_projection(projection_for(projection, job.spec.projection, clusters.k))
    writer = ModelWriter(spec, job.store.tokenizer(), "pn", extra={"clusters": clusters.store_info(),
                                                                   "batches": batches})
    step_fn = job.train_step(spec, fsdp=job.fsdp)
    sampler = BATCHES[batches](job.store, job.config.batch_size, job.seed, clusters.k)
    return job.run(step_fn, "pn", spec, writer=writer, sampler=sampler)


def instantiate(run: Path, domain: str | Path | None, choice: str) -> Instantiated:
    """The plain SLM a domain gets: its top cluster's expert (auto), a given one, or the experts mixed by
    its histogram (histogram)."""
    final = final_checkpoint(run)
    checkpoint = load_checkpoint(final)
    if checkpoint.spec.projection is None:
        raise PnlmError(f"{run}: neither a projected network nor a mixture run; it is already a plain model")
    k = checkpoint.spec.projection.k
    report: dict[str, Any] = {"run": str(run), "kind": "pn", "choice": choice}
    if choice in ("auto", "histogram"):
        if domain is None:
            raise PnlmError(f"--expert {choice} needs the domain's store (--domain)")
        clusters = clusters_record(checkpoint.extra.get("clusters"), str(final / "config.json"))
        report.update(domain=str(domain), **domain_histogram(domain, clusters))
    if choice == "histogram":
        vector = expert_vector(checkpoint.weights, histogram=np.array(report["histogram"]))
    else:
        report["expert"] = index = chosen_index(choice, k, report)
        vector = expert_vector(checkpoint.weights, expert=index)
    spec = checkpoint.spec
    return Instantiated(spec.plain(), instantiate_weights(checkpoint.weights, spec, vector), checkpoint.tokenizer,
                        "slm-pn", report)
