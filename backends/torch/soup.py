"""A soup of experts' modules in torch (pnlm/model/soup.py: the algebra and the oracle): the coefficient
network alpha(h), and SwiGLU matrices W(h) = S + sum_j alpha_j(h) E_j formed once a batch."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pnlm.model.spec import ModelSpec


class SoupCoefficients(nn.Module):
    """alpha(h) = out_proj(silu(in_proj(h))): the banks' coefficients (n,) for domain weights h (k,)."""

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        s = spec.soup
        self.in_proj = nn.Linear(s.k, s.hidden)
        self.out_proj = nn.Linear(s.hidden, s.banks)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        h = torch.as_tensor(h, device=self.in_proj.weight.device).to(self.in_proj.weight.dtype).reshape(-1)
        return self.out_proj(F.silu(self.in_proj(h)))


class SoupLinear(nn.Module):
    """A matrix W = S + sum_j alpha_j E_j: `weight` is S (the plain SLM's name), `bank` the E_j (n, out, in)."""

    def __init__(self, in_features: int, out_features: int, spec: ModelSpec) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        self.bank = nn.Parameter(torch.empty(spec.soup.banks, out_features, in_features))

    def formed(self, alpha: torch.Tensor) -> torch.Tensor:
        return self.weight + torch.tensordot(alpha, self.bank, dims=1)


class SoupMLP(nn.Module):
    """SwiGLU whose three matrices are a soup's, for the batch's one alpha (every row shares the model for h)."""

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        self.gate_proj = SoupLinear(spec.d_model, spec.d_ff, spec)
        self.up_proj = SoupLinear(spec.d_model, spec.d_ff, spec)
        self.down_proj = SoupLinear(spec.d_ff, spec.d_model, spec)

    def forward(self, x: torch.Tensor, alpha: torch.Tensor | None = None) -> torch.Tensor:
        gate, up, down = (m.formed(alpha).to(x.dtype) for m in (self.gate_proj, self.up_proj, self.down_proj))
        return F.linear(F.silu(F.linear(x, gate)) * F.linear(x, up), down)
