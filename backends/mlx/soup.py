"""A soup of experts' modules in MLX, mirroring backends/torch/soup.py (pnlm/model/soup.py: the algebra and
the oracle): the coefficient network alpha(h), and SwiGLU matrices W(h) = S + sum_j alpha_j(h) E_j formed
once a batch."""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn

from pnlm.backends.mlx.cpu_ops import silu
from pnlm.model.spec import ModelSpec


class SoupCoefficients(nn.Module):
    """alpha(h) = out_proj(silu(in_proj(h))): the banks' coefficients (n,) for domain weights h (k,)."""

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        s = spec.soup
        self.in_proj = nn.Linear(s.k, s.hidden)
        self.out_proj = nn.Linear(s.hidden, s.banks)

    def __call__(self, h) -> mx.array:
        h = (h if isinstance(h, mx.array) else mx.array(h)).astype(self.in_proj.weight.dtype).reshape(-1)
        return self.out_proj(silu(self.in_proj(h)))


class SoupLinear(nn.Module):
    """A matrix W = S + sum_j alpha_j E_j: `weight` is S (the plain SLM's name), `bank` the E_j (n, out, in)."""

    def __init__(self, in_features: int, out_features: int, spec: ModelSpec) -> None:
        super().__init__()
        self.weight = mx.zeros((out_features, in_features))
        self.bank = mx.zeros((spec.soup.banks, out_features, in_features))

    def formed(self, alpha: mx.array) -> mx.array:
        return self.weight + mx.tensordot(alpha, self.bank, axes=1)


class SoupMLP(nn.Module):
    """SwiGLU whose three matrices are a soup's, for the batch's one alpha (every row shares the model for h)."""

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        self.gate_proj = SoupLinear(spec.d_model, spec.d_ff, spec)
        self.up_proj = SoupLinear(spec.d_model, spec.d_ff, spec)
        self.down_proj = SoupLinear(spec.d_ff, spec.d_model, spec)

    def __call__(self, x: mx.array, alpha: mx.array | None = None) -> mx.array:
        gate, up, down = (m.formed(alpha).astype(x.dtype) for m in (self.gate_proj, self.up_proj, self.down_proj))
        return (silu(x @ gate.T) * (x @ up.T)) @ down.T
