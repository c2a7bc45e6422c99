"""Data parallelism under torchrun: DDP over gloo (CPU) or nccl (GPU). Apart from the model code.

Launched as `torchrun --standalone --nproc_per_node N -m pnlm.cli pretrain ...`, every rank builds
the same batch (the data order is a function of the step), trains on its share of the rows, and DDP
averages the gradients; the loss is normalized by the whole batch's token count so the update equals
one process's on the same global batch.
"""

from __future__ import annotations

import atexit
import os
import signal
import threading
from datetime import timedelta
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from pnlm.errors import PnlmError

BARRIER_S = 60.0  # how long a finishing rank waits for the others at exit
# How long a rank waits for the others at a step they all take (embedding's end, k-means on rank 0): long
# enough for rank 0's k-means at the paper's scale; a rank that dies breaks the wait at once.
GROUP_TIMEOUT = timedelta(hours=12)


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_distributed(device: torch.device) -> tuple[int, int]:
    """(rank, world size); starts the process group once when launched by torchrun, else (0, 1)."""
    if not launched_by_torchrun():
        return 0, 1
    if not dist.is_initialized():
        if device.type == "cuda":
            # Each rank on its own GPU before the group starts: NCCL's communicators, barriers and every
            # tensor made without a device index would otherwise land on cuda:0 from every rank.
            torch.cuda.set_device(device)
            # NCCL refuses two ranks on one GPU; gloo takes them (slowly): PNLM_DISTRIBUTED_BACKEND=gloo
            # tests data parallelism on a one-GPU machine (bench/gpu_check.sh).
            if os.environ.get("PNLM_DISTRIBUTED_BACKEND", "nccl") == "gloo":
                dist.init_process_group("gloo")
            else:
                dist.init_process_group("nccl", device_id=device)
        else:
            dist.init_process_group("gloo")
        # Left to the interpreter's teardown, the group's threads can abort a rank on exit
        # ("terminate called without an active exception"): close it first.
        atexit.register(_close_process_group)
    return dist.get_rank(), dist.get_world_size()


def _close_process_group() -> None:
    if not dist.is_initialized():
        return
    # Every rank reaches here before any tears the group down: a rank that left first aborted while
    # another still had gloo traffic in flight (rank 0 finishing its checkpoint's collectives). A rank
    # that fails (a clear error, sys.exit(2)) meets no one while the others wait in a collective: it waits
    # BARRIER_S at most, then exits without the teardown, and torchrun stops the job.
    met = threading.Event()

    def meet() -> None:
        try:
            dist.barrier()
            met.set()
        except RuntimeError:  # a peer already gone (killed): nothing left to wait for
            pass

    waiter = threading.Thread(target=meet, daemon=True)
    waiter.start()
    waiter.join(BARRIER_S)
    if met.is_set():
        dist.destroy_process_group()


def local_device(device: torch.device) -> torch.device:
    """On a multi-GPU machine, each rank takes the GPU of its LOCAL_RANK (more ranks than GPUs share them)."""
    if device.type == "cuda" and launched_by_torchrun():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count())
    return device


def rank_rows(batch_size: int, rank: int, world: int) -> np.ndarray:
    """The rows of a global batch this rank trains on (contiguous, as even as possible)."""
    return np.array_split(np.arange(batch_size), world)[rank]


def all_reduce_sum(value: torch.Tensor) -> torch.Tensor:
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
    return value


def shard_model(model: torch.nn.Module, compute_dtype: torch.dtype | None = None) -> None:
    """FSDP (fully_shard, FSDP2): every block's weights, gradients and AdamW moments are split over the
    ranks and gathered block by block for the forward and backward passes; the root takes the rest
    (embeddings, shared with the output layer, and the final norm). compute_dtype (bfloat16): the weights
    are gathered in it (half the traffic) and the gradients reduced in float32."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    policy = MixedPrecisionPolicy(param_dtype=compute_dtype, reduce_dtype=torch.float32) if compute_dtype else None
    options = {"mp_policy": policy} if policy else {}
    for block in model.model.layers:
        fully_shard(block, **options)
    fully_shard(model, **options)


def _full_options(**kwargs):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, **kwargs)


def gather_weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The whole (unsharded) weights on rank 0, on the CPU; {} on the other ranks. Every rank must call it."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    return get_model_state_dict(model, options=_full_options(cpu_offload=True))


def scatter_weights(model: torch.nn.Module, weights: dict[str, torch.Tensor]) -> None:
    """Load whole weights (every rank holds them) into a sharded model."""
    from torch.distributed.checkpoint.state_dict import set_model_state_dict

    set_model_state_dict(model, weights, options=_full_options())


def gather_optimizer_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, dict]:
    """AdamW's per-parameter state by canonical name, whole, on rank 0; {} elsewhere. Every rank must call it."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    return get_optimizer_state_dict(model, optimizer, options=_full_options(cpu_offload=True)).get("state", {})


def scatter_optimizer_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                            state: dict[str, dict[str, torch.Tensor]]) -> None:
    """Load whole per-parameter AdamW state (every rank holds it) into the optimizer of a sharded model."""
    from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

    names = {parameter: name for name, parameter in model.named_parameters()}
    groups = [{**{k: v for k, v in group.items() if k != "params"}, "params": [names[p] for p in group["params"]]}
              for group in optimizer.param_groups]
    set_optimizer_state_dict(model, optimizer, {"state": state, "param_groups": groups}, options=_full_options())


class RankStopped(PnlmError):
    """This rank was stopped because another rank of its torchrun job failed."""


class TorchrunGroup:
    """pnlm.clustering.ranks.Ranks for the ranks of a torchrun job, over gloo (small messages: decisions,
    chunk lists, labels), whatever device the ranks compute on. A peer that dies, or torchrun's SIGTERM
    once one has, stops this rank with one line; what it has finished is kept."""

    _current: "TorchrunGroup | None" = None

    @classmethod
    def current(cls) -> "TorchrunGroup":
        if cls._current is None:
            cls._current = cls()
        return cls._current

    def __init__(self) -> None:
        self._owns_world = not dist.is_initialized()
        if self._owns_world:
            dist.init_process_group("gloo", timeout=GROUP_TIMEOUT)
            atexit.register(_close_process_group)
            self._group = None
        else:  # a group already started (nccl for training): a gloo one beside it for objects
            self._group = dist.new_group(backend="gloo", timeout=GROUP_TIMEOUT)
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        signal.signal(signal.SIGTERM, self._stopped_by_torchrun)

    def _stopped_by_torchrun(self, signum: int, frame: Any) -> None:
        raise RankStopped(f"rank {self.rank}: stopped by torchrun, another rank of the job failed (its error is "
                          "above); what was finished is kept: run the same command again to continue")

    def _collective(self, call, *args: Any, **kwargs: Any) -> Any:
        try:
            return call(*args, group=self._group, **kwargs)
        except (RuntimeError, dist.DistError) as exc:
            raise RankStopped(f"rank {self.rank}: another rank of this torchrun job stopped "
                              f"({str(exc).splitlines()[0][:200]}); what was finished is kept: run the same "
                              "command again to continue") from None

    def barrier(self) -> None:
        self._collective(dist.barrier)

    def close(self) -> None:
        """Once every rank is done: the group torn down while the interpreter is whole (gloo's threads left to
        the interpreter's exit can abort a rank that has finished its work)."""
        self.barrier()
        if self._owns_world and dist.is_initialized():
            dist.destroy_process_group()
        elif self._group is not None:
            dist.destroy_process_group(self._group)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        TorchrunGroup._current = None

    def broadcast(self, value: Any) -> Any:
        box = [value if self.rank == 0 else None]
        self._collective(dist.broadcast_object_list, box, src=0)
        return box[0]

    def gather(self, value: Any) -> list[Any]:
        out = [None] * self.world if self.rank == 0 else None
        self._collective(dist.gather_object, value, out, dst=0)
        return out if out is not None else []
