"""MLX backend: Apple silicon GPU, CPU elsewhere. On Linux an optimized BLAS is loaded first (see blas.py)."""

from pnlm.backends.mlx.blas import ensure_fast_blas

BLAS = ensure_fast_blas()
