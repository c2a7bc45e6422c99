"""Distillation (SLM-d): the student learns from the domain's tokens and from a teacher's next-token
distributions,

    loss = (1 − α) · CE(student, next token) + α · T² · KL(teacher_T ‖ student_T)

averaged over the target tokens, where p_T = softmax(logits / T). The teacher either runs beside the
student on the same backend (LiveTeacher: its whole distribution) or its top-k log-probabilities are
computed once and cached on disk (TeacherCache): the KL then runs over those k tokens, the teacher's
tempered distribution renormalized over them, which is the exact KL when k is the vocabulary.

The loss's settings and its numpy oracle (`distill_loss`, which both backends' losses are tested against)
are in pnlm/model/losses.py, which the backends build their train step with.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from pnlm.files.atomic import atomic_dir
from pnlm.backend_loader import make_train_step, resolve_backend
from pnlm.checkpoints.checkpoint import load_checkpoint, weights_sha256
from pnlm.data.samplers import ordered_groups
from pnlm.data.store import TokenStore
from pnlm.errors import PnlmError
from pnlm.inference import refuse_projected
from pnlm.files.json_object import read_json_object
from pnlm.model.losses import DistillSpec, distill_loss, kl_to_teacher
from pnlm.training.memory import check_fits, training_estimate
from pnlm.files.run_lock import run_locks_released
from pnlm.model.spec import OptimizerSpec
from pnlm.training.batches import shifted
from pnlm.training.loop import TrainConfig
from pnlm.training.runs import TrainSummary, default_log_every, default_precision, main_process, open_run, run_training

__all__ = ["DistillSpec", "distill_loss", "LiveTeacher", "TeacherCache", "write_teacher_cache", "teacher_kl", "distill"]

CACHE_META = "teacher_cache.json"


class LiveTeacher:
    """The teacher's whole next-token log-distribution, computed beside the student at every step."""

    def __init__(self, step_fn: Any) -> None:
        self.step_fn = step_fn

    def soft_targets(self, split: str, indices: np.ndarray, inputs: np.ndarray) -> tuple[None, np.ndarray]:
        return None, self.step_fn.log_probs(inputs)

    def validation_kl(self, student: Any, store: TokenStore, split: str, batch_size: int, max_batches: int = 0) -> float:
        return teacher_kl(student, self, store, split, batch_size, max_batches)


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

    def validation_kl(self, student: Any, store: TokenStore, split: str, batch_size: int, max_batches: int = 0) -> float:
        return teacher_kl(student, self, store, split, batch_size, max_batches)


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
    total, count = 0.0, 0.0
    for n, (rows, _) in enumerate(ordered_groups(store, split, batch_size)):
        if max_batches and n >= max_batches:
            break
        inputs, _, mask = shifted(*store.batch(split, rows))
        indices, teacher_logprobs = teacher.soft_targets(split, rows, inputs)
        kl = kl_to_teacher(step_fn.log_probs(inputs), teacher_logprobs, indices, 1.0)
        total, count = total + float((kl * mask).sum()), count + float(mask.sum())
    if not count:
        raise PnlmError(f"{store.path}: the {split} split has no tokens to compare student and teacher on")
    return total / count


@run_locks_released()
def distill(teacher: str | Path, student: str | Path, data: str | Path, out: str | Path, *, backend: str = "auto",
            alpha: float = 0.5, temperature: float = 2.0, cache_top_k: int = 0, steps: int = 1000,
            batch_size: int = 8, lr: float = 1e-4 / 3, eval_every: int = 50, eval_batches: int = 0,
            patience: int = 3, early_stop: bool = True, precision: str | None = None, checkpoint_every: int = 0,
            log_every: int | None = None,
            seed: int = 0, resume: bool = False, progress: Any = None) -> TrainSummary | None:
    """SLM-d: fine-tune the student on the domain's store with (1 − α)·CE + α·T²·KL(teacher_T ‖ student_T).
    The teacher runs beside the student on the same backend, or (cache_top_k > 0) once, its top-k
    log-probabilities cached in RUN/teacher-cache. Returns the run's TrainSummary (None in a torchrun job's
    other processes)."""
    backend = resolve_backend(backend)
    out = open_run(out, resume, [teacher, student, data])
    spec = DistillSpec(alpha=alpha, temperature=temperature).validate()
    teacher_ckpt, student_ckpt = load_checkpoint(teacher), load_checkpoint(student)
    refuse_projected(teacher_ckpt.spec, teacher)
    refuse_projected(student_ckpt.spec, student)
    store = TokenStore(data, verify=main_process())
    for path, ckpt in ((teacher, teacher_ckpt), (student, student_ckpt)):
        if ckpt.tokenizer.sha256 != store.tokenizer_sha256:
            raise PnlmError(f"{data}: prepared with another tokenizer than {path}'s")
        store.check_context(ckpt.spec.context, str(path))
    config = TrainConfig(steps=steps, batch_size=batch_size, optimizer=OptimizerSpec(lr=lr), cosine=False,
                         eval_every=eval_every, eval_batches=eval_batches, patience=patience if early_stop else 0,
                         checkpoint_every=checkpoint_every, log_every=default_log_every(log_every, backend),
                         seed=seed).validate()
    precision = default_precision(precision, backend)
    check_fits(training_estimate(student_ckpt.spec, batch_size, store.context, loaded=True)
               + training_estimate(teacher_ckpt.spec, batch_size, store.context, trainable=0, loaded=True),
               f"distilling {teacher} into {student}", backend, "use a smaller --batch-size")
    teacher_step = make_train_step(backend, teacher_ckpt.spec, teacher_ckpt.weights, OptimizerSpec(),
                                   precision=precision)
    source: Any = LiveTeacher(teacher_step)
    if cache_top_k:
        cache = out / "teacher-cache"
        if (cache / CACHE_META).is_file():
            source = TeacherCache(cache, store)
        else:
            splits = tuple(s for s in ("train", "valid") if store.num_windows(s))
            source = write_teacher_cache(cache, teacher_step, store, cache_top_k, str(teacher), batch_size, splits)
        if source.meta["k"] != cache_top_k:
            raise PnlmError(f"{cache}: holds the top {source.meta['k']}, not {cache_top_k}; remove it or match it")
        del teacher_step  # the cache replaces the teacher
    step_fn = make_train_step(backend, student_ckpt.spec, student_ckpt.weights, config.optimizer, precision=precision,
                              loss=spec)
    details = {"alpha": alpha, "temperature": temperature, "teacher": str(teacher),
               "teacher_source": f"cache top-{cache_top_k}" if cache_top_k else "live"}
    return run_training(step_fn, student_ckpt.spec, student_ckpt.tokenizer, store, config, out, resume, "slm-d",
                        progress, teacher=source, started_from={"teacher_sha256": weights_sha256(teacher)},
                        details=details)
