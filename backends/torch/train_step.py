"""One optimizer step on PyTorch: cross-entropy, backward, clip, AdamW."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from torch.nn.parallel import DistributedDataParallel

from pnlm.backends.torch.distributed import all_reduce_sum, init_distributed, rank_rows
from pnlm.backends.torch.model import Transformer
from pnlm.spec import OptimizerSpec


class TrainStep:
    def __init__(self, model: Transformer, optimizer: OptimizerSpec) -> None:
        self.model = model
        self.spec = optimizer
        self.device = next(model.parameters()).device
        self.rank, self.world_size = init_distributed(self.device)
        # DDP wraps the model for the forward pass; weights are read from and loaded into the model itself.
        self.network = DistributedDataParallel(model) if self.world_size > 1 else model
        self.optimizer = torch.optim.AdamW(
            model.parameters(), lr=optimizer.lr, betas=(optimizer.beta1, optimizer.beta2), eps=optimizer.eps,
            weight_decay=optimizer.weight_decay, fused=self.device.type == "cuda")

    def set_lr(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    @property
    def is_main(self) -> bool:
        """Whether this process writes checkpoints and metrics (rank 0)."""
        return self.rank == 0

    def token_nll(self, inputs: torch.Tensor, targets: torch.Tensor, network: torch.nn.Module | None = None
                  ) -> torch.Tensor:
        logits = (network or self.model)(inputs)
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
        count = m.sum().clamp(min=1.0)
        if self.world_size > 1:
            rows = torch.from_numpy(rank_rows(len(x), self.rank, self.world_size)).to(self.device)
            x, y, m = x[rows], y[rows], m[rows]
        nll_sum = (self.token_nll(x, y, self.network) * m).sum()
        # DDP averages gradients over ranks: scaling by the world size makes that the gradient of the
        # global batch's mean loss.
        loss = nll_sum / count * self.world_size
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.spec.clip_norm)
        self.optimizer.step()
        return float(all_reduce_sum(nll_sum.detach()) / count)

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
