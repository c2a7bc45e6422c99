"""One optimizer step on MLX, compiled: cross-entropy, gradients, clip, AdamW (bias-corrected, as torch's)."""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import mlx.core as mx
import mlx.optimizers as optim
import numpy as np

from mlx.utils import tree_flatten, tree_map, tree_map_with_path

from pnlm.backends.mlx.blas import set_threads as set_blas_threads
from pnlm.backends.mlx.cpu_ops import on_cpu, token_nll
from pnlm.backends.mlx.model import Transformer
from pnlm.model.losses import DistillSpec
from pnlm.training.batches import Batch, micro_batch_rows
from pnlm.training.step import batch_arrays, check_precision
from pnlm.model.projection import expert_indices, group_rows
from pnlm.model.soup import step_weights
from pnlm.model.spec import OptimizerSpec


@dataclass
class StagedBatch:
    """A batch as the host prepares it for a step (TrainStep.stage), in numpy: inputs, targets, mask, each
    micro-batch's rows and expert routing, a teacher's soft targets."""

    inputs: np.ndarray
    targets: np.ndarray
    mask: np.ndarray
    slices: list[np.ndarray]
    routings: list[tuple[np.ndarray, np.ndarray]]
    soft: tuple


class TrainStep:
    """precision "bfloat16" computes the forward and backward passes in bfloat16 from float32 master
    weights (gradients and AdamW stay float32), as torch's autocast does."""

    def __init__(self, model: Transformer, optimizer: OptimizerSpec, precision: str = "float32",
                 loss: DistillSpec | None = None) -> None:
        check_precision(precision)
        self.model = model
        self.souped = model.spec.soup is not None  # `expert`: the soup's domain weights h for the whole batch
        self.optimizer_spec = optimizer
        self.precision = precision
        self._reset_peak()
        compute = mx.bfloat16 if precision == "bfloat16" else None
        if compute is not None:
            # Frozen weights (a LoRA base) are only ever read: store them in the compute dtype.
            frozen = {name for name, _ in tree_flatten(model.parameters())} - {
                name for name, _ in tree_flatten(model.trainable_parameters())}
            model.load_weights([(name, value.astype(compute)) for name, value in tree_flatten(model.parameters())
                                if name in frozen], strict=False)
        self.optimizer = optim.AdamW(learning_rate=optimizer.lr, betas=[optimizer.beta1, optimizer.beta2],
                                     eps=optimizer.eps, weight_decay=optimizer.weight_decay, bias_correction=True)
        self.optimizer.init(model.trainable_parameters())
        state = [model.state, self.optimizer.state]
        distillation = loss  # the nested functions below name their own results `loss`

        def per_token(logits: mx.array, targets: mx.array, teacher: tuple) -> mx.array:
            """Each target's NLL, or with a teacher ((indices,) log-probabilities) the distillation loss."""
            nll = token_nll(logits, targets)
            if not teacher:
                return nll
            *indices, teacher_logprobs = teacher
            alpha, temperature = distillation.alpha, distillation.temperature
            student = logits / temperature
            student = student - mx.logsumexp(student, axis=-1, keepdims=True)
            if indices:
                student = mx.take_along_axis(student, indices[0], axis=-1)
            tempered = teacher_logprobs / temperature
            tempered = tempered - mx.logsumexp(tempered, axis=-1, keepdims=True)
            kl = (mx.exp(tempered) * (tempered - student)).sum(axis=-1)
            return (1 - alpha) * nll + alpha * temperature ** 2 * kl

        def loss_fn(trainable: dict, inputs: mx.array, targets: mx.array, mask: mx.array, count: mx.array,
                    present: mx.array, row_slot: mx.array, *teacher: mx.array) -> mx.array:
            model.update(tree_map(lambda p: p.astype(compute), trainable) if compute is not None else trainable)
            logits = model(inputs, expert=(present, row_slot)).astype(mx.float32)
            return (per_token(logits, targets, teacher) * mask).sum() / count

        value_and_grad = mx.value_and_grad(loss_fn)

        def gradients(inputs: mx.array, targets: mx.array, mask: mx.array, count: mx.array, present: mx.array,
                      row_slot: mx.array, *teacher: mx.array):
            master = model.trainable_parameters()
            loss, grads = value_and_grad(master, inputs, targets, mask, count, present, row_slot, *teacher)
            model.update(master)  # the float32 weights back in place of the forward's copies
            return loss, grads

        def apply(grads: dict) -> None:
            grads, _ = optim.clip_grad_norm(grads, optimizer.clip_norm)
            self.optimizer.update(model, grads)

        @partial(mx.compile, inputs=state, outputs=state)
        def step(inputs: mx.array, targets: mx.array, mask: mx.array, present: mx.array, row_slot: mx.array,
                 *teacher: mx.array) -> mx.array:
            loss, grads = gradients(inputs, targets, mask, mx.maximum(mask.sum(), 1.0), present, row_slot, *teacher)
            apply(grads)
            return loss

        # The weights are an input: a compiled function would otherwise keep the ones it first saw.
        @partial(mx.compile, inputs=[model.state], outputs=[model.state])
        def nll_sum(inputs: mx.array, targets: mx.array, mask: mx.array, present: mx.array,
                    row_slot: mx.array) -> mx.array:
            master = model.trainable_parameters()
            if compute is not None:
                model.update(tree_map(lambda p: p.astype(compute), master))
            total = (token_nll(model(inputs, expert=(present, row_slot)).astype(mx.float32), targets) * mask).sum()
            model.update(master)
            return total

        @partial(mx.compile, inputs=[model.state], outputs=[model.state])
        def log_probs(inputs: mx.array, present: mx.array, row_slot: mx.array) -> mx.array:
            master = model.trainable_parameters()
            if compute is not None:
                model.update(tree_map(lambda p: p.astype(compute), master))
            logits = model(inputs, expert=(present, row_slot)).astype(mx.float32)
            model.update(master)
            return logits - mx.logsumexp(logits, axis=-1, keepdims=True)

        self._step = step
        self._gradients = mx.compile(gradients, inputs=state, outputs=state)
        self._apply = mx.compile(apply, inputs=state, outputs=state)
        self._nll_sum = nll_sum
        self._log_probs = log_probs
        self.loss = loss  # None: cross-entropy; a DistillSpec: distillation's (pnlm/model/losses.py)

    rank = 0  # MLX trains in one process here

    @property
    def devices(self) -> int:
        return 1

    @property
    def device_name(self) -> str:
        """What the cost accounting looks the peak FLOP/s up by (pnlm/training/cost.py)."""
        return "cpu" if on_cpu() else f"mlx-{mx.default_device()}"

    @property
    def peak_device_bytes(self) -> int | None:
        """The most Metal memory MLX has held at once (None on the CPU: the host's peak counts it)."""
        return None if on_cpu() else int(mx.get_peak_memory())

    def _reset_peak(self) -> None:
        if not on_cpu():  # a run's own peak, not an earlier run's of this process (a mixture's experts)
            mx.reset_peak_memory()

    @property
    def is_main(self) -> bool:
        """Whether this process writes checkpoints and metrics (always: MLX trains in one process here)."""
        return True

    def set_lr(self, lr: float) -> None:
        self.optimizer.learning_rate = lr

    def set_threads(self, threads: int) -> None:
        if on_cpu():  # MLX's matrix products on a CPU are the BLAS's (backends/mlx/blas.py)
            set_blas_threads(threads)

    def stage(self, batch: Batch, micro_batches: int = 1) -> StagedBatch:
        """The host's share of a step, in numpy (safe to run ahead on another thread; MLX arrays are made on
        the training thread): each micro-batch's rows and expert routing, a teacher's soft targets."""
        inputs, targets, mask = batch_arrays(batch.inputs, batch.targets, batch.mask)
        soft: tuple = ()
        if batch.soft_targets is not None:  # (indices,) log-probabilities; no indices for whole distributions
            indices, logprobs = batch.soft_targets
            soft = (() if indices is None else (indices.astype(np.int32),)) + (logprobs.astype(np.float32),)
        # Checked against the whole batch before any slice of it is taken (a miscount is one clear error).
        slices = micro_batch_rows(len(inputs), micro_batches)
        if self.souped:  # the first input of the compiled functions: h, the same for every slice
            h = step_weights(self.model.spec, batch.expert)
            routings = [(h, np.zeros((len(rows),), dtype=np.uint32)) for rows in slices]
        else:
            expert = None if batch.expert is None else expert_indices(batch.expert, len(inputs))
            routings = [_routing(expert if np.ndim(expert) == 0 else expert[rows], len(rows)) for rows in slices]
        return StagedBatch(inputs.astype(np.int32), targets.astype(np.int32), mask, slices, routings, soft)

    def step(self, staged: StagedBatch) -> mx.array:
        """One optimizer step on a staged batch; the loss before the update (an evaluated 0-d array)."""
        self.model.train()
        x, y, m = mx.array(staged.inputs), mx.array(staged.targets), mx.array(staged.mask)
        soft = tuple(mx.array(t) for t in staged.soft)
        if len(staged.slices) == 1:
            loss = self._step(x, y, m, *(mx.array(a) for a in staged.routings[0]), *soft)
        else:
            count = mx.maximum(m.sum(), 1.0)
            loss, grads = mx.array(0.0), None
            for rows, routing in zip(staged.slices, staged.routings):
                rows = mx.array(rows)
                part, part_grads = self._gradients(x[rows], y[rows], m[rows], count, *(mx.array(a) for a in routing),
                                                   *(t[rows] for t in soft))
                grads = part_grads if grads is None else tree_map(mx.add, grads, part_grads)
                loss = loss + part
                mx.eval(loss, grads)
            self._apply(grads)
        mx.eval(loss, self.model.state, self.optimizer.state)
        return loss

    def to_floats(self, losses: list[mx.array]) -> list[float]:
        """Losses as numbers (the loop asks at log steps; MLX has already evaluated them)."""
        return [float(loss.item()) for loss in losses]

    def __call__(self, inputs: np.ndarray, targets: np.ndarray, mask: np.ndarray | None = None,
                 micro_batches: int = 1, expert: int | np.ndarray | None = None,
                 soft_targets: tuple | None = None) -> float:
        """One optimizer step: pnlm.training.step.TrainStep.__call__."""
        return float(self.step(self.stage(Batch(inputs, targets, mask, expert, soft_targets), micro_batches)))

    def nll(self, inputs: np.ndarray, targets: np.ndarray, mask: np.ndarray | None = None,
            expert: int | np.ndarray | None = None) -> tuple[float, int]:
        """Summed negative log-likelihood of the counted targets, and their number (no update)."""
        self.model.eval()
        staged = self.stage(Batch(inputs, targets, mask, expert))
        total = self._nll_sum(mx.array(staged.inputs), mx.array(staged.targets), mx.array(staged.mask),
                              *(mx.array(a) for a in staged.routings[0]))
        mx.eval(total, self.model.state)
        return float(total.item()), int(staged.mask.sum())

    def log_probs(self, inputs: np.ndarray, expert: int | np.ndarray | None = None) -> np.ndarray:
        """Next-token log-probabilities (batch, time, vocab), float32 (a teacher's)."""
        self.model.eval()
        out = self._log_probs(mx.array(inputs.astype(np.int32)), *(mx.array(a) for a in _routing(expert, len(inputs))))
        mx.eval(out, self.model.state)
        return np.array(out)

    def canonical_weights(self) -> dict[str, np.ndarray]:
        return self.model.canonical_weights()

    def load_canonical(self, weights: dict[str, np.ndarray]) -> None:
        self.model.load_canonical(weights)

    def optimizer_state(self) -> dict[str, np.ndarray]:
        """AdamW's moments under canonical names (NAME.exp_avg, NAME.exp_avg_sq) and the step count."""
        state = dict(tree_flatten(self.optimizer.state))
        out = {"step": np.array(int(state["step"].item()), dtype=np.int64)}
        for name, value in state.items():
            if name.endswith(".m") or name.endswith(".v"):
                moment = "exp_avg" if name.endswith(".m") else "exp_avg_sq"
                out[f"{name[:-2]}.{moment}"] = np.array(value.astype(mx.float32))
        return out

    def load_optimizer_state(self, state: dict[str, np.ndarray]) -> None:
        """Restore what optimizer_state() returned, from either backend."""
        def moments(name: str, parameter: mx.array) -> dict[str, mx.array]:
            if f"{name}.exp_avg" not in state:  # never updated yet: what AdamW starts from
                return {"m": mx.zeros_like(parameter), "v": mx.zeros_like(parameter)}
            return {"m": mx.array(state[f"{name}.exp_avg"]), "v": mx.array(state[f"{name}.exp_avg_sq"])}

        # Shaped like the trainable tree, frozen modules' empty entries included (LoRA): the update walks the
        # gradients' tree and looks each of its keys up in this one.
        restored = tree_map_with_path(moments, self.model.trainable_parameters())
        restored["step"] = mx.array(int(state["step"]), dtype=mx.uint64)
        # In place: the compiled step captured this very dict.
        restored["learning_rate"] = self.optimizer.state["learning_rate"]
        self.optimizer.state.clear()
        self.optimizer.state.update(restored)
        mx.eval(self.optimizer.state)


def _routing(expert: int | np.ndarray | None, rows: int) -> tuple[np.ndarray, np.ndarray]:
    """The experts present and each row's position among them (pnlm.model.projection.group_rows), as inputs of the
    compiled functions, so that other experts do not recompile (another number of them traces once more).
    A plain model ignores them."""
    indices = None if expert is None else expert_indices(expert, rows)
    if indices is None or indices.ndim == 0:
        return np.array([int(indices or 0)], dtype=np.int32), np.zeros((rows,), dtype=np.uint32)
    present, row_slot = group_rows(indices)
    return present.astype(np.int32), row_slot.astype(np.uint32)
