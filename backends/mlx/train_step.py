"""One optimizer step on MLX, compiled: cross-entropy, gradients, clip, AdamW (bias-corrected, as torch's)."""

from __future__ import annotations

from functools import partial

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np

from pnlm.backends.mlx.cpu_ops import cross_entropy
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

        def loss_fn(model: Transformer, inputs: mx.array, targets: mx.array) -> mx.array:
            logits = model(inputs).astype(mx.float32)
            return cross_entropy(logits, targets)

        value_and_grad = nn.value_and_grad(model, loss_fn)

        @partial(mx.compile, inputs=state, outputs=state)
        def step(inputs: mx.array, targets: mx.array) -> mx.array:
            loss, grads = value_and_grad(model, inputs, targets)
            grads, _ = optim.clip_grad_norm(grads, optimizer.clip_norm)
            self.optimizer.update(model, grads)
            return loss

        self._step = step
        self._loss = loss_fn

    def set_lr(self, lr: float) -> None:
        self.optimizer.learning_rate = lr

    def __call__(self, inputs: np.ndarray, targets: np.ndarray) -> float:
        """Train on a batch of int token arrays (batch, time); return the loss before the update."""
        self.model.train()
        loss = self._step(mx.array(inputs.astype(np.int32)), mx.array(targets.astype(np.int32)))
        mx.eval(loss, self.model.state, self.optimizer.state)
        return loss.item()
