"""A training run from start to summary, as every method runs one: check and lock its folder, build the
train step once the memory it needs is known to be there, train (pnlm/training/loop.py), and sum it up.

What the run tells its caller as it goes is a TrainingProgress: the default says nothing; the CLI's
draws a progress bar; a script may log.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pnlm.backend_loader import make_train_step
from pnlm.checkpoints.checkpoint import ModelWriter
from pnlm.training.cost import train_flops_per_token
from pnlm.data.samplers import UniformSampler
from pnlm import values
from pnlm.errors import PnlmError
from pnlm.training.memory import check_fits, peak_memory_record, training_estimate
from pnlm.files.outputs import RUN, check_output
from pnlm.checkpoints.run_identity import run_identity
from pnlm.files.run_lock import lock_run
from pnlm.model.spec import ModelSpec
from pnlm.training.batches import StoreBatches
from pnlm.training.loop import TrainConfig, train
from pnlm.checkpoints.weights import init_weights

class TrainingProgress:
    """What a training function reports as it goes; this one reports nothing (subclass it)."""

    def started(self, run: Path, steps: int, note: str = "") -> None:
        """A run begins (a mixture begins one per expert): its folder, its steps, what it is."""

    def logged(self, record: dict[str, Any]) -> None:
        """A line of RUN/metrics.jsonl: step, loss, lr, tokens_per_s, and val_loss at evaluations."""

    def finished(self, summary: "TrainSummary") -> None:
        """A run has ended."""

    def failed(self) -> None:
        """A run stopped on an error (which the caller sees next)."""


@dataclass
class TrainSummary:
    out: Path
    steps: int
    stopped_early: bool
    final_loss: float
    best_val_loss: float | None
    tokens: int
    seconds: float
    flops: float
    device_hours: float
    mfu: float | None
    devices: int
    device: str
    precision: str
    details: dict[str, Any] = field(default_factory=dict)  # what the method adds (importance, distillation)
    peak_memory: dict[str, float] = field(default_factory=dict)  # MiB: peak_host_mib, and peak_device_mib

    @property
    def tokens_per_s(self) -> int:
        return round(self.tokens / max(self.seconds, 1e-9))

    @property
    def checkpoint(self) -> Path:
        """The run's model: RUN/best when it evaluated, else RUN/latest."""
        return self.out / ("best" if (self.out / "best").is_dir() else "latest")

    def to_json(self) -> dict[str, Any]:
        data = {k: v for k, v in asdict(self).items() if k not in ("details", "peak_memory")}
        data.update(out=str(self.out), seconds=round(self.seconds, 2), tokens_per_s=self.tokens_per_s)
        order = ("out", "steps", "stopped_early", "final_loss", "best_val_loss", "tokens", "seconds", "tokens_per_s",
                 "flops", "device_hours", "mfu", "devices", "device", "precision")
        return {**{k: data[k] for k in order}, **self.peak_memory, **self.details}


def steps_for(steps: int | None, tokens: int | None, batch_size: int, context: int) -> int:
    """A number of steps, given as such or as a token budget."""
    if (steps is None) == (tokens is None):
        raise PnlmError("give --steps or --tokens (one of them)")
    if steps is not None:
        return values.whole("--steps", steps, 1)
    values.whole("--batch-size", batch_size, 1)
    return max(1, math.ceil(values.whole("--tokens", tokens, 1) / (batch_size * context)))


def default_precision(precision: str | None, backend: str) -> str:
    """bfloat16 on a GPU (autocast), float32 elsewhere, unless asked."""
    return precision or ("bfloat16" if backend == "cuda" else "float32")


def default_compile(compile: bool | None, backend: str) -> bool:
    """torch.compile on a GPU, where it fuses the elementwise work between matrix products; off on the CPU
    (MLX compiles its own step), unless asked."""
    return backend == "cuda" if compile is None else compile


def default_log_every(log_every: int | None, backend: str) -> int:
    """Every 10 steps on a GPU, where reading a loss makes the host wait for the device; every step elsewhere."""
    if log_every is None:
        return 10 if backend == "cuda" else 1
    if log_every < 1:
        raise PnlmError(f"--log-every must be at least 1, got {log_every}")
    return log_every


def main_process() -> bool:
    """Whether this is the process that checks inputs and writes (rank 0 under torchrun, the only one else)."""
    return int(os.environ.get("RANK", "0")) == 0


def open_run(out: str | Path, resume: bool, inputs: list, continuing: bool | None = None, lock: bool = True) -> Path:
    """A RUN folder may hold only a pnlm run, continued only with resume (continuing: whether an existing
    run may be written into); then this process locks it before building anything, so that a second writer
    is refused at once. Under torchrun only rank 0 looks and locks: the others start while it writes."""
    out = Path(out)
    if main_process():
        check_output(out, RUN, resume if continuing is None else continuing, inputs)
        if lock:
            lock_run(out)
    return out


def fresh_train_step(backend: str, spec: ModelSpec, seed: int, config: TrainConfig, context: int,
                     fsdp: bool = False, **options: Any):
    """A randomly initialized model's train step, once the memory it needs is known to be there."""
    shards = int(os.environ.get("WORLD_SIZE", "1")) if fsdp else 1
    check_fits(training_estimate(spec, config.rows_per_micro_batch, context, shards=shards), "pretraining this model",
               backend, "choose a smaller --model, or a smaller --batch-size (or more --grad-accum)")
    return make_train_step(backend, spec, init_weights(spec, seed), config.optimizer, fsdp=fsdp, **options)


def run_training(step_fn: Any, spec: ModelSpec, tokenizer: Any, store: Any, config: TrainConfig, out: Path,
                 resume: bool, method: str, progress: TrainingProgress | None = None, writer: Any = None,
                 sampler: Any = None, teacher: Any = None, started_from: dict[str, str] | None = None,
                 details: dict[str, Any] | None = None, note: str = "") -> TrainSummary | None:
    """Train step_fn's model into out (pnlm/training/loop.py) and sum the run up; None in the processes of
    a torchrun job but the main one. sampler: which windows each step sees (uniform by default); teacher
    (distillation): the soft targets that come with each batch, and the KL logged at evaluations."""
    progress = progress or TrainingProgress()
    writer = writer or ModelWriter(spec, tokenizer, method)
    sampler = sampler or UniformSampler(store, config.batch_size, config.seed)
    # A projected network's run from before mixed batches recorded none: its batches were one cluster's.
    batches = StoreBatches(store, sampler, teacher, "one-cluster" if spec.projection is not None else None)
    identity = run_identity(spec, tokenizer, store, writer.method, sampler, started_from)

    def teacher_kl(student: Any) -> dict[str, float]:
        return {"val_kl": teacher.validation_kl(student, store, "valid", config.batch_size, config.eval_batches)}

    if step_fn.is_main:
        progress.started(Path(out), config.steps, note)
    try:
        result = train(step_fn, batches, config, out, writer, identity,
                       train_flops_per_token(spec, store.context, writer.lora), resume=resume,
                       on_log=progress.logged if step_fn.is_main else None,
                       extra_metrics=teacher_kl if teacher is not None else None)
    except BaseException:
        if step_fn.is_main:
            progress.failed()
        raise
    if not step_fn.is_main:  # another process of a torchrun job: the main one reports
        return None
    summary = TrainSummary(Path(out), result.steps, result.stopped_early, result.final_loss, result.best_val_loss,
                           result.tokens, result.seconds, result.flops, result.device_hours, result.mfu,
                           step_fn.devices, step_fn.device_name, step_fn.precision, dict(details or {}),
                           peak_memory_record(step_fn.peak_device_bytes))
    progress.finished(summary)
    return summary


@dataclass
class Pretraining:
    """What every method's pretraining shares: the generic store, the model, the schedule, where and how."""

    store: Any  # TokenStore of the generic set
    spec: ModelSpec
    config: TrainConfig
    out: Path
    backend: str
    seed: int
    resume: bool
    options: dict[str, Any] = field(default_factory=dict)  # precision, compile, distributed
    fsdp: bool = False
    progress: TrainingProgress | None = None

    def train_step(self, spec: ModelSpec | None = None, seed: int | None = None, fsdp: bool = False,
                   **options: Any) -> Any:
        return fresh_train_step(self.backend, spec or self.spec, self.seed if seed is None else seed, self.config,
                                self.store.context, fsdp=fsdp, **{**self.options, **options})

    def run(self, step_fn: Any, method: str, spec: ModelSpec | None = None, out: Path | None = None,
            writer: Any = None, sampler: Any = None, details: dict[str, Any] | None = None,
            note: str = "") -> TrainSummary:
        return run_training(step_fn, spec or self.spec, self.store.tokenizer(), self.store, self.config,
                            out or self.out, self.resume, method, self.progress, writer, sampler,
                            details=details, note=note)
