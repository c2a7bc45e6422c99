"""SLM-soup, the soup of experts (beyond the paper: Ablin, Katharopoulos, Seto, Grangier, ICML 2025, arXiv
2502.01804; pnlm/model/soup.py the algebra and the oracle; docs/soup.md pnlm's choices): shared MLP matrices and
n expert banks, mixed by coefficients a small network computes from domain weights h over the generic set's
clusters. Each pretraining step draws h from the meta-distribution, and trains the model for h on a batch
drawn from the clusters in proportions h. A domain gets the plain SLM for its cluster histogram, in closed
form, at the SLM's inference cost, and fine-tunes it.

A run's config.json records the clusters (path, k, sha256 of the centroids).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from pnlm.checkpoints.checkpoint import CONFIG_FILE, ModelWriter, load_checkpoint
from pnlm.clustering.clusters import Clusters
from pnlm.data.samplers import cluster_labels, ordered_groups
from pnlm.data.store import TokenStore
from pnlm.errors import PnlmError
from pnlm.methods.experts import Instantiated, clusters_record, domain_histogram, final_checkpoint
from pnlm.model.soup import domain_weights, draw_domain_weights, instantiate as instantiate_weights
from pnlm.model.spec import Soup
from pnlm.training.runs import Pretraining, TrainSummary


class SoupSampler:
    """Each step's domain weights h (pnlm.model.soup.draw_domain_weights) and a batch drawn from the clusters in
    proportions h: each row's cluster drawn from h, then one of its windows, uniformly; a function of (seed,
    step) alone. Evaluation reads the generic valid split through the model for the generic histogram."""

    name = "soup"

    def __init__(self, store: TokenStore, batch_size: int, seed: int, soup: Soup) -> None:
        self.store, self.batch_size, self.seed, self.soup = store, batch_size, seed, soup
        labels = cluster_labels(store, "train", soup.k)
        self.members = [np.flatnonzero(labels == c) for c in range(soup.k)]
        present = np.array([len(m) > 0 for m in self.members])
        if not present.any():
            raise PnlmError(f"{store.path}: the train split has no windows")
        self.present = present
        self.generic = domain_weights(np.bincount(labels, minlength=soup.k), soup.k)

    def train_batch(self, step: int) -> tuple[np.ndarray, np.ndarray]:
        h = draw_domain_weights(self.soup, self.seed, step, self.present)
        rng = np.random.default_rng([self.seed, step, 0x5a3])
        clusters = rng.choice(self.soup.k, size=self.batch_size, p=h)
        rows = np.array([self.members[c][rng.integers(len(self.members[c]))] for c in clusters], dtype=np.int64)
        return rows, h

    def eval_groups(self, split: str, batch_size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for indices, _ in ordered_groups(self.store, split, batch_size):
            yield indices, self.generic


def soup_for(spec_soup: Soup | None, k: int) -> Soup:
    """The spec's soup with the clusters' k (a soup-* preset's knobs, or the defaults: 4 banks)."""
    soup = spec_soup or Soup(banks=4, k=k)
    return dataclasses.replace(soup, k=k, clusters_per_draw=min(soup.clusters_per_draw, k))


def pretrain(job: Pretraining, clusters: Clusters) -> TrainSummary:
    spec = job.spec.with_soup(soup_for(job.spec.soup, clusters.k))
    writer = ModelWriter(spec, job.store.tokenizer(), "soup", extra={"clusters": clusters.store_info()})
    step_fn = job.train_step(spec, fsdp=job.fsdp)
    sampler = SoupSampler(job.store, job.config.batch_size, job.seed, spec.soup)
    return job.run(step_fn, "soup", spec, writer=writer, sampler=sampler)


def is_soup_run(run: Path) -> bool:
    """Whether a run's final checkpoint is a soup's, from its config.json alone (instantiate then loads and
    verifies the whole checkpoint once)."""
    try:
        config = json.loads((final_checkpoint(run) / CONFIG_FILE).read_text())
        return isinstance(config, dict) and isinstance(config.get("spec"), dict) and config["spec"].get("soup") is not None
    except (PnlmError, OSError, ValueError):
        return False


def instantiate(run: Path, domain: str | Path | None, choice: str) -> Instantiated:
    """The plain SLM for the domain's cluster histogram (choice "auto" or "histogram"), or for one cluster's
    one-hot weights (an index)."""
    final = final_checkpoint(run)
    checkpoint = load_checkpoint(final)
    spec = checkpoint.spec
    if spec.soup is None:
        raise PnlmError(f"{run}: not a soup of experts")
    report: dict[str, Any] = {"run": str(run), "kind": "soup", "choice": choice}
    if choice in ("auto", "histogram"):
        if domain is None:
            raise PnlmError(f"--expert {choice} needs the domain's store (--domain): the soup's model is its histogram's")
        record = clusters_record(checkpoint.extra.get("clusters"), str(final / "config.json"))
        report.update(domain=str(domain), **domain_histogram(domain, record))
        h = np.array(report["histogram"])
    else:
        try:
            index = int(choice)
        except ValueError:
            raise PnlmError(f"--expert {choice!r}: expected auto or histogram (the domain's histogram), or a "
                            f"cluster from 0 to {spec.soup.k - 1}") from None
        if not 0 <= index < spec.soup.k:
            raise PnlmError(f"--expert {index}: the soup's clusters are 0 to {spec.soup.k - 1}")
        report["expert"] = index
        h = np.eye(spec.soup.k)[index]
    return Instantiated(spec.plain(), instantiate_weights(checkpoint.weights, spec, h), checkpoint.tokenizer,
                        "slm-soup", report)
