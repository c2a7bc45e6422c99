"""The Llama-style transformer in PyTorch. Module names are the canonical (Hugging Face Llama) names,
so `state_dict()` is the canonical weight dict."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pnlm.backends.torch.cross_entropy import linear_cross_entropy
from pnlm.model.lora import ADAPTER_SUFFIXES
from pnlm.model.rope import scaled_frequencies
from pnlm.backends.torch.soup import SoupCoefficients, SoupMLP
from pnlm.model.spec import ModelSpec


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The statistics in float32, the result in the stream's dtype: under bfloat16 autocast the weight
        # (float32, as every master weight) would otherwise promote the whole residual stream to float32.
        x32 = x.float()
        normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return normed.to(x.dtype) * self.weight.to(x.dtype)


class RotaryEmbedding(nn.Module):
    """Rotate-half RoPE: cos and sin tables for every position of the context."""

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        dims = spec.head_dim
        inv_freq = 1.0 / (spec.rope_theta ** (torch.arange(0, dims, 2, dtype=torch.float32) / dims))
        if spec.rope_scaling is not None:  # Llama 3's, from the numpy oracle
            inv_freq = torch.from_numpy(scaled_frequencies(inv_freq.cpu().numpy(), spec)).to(inv_freq.device)
        angles = torch.outer(torch.arange(spec.context, dtype=torch.float32), inv_freq)
        angles = torch.cat([angles, angles], dim=-1)
        self.register_buffer("cos", angles.cos(), persistent=False)
        self.register_buffer("sin", angles.sin(), persistent=False)

    def forward(self, x: torch.Tensor, offset: int) -> torch.Tensor:
        length = x.shape[-2]
        cos = self.cos[offset:offset + length].to(x.dtype)
        sin = self.sin[offset:offset + length].to(x.dtype)
        half = x.shape[-1] // 2
        rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
        return x * cos + rotated * sin


class KVCache:
    """Preallocated keys and values of one sequence, for every layer."""

    def __init__(self, spec: ModelSpec, max_length: int, batch: int, device, dtype) -> None:
        shape = (batch, spec.n_kv_heads, max_length, spec.head_dim)
        self.keys = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(spec.n_layers)]
        self.values = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(spec.n_layers)]
        self.offset = 0

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        end = self.offset + k.shape[2]
        self.keys[layer][:, :, self.offset:end] = k
        self.values[layer][:, :, self.offset:end] = v
        return self.keys[layer][:, :, :end], self.values[layer][:, :, :end]


class Attention(nn.Module):
    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = spec.n_heads, spec.n_kv_heads, spec.head_dim
        d, kv = spec.d_model, spec.n_kv_heads * spec.head_dim
        self.q_proj = nn.Linear(d, d, bias=False)
        self.k_proj = nn.Linear(d, kv, bias=False)
        self.v_proj = nn.Linear(d, kv, bias=False)
        self.o_proj = nn.Linear(d, d, bias=False)

    def forward(self, x: torch.Tensor, rope: RotaryEmbedding, cache: KVCache | None, layer: int) -> torch.Tensor:
        batch, length, _ = x.shape
        offset = cache.offset if cache is not None else 0
        q = self.q_proj(x).view(batch, length, self.n_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(batch, length, self.n_kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(batch, length, self.n_kv_heads, self.head_dim).transpose(1, 2)
        q, k = rope(q, offset), rope(k, offset)
        if cache is not None:
            k, v = cache.update(layer, k, v)
        gqa = self.n_kv_heads != self.n_heads  # SDPA shares each key/value head over its group of queries
        if offset == 0:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=length > 1, enable_gqa=gqa)
        else:
            # Queries sit at positions offset.. offset+length-1 and see every key up to their own.
            positions = torch.arange(offset, offset + length, device=x.device)[:, None]
            mask = positions >= torch.arange(k.shape[2], device=x.device)[None, :]
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=gqa)
        # The width spelled out: a rank's share of a short evaluation batch may have no rows (-1 is then undefined).
        return self.o_proj(out.transpose(1, 2).reshape(batch, length, self.n_heads * self.head_dim))


class MLP(nn.Module):
    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(spec.d_model, spec.d_ff, bias=False)
        self.up_proj = nn.Linear(spec.d_model, spec.d_ff, bias=False)
        self.down_proj = nn.Linear(spec.d_ff, spec.d_model, bias=False)

    def forward(self, x: torch.Tensor, routing: Routing | None = None) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class ProjectedLinear(nn.Module):
    """A weight matrix W = Σ_r (e @ M)[r] T[r] formed for an expert vector e (pnlm/model/projection.py)."""

    def __init__(self, in_features: int, out_features: int, spec: ModelSpec) -> None:
        super().__init__()
        p = spec.projection
        self.basis = nn.Parameter(torch.empty(p.h, out_features, in_features))
        self.mix = nn.Parameter(torch.empty(p.m, p.h))

    def weight(self, expert_vector: torch.Tensor) -> torch.Tensor:
        """W for one expert vector (m,); for vectors (S, m), the S matrices (S, out, in)."""
        return torch.tensordot(expert_vector @ self.mix, self.basis, dims=1)


@dataclass(frozen=True)
class ExpertGroups:
    """Rows sorted by expert: the experts present (a tensor on the device) and how many rows each has."""

    present: torch.Tensor
    sizes: list[int]


class Routing:
    """Which expert each row of a batch uses: the vectors of the experts present (S, m) and, when there are
    several, the rows grouped by expert: the size of each group and, unless the rows come sorted by expert
    (as the train step hands them), the order that groups them and the way back."""

    def __init__(self, vectors: torch.Tensor, row_slot: torch.Tensor | None = None,
                 sizes: list[int] | None = None) -> None:
        self.vectors = vectors
        self.grouped = (row_slot is not None or sizes is not None) and len(vectors) > 1
        self.order = self.restore = None
        if sizes is not None:  # rows already sorted by expert, the groups' sizes counted on the host
            self.sizes = sizes
        elif self.grouped:
            self.sizes = torch.bincount(row_slot, minlength=len(vectors)).tolist()
            if bool((row_slot[1:] < row_slot[:-1]).any()):
                self.order = torch.argsort(row_slot, stable=True)
                self.restore = torch.argsort(self.order)

    @classmethod
    def of(cls, table: torch.Tensor, expert) -> "Routing":
        """expert: an index (int or 0-d), an expert vector (m,) of floats, one index per row (B,), or
        ExpertGroups (rows sorted by expert, as the train step hands them: no host sync)."""
        if isinstance(expert, ExpertGroups):
            return cls(table[expert.present], sizes=expert.sizes)
        expert = torch.as_tensor(expert, device=table.device)
        if expert.is_floating_point():
            return cls(expert.to(table.dtype).reshape(1, -1))
        if expert.dim() == 0:
            return cls(table[expert][None])
        present, row_slot = torch.unique(expert, return_inverse=True)
        return cls(table[present], row_slot)


class ProjectedMLP(nn.Module):
    """SwiGLU whose three matrices are projected: W is formed once per expert present in the batch, and
    each group of rows goes through its own expert's matrices (no per-row copy of W)."""

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        self.gate_proj = ProjectedLinear(spec.d_model, spec.d_ff, spec)
        self.up_proj = ProjectedLinear(spec.d_model, spec.d_ff, spec)
        self.down_proj = ProjectedLinear(spec.d_ff, spec.d_model, spec)

    def forward(self, x: torch.Tensor, routing: Routing | None = None) -> torch.Tensor:
        if not routing.grouped:
            gate, up, down = (m.weight(routing.vectors).to(x.dtype) for m in (self.gate_proj, self.up_proj, self.down_proj))
            return F.linear(F.silu(F.linear(x, gate[0])) * F.linear(x, up[0]), down[0])
        # Several experts: gate and up formed as one (S, 2·d_ff, d) tensor from their bases side by side (h
        # matrices copied, not S), so each group takes one product for both.
        gate, up = self.gate_proj, self.up_proj
        coefficients = torch.stack([routing.vectors @ gate.mix, routing.vectors @ up.mix])  # (2, S, h)
        bases = torch.stack([gate.basis, up.basis])  # (2, h, d_ff, d)
        gate_up = torch.einsum("gsh,ghod->sgod", coefficients, bases).flatten(1, 2).to(x.dtype)
        return _grouped_mlp(x, gate_up, self.down_proj.weight(routing.vectors).to(x.dtype), routing)


@torch.compiler.disable
def _grouped_mlp(x: torch.Tensor, gate_up: torch.Tensor, down: torch.Tensor, routing: Routing) -> torch.Tensor:
    """Rows of several experts, each group through its expert's matrices. Left out of torch.compile: the
    group sizes change with every batch, and compiled they would recompile at each new set."""
    # Per expert, gate and up in one product (half the small matrix products of a group), and the
    # matrices taken apart with unbind, whose backward stacks instead of zero-filling one whole
    # (S, out, in) gradient per expert.
    groups = torch.split(x if routing.order is None else x[routing.order], routing.sizes)
    out = []
    for rows, both, down_s in zip(groups, gate_up.unbind(0), down.unbind(0)):
        g, u = F.linear(rows, both).chunk(2, dim=-1)
        out.append(F.linear(F.silu(g) * u, down_s))
    out = torch.cat(out)
    return out if routing.restore is None else out[routing.restore]


class TransformerBlock(nn.Module):
    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(spec.d_model, spec.norm_eps)
        self.self_attn = Attention(spec)
        self.post_attention_layernorm = RMSNorm(spec.d_model, spec.norm_eps)
        self.mlp = ProjectedMLP(spec) if spec.projection else SoupMLP(spec) if spec.soup else MLP(spec)

    def forward(self, x: torch.Tensor, rope: RotaryEmbedding, cache: KVCache | None, layer: int,
                routing: Routing | None = None) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), rope, cache, layer)
        return x + self.mlp(self.post_attention_layernorm(x), routing)


class TransformerBody(nn.Module):
    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(spec.vocab_size, spec.d_model)
        self.layers = nn.ModuleList(TransformerBlock(spec) for _ in range(spec.n_layers))
        self.norm = RMSNorm(spec.d_model, spec.norm_eps)
        self.rope = RotaryEmbedding(spec)
        if spec.projection is not None:
            self.expert_embedding = nn.Parameter(torch.empty(spec.projection.k, spec.projection.m))
        if spec.soup is not None:
            self.soup = SoupCoefficients(spec)

    def forward(self, tokens: torch.Tensor, cache: KVCache | None = None, expert=None) -> torch.Tensor:
        """expert (projected networks): an expert index (int or 0-d tensor), an expert vector (m,) of
        floats, or one expert index per row (batch,) of integers; (a soup of experts) the domain weights h (k,)
        of the model every row goes through."""
        routing = None
        if hasattr(self, "expert_embedding"):
            if expert is None:
                raise ValueError("a projected network needs an expert (index, vector or one index per row)")
            routing = Routing.of(self.expert_embedding, expert)
        elif hasattr(self, "soup"):
            if expert is None:
                raise ValueError("a soup of experts needs domain weights h over its clusters")
            routing = self.soup(expert)
        x = self.embed_tokens(tokens)
        device = x.device.type
        if torch.is_autocast_enabled(device):  # the residual stream in the compute dtype, as every block's output
            x = x.to(torch.get_autocast_dtype(device))
        for i, layer in enumerate(self.layers):
            x = layer(x, self.rope, cache, i, routing)
        if cache is not None:
            cache.offset += tokens.shape[1]
        return self.norm(x)


class Transformer(nn.Module):
    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        self.spec = spec
        self.model = TransformerBody(spec)
        if not spec.tied_embeddings:
            self.lm_head = nn.Linear(spec.d_model, spec.vocab_size, bias=False)

    def forward(self, tokens: torch.Tensor, cache: KVCache | None = None, expert=None,
                targets: torch.Tensor | None = None, token_weights: torch.Tensor | None = None) -> torch.Tensor:
        """The logits (batch, time, vocab); with targets, the summed cross-entropy Σ token_weights · NLL
        instead (float32), computed in chunks so that the whole batch's float32 logits never exist."""
        hidden = self.model(tokens, cache, expert)
        if targets is not None:
            weights = torch.ones_like(targets, dtype=torch.float32) if token_weights is None else token_weights
            return linear_cross_entropy(hidden, self.output_weight, targets, weights)
        return F.linear(hidden, self.output_weight)

    @property
    def output_weight(self) -> torch.Tensor:
        return self.model.embed_tokens.weight if self.spec.tied_embeddings else self.lm_head.weight

    def load_canonical(self, weights: dict[str, np.ndarray]) -> None:
        state = {name: torch.from_numpy(np.ascontiguousarray(array)) for name, array in weights.items()}
        self.load_state_dict(state, strict=True)

    def canonical_weights(self) -> dict[str, np.ndarray]:
        """The model's weights by canonical name (a LoRA model's base weights, without its adapters)."""
        return {name: tensor.detach().float().cpu().numpy().copy() for name, tensor in self.state_dict().items()
                if not name.endswith(ADAPTER_SUFFIXES)}

    def adapter_weights(self) -> dict[str, np.ndarray]:
        """The LoRA adapters by name (backends/torch/lora.py); empty without them."""
        return {name: p.detach().float().cpu().numpy().copy() for name, p in self.named_parameters()
                if name.endswith(ADAPTER_SUFFIXES)}

    def load_adapters(self, adapters: dict[str, np.ndarray]) -> None:
        parameters = dict(self.named_parameters())
        with torch.no_grad():
            for name, array in adapters.items():
                parameters[name].copy_(torch.from_numpy(np.ascontiguousarray(array)))
