"""Inference on PyTorch: `pnlm.load(CKPT, backend="torch" | "cuda")`."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from pnlm import inference
from pnlm.backends.torch.device import resolve_device, resolve_dtype
from pnlm.backends.torch.lora import apply_lora
from pnlm.backends.torch.model import KVCache, Transformer
from pnlm.errors import BackendError
from pnlm.model.spec import ModelSpec
from pnlm.tokenizer import Tokenizer


class InferenceModel(inference.InferenceModel):
    def __init__(self, spec: ModelSpec, weights: dict[str, np.ndarray], tokenizer: Tokenizer,
                 method: str = "slm", device: str = "cpu", dtype: str = "float32",
                 adapters: inference.Adapters | None = None) -> None:
        super().__init__(spec, tokenizer, method, adapters)
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype)
        self.backend = "cuda" if self.device.type == "cuda" else "torch"
        with torch.device(self.device):
            self.model = Transformer(spec)
        self.model.load_canonical(weights)
        if adapters is not None:
            apply_lora(self.model, adapters.lora, adapters.weights)
        self.model.to(self.dtype).eval()

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str = "cpu", dtype: str = "float32") -> "InferenceModel":
        resolve_device(device)
        loaded = inference.read_model(path)
        if loaded.quantized is not None:
            q = loaded.quantized.quantization
            raise BackendError(f"{path}: quantized to {q.bits} bits by mlx-lm; run it with backend mlx")
        return cls(loaded.spec, loaded.weights, loaded.tokenizer, loaded.method, device, dtype, loaded.adapters)

    @torch.inference_mode()
    def _forward(self, tokens: np.ndarray) -> np.ndarray:
        logits = self.model(torch.from_numpy(tokens).to(self.device))
        return logits.float().cpu().numpy()

    def _new_cache(self, max_length: int) -> KVCache:
        return KVCache(self.spec, max_length, 1, self.device, self.dtype)

    @torch.inference_mode()
    def _step(self, tokens: Sequence[int], cache: KVCache) -> np.ndarray:
        ids = torch.tensor([list(tokens)], dtype=torch.long, device=self.device)
        return self.model(ids, cache)[0, -1].float().cpu().numpy()

    def canonical_weights(self) -> dict[str, np.ndarray]:
        return self.model.canonical_weights()
