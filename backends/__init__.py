"""Backends: one folder each, with the same file and class names (model, inference, train_step)."""

from __future__ import annotations

import sys

from pnlm.cpu_threads import cpu_threads
from pnlm.errors import BackendError

BACKENDS = ("torch", "cuda", "mlx")


def _use_free_cores(backend: str) -> None:
    """CPU backends get as many threads as cores are free now (pnlm/cpu_threads.py), before their framework
    starts its thread pools; a torch imported earlier (whose MKL also does MLX's matrix products) is told too."""
    threads = cpu_threads() if backend in ("torch", "mlx") else None
    if threads and "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(threads)


def load_inference_model(path, backend: str, dtype: str = "float32"):
    """Import only the backend asked for, so a torch user needs no MLX and the reverse."""
    _use_free_cores(backend)
    if backend in ("torch", "cuda"):
        try:
            from pnlm.backends.torch.inference import InferenceModel
        except ImportError as exc:
            raise BackendError(f"backend {backend!r} needs PyTorch: pip install 'pnlm[torch]' ({exc})") from None
        return InferenceModel.from_checkpoint(path, device="cuda" if backend == "cuda" else "cpu", dtype=dtype)
    if backend == "mlx":
        try:
            from pnlm.backends.mlx.inference import InferenceModel
        except ImportError as exc:
            raise BackendError(f"backend 'mlx' needs MLX: pip install 'pnlm[mlx]' ({exc})") from None
        return InferenceModel.from_checkpoint(path, dtype=dtype)
    raise BackendError(f"unknown backend {backend!r}; expected one of {', '.join(BACKENDS)}")


def require_backend(backend: str) -> None:
    if backend in ("torch", "cuda"):
        try:
            from pnlm.backends.torch.device import resolve_device
        except ImportError as exc:
            raise BackendError(f"backend {backend!r} needs PyTorch: pip install 'pnlm[torch]' ({exc})") from None
        resolve_device("cuda" if backend == "cuda" else "cpu")
    elif backend == "mlx":
        try:
            import pnlm.backends.mlx  # noqa: F401  (its BLAS first, then MLX)
            import mlx.core  # noqa: F401
        except ImportError as exc:
            raise BackendError(f"backend 'mlx' needs MLX: pip install 'pnlm[mlx]' ({exc})") from None
    else:
        raise BackendError(f"unknown backend {backend!r}; expected auto or one of {', '.join(BACKENDS)}")


def torchrun_group():
    """This torchrun job's ranks as pnlm.clustering.ranks.Ranks (backends/torch/distributed.py, over gloo)."""
    try:
        from pnlm.backends.torch.distributed import TorchrunGroup
    except ImportError as exc:
        raise BackendError(f"a torchrun job needs PyTorch: pip install 'pnlm[torch]' ({exc})") from None
    return TorchrunGroup.current()


def load_sentence_encoder(backend: str, folder: str, precision: str):
    """The clusters' embedder on a backend: torch (CPU), cuda (this rank's GPU) or mlx (Apple silicon's GPU,
    the CPU elsewhere); the same class, SentenceEncoder, in backends/torch/embedder.py and backends/mlx/embedder.py."""
    _use_free_cores(backend)
    if backend in ("torch", "cuda"):
        try:
            from pnlm.backends.torch.embedder import SentenceEncoder
        except ImportError as exc:
            raise BackendError(f"backend {backend!r} needs PyTorch: pip install 'pnlm[torch]' ({exc})") from None
        return SentenceEncoder(folder, precision, device="cuda" if backend == "cuda" else "cpu")
    if backend == "mlx":
        try:
            from pnlm.backends.mlx.embedder import SentenceEncoder
        except ImportError as exc:
            raise BackendError(f"backend 'mlx' needs MLX: pip install 'pnlm[mlx]' ({exc})") from None
        return SentenceEncoder(folder, precision)
    raise BackendError(f"unknown backend {backend!r}; expected one of {', '.join(BACKENDS)}")


def make_train_step(backend: str, spec, weights, optimizer, precision: str = "float32", lora=None, adapters=None,
                    compile: bool = False, fsdp: bool = False, distributed: bool = True, loss=None):
    """A backend's model, loaded with canonical weights (and LoRA adapters when lora is given: then only
    the adapters train), and its train step (see pnlm/training/step.py). compile: torch.compile (torch only;
    MLX's step is always compiled); fsdp: shard the model under torchrun (torch only); distributed=False:
    train alone even under torchrun (a mixture's experts); loss: what the step minimizes, cross-entropy (None)
    or distillation's (a pnlm.model.losses.DistillSpec, for a student's step)."""
    _use_free_cores(backend)
    if backend in ("torch", "cuda"):
        try:
            import torch

            from pnlm.backends.torch.device import resolve_device
            from pnlm.backends.torch.distributed import local_device
            from pnlm.backends.torch.lora import apply_lora
            from pnlm.backends.torch.model import Transformer
            from pnlm.backends.torch.train_step import TrainStep
        except ImportError as exc:
            raise BackendError(f"backend {backend!r} needs PyTorch: pip install 'pnlm[torch]' ({exc})") from None
        with torch.device(local_device(resolve_device("cuda" if backend == "cuda" else "cpu"))):
            model = Transformer(spec)
        options = {"compile": compile, "fsdp": fsdp, "distributed": distributed}
    elif backend == "mlx":
        try:
            from pnlm.backends.mlx.lora import apply_lora
            from pnlm.backends.mlx.model import Transformer
            from pnlm.backends.mlx.train_step import TrainStep
        except ImportError as exc:
            raise BackendError(f"backend 'mlx' needs MLX: pip install 'pnlm[mlx]' ({exc})") from None
        if fsdp:
            raise BackendError("--fsdp shards a model over torchrun processes: torch backends only")
        model = Transformer(spec)
        options = {}
    else:
        raise BackendError(f"unknown backend {backend!r}; expected one of {', '.join(BACKENDS)}")
    model.load_canonical(weights)
    if lora is not None:
        apply_lora(model, lora, adapters)
    return TrainStep(model, optimizer, precision=precision, loss=loss, **options)


def convert_to_mlx(hf_folder, out, bits: int | None, group_size: int) -> None:
    """mlx-lm's conversion of a Hugging Face folder into an MLX one, quantized when bits is given."""
    try:
        from pnlm.backends.mlx.quantized import convert
    except ImportError as exc:
        raise BackendError(f"--format mlx needs MLX and mlx-lm: pip install 'pnlm[mlx]' ({exc})") from None
    convert(hf_folder, out, bits, group_size)
