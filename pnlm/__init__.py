"""pnlm: small specialized language models, planned early (Grangier et al., arXiv 2402.01093).

The whole workflow is a function here, with a typed result; the command line and the experiment runner
are two callers of these functions:

    data      train_tokenizer, prepare, subset, cluster, assign           (pnlm/api/data.py)
    models    init, instantiate, fuse, export_hf, import_hf, export_mlx, export_peft, import_peft, info, load
                                                                         (pnlm/api/models.py)
    training  pretrain, finetune, distill, evaluate                        (pnlm/api/training.py)
    choosing  advise (a method for N domains, from an experiment's curves), experiment.run (the protocol)

`import pnlm` is light: each function imports its module on first use, and no backend is imported
before a model is built (torch for "torch"/"cuda", MLX for "mlx").
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "train_tokenizer": "pnlm.api.data", "prepare": "pnlm.api.data", "subset": "pnlm.api.data",
    "cluster": "pnlm.api.data", "assign": "pnlm.api.data", "ReadOptions": "pnlm.api.data",
    "init": "pnlm.api.models", "instantiate": "pnlm.api.models", "fuse": "pnlm.api.models",
    "export_hf": "pnlm.api.models", "import_hf": "pnlm.api.models",
    "export_peft": "pnlm.api.models", "import_peft": "pnlm.api.models", "export_mlx": "pnlm.api.models", "info": "pnlm.api.models",
    "pretrain": "pnlm.api.training", "finetune": "pnlm.api.training", "distill": "pnlm.api.training",
    "evaluate": "pnlm.api.training", "TrainingProgress": "pnlm.training.runs",
    "TensorBoardLog": "pnlm.training.metric_logs", "ProgressGroup": "pnlm.training.metric_logs", "TrainSummary": "pnlm.training.runs",
    "advise": "pnlm.experiment.advise", "METHODS": "pnlm.methods", "PnlmError": "pnlm.errors",
}


def load(path: str | Path, backend: str = "auto", dtype: str = "float32") -> Any:
    """Load a checkpoint (or LoRA adapters with their base, or a Hugging Face or MLX model folder) for
    inference: a model with `.generate(prompt, ...)` and `.logits(tokens)`.

    backend: "mlx" (Apple silicon, CPU elsewhere), "torch" (CPU), "cuda" (NVIDIA GPU), or "auto" (the
    default: cuda with an NVIDIA GPU, mlx on Apple silicon, torch elsewhere; mlx for a quantized MLX folder).
    """
    from pnlm.backend_loader import load_inference_model, resolve_backend
    from pnlm.checkpoints.model_folder import is_quantized_folder

    return load_inference_model(path, resolve_backend(backend, mlx_only=is_quantized_folder(path)), dtype)


def __getattr__(name: str) -> Any:
    if name == "experiment":
        return importlib.import_module("pnlm.experiment")
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'pnlm' has no attribute {name!r}")


__all__ = ["load", "experiment", "__version__", *_EXPORTS]
