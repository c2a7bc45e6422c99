"""The losses a train step is built with (pnlm.backends.make_train_step(..., loss=...)): cross-entropy
by default, or distillation's (SLM-d, pnlm/methods/distillation.py)

    loss = (1 − α) · CE(student, next token) + α · T² · KL(teacher_T ‖ student_T)

averaged over the target tokens, where p_T = softmax(logits / T). Each backend writes the maths in its
framework; the numpy functions here are the oracle both are tested against.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pnlm.errors import PnlmError


@dataclass(frozen=True)
class DistillSpec:
    alpha: float = 0.5
    temperature: float = 2.0

    def validate(self) -> "DistillSpec":
        if not 0.0 <= self.alpha <= 1.0:
            raise PnlmError(f"--alpha must be between 0 and 1, got {self.alpha}")
        if not self.temperature > 0:
            raise PnlmError(f"--temperature must be positive, got {self.temperature}")
        return self


def log_softmax(x: np.ndarray) -> np.ndarray:
    """Over the last axis, stable (the largest logit subtracted first)."""
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def kl_to_teacher(student_logits: np.ndarray, teacher_logprobs: np.ndarray, teacher_indices: np.ndarray | None,
                   temperature: float) -> np.ndarray:
    """KL(teacher_T ‖ student_T) per position, over the teacher's tokens (renormalized), in float64."""
    student = log_softmax(student_logits.astype(np.float64) / temperature)
    if teacher_indices is not None:
        student = np.take_along_axis(student, teacher_indices, -1)
    teacher = log_softmax(np.asarray(teacher_logprobs, dtype=np.float64) / temperature)
    return (np.exp(teacher) * (teacher - student)).sum(-1)


def distill_loss(student_logits: np.ndarray, targets: np.ndarray, mask: np.ndarray, teacher_logprobs: np.ndarray,
                 teacher_indices: np.ndarray | None, spec: DistillSpec) -> float:
    """The loss above, in float64, for logits (B, T, V), targets and mask (B, T), and the teacher's
    log-probabilities (B, T, K) of the tokens teacher_indices (B, T, K) (None: all V, in order)."""
    logits = student_logits.astype(np.float64)
    ce = -np.take_along_axis(log_softmax(logits), targets[..., None], -1)[..., 0]
    kl = kl_to_teacher(logits, teacher_logprobs, teacher_indices, spec.temperature)
    per_token = (1 - spec.alpha) * ce + spec.alpha * spec.temperature ** 2 * kl
    return float((per_token * mask).sum() / max(mask.sum(), 1.0))
