"""Distillation (SLM-d): the student learns from the domain's tokens and from a teacher's next-token
distributions,

    loss = (1 − α) · CE(student, next token) + α · T² · KL(teacher_T ‖ student_T)

averaged over the target tokens, where p_T = softmax(logits / T). The teacher either runs beside the
student on the same backend (LiveTeacher: its whole distribution) or its top-k log-probabilities are
computed once and cached on disk (TeacherCache): the KL then runs over those k tokens, the teacher's
tempered distribution renormalized over them, which is the exact KL when k is the vocabulary.

The numpy `distill_loss` is the oracle both backends' losses are tested against.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pnlm.atomic import atomic_dir
from pnlm.data.store import TokenStore
from pnlm.errors import PnlmError
from pnlm.json_object import read_json_object

CACHE_META = "teacher_cache.json"


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


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def _kl_to_teacher(student_logits: np.ndarray, teacher_logprobs: np.ndarray, teacher_indices: np.ndarray | None,
                   temperature: float) -> np.ndarray:
    """KL(teacher_T ‖ student_T) per position, over the teacher's tokens (renormalized), in float64."""
    student = _log_softmax(student_logits.astype(np.float64) / temperature)
    if teacher_indices is not None:
        student = np.take_along_axis(student, teacher_indices, -1)
    teacher = _log_softmax(np.asarray(teacher_logprobs, dtype=np.float64) / temperature)
    return (np.exp(teacher) * (teacher - student)).sum(-1)


def distill_loss(student_logits: np.ndarray, targets: np.ndarray, mask: np.ndarray, teacher_logprobs: np.ndarray,
                 teacher_indices: np.ndarray | None, spec: DistillSpec) -> float:
    """The loss above, in float64, for logits (B, T, V), targets and mask (B, T), and the teacher's
    log-probabilities (B, T, K) of the tokens teacher_indices (B, T, K) (None: all V, in order)."""
    logits = student_logits.astype(np.float64)
    ce = -np.take_along_axis(_log_softmax(logits), targets[..., None], -1)[..., 0]
    kl = _kl_to_teacher(logits, teacher_logprobs, teacher_indices, spec.temperature)
    per_token = (1 - spec.alpha) * ce + spec.alpha * spec.temperature ** 2 * kl
    return float((per_token * mask).sum() / max(mask.sum(), 1.0))


class LiveTeacher:
    """The teacher's whole next-token log-distribution, computed beside the student at every step."""

    def __init__(self, step_fn: Any) -> None:
        self.step_fn = step_fn

    def soft_targets(self, split: str, indices: np.ndarray, inputs: np.ndarray) -> tuple[None, np.ndarray]:
        return None, self.step_fn.log_probs(inputs)


class TeacherCache:
    """Top-k teacher log-probabilities of every position of a split's windows, memory-mapped.

        CACHE/teacher_cache.json           k, the store's windows and context, the teacher's path
        CACHE/{split}.topk_indices.npy      int32 (windows, context − 1, k)
        CACHE/{split}.topk_logprobs.npy     float32 (windows, context − 1, k)
    """

    def __init__(self, path: str | Path, store: TokenStore) -> None:
        self.path = Path(path)
        meta_path = self.path / CACHE_META
        if not meta_path.is_file():
            raise PnlmError(f"{self.path}: not a teacher cache (no {CACHE_META}); write one with --cache-top-k")
        self.meta = read_json_object(meta_path, 1 << 20, PnlmError)
        if self.meta.get("tokenizer_sha256") != store.tokenizer_sha256 or self.meta.get("context") != store.context:
            raise PnlmError(f"{self.path}: cached for another store than {store.path}")
        k = self.meta.get("k")
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= store.vocab_size:
            raise PnlmError(f"{meta_path}: k must be a whole number from 1 to {store.vocab_size}, not {k!r}"[:400])
        self.store = store
        self.arrays: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def _split(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        if split not in self.arrays:
            try:
                indices = np.load(self.path / f"{split}.topk_indices.npy", mmap_mode="r", allow_pickle=False)
                logprobs = np.load(self.path / f"{split}.topk_logprobs.npy", mmap_mode="r", allow_pickle=False)
            except (OSError, ValueError) as exc:
                raise PnlmError(f"{self.path}: its {split} arrays cannot be read ({exc})") from None
            expected = (self.store.num_windows(split), self.store.context - 1, self.meta["k"])
            if (indices.shape, logprobs.shape, indices.dtype, logprobs.dtype) != (expected, expected, np.int32,
                                                                                  np.float32):
                raise PnlmError(f"{self.path}: its {split} arrays are not int32 and float32 of shape {expected}")
            self.arrays[split] = indices, logprobs
        return self.arrays[split]

    def soft_targets(self, split: str, indices: np.ndarray, inputs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        top, logprobs = self._split(split)
        length = inputs.shape[1]
        return np.asarray(top[indices, :length]), np.asarray(logprobs[indices, :length])


def write_teacher_cache(path: str | Path, teacher_step_fn: Any, store: TokenStore, k: int, teacher: str,
                        batch_size: int = 8, splits: tuple[str, ...] = ("train",)) -> TeacherCache:
    """Run the teacher once over the store's windows and keep its top-k log-probabilities (atomically)."""
    if not 1 <= k <= store.vocab_size:
        raise PnlmError(f"--cache-top-k must be between 1 and the vocabulary ({store.vocab_size}), got {k}")
    positions = store.context - 1
    with atomic_dir(path) as tmp:
        for split in splits:
            windows = store.num_windows(split)
            top = np.lib.format.open_memmap(tmp / f"{split}.topk_indices.npy", "w+", np.int32, (windows, positions, k))
            logp = np.lib.format.open_memmap(tmp / f"{split}.topk_logprobs.npy", "w+", np.float32,
                                             (windows, positions, k))
            for start in range(0, windows, batch_size):
                rows = np.arange(start, min(start + batch_size, windows))
                tokens, _ = store.batch(split, rows)
                full = teacher_step_fn.log_probs(tokens[:, :-1])  # (B, T, V)
                order = np.argpartition(-full, k - 1, axis=-1)[..., :k] if k < full.shape[-1] else \
                    np.broadcast_to(np.arange(k), full.shape[:-1] + (k,))
                top[rows, :full.shape[1]] = order
                logp[rows, :full.shape[1]] = np.take_along_axis(full, order, -1)
            top.flush()
            logp.flush()
            del top, logp
        (tmp / CACHE_META).write_text(json.dumps({"k": k, "tokenizer_sha256": store.tokenizer_sha256,
                                                  "context": store.context, "teacher": teacher,
                                                  "splits": list(splits)}, indent=2) + "\n")
    return TeacherCache(path, store)


def teacher_kl(step_fn: Any, teacher: Any, store: TokenStore, split: str, batch_size: int,
               max_batches: int = 0) -> float:
    """Mean KL(teacher ‖ student) per target token at temperature 1 over a split (over the teacher's
    top-k when cached): how far the student still is from the teacher."""
    from pnlm.data.samplers import ordered_groups
    from pnlm.loop import shifted

    total, count = 0.0, 0.0
    for n, (rows, _) in enumerate(ordered_groups(store, split, batch_size)):
        if max_batches and n >= max_batches:
            break
        inputs, _, mask = shifted(*store.batch(split, rows))
        indices, teacher_logprobs = teacher.soft_targets(split, rows, inputs)
        kl = _kl_to_teacher(step_fn.log_probs(inputs), teacher_logprobs, indices, 1.0)
        total, count = total + float((kl * mask).sum()), count + float(mask.sum())
    if not count:
        raise PnlmError(f"{store.path}: the {split} split has no tokens to compare student and teacher on")
    return total / count
