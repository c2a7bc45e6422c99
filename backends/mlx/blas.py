"""An optimized BLAS for MLX on Linux, found and loaded before `mlx.core` is imported.

The `mlx[cpu]` wheel for Linux links the reference (netlib) BLAS: its matrix products
are tens of times slower than an optimized one. MLX calls `cblas_sgemm`; the reference
`cblas_sgemm` is a thin wrapper over the Fortran `sgemm_` (the LAPACK calls are Fortran
symbols too). The dynamic linker looks symbols up in libraries loaded with RTLD_GLOBAL
before a library's own dependencies, so loading an optimized BLAS that way before
`mlx.core` sends those calls to it.

Where it comes from, first found wins:
1. `PNLM_BLAS=/path/to/libblas.so` (any library exporting `cblas_sgemm` or `sgemm_`);
   `PNLM_BLAS=off` keeps MLX's own.
2. PyTorch's `libtorch_cpu.so`, which carries Intel MKL (exports `sgemm_` and LAPACK):
   pnlm installs torch on Linux, so this is what users get without doing anything.
3. A system OpenBLAS or MKL (`libopenblas`, `libmkl_rt`).

On macOS MLX uses Accelerate and nothing is done.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import importlib.util
import os
import sys
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class BlasStatus:
    library: str | None
    reason: str


_status: BlasStatus | None = None


def _torch_library() -> Path | None:
    spec = importlib.util.find_spec("torch")
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / "lib" / "libtorch_cpu.so"
    return path if path.is_file() else None


def _candidates() -> list[tuple[str, str]]:
    found = []
    torch_lib = _torch_library()
    if torch_lib is not None:
        found.append((str(torch_lib), "Intel MKL inside PyTorch's libtorch_cpu.so"))
    for name in ("openblas", "mkl_rt"):
        system = ctypes.util.find_library(name)
        if system:
            found.append((system, f"system {name}"))
    return found


def _load_global(path: str) -> bool:
    try:
        library = ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
    except OSError:
        return False
    return hasattr(library, "cblas_sgemm") or hasattr(library, "sgemm_")


def ensure_fast_blas() -> BlasStatus:
    """Load an optimized BLAS globally, once, before MLX; return what was done and why."""
    global _status
    if _status is not None:
        return _status
    if not sys.platform.startswith("linux"):
        _status = BlasStatus(None, f"{sys.platform}: MLX uses the platform's BLAS")
    elif "mlx.core" in sys.modules:
        _status = BlasStatus(None, "mlx.core was imported before pnlm.backends.mlx; MLX keeps its reference BLAS "
                                   "(import pnlm.backends.mlx first, or set LD_PRELOAD)")
    else:
        requested = os.environ.get("PNLM_BLAS", "").strip()
        if requested.lower() == "off":
            _status = BlasStatus(None, "PNLM_BLAS=off: MLX's reference BLAS")
        elif requested:
            if not _load_global(requested):
                raise ImportError(f"PNLM_BLAS={requested}: cannot load it, or it exports neither cblas_sgemm nor sgemm_")
            _status = BlasStatus(requested, "PNLM_BLAS")
        else:
            _status = BlasStatus(None, "no optimized BLAS found: install torch (pip install 'pnlm[torch]') "
                                       "or set PNLM_BLAS to an OpenBLAS or MKL library")
            for path, reason in _candidates():
                if _load_global(path):
                    _status = BlasStatus(path, reason)
                    break
    return _status


def set_threads(threads: int) -> bool:
    """The threads the loaded BLAS uses for this thread's matrix products (MKL's mkl_set_num_threads_local,
    OpenBLAS's openblas_set_num_threads); False where the BLAS has no such call (Accelerate, the reference)."""
    status = ensure_fast_blas()
    if status.library is None:
        return False
    library = ctypes.CDLL(status.library)
    for name in ("mkl_set_num_threads_local", "openblas_set_num_threads"):
        setter = getattr(library, name, None)
        if setter is not None:
            setter(ctypes.c_int(threads))
            return True
    return False
