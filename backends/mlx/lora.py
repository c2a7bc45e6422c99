"""LoRA on MLX: adapted linear layers, mirroring backends/torch/lora.py (the maths: pnlm/model/lora.py)."""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from pnlm.model.lora import LoraSpec, adapted_layers, check_adapters


class LoRALinear(nn.Linear):
    """A frozen linear layer plus a trainable low-rank update: x Wᵀ + scale · (x Aᵀ) Bᵀ. A subclass of
    nn.Linear so that the base weight keeps its canonical name (….q_proj.weight)."""

    def __init__(self, base: nn.Linear, rank: int, scale: float) -> None:
        out_features, in_features = base.weight.shape
        super().__init__(in_features, out_features, bias=False)
        self.weight = base.weight
        self.lora_A = mx.zeros((rank, in_features))
        self.lora_B = mx.zeros((out_features, rank))
        self.scale = scale
        self.freeze(keys=["weight"])

    def __call__(self, x: mx.array) -> mx.array:
        update = (x @ self.lora_A.astype(x.dtype).T) @ self.lora_B.astype(x.dtype).T
        return x @ self.weight.T + self.scale * update


def apply_lora(model: nn.Module, lora: LoraSpec, adapters: dict[str, np.ndarray]) -> None:
    """Freeze every weight of model and replace its target layers by LoRALinear holding `adapters`."""
    check_adapters(adapters, model.spec, lora, "adapters")
    model.freeze()
    modules = dict(model.named_modules())
    for name in adapted_layers(model.spec, lora):
        parent_name, _, child = name.rpartition(".")
        parent = modules[parent_name]
        setattr(parent, child, LoRALinear(getattr(parent, child), lora.rank, lora.scale))
    model.load_adapters(adapters)

