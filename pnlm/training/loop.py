"""The training loop, written once for every backend and every method: schedule, evaluation, early
stopping, checkpoints, exact resume, metrics.

What it is given decides the rest, as in mlx-lm's trainer: a train step (pnlm/training/step.py: a
backend's model with its loss), the batches (pnlm/training/batches.py: which windows, and for
distillation the teacher's soft targets with them), the writer (what is saved: a whole checkpoint,
pnlm.checkpoints.checkpoint.ModelWriter, or LoRA adapters beside the base, pnlm.checkpoints.adapter_checkpoint.AdapterWriter),
the identity --resume must find (pnlm/checkpoints/run_identity.py), and any extra validation metrics (a
distillation's KL to its teacher).

    RUN/
      latest/        checkpoint with optimizer and trainer state: what --resume continues from
      best/          the weights with the lowest validation loss so far (when evaluating)
      metrics.jsonl  one JSON object per log step: step, loss, lr, tokens, tokens_per_s, elapsed_s
                                      flops, device_hours, mfu (cost, pnlm/training/cost.py), and val_loss, val_ppl at evaluations

The data order is a function of the step alone (pnlm/data/samplers.py), so resuming at step s feeds
exactly the batches an uninterrupted run would have fed; a thread makes them a few steps ahead
(pnlm/training/prefetch.py). The steps' losses stay on the device until a log step reads them all at once
(and checks them finite), so between log steps the device never waits for the host.
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


from pnlm.files.atomic import atomic_file, sweep
from pnlm.cpu_threads import following
from pnlm.training.cost import cost_record
from pnlm import values
from pnlm.errors import PnlmError
from pnlm.training.memory import peak_memory_record
from pnlm.checkpoints.run_identity import check_same_run
from pnlm.files.run_lock import lock_run, unlock_run
from pnlm.training.schedule import learning_rate
from pnlm.model.spec import OptimizerSpec
from pnlm.training.evaluation import evaluate
from pnlm.training.prefetch import Prefetcher

LATEST = "latest"
BEST = "best"
METRICS = "metrics.jsonl"
PREFETCH_DEPTH = 2  # batches made ahead of the step (pnlm/training/prefetch.py)


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

    @property
    def rows_per_micro_batch(self) -> int:
        """The most rows one slice of a batch holds (what a step keeps activations for)."""
        return -(-self.batch_size // self.micro_batches)

    def validate(self) -> "TrainConfig":
        """Every setting of the right type and in range (pnlm.values), whether from flags, a --config file, a
        plan or a Python call: one line naming the setting."""
        values.whole("--steps", self.steps, 1)
        values.whole("--batch-size", self.batch_size, 1)
        values.whole("--grad-accum", self.micro_batches, 1)
        if self.micro_batches > self.batch_size:
            raise PnlmError(f"gradient accumulation needs 1 to {self.batch_size} (the batch size) micro-batches, "
                            f"got {self.micro_batches}")
        self.optimizer.validate()
        values.whole("--warmup", self.warmup_steps, 0)
        values.real("the schedule's floor (min_lr_ratio)", self.min_lr_ratio, 0.0, 1.0)
        values.whole("--eval-every", self.eval_every, 0)
        values.whole("--eval-batches", self.eval_batches, 0)
        values.whole("--patience", self.patience, 0)
        values.whole("--checkpoint-every", self.checkpoint_every, 0)
        values.whole("--log-every", self.log_every, 1)
        values.seed(self.seed)
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


def train(step_fn: Any, batches: Any, config: TrainConfig, run_dir: str | Path, writer: Any,
          identity: dict[str, Any], flops_per_token: float, resume: bool = False,
          on_log: Callable[[dict[str, Any]], None] | None = None,
          extra_metrics: Callable[[Any], dict[str, float]] | None = None) -> TrainResult:
    """Train step_fn's model on batches.train(step) for config.steps steps; write RUN/latest, RUN/best and
    RUN/metrics.jsonl. batches: pnlm.training.batches.StoreBatches (or any object with its name,
    unrecorded_name, store, sampler, train(step)); identity: what the run was started with, which --resume
    must find again; flops_per_token: the cost accounting's (pnlm/training/cost.py); extra_metrics(step_fn): extra
    validation figures logged at each evaluation."""
    config.validate()
    run_dir = Path(run_dir)
    main = step_fn.is_main  # under data parallelism only one process writes
    if main:
        lock_run(run_dir)  # one writer per run (the API takes it earlier, to refuse before building a model)
    try:
        return _train(step_fn, batches, config, run_dir, writer, identity, flops_per_token, resume, on_log,
                      extra_metrics, main)
    finally:
        if main:
            unlock_run(run_dir)


def _train(step_fn: Any, batches: Any, config: TrainConfig, run_dir: Path, writer: Any, identity: dict[str, Any],
           flops_per_token: float, resume: bool, on_log: Callable[[dict[str, Any]], None] | None,
           extra_metrics: Callable[[Any], dict[str, float]] | None, main: bool) -> TrainResult:
    store = batches.store
    evaluating = config.eval_every > 0 and store.num_windows("valid") > 0
    state = {"step": 0, "tokens": 0, "best_val_loss": None, "evals_since_best": 0, "elapsed_s": 0.0}
    if main:
        sweep(run_dir)
    if resume and (run_dir / LATEST).exists():
        check_same_run(run_dir / LATEST, identity)  # before any weight is loaded: another model fails here, named
        trainer = writer.restore(run_dir / LATEST, step_fn)
        if trainer.get("config") != _config_json(config):
            raise PnlmError(f"{run_dir / LATEST}: was trained with other settings; resume with the same ones")
        began_with = trainer.get("sampler", batches.unrecorded_name)
        if began_with != batches.name:
            raise PnlmError(f"{run_dir / LATEST}: was trained on {began_with} batches, not {batches.name} "
                            f"ones; resume with the same batches")
        state.update({k: trainer[k] for k in state})
        if main:
            _truncate_metrics(run_dir / METRICS, state["step"])
    elif (run_dir / LATEST).exists():
        raise PnlmError(f"{run_dir}: holds a run already; pass --resume to continue it, or another --out")
    elif main:  # a fresh run, or --resume of one killed before its first checkpoint
        (run_dir / METRICS).unlink(missing_ok=True)

    def save(folder: str, with_state: bool) -> None:
        trainer = {**state, "config": _config_json(config), "sampler": batches.name, "started_with": identity}
        writer.save(run_dir / folder, step_fn, trainer, with_state, write=main)

    def costs() -> dict[str, float | None]:
        return cost_record(state["tokens"], state["elapsed_s"], flops_per_token, step_fn.devices,
                           step_fn.device_name, step_fn.precision)

    def staged(step: int) -> tuple[int, Any]:
        batch = batches.train(step)
        return int(batch.mask.sum()), step_fn.stage(batch, config.micro_batches)

    # A teacher's soft targets run a model: made on this thread, not ahead.
    depth = 0 if getattr(batches, "teacher", None) is not None else PREFETCH_DEPTH
    cores = following() if step_fn.device_name == "cpu" and step_fn.devices == 1 else None
    start = time.perf_counter() - state["elapsed_s"]
    stopped_early, loss = False, math.nan
    pending: list[Any] = []  # the losses of the steps since the last log step, on the device
    with open(run_dir / METRICS if main else os.devnull, "a") as metrics, \
            Prefetcher(staged, state["step"], config.steps, depth) as prefetcher:
        while state["step"] < config.steps:
            step = state["step"]
            lr = learning_rate(step, config.optimizer.lr, config.warmup_steps, config.steps,
                               config.min_lr_ratio, config.cosine)
            step_fn.set_lr(lr)
            tokens, batch = prefetcher.get(step)
            pending.append(step_fn.step(batch))
            state["step"] = step + 1
            state["tokens"] += tokens
            evaluating_now = evaluating and state["step"] % config.eval_every == 0
            saving_now = state["step"] == config.steps or bool(
                config.checkpoint_every and state["step"] % config.checkpoint_every == 0)
            if not (evaluating_now or saving_now or state["step"] % config.log_every == 0):
                continue  # nothing is read from the device between log steps: it never waits for the host
            loss = _checked_losses(step_fn, pending, state["step"], run_dir / LATEST)
            pending = []
            state["elapsed_s"] = time.perf_counter() - start
            record = {"step": state["step"], "loss": loss, "lr": lr, "tokens": state["tokens"],
                      "tokens_per_s": state["tokens"] / max(state["elapsed_s"], 1e-9), "elapsed_s": state["elapsed_s"],
                      **costs(), **peak_memory_record(step_fn.peak_device_bytes)}
            if cores is not None:  # a CPU run follows the cores other work leaves it (pnlm/cpu_threads.py)
                if (threads := cores.update()) is not None:
                    step_fn.set_threads(threads)
                record["cpu_threads"] = cores.threads
            if evaluating_now:
                val_loss, _ = evaluate(step_fn, store, "valid", config.batch_size, config.eval_batches,
                                       batches.sampler)
                record.update(val_loss=val_loss, val_ppl=math.exp(min(val_loss, 700)))
                if extra_metrics is not None:
                    record.update(extra_metrics(step_fn))
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
            if stopped_early or saving_now:
                save(LATEST, with_state=True)
            if stopped_early:
                break
    cost = costs()
    return TrainResult(state["step"], stopped_early, state["best_val_loss"], loss, state["tokens"],
                       state["elapsed_s"], cost["flops"], cost["device_hours"], cost["mfu"])


def _checked_losses(step_fn: Any, losses: list[Any], last_step: int, latest: Path) -> float:
    """The last of the losses of the steps up to last_step, once all are known finite (one wait for the
    device); else the first step whose loss is not, named."""
    values = step_fn.to_floats(losses)
    for offset, value in enumerate(values):
        if not math.isfinite(value):
            step = last_step - len(values) + offset + 1
            kept = (f"the last good checkpoint is {latest}" if (latest / "manifest.json").is_file()
                    else "no checkpoint was saved before it")
            raise PnlmError(f"loss is {value} at step {step} (a learning rate too high, or data the model cannot "
                            f"fit?); {kept}")
    return values[-1]


def _config_json(config: TrainConfig) -> dict[str, Any]:
    data = asdict(config)
    data.pop("steps")  # a resumed run may be extended
    data.pop("patience")
    data.pop("micro_batches")  # the same update in more or fewer slices: free to change on resume
    data.pop("log_every")
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
