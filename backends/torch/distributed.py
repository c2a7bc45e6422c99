"""Data parallelism under torchrun: DDP over gloo (CPU) or nccl (GPU). Apart from the model code.

Launched as `torchrun --standalone --nproc_per_node N -m pnlm.cli pretrain ...`, every rank builds
the same batch (the data order is a function of the step), trains on its share of the rows, and DDP
averages the gradients; the loss is normalized by the whole batch's token count so the update equals
one process's on the same global batch.
"""

from __future__ import annotations

import os

import numpy as np
import torch
import torch.distributed as dist


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_distributed(device: torch.device) -> tuple[int, int]:
    """(rank, world size); starts the process group once when launched by torchrun, else (0, 1)."""
    if not launched_by_torchrun():
        return 0, 1
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return dist.get_rank(), dist.get_world_size()


def local_device(device: torch.device) -> torch.device:
    """On a multi-GPU machine, each rank takes the GPU of its LOCAL_RANK."""
    if device.type == "cuda" and launched_by_torchrun():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device


def rank_rows(batch_size: int, rank: int, world: int) -> np.ndarray:
    """The rows of a global batch this rank trains on (contiguous, as even as possible)."""
    return np.array_split(np.arange(batch_size), world)[rank]


def all_reduce_sum(value: torch.Tensor) -> torch.Tensor:
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
    return value
