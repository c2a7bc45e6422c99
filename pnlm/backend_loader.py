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


@lru_cache(maxsize=2)
def load_sentence_embedder(path: str, precision: str) -> Any:
    """A sentence-transformers model (the clusters' embedder) on the CPU, offline, in float32 or bfloat16."""
    # Set before sentence-transformers (and with it huggingface_hub) is imported: never reach the network.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        from sentence_transformers import SentenceTransformer
        from transformers.utils import logging as hf_logging
    except ImportError:
        raise BackendError("embedding windows needs sentence-transformers (pip install 'pnlm[data]')") from None
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    try:
        import torch

        from pnlm.cpu_threads import cpu_threads

        threads = cpu_threads()
        if threads:
            torch.set_num_threads(threads)
        dtype = torch.bfloat16 if precision == "bfloat16" else torch.float32
        return SentenceTransformer(path, device="cpu", model_kwargs={"torch_dtype": dtype})
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise InputError(f"{path}: cannot load the sentence-transformers model: {str(exc).splitlines()[0]}") from None
