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

    def token_nll(self, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        logits = self.model(inputs)
        return F.cross_entropy(logits.float().view(-1, logits.shape[-1]), targets.reshape(-1),
                               reduction="none").view(targets.shape)

    def _tensors(self, inputs: np.ndarray, targets: np.ndarray, mask: np.ndarray | None):
        mask = np.ones(targets.shape, dtype=np.float32) if mask is None else mask.astype(np.float32)
        return tuple(torch.from_numpy(np.ascontiguousarray(a)).to(self.device)
                     for a in (inputs.astype(np.int64), targets.astype(np.int64), mask))

    def __call__(self, inputs: np.ndarray, targets: np.ndarray, mask: np.ndarray | None = None) -> float:
        """Train on a batch of int token arrays (batch, time); mask (batch, time) marks the targets that count
        (all by default). Return the loss before the update."""
        self.model.train()
        x, y, m = self._tensors(inputs, targets, mask)
        loss = (self.token_nll(x, y) * m).sum() / m.sum().clamp(min=1.0)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.spec.clip_norm)
        self.optimizer.step()
        return float(loss.detach())

    @torch.no_grad()
    def nll(self, inputs: np.ndarray, targets: np.ndarray, mask: np.ndarray | None = None) -> tuple[float, int]:
        """Summed negative log-likelihood of the counted targets, and their number (no update)."""
        self.model.eval()
        x, y, m = self._tensors(inputs, targets, mask)
        return float((self.token_nll(x, y) * m).sum()), int(m.sum())

    def optimizer_state(self) -> dict[str, np.ndarray]:
        """AdamW's moments under canonical names (NAME.exp_avg, NAME.exp_avg_sq) and the step count."""
        out: dict[str, np.ndarray] = {}
        step = 0
        for name, parameter in self.model.named_parameters():
            state = self.optimizer.state.get(parameter, {})
            for moment in ("exp_avg", "exp_avg_sq"):
                if moment in state:
                    out[f"{name}.{moment}"] = state[moment].detach().float().cpu().numpy().copy()
            if "step" in state:
                step = int(state["step"])
        out["step"] = np.array(step, dtype=np.int64)
        return out

    def load_optimizer_state(self, state: dict[str, np.ndarray]) -> None:
        """Restore what optimizer_state() returned, from either backend."""
        step = int(state["step"])
        for name, parameter in self.model.named_parameters():
            if f"{name}.exp_avg" not in state:
                continue
            self.optimizer.state[parameter] = {
                "step": torch.tensor(float(step)),
                "exp_avg": torch.from_numpy(state[f"{name}.exp_avg"]).to(parameter),
                "exp_avg_sq": torch.from_numpy(state[f"{name}.exp_avg_sq"]).to(parameter),
            }
