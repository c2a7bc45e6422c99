"""Will it fit? The memory a command needs, estimated from the spec before anything is allocated, against
the memory this machine has free: a model that cannot fit is refused in one line with both figures,
instead of growing for minutes and dying in a MemoryError or the kernel's OOM killer.

The estimate counts float32 weights, their gradients and AdamW's two moments (for the weights that train),
the numpy copy the weights are built or read in, the activations a micro-batch keeps for the backward
pass, and the numpy copy of weights and moments a checkpoint save gathers. It is an estimate, close enough to refuse what is far out of reach (a spec within the
bounds can need terabytes), not a promise that what passes fits: the refusal fires only above what is free.
"""

from __future__ import annotations

import math
import os
import sys
from dataclasses import astuple, dataclass
from pathlib import Path

from pnlm.errors import PnlmError
from pnlm.model.spec import ModelSpec

FLOAT32 = 4
GIB = 1 << 30


@dataclass(frozen=True)
class MemoryEstimate:
    weights: int  # the model, float32
    host_copy: int  # the numpy weights the model is built from (freed once loaded)
    training_state: int  # gradients and AdamW's moments of what trains
    activations: int  # what one micro-batch keeps for the backward pass
    checkpoint_copy: int = 0  # a save gathers the weights and AdamW's moments into numpy

    @property
    def total(self) -> int:
        return self.weights + self.host_copy + self.training_state + self.activations + self.checkpoint_copy

    def __add__(self, other: "MemoryEstimate") -> "MemoryEstimate":
        return MemoryEstimate(*(a + b for a, b in zip(astuple(self), astuple(other))))

    def describe(self) -> str:
        parts = [("weights", self.weights), ("host copy", self.host_copy),
                 ("gradients and AdamW", self.training_state), ("activations", self.activations),
                 ("checkpoint copy", self.checkpoint_copy)]
        return ", ".join(f"{name} {size / GIB:.1f}" for name, size in parts if size)


def activation_bytes(spec: ModelSpec, rows: int, context: int) -> int:
    """What the backward pass keeps per micro-batch: per layer and token the norms' inputs, q, k, v, the
    attention output and its scores, the MLP's gate, up, product and output; then the logits and their gradient."""
    kv = spec.n_kv_heads * spec.head_dim
    per_token_layer = 4 * spec.d_model + 2 * kv + 4 * spec.d_ff + spec.n_heads * context
    return FLOAT32 * rows * context * (spec.n_layers * per_token_layer + 3 * spec.vocab_size)


def training_estimate(spec: ModelSpec, rows: int, context: int, trainable: int | None = None,
                      shards: int = 1, loaded: bool = False) -> MemoryEstimate:
    """rows × context tokens per micro-batch; trainable: the parameters that train (LoRA: the adapters; 0: a
    model that only runs, a teacher; default: all); shards: processes a sharded (FSDP) model is split over;
    loaded: the numpy weights are in memory already (read from a checkpoint), so not counted again."""
    params = spec.params_pretrain()
    trainable = params if trainable is None else trainable
    saved = FLOAT32 * (params + 2 * trainable) if trainable else 0
    return MemoryEstimate(FLOAT32 * params // shards, 0 if loaded else FLOAT32 * params,
                          3 * FLOAT32 * trainable // shards, activation_bytes(spec, rows, context), saved)


def init_estimate(spec: ModelSpec) -> MemoryEstimate:
    """`pnlm init`: the weights, built one tensor at a time in numpy (one tensor's temporary beside them)."""
    from pnlm.checkpoints.weights import canonical_shapes

    largest = max(math.prod(shape) for shape in canonical_shapes(spec).values())
    return MemoryEstimate(FLOAT32 * spec.params_pretrain(), FLOAT32 * largest, 0, 0)


def available_bytes() -> int | None:
    """Memory this process can still take: Linux's MemAvailable, capped by a cgroup limit; elsewhere the
    physical memory (macOS's unified memory serves MLX too). None when the system does not say."""
    limit = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                limit = int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        cgroup = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        used = int(Path("/sys/fs/cgroup/memory.current").read_text())
        if cgroup != "max":
            limit = min(limit or 1 << 62, int(cgroup) - used)
    except (OSError, ValueError):
        pass
    if limit is None and sys.platform != "win32":
        try:
            limit = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (ValueError, OSError):
            return None
    return limit


def device_available_bytes(backend: str) -> int | None:
    """Free memory of the CUDA device a cuda backend trains on (None for the others: they use host memory)."""
    if backend != "cuda":
        return None
    from pnlm.backend_loader import cuda_free_bytes

    return cuda_free_bytes()


def check_fits(estimate: MemoryEstimate, what: str, backend: str = "torch", advice: str = "") -> None:
    """Refuse, with the estimate and what is free, a command whose model cannot fit in this machine's memory
    (for cuda: the weights, training state and activations in the GPU's; the numpy copies, the host copy and
    a save's, in the host's)."""
    device_free = device_available_bytes(backend)
    host = estimate.host_copy + estimate.checkpoint_copy
    if device_free is None:
        checks = [(estimate.total, available_bytes(), "this machine")]
    else:
        checks = [(estimate.total - host, device_free, "the GPU"), (host, available_bytes(), "this machine")]
    for needed, free, where in checks:
        if free is not None and needed > free:
            raise PnlmError(f"{what} needs about {needed / GIB:.1f} GiB ({estimate.describe()} GiB); {where} has "
                            f"{free / GIB:.1f} GiB free{'; ' + advice if advice else ''}")


MIB = 1 << 20


def peak_host_bytes() -> int:
    """This process's peak resident memory so far (the kernel's count: ru_maxrss, KiB on Linux, bytes on macOS)."""
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def peak_memory_record(device_bytes: int | None) -> dict[str, float]:
    """The peaks a log line and a run summary carry, in MiB: the host's, and the device's where it has its own
    memory (CUDA, Metal; a CPU run's memory is the host's)."""
    record = {"peak_host_mib": round(peak_host_bytes() / MIB, 1)}
    if device_bytes is not None:
        record["peak_device_mib"] = round(device_bytes / MIB, 1)
    return record
