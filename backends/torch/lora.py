"""LoRA on PyTorch: adapted linear layers, mirroring backends/mlx/lora.py (the maths: pnlm/model/lora.py)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pnlm.model.lora import LoraSpec, adapted_layers, check_adapters


class LoRALinear(nn.Linear):
    """A frozen linear layer plus a trainable low-rank update: x Wᵀ + scale · (x Aᵀ) Bᵀ. A subclass of
    nn.Linear so that the base weight keeps its canonical name (….q_proj.weight)."""

    def __init__(self, base: nn.Linear, rank: int, scale: float) -> None:
        # On the meta device: no second copy of the weight is allocated and initialized, only to be replaced.
        super().__init__(base.in_features, base.out_features, bias=False, device="meta", dtype=base.weight.dtype)
        self.weight = base.weight
        self.weight.requires_grad_(False)
        self.lora_A = nn.Parameter(torch.zeros(rank, base.in_features, device=base.weight.device))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank, device=base.weight.device))
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        update = F.linear(F.linear(x, self.lora_A.to(x.dtype)), self.lora_B.to(x.dtype))
        return F.linear(x, self.weight) + self.scale * update


def apply_lora(model: nn.Module, lora: LoraSpec, adapters: dict[str, np.ndarray]) -> None:
    """Freeze every weight of model and replace its target layers by LoRALinear holding `adapters`."""
    check_adapters(adapters, model.spec, lora, "adapters")
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    for name in adapted_layers(model.spec, lora):
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        layer = LoRALinear(getattr(parent, child), lora.rank, lora.scale)
        setattr(parent, child, layer)
    model.load_adapters(adapters)

