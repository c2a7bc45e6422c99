"""One optimizer step on PyTorch: cross-entropy, backward, clip, AdamW."""

from __future__ import annotations

from contextlib import nullcontext

import numpy as np
import torch
import torch.nn.functional as F

from torch.nn.parallel import DistributedDataParallel

from pnlm.backends.torch.distributed import (all_reduce_sum, gather_optimizer_state, gather_weights, init_distributed,
                                             rank_rows, scatter_optimizer_state, scatter_weights, shard_model)
from pnlm.backends.torch.model import Transformer
from pnlm.losses import DistillSpec
from pnlm.errors import BackendError
from pnlm.training.batches import micro_batch_rows
from pnlm.training.step import batch_arrays, check_precision
from pnlm.projection import rows_by_expert
from pnlm.spec import OptimizerSpec


class TrainStep:
    """precision "bfloat16" runs the forward and backward under autocast (weights, gradients and AdamW
    stay float32); compile wraps the model in torch.compile. On CUDA, matrix products may use TF32."""

    def __init__(self, model: Transformer, optimizer: OptimizerSpec, precision: str = "float32",
                 compile: bool = False, fsdp: bool = False, distributed: bool = True,
                 loss: DistillSpec | None = None) -> None:
        self.model = model
        self.loss = loss  # None: cross-entropy; a DistillSpec: distillation's (pnlm/losses.py)
        self.optimizer_spec = optimizer
        self.device = next(model.parameters()).device
        self.precision = check_precision(precision)
        if self.device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        self.rank, self.world_size = init_distributed(self.device) if distributed else (0, 1)
        # Under torchrun: FSDP shards the model in place; DDP wraps it for the forward pass, and weights
        # are read from and loaded into the model itself.
        self.fsdp = fsdp and self.world_size > 1
        if self.fsdp:
            if any(not p.requires_grad for p in model.parameters()):
                raise BackendError("FSDP here trains every weight; LoRA runs use DDP (leave out --fsdp)")
            shard_model(model)
        self.ddp = DistributedDataParallel(model) if self.world_size > 1 and not self.fsdp else None
        self.network = self.ddp or model
        if compile:
            self.network = torch.compile(self.network)
        self.parameters = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(
            self.parameters, lr=optimizer.lr, betas=(optimizer.beta1, optimizer.beta2), eps=optimizer.eps,
            weight_decay=optimizer.weight_decay, fused=self.device.type == "cuda")

    @property
    def device_name(self) -> str:
        """What the cost accounting looks the peak FLOP/s up by (pnlm/cost.py)."""
        return torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else "cpu"

    @property
    def devices(self) -> int:
        return self.world_size

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.precision == "bfloat16")

    def set_lr(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    @property
    def is_main(self) -> bool:
        """Whether this process writes checkpoints and metrics (rank 0)."""
        return self.rank == 0

    def token_nll(self, inputs: torch.Tensor, targets: torch.Tensor, network: torch.nn.Module | None = None,
                  expert=None, teacher: tuple | None = None) -> torch.Tensor:
        """Each target's loss: its NLL, or with a teacher (indices or None, log-probabilities) the
        distillation loss of pnlm/losses.py."""
        logits = (self.model if network is None else network)(inputs, expert=expert).float()
        nll = F.cross_entropy(logits.view(-1, logits.shape[-1]), targets.reshape(-1),
                              reduction="none").view(targets.shape)
        if teacher is None:
            return nll
        indices, teacher_logprobs = teacher
        alpha, temperature = self.loss.alpha, self.loss.temperature
        student = F.log_softmax(logits / temperature, dim=-1)
        if indices is not None:
            student = student.gather(-1, indices)
        tempered = F.log_softmax(teacher_logprobs / temperature, dim=-1)
        kl = (tempered.exp() * (tempered - student)).sum(-1)
        return (1 - alpha) * nll + alpha * temperature ** 2 * kl

    @torch.no_grad()
    def log_probs(self, inputs: np.ndarray, expert: int | np.ndarray | None = None) -> np.ndarray:
        """Next-token log-probabilities (batch, time, vocab), float32 (a teacher's)."""
        self.model.eval()
        x = torch.from_numpy(np.ascontiguousarray(inputs.astype(np.int64))).to(self.device)
        with self._autocast():
            logits = self.model(x, expert=self._experts(expert)).float()
        return F.log_softmax(logits, dim=-1).cpu().numpy()

    def _soft_tensors(self, soft_targets: tuple | None) -> tuple | None:
        if soft_targets is None:
            return None
        indices, logprobs = soft_targets
        indices = None if indices is None else torch.from_numpy(np.ascontiguousarray(indices, np.int64)).to(self.device)
        return indices, torch.from_numpy(np.ascontiguousarray(logprobs, np.float32)).to(self.device)

    def _experts(self, expert: int | np.ndarray | None):
        """An expert for every row as it is; one per row as a tensor on the device."""
        if expert is None or np.ndim(expert) == 0:
            return expert
        return torch.from_numpy(np.asarray(expert, dtype=np.int64).reshape(-1)).to(self.device)

    def _tensors(self, inputs: np.ndarray, targets: np.ndarray, mask: np.ndarray | None):
        return tuple(torch.from_numpy(np.ascontiguousarray(a)).to(self.device)
                     for a in batch_arrays(inputs, targets, mask))

    def __call__(self, inputs: np.ndarray, targets: np.ndarray, mask: np.ndarray | None = None,
                 micro_batches: int = 1, expert: int | np.ndarray | None = None,
                 soft_targets: tuple | None = None) -> float:
        """One optimizer step: pnlm.training.step.TrainStep.__call__."""
        self.model.train()
        inputs, targets, mask, expert, soft_targets = rows_by_expert(inputs, targets, mask, expert, soft_targets)
        x, y, m = self._tensors(inputs, targets, mask)
        soft = self._soft_tensors(soft_targets)
        experts = self._experts(expert)
        per_row = torch.is_tensor(experts)
        count = m.sum().clamp(min=1.0)
        if self.world_size > 1:
            rows = torch.from_numpy(rank_rows(len(x), self.rank, self.world_size)).to(self.device)
            x, y, m = x[rows], y[rows], m[rows]
            experts = experts[rows] if per_row else experts
            soft = None if soft is None else tuple(None if t is None else t[rows] for t in soft)
        slices = micro_batch_rows(len(x), micro_batches)
        self.optimizer.zero_grad(set_to_none=True)
        loss_sum = torch.zeros((), device=self.device)
        for i, rows in enumerate(slices):
            # DDP averages gradients over ranks once, at the last slice.
            last = i == len(slices) - 1
            sync = self.ddp.no_sync() if self.ddp is not None and not last else nullcontext()
            if self.fsdp:
                self.model.set_requires_gradient_sync(last)
            with sync, self._autocast():
                part_soft = None if soft is None else tuple(None if t is None else t[rows] for t in soft)
                part_experts = experts[rows] if per_row else experts
                part = (self.token_nll(x[rows], y[rows], self.network, part_experts, part_soft) * m[rows]).sum()
                # Normalized by the whole global batch's tokens and scaled by the world size (DDP averages):
                # the summed gradient is that of the global batch's mean loss.
                (part / count * self.world_size).backward()
            loss_sum += part.detach()
        torch.nn.utils.clip_grad_norm_(self.parameters, self.optimizer_spec.clip_norm)
        self.optimizer.step()
        return float(all_reduce_sum(loss_sum) / count)

    @torch.no_grad()
    def nll(self, inputs: np.ndarray, targets: np.ndarray, mask: np.ndarray | None = None,
            expert: int | np.ndarray | None = None) -> tuple[float, int]:
        """Summed negative log-likelihood of the counted targets, and their number (no update)."""
        self.model.eval()
        inputs, targets, mask, expert, _ = rows_by_expert(inputs, targets, mask, expert, None)
        x, y, m = self._tensors(inputs, targets, mask)
        with self._autocast():
            return float((self.token_nll(x, y, expert=self._experts(expert)) * m).sum()), int(m.sum())

    def canonical_weights(self) -> dict[str, np.ndarray]:
        """The whole model's weights by canonical name. Under FSDP every rank must call it; rank 0 gets them."""
        if self.fsdp:
            return {name: tensor.float().numpy().copy() for name, tensor in gather_weights(self.model).items()}
        return self.model.canonical_weights()

    def load_canonical(self, weights: dict[str, np.ndarray]) -> None:
        if self.fsdp:
            scatter_weights(self.model, {name: torch.from_numpy(np.ascontiguousarray(a)) for name, a in weights.items()})
        else:
            self.model.load_canonical(weights)

    def optimizer_state(self) -> dict[str, np.ndarray]:
        """AdamW's moments under canonical names (NAME.exp_avg, NAME.exp_avg_sq) and the step count.
        Under FSDP every rank must call it; rank 0 gets the whole state."""
        out: dict[str, np.ndarray] = {}
        step = 0
        if self.fsdp:
            states = gather_optimizer_state(self.model, self.optimizer)
        else:
            states = {name: self.optimizer.state.get(p, {}) for name, p in self.model.named_parameters()}
        for name, state in states.items():
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
        # Fused AdamW (CUDA) keeps its step count beside the weights.
        step_device = self.device if self.optimizer.defaults.get("fused") else "cpu"
        restored = {}
        for name, parameter in self.model.named_parameters():
            if f"{name}.exp_avg" not in state:
                continue
            full = {"step": torch.tensor(float(step), device=step_device),
                    "exp_avg": torch.from_numpy(state[f"{name}.exp_avg"]),
                    "exp_avg_sq": torch.from_numpy(state[f"{name}.exp_avg_sq"])}
            if self.fsdp:
                restored[name] = full
            else:
                self.optimizer.state[parameter] = {**full, "exp_avg": full["exp_avg"].to(parameter),
                                                   "exp_avg_sq": full["exp_avg_sq"].to(parameter)}
        if self.fsdp:
            scatter_optimizer_state(self.model, self.optimizer, restored)
