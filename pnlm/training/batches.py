"""The batches a run trains and evaluates on: a store's windows picked by a sampler (pnlm/data/samplers.py),
turned into next-token inputs, targets and a mask, with the expert of each row (projected networks) and,
for distillation, the teacher's soft targets (pnlm/methods/distillation.py). The loop sees only Batches."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from pnlm.data.store import TokenStore
from pnlm.errors import PnlmError


@dataclass
class Batch:
    inputs: np.ndarray  # (batch, time) token ids
    targets: np.ndarray  # (batch, time) the next tokens
    mask: np.ndarray  # (batch, time) 1 where a target counts (not padding)
    expert: int | np.ndarray | None = None  # a projected network's cluster: one, or one per row
    soft_targets: tuple | None = None  # distillation: the teacher's (indices or None, log-probabilities)


def shifted(tokens: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Inputs, next-token targets and the mask of real (non-padding) targets of a padded batch."""
    mask = (np.arange(tokens.shape[1] - 1)[None, :] < (lengths[:, None] - 1)).astype(np.float32)
    return tokens[:, :-1], tokens[:, 1:], mask


def micro_batch_rows(rows: int, micro_batches: int) -> list[np.ndarray]:
    """The rows of each slice of a batch under gradient accumulation (contiguous, as even as possible)."""
    if not 1 <= micro_batches <= rows:
        raise PnlmError(f"cannot split {rows} rows into {micro_batches} micro-batches")
    return np.array_split(np.arange(rows), micro_batches)


class StoreBatches:
    """A store's windows as batches: sampler.train_batch(step) picks the training windows (a function of the
    step alone, so a resumed run sees the same batches); evaluation groups its windows by the sampler's
    eval_groups (pnlm/training/evaluation.py).
    soft_targets (distillation): an object whose soft_targets(split, rows, inputs) gives a teacher's.
    unrecorded_name: the name of the batches a run from before runs recorded theirs used."""

    def __init__(self, store: TokenStore, sampler: Any, soft_targets: Any = None,
                 unrecorded_name: str | None = None) -> None:
        self.store, self.sampler, self.teacher = store, sampler, soft_targets
        self.name = sampler.name
        self.unrecorded_name = unrecorded_name or sampler.name

    def train(self, step: int) -> Batch:
        rows, expert = self.sampler.train_batch(step)
        inputs, targets, mask = shifted(*self.store.batch("train", rows))
        soft = self.teacher.soft_targets("train", rows, inputs) if self.teacher is not None else None
        return Batch(inputs, targets, mask, expert, soft)
