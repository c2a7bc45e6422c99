"""One optimizer step on PyTorch: cross-entropy, backward, clip, AdamW, split between the host (stage: a
batch made tensors, which may run ahead on another thread) and the device (step: never waits for it)."""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from torch.nn.parallel import DistributedDataParallel

from pnlm.backends.torch.distributed import (all_reduce_sum, gather_optimizer_state, gather_weights, init_distributed,
                                             rank_rows, scatter_optimizer_state, scatter_weights, shard_model)
from pnlm.backends.torch.model import ExpertGroups, Transformer
from pnlm.model.losses import DistillSpec
from pnlm.errors import BackendError
from pnlm.training.batches import Batch, micro_batch_rows
from pnlm.training.step import batch_arrays, check_precision
from pnlm.model.projection import rows_by_expert
from pnlm.model.soup import step_weights
from pnlm.model.spec import OptimizerSpec


@dataclass
class StagedBatch:
    """A batch as the host prepares it for a step (TrainStep.stage): this rank's rows as tensors, the global
    batch's target count, each micro-batch's rows [start, end) and experts, a teacher's soft targets."""

    inputs: torch.Tensor
    targets: torch.Tensor
    mask: torch.Tensor
    count: float
    bounds: list[tuple[int, int]]
    experts: list
    soft: tuple | None


class TrainStep:
    """precision "bfloat16" runs the forward and backward under autocast (weights, gradients and AdamW
    stay float32; under FSDP the gathered weights are bfloat16); compile: torch.compile each transformer
    block in place (canonical names kept; before DDP or FSDP wrap it, as torchtitan does). On CUDA, matrix
    products may use TF32."""

    def __init__(self, model: Transformer, optimizer: OptimizerSpec, precision: str = "float32",
                 compile: bool = False, fsdp: bool = False, distributed: bool = True,
                 loss: DistillSpec | None = None) -> None:
        self.model = model
        self.souped = model.spec.soup is not None  # `expert`: the soup's domain weights h for the whole batch
        self.loss = loss  # None: cross-entropy; a DistillSpec: distillation's (pnlm/model/losses.py)
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
        if compile:
            for block in model.model.layers:
                block.compile()
        if self.fsdp:
            if any(not p.requires_grad for p in model.parameters()):
                raise BackendError("FSDP here trains every weight; LoRA runs use DDP (leave out --fsdp)")
            shard_model(model, torch.bfloat16 if self.precision == "bfloat16" else None)
        # broadcast_buffers=False: the only buffers are RoPE's tables, equal on every rank; broadcasting them
        # would be one more collective per micro-batch.
        self.ddp = DistributedDataParallel(model, broadcast_buffers=False) \
            if self.world_size > 1 and not self.fsdp else None
        self.network = self.ddp or model
        self.parameters = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(
            self.parameters, lr=optimizer.lr, betas=(optimizer.beta1, optimizer.beta2), eps=optimizer.eps,
            weight_decay=optimizer.weight_decay, fused=True)
        self._reset_peak()

    @property
    def device_name(self) -> str:
        """What the cost accounting looks the peak FLOP/s up by (pnlm/training/cost.py)."""
        return torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else "cpu"

    @property
    def devices(self) -> int:
        return self.world_size

    @property
    def peak_device_bytes(self) -> int | None:
        """The most CUDA memory torch has held at once (None on the CPU: the host's peak counts it)."""
        return torch.cuda.max_memory_allocated(self.device) if self.device.type == "cuda" else None

    def _reset_peak(self) -> None:
        if self.device.type == "cuda":  # a run's own peak, not an earlier run's of this process (a mixture's experts)
            torch.cuda.reset_peak_memory_stats(self.device)

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.precision == "bfloat16")

    def set_lr(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def set_threads(self, threads: int) -> None:
        if self.device.type == "cpu":
            torch.set_num_threads(threads)

    @property
    def is_main(self) -> bool:
        """Whether this process writes checkpoints and metrics (rank 0)."""
        return self.rank == 0

    @torch.no_grad()
    def log_probs(self, inputs: np.ndarray, expert: int | np.ndarray | None = None) -> np.ndarray:
        """Next-token log-probabilities (batch, time, vocab), float32 (a teacher's)."""
        self.model.eval()
        x = self._on_device(self._host(inputs, np.int64))
        experts = None if expert is None else self._on_device(self._host(np.asarray(expert), np.asarray(expert).dtype))
        with self._autocast():
            logits = self.model(x, expert=experts).float()  # rows in their order: Routing groups and restores
        return F.log_softmax(logits, dim=-1).cpu().numpy()

    def stage(self, batch: Batch, micro_batches: int = 1) -> StagedBatch:
        """The host's share of a step, safe to run ahead on another thread (pnlm/training/prefetch.py): rows
        sorted by expert, this rank's rows, the micro-batches' bounds and experts, and tensors (pinned on
        CUDA, so that the copies to the GPU do not block)."""
        if self.souped:
            inputs, targets, mask, expert, soft = (batch.inputs, batch.targets, batch.mask,
                                                   step_weights(self.model.spec, batch.expert), batch.soft_targets)
        else:
            inputs, targets, mask, expert, soft = rows_by_expert(batch.inputs, batch.targets, batch.mask,
                                                                 batch.expert, batch.soft_targets)
        inputs, targets, mask = batch_arrays(inputs, targets, mask)
        count = float(mask.sum())  # the whole global batch's targets
        if self.world_size > 1:
            rows = rank_rows(len(inputs), self.rank, self.world_size)
            inputs, targets, mask = inputs[rows], targets[rows], mask[rows]
            expert = expert[rows] if np.ndim(expert) and not self.souped else expert
            soft = None if soft is None else tuple(None if t is None else t[rows] for t in soft)
        bounds = [(int(r[0]), int(r[-1]) + 1) for r in micro_batch_rows(len(inputs), micro_batches)] if len(
            inputs) else [(0, 0)]  # a rank without rows of a small evaluation batch still takes part (FSDP)
        experts = [self._host(expert, np.float32) if self.souped else self._host_experts(expert, start, end)
                   for start, end in bounds]
        soft = None if soft is None else tuple(None if t is None else self._host(t, np.int64 if i == 0 else np.float32)
                                               for i, t in enumerate(soft))
        return StagedBatch(self._host(inputs, np.int64), self._host(targets, np.int64), self._host(mask, np.float32),
                           count, bounds, experts, soft)

    def _host(self, array: np.ndarray, dtype) -> torch.Tensor:
        tensor = torch.from_numpy(np.ascontiguousarray(array, dtype=dtype))
        return tensor.pin_memory() if self.device.type == "cuda" else tensor

    def _host_experts(self, expert, start: int, end: int):
        """A micro-batch's experts, as the model takes them (backends/torch/model.py Routing.of)."""
        if expert is None:
            return None
        if np.ndim(expert) == 0 or np.asarray(expert).dtype.kind == "f":
            return self._host(np.asarray(expert), np.asarray(expert).dtype)
        present, sizes = np.unique(np.asarray(expert)[start:end], return_counts=True)  # rows sorted by expert
        if not len(present):  # a rank without rows of a small evaluation batch: any expert, on no rows
            present, sizes = np.zeros(1, np.int64), [0]
        return self._host(present, np.int64), [int(n) for n in sizes]

    def _on_device(self, tensor: torch.Tensor | None) -> torch.Tensor | None:
        return None if tensor is None else tensor.to(self.device, non_blocking=True)

    def _device_experts(self, expert):
        if isinstance(expert, tuple):
            return ExpertGroups(self._on_device(expert[0]), expert[1])
        return self._on_device(expert)

    def step(self, staged: StagedBatch) -> torch.Tensor:
        """One optimizer step on a staged batch; the loss before the update, on the device (reading it is
        the caller's choice: pnlm/training/loop.py waits for it only at log steps)."""
        self.model.train()
        x, y, m = (self._on_device(t) for t in (staged.inputs, staged.targets, staged.mask))
        soft = None if staged.soft is None else tuple(self._on_device(t) for t in staged.soft)
        scale = self.world_size / max(staged.count, 1.0)
        self.optimizer.zero_grad(set_to_none=True)
        loss_sum = torch.zeros((), device=self.device)
        for i, ((start, end), expert) in enumerate(zip(staged.bounds, staged.experts)):
            # DDP averages gradients over ranks once, at the last slice.
            last = i == len(staged.bounds) - 1
            sync = self.ddp.no_sync() if self.ddp is not None and not last else nullcontext()
            if self.fsdp:
                self.model.set_requires_gradient_sync(last)
            with sync:
                with self._autocast():  # the forward pass only: backward runs in the dtypes autocast chose
                    part_soft = None if soft is None else tuple(None if t is None else t[start:end] for t in soft)
                    part = self._loss_sum(x[start:end], y[start:end], m[start:end], self._device_experts(expert),
                                          part_soft, self.network)
                # Normalized by the whole global batch's tokens and scaled by the world size (DDP averages):
                # the summed gradient is that of the global batch's mean loss.
                (part * scale).backward()
            loss_sum += part.detach()
        torch.nn.utils.clip_grad_norm_(self.parameters, self.optimizer_spec.clip_norm, foreach=True)
        self.optimizer.step()
        return all_reduce_sum(loss_sum) / max(staged.count, 1.0)

    def to_floats(self, losses: list[torch.Tensor]) -> list[float]:
        """Device losses as numbers, in one copy to the host (where the loop waits for the device)."""
        return torch.stack(losses).to("cpu", torch.float64).numpy().tolist() if losses else []

    def __call__(self, inputs: np.ndarray, targets: np.ndarray, mask: np.ndarray | None = None,
                 micro_batches: int = 1, expert: int | np.ndarray | None = None,
                 soft_targets: tuple | None = None) -> float:
        """One optimizer step: pnlm.training.step.TrainStep.__call__."""
        return float(self.step(self.stage(Batch(inputs, targets, mask, expert, soft_targets), micro_batches)))

    @torch.no_grad()
    def nll(self, inputs: np.ndarray, targets: np.ndarray, mask: np.ndarray | None = None,
            expert: int | np.ndarray | None = None) -> tuple[float, int]:
        """Summed negative log-likelihood of the counted targets, and their number (no update). Under torchrun
        every rank computes its share of the rows, and every rank gets the whole batch's figures."""
        self.model.eval()
        staged = self.stage(Batch(inputs, targets, mask, expert))
        x, y, m = (self._on_device(t) for t in (staged.inputs, staged.targets, staged.mask))
        with self._autocast():
            total = self._loss_sum(x, y, m, self._device_experts(staged.experts[0]), None, self.model)
        return float(all_reduce_sum(total)), int(staged.count)

    def _loss_sum(self, x: torch.Tensor, y: torch.Tensor, m: torch.Tensor, expert, soft: tuple | None,
                  network: torch.nn.Module) -> torch.Tensor:
        """Σ mask · loss over a batch's targets: the chunked cross-entropy fused with the output layer
        (backends/torch/cross_entropy.py), or with a teacher the distillation loss of pnlm/model/losses.py."""
        if soft is None:
            return network(x, expert=expert, targets=y, token_weights=m)
        logits = network(x, expert=expert).float()
        nll = F.cross_entropy(logits.view(-1, logits.shape[-1]), y.reshape(-1), reduction="none").view(y.shape)
        indices, teacher_logprobs = soft
        alpha, temperature = self.loss.alpha, self.loss.temperature
        student = F.log_softmax(logits / temperature, dim=-1)
        if indices is not None:
            student = student.gather(-1, indices)
        tempered = F.log_softmax(teacher_logprobs / temperature, dim=-1)
        kl = (tempered.exp() * (tempered - student)).sum(-1)
        return (((1 - alpha) * nll + alpha * temperature ** 2 * kl) * m).sum()

    def canonical_weights(self) -> dict[str, np.ndarray]:
        """The whole model's weights by canonical name. Under FSDP every rank must call it; rank 0 gets them."""
        if self.fsdp:
            return {name: tensor.float().numpy().copy() for name, tensor in gather_weights(self.model).items()}
        return self.model.canonical_weights() if self.is_main else {}  # DDP's ranks hold the same weights

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
        elif not self.is_main:  # DDP's ranks hold the same state: rank 0 alone copies and writes it
            return {}
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
        # Fused AdamW keeps its step count beside the weights (on the GPU too: no host read per step).
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
