"""One optimizer step on MLX, compiled: cross-entropy, gradients, clip, AdamW (bias-corrected, as torch's)."""

from __future__ import annotations

from functools import partial

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np

from mlx.utils import tree_flatten, tree_unflatten

from pnlm.backends.mlx.cpu_ops import cross_entropy, token_nll
from pnlm.backends.mlx.model import Transformer
from pnlm.spec import OptimizerSpec


class TrainStep:
    def __init__(self, model: Transformer, optimizer: OptimizerSpec) -> None:
        self.model = model
        self.spec = optimizer
        self.optimizer = optim.AdamW(learning_rate=optimizer.lr, betas=[optimizer.beta1, optimizer.beta2],
                                     eps=optimizer.eps, weight_decay=optimizer.weight_decay, bias_correction=True)
        self.optimizer.init(model.trainable_parameters())
        state = [model.state, self.optimizer.state]

        def loss_fn(model: Transformer, inputs: mx.array, targets: mx.array, mask: mx.array) -> mx.array:
            logits = model(inputs).astype(mx.float32)
            return cross_entropy(logits, targets, mask)

        value_and_grad = nn.value_and_grad(model, loss_fn)

        @partial(mx.compile, inputs=state, outputs=state)
        def step(inputs: mx.array, targets: mx.array, mask: mx.array) -> mx.array:
            loss, grads = value_and_grad(model, inputs, targets, mask)
            grads, _ = optim.clip_grad_norm(grads, optimizer.clip_norm)
            self.optimizer.update(model, grads)
            return loss

        # The weights are an input: a compiled function would otherwise keep the ones it first saw.
        @partial(mx.compile, inputs=[model.state])
        def nll_sum(inputs: mx.array, targets: mx.array, mask: mx.array) -> mx.array:
            return (token_nll(model(inputs).astype(mx.float32), targets) * mask).sum()

        self._step = step
        self._nll_sum = nll_sum

    @property
    def is_main(self) -> bool:
        """Whether this process writes checkpoints and metrics (always: MLX trains in one process here)."""
        return True

    def set_lr(self, lr: float) -> None:
        self.optimizer.learning_rate = lr

    def __call__(self, inputs: np.ndarray, targets: np.ndarray, mask: np.ndarray | None = None) -> float:
        """Train on a batch of int token arrays (batch, time); mask (batch, time) marks the targets that count
        (all by default). Return the loss before the update."""
        self.model.train()
        loss = self._step(*_arrays(inputs, targets, mask))
        mx.eval(loss, self.model.state, self.optimizer.state)
        return loss.item()

    def nll(self, inputs: np.ndarray, targets: np.ndarray, mask: np.ndarray | None = None) -> tuple[float, int]:
        """Summed negative log-likelihood of the counted targets, and their number (no update)."""
        self.model.eval()
        x, y, m = _arrays(inputs, targets, mask)
        total = self._nll_sum(x, y, m)
        return float(total.item()), int(np.asarray(m).sum())

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
        flat = [("step", mx.array(int(state["step"]), dtype=mx.uint64))]
        for name, value in state.items():
            if name.endswith(".exp_avg"):
                flat.append((f"{name[:-len('.exp_avg')]}.m", mx.array(value)))
            elif name.endswith(".exp_avg_sq"):
                flat.append((f"{name[:-len('.exp_avg_sq')]}.v", mx.array(value)))
        # In place: the compiled step captured this very dict.
        restored = tree_unflatten(flat)
        restored["learning_rate"] = self.optimizer.state["learning_rate"]
        self.optimizer.state.clear()
        self.optimizer.state.update(restored)
        mx.eval(self.optimizer.state)


def _arrays(inputs: np.ndarray, targets: np.ndarray, mask: np.ndarray | None) -> tuple[mx.array, mx.array, mx.array]:
    mask = np.ones(targets.shape, dtype=np.float32) if mask is None else mask.astype(np.float32)
    return mx.array(inputs.astype(np.int32)), mx.array(targets.astype(np.int32)), mx.array(mask)
