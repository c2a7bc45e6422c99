"""pnlm: small specialized language models, planned early (Grangier et al., arXiv 2402.01093)."""

from __future__ import annotations

from pathlib import Path

__version__ = "0.1.0"


def load(path: str | Path, backend: str = "mlx", dtype: str = "float32"):
    """Load a checkpoint for inference: a model with `.generate(prompt, ...)` and `.logits(tokens)`.

    backend: "mlx" (Apple silicon, CPU elsewhere), "torch" (CPU) or "cuda" (NVIDIA GPU).
    """
    from pnlm.backends import load_inference_model

    return load_inference_model(path, backend, dtype)


__all__ = ["load", "__version__"]
