"""The one place the backend-agnostic core reaches a framework, lazily: the backends (pnlm.backends: a
train step, an inference model, mlx-lm's conversion), the CUDA device's free memory, and the sentence-transformers model that
embeds windows for clustering. `import pnlm` needs neither torch nor MLX, and a torch user needs no MLX
(and the reverse). import-linter holds every other core module to never importing them (.importlinter).
"""

from __future__ import annotations

import os
from functools import lru_cache
from typing import Any

from pnlm.errors import BackendError, InputError


def resolve_backend(backend: str, mlx_only: bool = False) -> str:
    """pnlm's one rule for a default backend, "auto": cuda where torch sees an NVIDIA GPU, mlx on Apple silicon
    (its GPU), torch elsewhere (the CPU); a model only MLX runs (a quantized MLX folder: mlx_only) gets mlx.
    Any other name is returned as it is (the backends check it)."""
    import importlib.util
    import platform
    import sys

    if backend != "auto":
        return backend
    has_mlx = importlib.util.find_spec("mlx") is not None
    if has_mlx and (mlx_only or (sys.platform == "darwin" and platform.machine() == "arm64")):
        return "mlx"
    problem = "not installed"
    if importlib.util.find_spec("torch") is not None:
        try:
            import torch

            return "cuda" if torch.cuda.is_available() else "torch"
        except (ImportError, OSError) as exc:  # installed but broken (a missing library, a CUDA mismatch)
            problem = f"installed but cannot be imported ({str(exc).splitlines()[0]})"
    if has_mlx:
        return "mlx"
    raise BackendError(f"no backend to run on: torch is {problem} and MLX is not installed "
                       f"(pip install 'pnlm[torch]' or 'pnlm[mlx]')"[:500])


def require_backend(backend: str) -> None:
    """Refuse, with one line, a backend this machine cannot run (cuda without an NVIDIA GPU, an uninstalled
    framework) before anything is read or written."""
    from pnlm.backends import require_backend as require

    require(backend)


def make_train_step(backend: str, spec: Any, weights: Any, optimizer: Any, **options: Any) -> Any:
    """A backend's model loaded with canonical weights, and its train step (pnlm.backends.make_train_step)."""
    from pnlm.backends import make_train_step as make

    return make(backend, spec, weights, optimizer, **options)


def load_inference_model(path: Any, backend: str, dtype: str = "float32") -> Any:
    """A checkpoint loaded for generation on a backend (pnlm.backends.load_inference_model)."""
    from pnlm.backends import load_inference_model as load

    return load(path, backend, dtype)


def convert_to_mlx(hf_folder: Any, out: Any, bits: int | None, group_size: int) -> None:
    """mlx-lm's conversion of a Hugging Face folder into an MLX one (pnlm.backends.convert_to_mlx)."""
    from pnlm.backends import convert_to_mlx as convert

    convert(hf_folder, out, bits, group_size)


def cuda_free_bytes() -> int | None:
    """Free memory of the CUDA device torch trains on; None without torch or a GPU."""
    try:
        import torch

        if torch.cuda.is_available():
            return int(torch.cuda.mem_get_info()[0])
    except (ImportError, RuntimeError):
        return None
    return None


def native_bfloat16() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX-512 BF16 or AMX), where it embeds about twice as fast."""
    try:
        import torch

        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (ImportError, AttributeError, RuntimeError):
        return False


def default_embedding_precision(backend: str) -> str:
    """What windows are embedded in by default: bfloat16 on a GPU (CUDA, Apple silicon's through MLX) and on
    a CPU that computes it natively, float32 elsewhere (MLX on a CPU among them)."""
    import platform
    import sys

    if backend == "cuda":
        return "bfloat16"
    if backend == "mlx":
        return "bfloat16" if sys.platform == "darwin" and platform.machine() == "arm64" else "float32"
    return "bfloat16" if native_bfloat16() else "float32"


@lru_cache(maxsize=2)
def load_sentence_encoder(backend: str, folder: str, precision: str) -> Any:
    """The embedder's model on a backend (torch: CPU; cuda: this rank's GPU; mlx): a SentenceEncoder of
    pnlm.backends, with .dim, .max_seq_length, .pad_id, .batch_size(requested) and .encode(batches)."""
    from pnlm.backends import load_sentence_encoder as load

    return load(backend, folder, precision)


def torchrun_group() -> Any:
    """The ranks of this torchrun job as a pnlm.clustering.ranks.Ranks (over gloo)."""
    from pnlm.backends import torchrun_group as group

    return group()
