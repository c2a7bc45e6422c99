"""SLM-is, importance sampling: an SLM pretrained on the generic windows drawn with the weights
w(c) = p_domain(c) / p_generic(c) of their cluster c, so that its batches follow the domain's cluster
histogram; one pretraining per domain, then fine-tuned on it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from pnlm.checkpoints.checkpoint import ModelWriter
from pnlm.clustering.clusters import Clusters
from pnlm.clustering.histogram import cluster_histogram, importance_weights
from pnlm.data.samplers import cluster_labels, ordered_groups
from pnlm.data.store import TokenStore
from pnlm.errors import PnlmError
from pnlm.methods.experts import domain_histogram
from pnlm.training.runs import Pretraining, TrainSummary


class ImportanceSampler:
    """Generic windows drawn with replacement with probability ∝ w(c) = p_domain(c) / p_generic(c) of their
    cluster c (SLM-is): the resampled set's cluster histogram is the domain's. Drawing a cluster with
    probability p_domain(c), then one of its windows uniformly, is the same distribution, and is what
    step s does with a generator seeded by (seed, s): no weight table, and any step can be drawn alone.
    Evaluation: the windows in order (the domain's own valid split is the usual target)."""

    name = "importance"

    def __init__(self, store: TokenStore, batch_size: int, seed: int, k: int, domain_histogram: np.ndarray) -> None:
        self.store, self.batch_size, self.seed = store, batch_size, seed
        self.labels = labels = cluster_labels(store, "train", k)
        self.generic_histogram = cluster_histogram(labels, k)
        self.domain_histogram = np.asarray(domain_histogram, dtype=np.float64)
        self.weights = importance_weights(self.domain_histogram, self.generic_histogram)  # refuses uncovered clusters
        self.members = [np.flatnonzero(labels == c) for c in range(k)]
        self.cumulative = np.cumsum(self.domain_histogram / self.domain_histogram.sum())

    def train_batch(self, step: int) -> tuple[np.ndarray, None]:
        rng = np.random.default_rng([self.seed, step])
        clusters = np.minimum(np.searchsorted(self.cumulative, rng.random(self.batch_size), side="right"),
                              len(self.cumulative) - 1)
        picks = [self.members[c][rng.integers(len(self.members[c]))] for c in clusters]
        return np.array(picks, dtype=np.int64), None

    def eval_groups(self, split: str, batch_size: int) -> Iterator[tuple[np.ndarray, None]]:
        return ordered_groups(self.store, split, batch_size)

    def effective_sample_size(self) -> float:
        """(Σ w_i)² / Σ w_i² over the generic train windows: how many windows the resampled set is worth."""
        counts = np.array([len(m) for m in self.members], dtype=np.float64)
        return float((counts @ self.weights) ** 2 / (counts @ self.weights ** 2))

    def sampled_histogram(self, steps: int) -> np.ndarray:
        """The cluster histogram of the windows the first `steps` steps draw."""
        drawn = np.concatenate([self.labels[self.train_batch(s)[0]] for s in range(steps)])
        return np.bincount(drawn, minlength=len(self.domain_histogram)) / len(drawn)


def pretrain(job: Pretraining, clusters: Clusters, domain: str | Path | None) -> TrainSummary:
    """An SLM on the generic windows resampled to the domain's train-split histogram over the clusters.
    The summary's details say how well the resampling reaches it: the effective sample size and the total
    variation between the resampled and the domain's histograms."""
    if domain is None:
        raise PnlmError("--method is needs --domain STORE (labelled with the same clusters)")
    if job.spec.projection is not None or job.spec.soup is not None:
        raise PnlmError("--method is trains a plain model: use a preset without projection or soup")
    target = domain_histogram(domain, clusters.store_info())
    sampler = ImportanceSampler(job.store, job.config.batch_size, job.seed, clusters.k, np.array(target["histogram"]))
    sampled = sampler.sampled_histogram(job.config.steps)
    report = {"domain": str(domain), "effective_sample_size": sampler.effective_sample_size(),
              "generic_windows": job.store.num_windows("train"),
              "total_variation": float(0.5 * np.abs(sampled - sampler.domain_histogram).sum())}
    note = (f"importance sampling towards {domain}: effective sample size {report['effective_sample_size']:,.0f} of "
            f"{report['generic_windows']:,} generic windows; total variation between the resampled and the "
            f"domain's histograms over {job.config.steps:,} steps: {report['total_variation']:.4f}")
    writer = ModelWriter(job.spec, job.store.tokenizer(), "slm-is",
                         extra={"clusters": clusters.store_info(), "importance": report})
    return job.run(job.train_step(), "slm-is", writer=writer, sampler=sampler, details=report, note=note)
