"""The train-step contract both backends keep (backends/torch/train_step.py, backends/mlx/train_step.py:
the same class, TrainStep, with only its framework's maths), and what they do alike: the precision they
accept, and the batch arrays they are handed, checked and completed in numpy before either converts them.
The loss a step minimizes is chosen when it is built: cross-entropy, or distillation's (pnlm/model/losses.py)."""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

from pnlm.errors import BackendError, PnlmError

PRECISIONS = ("float32", "bfloat16")


class TrainStep(Protocol):
    """What the loop (pnlm/training/loop.py), evaluation and the writers use of a backend's step."""

    model: Any
    precision: str  # "float32", or "bfloat16" compute over float32 weights and optimizer
    is_main: bool  # the process that writes checkpoints and metrics (under data parallelism)
    rank: int  # this process's rank under data parallelism (0 alone)
    devices: int  # the number of processes (ranks) that train together
    device_name: str  # what the cost accounting looks the peak FLOP/s up by (pnlm/training/cost.py)
    peak_device_bytes: int | None  # the most device memory held since the step was built (None on a CPU)

    def stage(self, batch: Any, micro_batches: int = 1) -> Any:
        """The host's share of a step on a pnlm.training.batches.Batch (numpy work and host tensors, no
        framework computation): safe to run on another thread, ahead of the step (pnlm/training/prefetch.py)."""

    def step(self, staged: Any) -> Any:
        """One optimizer step on a staged batch; the loss before the update as a 0-d array on the device,
        which the step never reads (to_floats does, when the loop asks)."""

    def to_floats(self, losses: list[Any]) -> list[float]:
        """Losses that step returned, as numbers (waits for the device once)."""

    def __call__(self, inputs: np.ndarray, targets: np.ndarray, mask: np.ndarray | None = None,
                 micro_batches: int = 1, expert: int | np.ndarray | None = None,
                 soft_targets: tuple | None = None) -> float:
        """step(stage(...)), read: train on a batch of int token arrays (batch, time); mask (batch, time) marks the targets that count
        (all by default). micro_batches > 1 accumulates the gradient over that many slices of the batch,
        for the same update with less memory. expert (projected networks): the cluster of every row, or
        one cluster per row (batch,). soft_targets: a teacher's (indices or None, log-probabilities), for a
        step built with the distillation loss (pnlm/model/losses.py). Return the loss before the update (waiting
        for it: the training loop calls stage and step instead)."""

    def nll(self, inputs: np.ndarray, targets: np.ndarray, mask: np.ndarray | None = None,
            expert: int | np.ndarray | None = None) -> tuple[float, int]:
        """Summed negative log-likelihood of the counted targets, and their number (no update)."""

    def log_probs(self, inputs: np.ndarray, expert: int | np.ndarray | None = None) -> np.ndarray:
        """Next-token log-probabilities (batch, time, vocab), float32."""

    def set_lr(self, lr: float) -> None: ...

    def set_threads(self, threads: int) -> None:
        """On a CPU, how many threads the step's matrix products use from now on (a run following the free
        cores, pnlm/cpu_threads.py); nothing on a GPU."""

    def canonical_weights(self) -> dict[str, np.ndarray]: ...

    def load_canonical(self, weights: dict[str, np.ndarray]) -> None: ...

    def optimizer_state(self) -> dict[str, np.ndarray]:
        """AdamW's moments under canonical names (NAME.exp_avg, NAME.exp_avg_sq) and the step count."""

    def load_optimizer_state(self, state: dict[str, np.ndarray]) -> None: ...


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise BackendError(f"unknown precision {precision!r}; expected one of {', '.join(PRECISIONS)}")
    return precision


def batch_arrays(inputs: np.ndarray, targets: np.ndarray,
                 mask: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Integer inputs and targets and a float32 mask (every target counts by default), all (batch, time)."""
    inputs, targets = np.asarray(inputs), np.asarray(targets)
    mask = np.ones(targets.shape, dtype=np.float32) if mask is None else np.asarray(mask, dtype=np.float32)
    if inputs.ndim != 2 or inputs.shape != targets.shape or mask.shape != targets.shape:
        raise PnlmError(f"a batch is inputs, targets and mask of one (batch, time) shape, got {inputs.shape}, "
                        f"{targets.shape} and {mask.shape}")
    return inputs.astype(np.int64, copy=False), targets.astype(np.int64, copy=False), mask
