"""Inference on MLX: `pnlm.load(CKPT, backend="mlx")`."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import mlx.core as mx
import numpy as np

from pnlm import inference
from pnlm.backends.mlx.lora import apply_lora
from pnlm.backends.mlx.model import KVCache, Transformer
from pnlm.errors import BackendError
from pnlm.sampling import Sampler
from pnlm.spec import ModelSpec
from pnlm.tokenizer import Tokenizer

DTYPES = {"float32": mx.float32, "bfloat16": mx.bfloat16, "float16": mx.float16}


def resolve_dtype(dtype: str) -> mx.Dtype:
    if dtype not in DTYPES:
        raise BackendError(f"unknown dtype {dtype!r}; expected one of {', '.join(DTYPES)}")
    return DTYPES[dtype]


class InferenceModel(inference.InferenceModel):
    backend = "mlx"

    def __init__(self, spec: ModelSpec, weights: dict[str, np.ndarray], tokenizer: Tokenizer,
                 method: str = "slm", dtype: str = "float32", adapters: inference.Adapters | None = None) -> None:
        super().__init__(spec, tokenizer, method, adapters)
        self.dtype = resolve_dtype(dtype)
        self.model = Transformer(spec)
        self.model.load_canonical(weights)
        if adapters is not None:
            apply_lora(self.model, adapters.lora, adapters.weights)
        self.model.set_dtype(self.dtype)
        self.model.eval()
        mx.eval(self.model.parameters())

    @classmethod
    def from_checkpoint(cls, path: str | Path, dtype: str = "float32") -> "InferenceModel":
        resolve_dtype(dtype)
        loaded = inference.read_model(path)
        return cls(loaded.spec, loaded.weights, loaded.tokenizer, loaded.method, dtype, loaded.adapters)

    def _forward(self, tokens: np.ndarray) -> np.ndarray:
        logits = self.model(mx.array(tokens.astype(np.int32)))
        return np.array(logits.astype(mx.float32))

    def _new_cache(self, max_length: int) -> KVCache:
        return KVCache(self.spec, max_length, 1, self.dtype)

    def _step(self, tokens: Sequence[int], cache: KVCache) -> np.ndarray:
        logits = self.model(mx.array([[int(t) for t in tokens]], dtype=mx.int32), cache)[0, -1]
        return np.array(logits.astype(mx.float32))

    def _tokens(self, prompt_ids: Sequence[int], max_tokens: int, cache: KVCache,
                sampler: Sampler) -> Iterator[int]:
        """Greedily, the argmax stays in MLX, and step n+1's graph is built and queued (async_eval)
        before step n's token is read back: Python's work overlaps the computation. Sampling with a
        temperature goes through the shared numpy sampler, so both backends draw the same tokens."""
        if sampler.config.temperature != 0.0:
            yield from super()._tokens(prompt_ids, max_tokens, cache, sampler)
            return

        def next_token(tokens: mx.array) -> mx.array:
            return mx.argmax(self.model(tokens, cache)[:, -1], axis=-1)

        token = next_token(mx.array([[int(t) for t in prompt_ids]], dtype=mx.int32))
        mx.async_eval(token)
        for n in range(max_tokens):
            following = next_token(token[:, None]) if n < max_tokens - 1 else None
            if following is not None:
                mx.async_eval(following)
            yield int(token.item())
            token = following

    def canonical_weights(self) -> dict[str, np.ndarray]:
        return self.model.canonical_weights()
