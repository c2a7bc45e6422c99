"""Which torch device and dtype a backend name means, with a clear error where it is not there."""

from __future__ import annotations

import torch

from pnlm.errors import BackendError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(device: str) -> torch.device:
    if device == "cuda":
        if not torch.cuda.is_available():
            raise BackendError(f"backend 'cuda' needs an NVIDIA GPU and a CUDA build of PyTorch; this torch "
                               f"({torch.__version__}) sees no GPU. Use --backend torch (CPU) or --backend mlx")
        return torch.device("cuda")
    if device == "cpu":
        return torch.device("cpu")
    raise BackendError(f"unknown torch device {device!r}; expected cpu or cuda")


def resolve_dtype(dtype: str) -> torch.dtype:
    if dtype not in DTYPES:
        raise BackendError(f"unknown dtype {dtype!r}; expected one of {', '.join(DTYPES)}")
    return DTYPES[dtype]
