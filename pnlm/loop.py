"""The training loop, written once for every backend: schedule, evaluation, early stopping, checkpoints,
exact resume, metrics.

A backend supplies a train step (see backends/*/train_step.py) with `__call__(inputs, targets, mask,
micro_batches)`, `nll(...)`, `set_lr`, `canonical_weights()`, `load_canonical()`, `optimizer_state()`,
`load_optimizer_state()`, `is_main` (the process that writes, under data parallelism), `devices`,
`device_name`, `precision`, and a `model`.
What is saved (a whole checkpoint, or LoRA adapters beside the base) is the writer's business
(pnlm.checkpoint.ModelWriter, pnlm.adapter_checkpoint.AdapterWriter). Everything else is here.

    RUN/
      latest/        checkpoint with optimizer and trainer state: what --resume continues from
      best/          the weights with the lowest validation loss so far (when evaluating)
      metrics.jsonl  one JSON object per log step: step, loss, lr, tokens, tokens_per_s, elapsed_s
                                      flops, device_hours, mfu (cost, pnlm/cost.py), and val_loss, val_ppl at evaluations

The data order is a function of the step alone (pnlm/data/samplers.py), so resuming at step s feeds
exactly the batches an uninterrupted run would have fed.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pnlm.atomic import atomic_file, sweep
from pnlm.checkpoint import ModelWriter
from pnlm.cost import cost_record, train_flops_per_token
from pnlm.data.samplers import UniformSampler, ordered_groups
from pnlm.distill import teacher_kl
from pnlm.data.store import TokenStore
from pnlm.errors import PnlmError
from pnlm.run_identity import check_same_run, run_identity
from pnlm.run_lock import lock_run, unlock_run
from pnlm.schedule import learning_rate
from pnlm.spec import ModelSpec, OptimizerSpec
from pnlm.tokenizer import Tokenizer

LATEST = "latest"
BEST = "best"
METRICS = "metrics.jsonl"
PRECISIONS = ("float32", "bfloat16")


@dataclass(frozen=True)
class TrainConfig:
    steps: int
    batch_size: int = 8
    micro_batches: int = 1       # gradient accumulation: the batch is computed in this many slices
    optimizer: OptimizerSpec = OptimizerSpec()
    warmup_steps: int = 0
    cosine: bool = True
    min_lr_ratio: float = 0.1
    eval_every: int = 0          # 0: never evaluate
    eval_batches: int = 0        # 0: the whole valid split
    patience: int = 0            # evaluations without improvement before stopping; 0: no early stopping
    checkpoint_every: int = 0    # 0: only at the end
    log_every: int = 1
    seed: int = 0

    def validate(self) -> "TrainConfig":
        if self.steps < 1 or self.batch_size < 1:
            raise PnlmError(f"steps and batch size must be at least 1, got {self.steps} and {self.batch_size}")
        if not 1 <= self.micro_batches <= self.batch_size:
            raise PnlmError(f"gradient accumulation needs 1 to {self.batch_size} (the batch size) micro-batches, "
                            f"got {self.micro_batches}")
        if self.patience and not self.eval_every:
            raise PnlmError("early stopping (patience) needs evaluations: set eval_every")
        return self


@dataclass
class TrainResult:
    steps: int
    stopped_early: bool
    best_val_loss: float | None
    final_loss: float
    tokens: int
    seconds: float
    flops: float = 0.0
    device_hours: float = 0.0
    mfu: float | None = None


def micro_batch_rows(rows: int, micro_batches: int) -> list[np.ndarray]:
    """The rows of each slice of a batch under gradient accumulation (contiguous, as even as possible)."""
    if not 1 <= micro_batches <= rows:
        raise PnlmError(f"cannot split {rows} rows into {micro_batches} micro-batches")
    return np.array_split(np.arange(rows), micro_batches)


def shifted(tokens: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Inputs, next-token targets and the mask of real (non-padding) targets of a padded batch."""
    mask = (np.arange(tokens.shape[1] - 1)[None, :] < (lengths[:, None] - 1)).astype(np.float32)
    return tokens[:, :-1], tokens[:, 1:], mask


def evaluate(step_fn: Any, store: TokenStore, split: str, batch_size: int, max_batches: int = 0,
             sampler: Any = None) -> tuple[float, int]:
    """Mean NLL per target token over a split (or its first max_batches batches), and the token count.
    The sampler groups the windows (by expert for a projected network); by default in order."""
    groups = sampler.eval_groups(split, batch_size) if sampler else ordered_groups(store, split, batch_size)
    total, count = 0.0, 0
    for n, (indices, expert) in enumerate(groups):
        if max_batches and n >= max_batches:
            break
        nll, tokens_counted = step_fn.nll(*shifted(*store.batch(split, indices)), expert=expert)
        total, count = total + nll, count + tokens_counted
    if not count:
        raise PnlmError(f"{store.path}: the {split} split has no tokens to evaluate on")
    return total / count, count


def train(step_fn: Any, spec: ModelSpec, tokenizer: Tokenizer, store: TokenStore, config: TrainConfig,
          run_dir: str | Path, resume: bool = False, method: str = "slm",
          on_log: Callable[[dict[str, Any]], None] | None = None, writer: Any = None,
          sampler: Any = None, teacher: Any = None, started_from: dict[str, str] | None = None) -> TrainResult:
    """Train step_fn's model on the store's train split; write RUN/latest, RUN/best and RUN/metrics.jsonl.
    The sampler picks each step's windows (pnlm/data/samplers.py; uniform by default). With a teacher
    (pnlm/distill.py) the student learns from its distributions too, and evaluations log val_kl.
    started_from: the sha256 of the checkpoints the run reads (pnlm/run_identity.py), which --resume
    must find unchanged."""
    config.validate()
    writer = writer or ModelWriter(spec, tokenizer, method)
    sampler = sampler or UniformSampler(store, config.batch_size, config.seed)
    run_dir = Path(run_dir)
    main = step_fn.is_main  # under data parallelism only one process writes
    if main:
        lock_run(run_dir)  # one writer per run (the CLI takes it earlier, to refuse before building a model)
    try:
        return _train(step_fn, spec, tokenizer, store, config, run_dir, resume, method, on_log, writer, sampler,
                      teacher, main, started_from)
    finally:
        if main:
            unlock_run(run_dir)


def _train(step_fn: Any, spec: ModelSpec, tokenizer: Tokenizer, store: TokenStore, config: TrainConfig,
           run_dir: Path, resume: bool, method: str, on_log: Callable[[dict[str, Any]], None] | None, writer: Any,
           sampler: Any, teacher: Any, main: bool, started_from: dict[str, str] | None) -> TrainResult:
    flops_per_token = train_flops_per_token(spec, store.context, writer.lora)
    evaluating = config.eval_every > 0 and store.num_windows("valid") > 0
    state = {"step": 0, "tokens": 0, "best_val_loss": None, "evals_since_best": 0, "elapsed_s": 0.0}
    if main:
        sweep(run_dir)
    identity = run_identity(spec, tokenizer, store, getattr(writer, "method", method), sampler, started_from)
    if resume and (run_dir / LATEST).exists():
        check_same_run(run_dir / LATEST, identity)  # before any weight is loaded: another model fails here, named
        trainer = writer.restore(run_dir / LATEST, step_fn)
        if trainer.get("config") != _config_json(config):
            raise PnlmError(f"{run_dir / LATEST}: was trained with other settings; resume with the same ones")
        # A projected network's run from before mixed batches recorded none: its batches were one cluster's.
        began_with = trainer.get("sampler", "one-cluster" if spec.projection is not None else sampler.name)
        if began_with != sampler.name:
            raise PnlmError(f"{run_dir / LATEST}: was trained on {began_with} batches, not {sampler.name} "
                            f"ones; resume with the same batches")
        state.update({k: trainer[k] for k in state})
        if main:
            _truncate_metrics(run_dir / METRICS, state["step"])
    elif (run_dir / LATEST).exists():
        raise PnlmError(f"{run_dir}: holds a run already; pass --resume to continue it, or another --out")
    elif main:  # a fresh run, or --resume of one killed before its first checkpoint
        (run_dir / METRICS).unlink(missing_ok=True)

    def save(folder: str, with_state: bool) -> None:
        trainer = {**state, "config": _config_json(config), "sampler": sampler.name, "started_with": identity}
        writer.save(run_dir / folder, step_fn, trainer, with_state, write=main)

    def costs() -> dict[str, float | None]:
        return cost_record(state["tokens"], state["elapsed_s"], flops_per_token, step_fn.devices,
                           step_fn.device_name, step_fn.precision)

    start = time.perf_counter() - state["elapsed_s"]
    stopped_early, loss = False, math.nan
    with open(run_dir / METRICS if main else os.devnull, "a") as metrics:
        while state["step"] < config.steps:
            step = state["step"]
            lr = learning_rate(step, config.optimizer.lr, config.warmup_steps, config.steps,
                               config.min_lr_ratio, config.cosine)
            step_fn.set_lr(lr)
            indices, expert = sampler.train_batch(step)
            inputs, targets, mask = shifted(*store.batch("train", indices))
            soft = teacher.soft_targets("train", indices, inputs) if teacher is not None else None
            loss = step_fn(inputs, targets, mask, micro_batches=config.micro_batches, expert=expert, teacher=soft)
            if not math.isfinite(loss):
                raise PnlmError(f"loss is {loss} at step {step + 1}; the last good checkpoint is {run_dir / LATEST}")
            state["step"] = step + 1
            state["tokens"] += int(mask.sum())
            state["elapsed_s"] = time.perf_counter() - start
            record = {"step": state["step"], "loss": loss, "lr": lr, "tokens": state["tokens"],
                      "tokens_per_s": state["tokens"] / max(state["elapsed_s"], 1e-9), "elapsed_s": state["elapsed_s"],
                      **costs()}
            if evaluating and state["step"] % config.eval_every == 0:
                val_loss, _ = evaluate(step_fn, store, "valid", config.batch_size, config.eval_batches, sampler)
                record.update(val_loss=val_loss, val_ppl=math.exp(min(val_loss, 700)))
                if teacher is not None:
                    record["val_kl"] = teacher_kl(step_fn, teacher, store, "valid", config.batch_size,
                                                  config.eval_batches)
                if state["best_val_loss"] is None or val_loss < state["best_val_loss"]:
                    state["best_val_loss"], state["evals_since_best"] = val_loss, 0
                    save(BEST, with_state=False)
                else:
                    state["evals_since_best"] += 1
                stopped_early = bool(config.patience) and state["evals_since_best"] >= config.patience
            if state["step"] % config.log_every == 0 or "val_loss" in record or stopped_early:
                metrics.write(json.dumps(record) + "\n")
                metrics.flush()
                if on_log:
                    on_log(record)
            if stopped_early or state["step"] == config.steps or (
                    config.checkpoint_every and state["step"] % config.checkpoint_every == 0):
                save(LATEST, with_state=True)
            if stopped_early:
                break
    cost = costs()
    return TrainResult(state["step"], stopped_early, state["best_val_loss"], loss, state["tokens"],
                       state["elapsed_s"], cost["flops"], cost["device_hours"], cost["mfu"])


def _config_json(config: TrainConfig) -> dict[str, Any]:
    data = asdict(config)
    data.pop("steps")  # a resumed run may be extended
    data.pop("patience")
    data.pop("micro_batches")  # the same update in more or fewer slices: free to change on resume
    return data


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop the lines a killed run logged after its last checkpoint (and a line it was killed while
    writing), so a resumed log reads as one run."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and isinstance(record.get("step"), int) and record["step"] <= step:
            kept.append(line)
    with atomic_file(path) as f:
        f.write("".join(line + "\n" for line in kept).encode())
