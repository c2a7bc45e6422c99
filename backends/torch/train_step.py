"""One optimizer step on PyTorch: cross-entropy, backward, clip, AdamW."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from pnlm.backends.torch.model import Transformer
from pnlm.spec import OptimizerSpec


class TrainStep:
    def __init__(self, model: Transformer, optimizer: OptimizerSpec) -> None:
        self.model = model
        self.spec = optimizer
        self.device = next(model.parameters()).device
        self.optimizer = torch.optim.AdamW(
            model.parameters(), lr=optimizer.lr, betas=(optimizer.beta1, optimizer.beta2), eps=optimizer.eps,
            weight_decay=optimizer.weight_decay, fused=self.device.type == "cuda")

    def set_lr(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def loss(self, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        logits = self.model(inputs)
        return F.cross_entropy(logits.float().view(-1, logits.shape[-1]), targets.reshape(-1))

    def __call__(self, inputs: np.ndarray, targets: np.ndarray) -> float:
        """Train on a batch of int token arrays (batch, time); return the loss before the update."""
        self.model.train()
        x = torch.from_numpy(np.ascontiguousarray(inputs, dtype=np.int64)).to(self.device)
        y = torch.from_numpy(np.ascontiguousarray(targets, dtype=np.int64)).to(self.device)
        loss = self.loss(x, y)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.spec.clip_norm)
        self.optimizer.step()
        return float(loss.detach())
