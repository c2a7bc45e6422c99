"""Inference on MLX: `pnlm.load(CKPT, backend="mlx")`."""

from __future__ import annotations

import functools
from collections.abc import Iterator, Sequence
from pathlib import Path

import mlx.core as mx
import numpy as np

from pnlm import inference
from pnlm.backends.mlx.lora import apply_lora
from pnlm.backends.mlx.model import KVCache, Transformer
from pnlm.backends.mlx.quantized import load_quantized
from pnlm.errors import BackendError
from pnlm.model.decoding import TokenSampler
from pnlm.model.spec import ModelSpec
from pnlm.tokenizer import Tokenizer

CACHE_LENGTH_STEP = 256
DTYPES = {"float32": mx.float32, "bfloat16": mx.bfloat16, "float16": mx.float16}


def resolve_dtype(dtype: str) -> mx.Dtype:
    if dtype not in DTYPES:
        raise BackendError(f"unknown dtype {dtype!r}; expected one of {', '.join(DTYPES)}")
    return DTYPES[dtype]


class InferenceModel(inference.InferenceModel):
    backend = "mlx"

    def __init__(self, spec: ModelSpec, weights: dict[str, np.ndarray], tokenizer: Tokenizer,
                 method: str = "slm", dtype: str = "float32", adapters: inference.Adapters | None = None,
                 quantized=None) -> None:
        super().__init__(spec, tokenizer, method, adapters)
        self.dtype = resolve_dtype(dtype)
        self.model = Transformer(spec)
        self.quantized = quantized
        if quantized is not None:
            load_quantized(self.model, quantized)
        else:
            self.model.load_canonical(weights)
        if adapters is not None:
            apply_lora(self.model, adapters.lora, adapters.weights)
        self.model.set_dtype(self.dtype)  # floating weights only: packed ones stay as they are
        self.model.eval()
        mx.eval(self.model.parameters())

    @classmethod
    def from_checkpoint(cls, path: str | Path, dtype: str = "float32") -> "InferenceModel":
        resolve_dtype(dtype)
        loaded = inference.read_model(path)
        return cls(loaded.spec, loaded.weights, loaded.tokenizer, loaded.method, dtype, loaded.adapters,
                   loaded.quantized)

    def _forward(self, tokens: np.ndarray) -> np.ndarray:
        logits = self.model(mx.array(tokens.astype(np.int32)))
        return np.array(logits.astype(mx.float32))

    def _new_cache(self, max_length: int) -> KVCache:
        # Lengths rounded up share one trace of the compiled step (a few masked keys more per token).
        rounded = -(-max_length // CACHE_LENGTH_STEP) * CACHE_LENGTH_STEP
        return KVCache(self.spec, min(rounded, self.spec.context), 1, self.dtype)

    def _step(self, tokens: Sequence[int], cache: KVCache) -> np.ndarray:
        logits = self._last_logits(mx.array([[int(t) for t in tokens]], dtype=mx.int32), cache)[0]
        return np.array(logits.astype(mx.float32))

    def _last_logits(self, tokens: mx.array, cache: KVCache) -> mx.array:
        """The last position's logits (1, vocab) after appending tokens (1, time) to the cache. One token
        goes through a compiled step: a graph traced once per cache length, not rebuilt in Python per token."""
        if tokens.shape[1] > 1:
            return self.model(tokens, cache)[:, -1]
        logits, cache.keys, cache.values = self._decode(tokens, mx.array(cache.offset, dtype=mx.int32),
                                                        cache.keys, cache.values)
        cache.offset += 1
        return logits

    @functools.cached_property
    def _decode(self):
        def decode(token: mx.array, offset: mx.array, keys: list[mx.array], values: list[mx.array]):
            cache = KVCache.holding(keys, values, offset)
            logits = self.model(token, cache)[:, -1]
            return logits, cache.keys, cache.values

        return mx.compile(decode, inputs=self.model.state)

    def _tokens(self, prompt_ids: Sequence[int], max_tokens: int, cache: KVCache,
                sampler: TokenSampler) -> Iterator[int]:
        """Greedily, the argmax stays in MLX, and step n+1 is queued (async_eval) before step n's token
        is read back: Python's work overlaps the computation. Sampling with a temperature goes through
        the shared numpy sampler, so both backends draw the same tokens."""
        if sampler.config.temperature != 0.0:
            yield from super()._tokens(prompt_ids, max_tokens, cache, sampler)
            return

        def next_token(tokens: mx.array) -> mx.array:
            return mx.argmax(self._last_logits(tokens, cache), axis=-1)

        token = next_token(mx.array([[int(t) for t in prompt_ids]], dtype=mx.int32))
        mx.async_eval(token)
        for n in range(max_tokens):
            following = next_token(token[:, None]) if n < max_tokens - 1 else None
            if following is not None:
                mx.async_eval(following)
            yield int(token.item())
            token = following

    def canonical_weights(self) -> dict[str, np.ndarray]:
        if self.quantized is not None:
            raise BackendError(f"{self.quantized.path}: quantized weights are not float weights; export the "
                               f"float model from its checkpoint instead")
        return self.model.canonical_weights()
