"""The Llama-style transformer in MLX, mirroring backends/torch/model.py. Module names are the
canonical (Hugging Face Llama) names, so the flattened parameters are the canonical weight dict."""

from __future__ import annotations

import math

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx.utils import tree_flatten

from pnlm.backends.mlx.cpu_ops import masked_softmax, on_cpu, silu
from pnlm.model.lora import ADAPTER_SUFFIXES
from pnlm.model.projection import group_rows
from pnlm.model.rope import inverse_frequencies
from pnlm.backends.mlx.soup import SoupCoefficients, SoupMLP
from pnlm.model.spec import ModelSpec


class KVCache:
    """Preallocated keys and values of one sequence, for every layer, and how many positions are filled.

    `offset` is a Python int while prefilling; in a compiled decoding step it is a 0-d array, so every
    step has the same shapes (one trace): the new position is written at the offset, and the single query
    attends over the whole preallocated length under a mask of the filled positions."""

    def __init__(self, spec: ModelSpec, max_length: int, batch: int, dtype) -> None:
        shape = (batch, spec.n_kv_heads, max_length, spec.head_dim)
        self.keys = [mx.zeros(shape, dtype=dtype) for _ in range(spec.n_layers)]
        self.values = [mx.zeros(shape, dtype=dtype) for _ in range(spec.n_layers)]
        self.offset: int | mx.array = 0

    @classmethod
    def holding(cls, keys: list[mx.array], values: list[mx.array], offset: mx.array) -> "KVCache":
        cache = cls.__new__(cls)
        cache.keys, cache.values, cache.offset = list(keys), list(values), offset
        return cache

    def update(self, layer: int, k: mx.array, v: mx.array) -> tuple[mx.array, mx.array]:
        if isinstance(self.offset, int):
            end = self.offset + k.shape[2]
            self.keys[layer][:, :, self.offset:end] = k
            self.values[layer][:, :, self.offset:end] = v
            return self.keys[layer][:, :, :end], self.values[layer][:, :, :end]
        start = self.offset.reshape(1)
        self.keys[layer] = mx.slice_update(self.keys[layer], k, start, axes=(2,))
        self.values[layer] = mx.slice_update(self.values[layer], v, start, axes=(2,))
        return self.keys[layer], self.values[layer]

    def decoding_mask(self) -> mx.array | None:
        """Which keys one query at the offset sees; None when the keys returned are exactly those."""
        if isinstance(self.offset, int):
            return None
        return mx.arange(self.keys[0].shape[2]) <= self.offset


QUERY_BLOCK = 128  # queries per block of causal attention on the CPU


class Attention(nn.Module):
    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = spec.n_heads, spec.n_kv_heads, spec.head_dim
        self.rope_theta = spec.rope_theta
        # Llama 3's scaled RoPE: mx.fast.rope takes the periods (1 / the frequencies) instead of a base.
        self._rope_periods = None if spec.rope_scaling is None else mx.array(1.0 / inverse_frequencies(spec))
        self.scale = 1.0 / math.sqrt(spec.head_dim)
        d, kv = spec.d_model, spec.n_kv_heads * spec.head_dim
        self.q_proj = nn.Linear(d, d, bias=False)
        self.k_proj = nn.Linear(d, kv, bias=False)
        self.v_proj = nn.Linear(d, kv, bias=False)
        self.o_proj = nn.Linear(d, d, bias=False)

    def _rope(self, x: mx.array, offset: int) -> mx.array:
        if self._rope_periods is None:
            return mx.fast.rope(x, self.head_dim, traditional=False, base=self.rope_theta, scale=1.0, offset=offset)
        return mx.fast.rope(x, self.head_dim, traditional=False, base=None, scale=1.0, offset=offset,
                            freqs=self._rope_periods)

    def __call__(self, x: mx.array, cache: KVCache | None, layer: int) -> mx.array:
        batch, length, _ = x.shape
        offset = cache.offset if cache is not None else 0
        q = self.q_proj(x).reshape(batch, length, self.n_heads, self.head_dim).transpose(0, 2, 1, 3)
        k = self.k_proj(x).reshape(batch, length, self.n_kv_heads, self.head_dim).transpose(0, 2, 1, 3)
        v = self.v_proj(x).reshape(batch, length, self.n_kv_heads, self.head_dim).transpose(0, 2, 1, 3)
        q, k = (self._rope(t, offset) for t in (q, k))
        if cache is not None:
            k, v = cache.update(layer, k, v)
        if on_cpu() and length > 1:  # one query (decoding) has no mask: MLX's own kernel is the fast one
            out = self._attend(q, k, v)
        else:
            # "causal" aligns the last query with the last key, which is what a cache offset needs.
            mask = "causal" if length > 1 else cache.decoding_mask() if cache is not None else None
            out = mx.fast.scaled_dot_product_attention(q, k, v, scale=self.scale, mask=mask)
        return self.o_proj(out.transpose(0, 2, 1, 3).reshape(batch, length, -1))

    def _attend(self, q: mx.array, k: mx.array, v: mx.array) -> mx.array:
        """Causal attention of q (batch, heads, length, head_dim) over keys and values whose last
        `length` positions are the queries'."""
        batch, _, length, _ = q.shape
        offset = k.shape[2] - length
        repeat = self.n_heads // self.n_kv_heads
        # Each key/value head serves `repeat` query heads: group those instead of repeating k and v.
        q = (q * self.scale).reshape(batch, self.n_kv_heads, repeat, length, self.head_dim)
        out = []
        # Blocks of queries see only the keys up to their last position, so the masked scores computed
        # shrink from half to 1/(2 * blocks). Each block costs a BLAS call per batch row and head, though.
        for start in range(0, length, QUERY_BLOCK):
            stop = min(start + QUERY_BLOCK, length)
            rows, keys = repeat * (stop - start), offset + stop
            block = q[:, :, :, start:stop].reshape(batch, self.n_kv_heads, rows, self.head_dim)
            scores = (block @ k[:, :, :keys].swapaxes(-1, -2)).reshape(batch, self.n_kv_heads, repeat, -1, keys)
            mask = mx.arange(offset + start, offset + stop)[:, None] >= mx.arange(keys)
            probs = masked_softmax(scores, mask).reshape(batch, self.n_kv_heads, rows, keys)
            out.append((probs @ v[:, :, :keys]).reshape(batch, self.n_kv_heads, repeat, -1, self.head_dim))
        out = mx.concatenate(out, axis=3) if len(out) > 1 else out[0]
        return out.reshape(batch, self.n_heads, length, self.head_dim)


class MLP(nn.Module):
    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(spec.d_model, spec.d_ff, bias=False)
        self.up_proj = nn.Linear(spec.d_model, spec.d_ff, bias=False)
        self.down_proj = nn.Linear(spec.d_ff, spec.d_model, bias=False)

    def __call__(self, x: mx.array, routing: Routing | None = None) -> mx.array:
        return self.down_proj(silu(self.gate_proj(x)) * self.up_proj(x))


class ProjectedLinear(nn.Module):
    """A weight matrix W = Σ_r (e @ M)[r] T[r] formed for an expert vector e (pnlm/model/projection.py)."""

    def __init__(self, in_features: int, out_features: int, spec: ModelSpec) -> None:
        super().__init__()
        p = spec.projection
        self.basis = mx.zeros((p.h, out_features, in_features))
        self.mix = mx.zeros((p.m, p.h))

    def weight(self, expert_vector: mx.array) -> mx.array:
        """W for one expert vector (m,); for vectors (S, m), the S matrices (S, out, in)."""
        return mx.tensordot(expert_vector @ self.mix, self.basis, axes=1)


class Routing:
    """Which expert each row of a batch uses: the vectors of the experts present (S, m) and, when there are
    several, each row's position among them (B,). S is a shape, so a compiled step traces once per number
    of experts present."""

    def __init__(self, vectors: mx.array, row_slot: mx.array | None = None) -> None:
        self.vectors = vectors
        self.row_slot = row_slot if row_slot is not None and vectors.shape[0] > 1 else None

    @classmethod
    def of(cls, table: mx.array, expert) -> "Routing":
        """expert: an index (int or 0-d), an expert vector (m,) of floats, one index per row (B,), or the
        experts present and each row's position among them ((S,), (B,)): what a compiled step is given."""
        if isinstance(expert, tuple):
            present, row_slot = expert
            return cls(table[present], row_slot)
        expert = mx.array(expert) if not isinstance(expert, mx.array) else expert
        if mx.issubdtype(expert.dtype, mx.floating):
            return cls(expert.astype(table.dtype).reshape(1, -1))
        if expert.ndim == 0:
            return cls(table[expert][None])
        present, row_slot = group_rows(np.array(expert))
        return cls(table[mx.array(present)], mx.array(row_slot.astype(np.uint32)))


class ProjectedMLP(nn.Module):
    """SwiGLU whose three matrices are projected: W is formed once per expert present in the batch, and
    each row goes through its own expert's matrices in one gathered product (no per-row copy of W)."""

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        self.gate_proj = ProjectedLinear(spec.d_model, spec.d_ff, spec)
        self.up_proj = ProjectedLinear(spec.d_model, spec.d_ff, spec)
        self.down_proj = ProjectedLinear(spec.d_ff, spec.d_model, spec)

    def __call__(self, x: mx.array, routing: Routing | None = None) -> mx.array:
        gate, up, down = (m.weight(routing.vectors).astype(x.dtype) for m in (self.gate_proj, self.up_proj, self.down_proj))
        if routing.row_slot is None:
            return (silu(x @ gate[0].T) * (x @ up[0].T)) @ down[0].T

        def linear(inputs: mx.array, weights: mx.array) -> mx.array:
            return mx.gather_mm(inputs, weights.swapaxes(-1, -2), rhs_indices=routing.row_slot)

        return linear(silu(linear(x, gate)) * linear(x, up), down)


class TransformerBlock(nn.Module):
    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        self.input_layernorm = nn.RMSNorm(spec.d_model, eps=spec.norm_eps)
        self.self_attn = Attention(spec)
        self.post_attention_layernorm = nn.RMSNorm(spec.d_model, eps=spec.norm_eps)
        self.mlp = ProjectedMLP(spec) if spec.projection else SoupMLP(spec) if spec.soup else MLP(spec)

    def __call__(self, x: mx.array, cache: KVCache | None, layer: int, routing: Routing | None = None) -> mx.array:
        x = x + self.self_attn(self.input_layernorm(x), cache, layer)
        return x + self.mlp(self.post_attention_layernorm(x), routing)


class TransformerBody(nn.Module):
    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(spec.vocab_size, spec.d_model)
        self.layers = [TransformerBlock(spec) for _ in range(spec.n_layers)]
        self.norm = nn.RMSNorm(spec.d_model, eps=spec.norm_eps)
        if spec.projection is not None:
            self.expert_embedding = mx.zeros((spec.projection.k, spec.projection.m))
        if spec.soup is not None:
            self.soup = SoupCoefficients(spec)

    def __call__(self, tokens: mx.array, cache: KVCache | None = None, expert=None) -> mx.array:
        """expert (projected networks): an expert index (int or 0-d array), an expert vector (m,) of floats,
        one expert index per row (batch,) of integers, or (experts present, each row's position among them)."""
        routing = None
        if "expert_embedding" in self:
            if expert is None:
                raise ValueError("a projected network needs an expert (index, vector or one index per row)")
            routing = Routing.of(self.expert_embedding, expert)
        elif "soup" in self:  # a soup of experts: expert is the domain weights h (k,) of every row's model
            if expert is None:
                raise ValueError("a soup of experts needs domain weights h over its clusters")
            routing = self.soup(expert[0] if isinstance(expert, tuple) else expert)  # (h, unused) from a step
        x = self.embed_tokens(tokens)
        for i, layer in enumerate(self.layers):
            x = layer(x, cache, i, routing)
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

    def __call__(self, tokens: mx.array, cache: KVCache | None = None, expert=None) -> mx.array:
        hidden = self.model(tokens, cache, expert)
        if self.spec.tied_embeddings:
            return self.model.embed_tokens.as_linear(hidden)
        return self.lm_head(hidden)

    def load_canonical(self, weights: dict[str, np.ndarray]) -> None:
        self.load_weights([(name, mx.array(array)) for name, array in weights.items()], strict=True)

    def canonical_weights(self) -> dict[str, np.ndarray]:
        """The model's weights by canonical name (a LoRA model's base weights, without its adapters)."""
        return {name: np.array(value.astype(mx.float32)) for name, value in tree_flatten(self.parameters())
                if not name.endswith(ADAPTER_SUFFIXES)}

    def adapter_weights(self) -> dict[str, np.ndarray]:
        """The LoRA adapters by name (backends/mlx/lora.py); empty without them."""
        return {name: np.array(value.astype(mx.float32)) for name, value in tree_flatten(self.parameters())
                if name.endswith(ADAPTER_SUFFIXES)}

    def load_adapters(self, adapters: dict[str, np.ndarray]) -> None:
        self.load_weights([(name, mx.array(array)) for name, array in adapters.items()], strict=False)
        mx.eval(self.parameters())
