"""Which windows each training step sees, and in which groups evaluation runs: a function of the step alone,
so a resumed run sees exactly the batches an uninterrupted one would have.

- UniformSampler: every window of the train split, a seeded permutation per epoch (SLM, LLM).
- RoutedSampler: the UniformSampler's batches, each row with its cluster (projected networks: every
  row goes through its own cluster's expert; the batch mixes clusters as the generic set does).
- ClusterSampler: batches of one cluster each (projected networks' one-cluster batches, the ablation
  of docs/results/pn-ablation.md). Per epoch, every cluster's windows are permuted and cut into
  batches, and the batches of all clusters are shuffled together: each window is seen once per
  epoch, and a cluster's share of the steps is its share of the windows.
- ExpertSampler: only the windows of one cluster (the hard mixture's expert i).
(The importance sampler of SLM-is lives with its method, pnlm/methods/importance.py.)
Each yields, for evaluation, (indices, expert) groups over a split.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from pnlm.data.store import TokenStore
from pnlm.errors import PnlmError


def batch_indices(step: int, batch_size: int, windows: int, seed: int) -> np.ndarray:
    """The train windows of a step: positions step*B .. step*B+B-1 of an endless sequence of
    per-epoch permutations, each seeded by (seed, epoch)."""
    first = step * batch_size
    out = []
    while len(out) < batch_size:
        epoch, offset = divmod(first + len(out), windows)
        order = np.random.default_rng([seed, epoch]).permutation(windows)
        out.extend(order[offset:offset + batch_size - len(out)].tolist())
    return np.array(out, dtype=np.int64)


class UniformSampler:
    name = "uniform"

    def __init__(self, store: TokenStore, batch_size: int, seed: int) -> None:
        self.store, self.batch_size, self.seed = store, batch_size, seed
        self.windows = store.num_windows("train")
        if not self.windows:
            raise PnlmError(f"{store.path}: the train split has no windows")

    def train_batch(self, step: int) -> tuple[np.ndarray, int | None]:
        return batch_indices(step, self.batch_size, self.windows, self.seed), None

    def eval_groups(self, split: str, batch_size: int) -> Iterator[tuple[np.ndarray, int | None]]:
        return ordered_groups(self.store, split, batch_size)


def ordered_groups(store: TokenStore, split: str, batch_size: int) -> Iterator[tuple[np.ndarray, None]]:
    """A split's windows in order, in batches (evaluation of a model without experts)."""
    windows = store.num_windows(split)
    for start in range(0, windows, batch_size):
        yield np.arange(start, min(start + batch_size, windows)), None


def cluster_labels(store: TokenStore, split: str, k: int) -> np.ndarray:
    labels = store.cluster_ids(split)
    if labels is None:
        raise PnlmError(f"{store.path}: the {split} split has no cluster labels; run `pnlm data cluster` "
                        f"(or `pnlm data assign`) on it first")
    if len(labels) and (labels.min() < 0 or labels.max() >= k):
        raise PnlmError(f"{store.path}: {split} labels go up to {labels.max()}, more than the {k} experts")
    return labels


def cluster_groups(store: TokenStore, split: str, batch_size: int, k: int) -> Iterator[tuple[np.ndarray, int]]:
    """A split's windows by cluster, in batches of one cluster each (evaluation of a projected network:
    each cluster's windows by its own expert)."""
    labels = cluster_labels(store, split, k)
    for cluster in range(k):
        members = np.flatnonzero(labels == cluster)
        for start in range(0, len(members), batch_size):
            yield members[start:start + batch_size], cluster


class RoutedSampler(UniformSampler):
    name = "mixed"

    def __init__(self, store: TokenStore, batch_size: int, seed: int, k: int) -> None:
        super().__init__(store, batch_size, seed)
        self.k, self.labels = k, cluster_labels(store, "train", k)

    def train_batch(self, step: int) -> tuple[np.ndarray, np.ndarray]:
        indices, _ = super().train_batch(step)
        return indices, self.labels[indices].astype(np.int64)

    def eval_groups(self, split: str, batch_size: int) -> Iterator[tuple[np.ndarray, int]]:
        return cluster_groups(self.store, split, batch_size, self.k)


class ClusterSampler:
    name = "one-cluster"

    def __init__(self, store: TokenStore, batch_size: int, seed: int, k: int) -> None:
        self.store, self.batch_size, self.seed, self.k = store, batch_size, seed, k
        labels = cluster_labels(store, "train", k)
        self.members = [np.flatnonzero(labels == c) for c in range(k)]
        self.batches_per_epoch = sum(-(-len(m) // batch_size) for m in self.members)
        if not self.batches_per_epoch:
            raise PnlmError(f"{store.path}: the train split has no windows")
        self._epoch: tuple[int, list[tuple[np.ndarray, int]]] | None = None

    def _plan(self, epoch: int) -> list[tuple[np.ndarray, int]]:
        if self._epoch is None or self._epoch[0] != epoch:
            batches = []
            for cluster, members in enumerate(self.members):
                if not len(members):
                    continue
                order = members[np.random.default_rng([self.seed, epoch, cluster]).permutation(len(members))]
                count = -(-len(order) // self.batch_size)
                # The last batch of a cluster is filled up from the start of its permutation.
                padded = np.resize(order, count * self.batch_size)
                batches += [(padded[i * self.batch_size:(i + 1) * self.batch_size], cluster) for i in range(count)]
            shuffle = np.random.default_rng([self.seed, epoch]).permutation(len(batches))
            self._epoch = epoch, [batches[i] for i in shuffle]
        return self._epoch[1]

    def train_batch(self, step: int) -> tuple[np.ndarray, int]:
        epoch, position = divmod(step, self.batches_per_epoch)
        return self._plan(epoch)[position]

    def eval_groups(self, split: str, batch_size: int) -> Iterator[tuple[np.ndarray, int]]:
        return cluster_groups(self.store, split, batch_size, self.k)


class ExpertSampler:
    """The windows of one cluster, uniformly, for a model that sees nothing else (no expert input)."""

    name = "expert"

    def __init__(self, store: TokenStore, batch_size: int, seed: int, k: int, cluster: int) -> None:
        self.store, self.batch_size, self.seed, self.k, self.cluster = store, batch_size, seed, k, cluster
        self.members = np.flatnonzero(cluster_labels(store, "train", k) == cluster)
        if not len(self.members):
            raise PnlmError(f"{store.path}: cluster {cluster} has no train windows")

    def train_batch(self, step: int) -> tuple[np.ndarray, None]:
        return self.members[batch_indices(step, self.batch_size, len(self.members), self.seed)], None

    def eval_groups(self, split: str, batch_size: int) -> Iterator[tuple[np.ndarray, None]]:
        members = np.flatnonzero(cluster_labels(self.store, split, self.k) == self.cluster)
        for start in range(0, len(members), batch_size):
            yield members[start:start + batch_size], None
