"""What `pnlm.load` returns: a model with `.logits(tokens)` and `.generate(prompt)`, whatever the backend.

The generation loop is written once here; a backend supplies a forward pass over a KV cache.
"""

from __future__ import annotations

import abc
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pnlm import values
from pnlm.errors import PnlmError
from pnlm.model.lora import LoraSpec, fuse
from pnlm.model.losses import log_softmax
from pnlm.model.decoding import SamplingConfig, TokenSampler
from pnlm.model.spec import ModelSpec
from pnlm.tokenizer import Tokenizer


@dataclass
class GenerationStats:
    prompt_tokens: int = 0
    generated_tokens: int = 0
    prompt_s: float = 0.0
    generate_s: float = 0.0

    @property
    def tokens_per_s(self) -> float:
        return self.generated_tokens / self.generate_s if self.generate_s > 0 else 0.0


@dataclass
class Adapters:
    lora: LoraSpec
    weights: dict[str, np.ndarray]


@dataclass
class LoadedModel:
    """What a backend builds an inference model from: a checkpoint folder, or an adapter folder and its base."""

    spec: ModelSpec
    weights: dict[str, np.ndarray]
    tokenizer: Tokenizer
    method: str
    adapters: Adapters | None = None
    quantized: Any = None  # a quantized MLX model folder (pnlm/checkpoints/model_folder.py): weights MLX reads itself


def read_model(path: str | Path) -> LoadedModel:
    from pnlm.checkpoints.adapter_checkpoint import load_adapter_checkpoint
    from pnlm.checkpoints.checkpoint import ADAPTER_FORMAT, checkpoint_kind, load_checkpoint
    from pnlm.checkpoints.model_folder import is_model_folder, read_model_folder
    from pnlm.checkpoints.weights import load_safetensors

    if is_model_folder(path):  # a Hugging Face or MLX folder, as `pnlm export` writes them
        folder = read_model_folder(path)
        if folder.quantization is not None:
            return LoadedModel(folder.spec, {}, folder.tokenizer, "slm", quantized=folder)
        weights = {name: array for file in folder.weight_files for name, array in load_safetensors(file).items()
                   if "rotary_emb" not in name}  # some Llama folders keep RoPE's tables; pnlm computes them
        if folder.spec.tied_embeddings:
            weights.pop("lm_head.weight", None)
        return LoadedModel(folder.spec, weights, folder.tokenizer, "slm")
    if checkpoint_kind(path) == ADAPTER_FORMAT:
        adapter = load_adapter_checkpoint(path)
        base = adapter.base
        return LoadedModel(base.spec, base.weights, base.tokenizer, adapter.method,
                           Adapters(adapter.lora, adapter.adapters))
    checkpoint = load_checkpoint(path)
    refuse_projected(checkpoint.spec, path)
    return LoadedModel(checkpoint.spec, checkpoint.weights, checkpoint.tokenizer, checkpoint.method)


def refuse_projected(spec: ModelSpec, path: str | Path) -> None:
    """A projected network runs as one of its experts: say how to get one."""
    if spec.projection is not None:
        raise PnlmError(f"{path}: a projected network of {spec.projection.k} experts; make one of them a plain "
                        f"model first: pnlm instantiate {path} --domain STORE --out CKPT (or --expert INDEX)")
    if spec.soup is not None:
        raise PnlmError(f"{path}: a soup of experts over {spec.soup.k} clusters; make the model of a domain a plain "
                        f"one first: pnlm instantiate {path} --domain STORE --out CKPT")


class InferenceModel(abc.ABC):
    backend: str

    def __init__(self, spec: ModelSpec, tokenizer: Tokenizer, method: str = "slm",
                 adapters: "Adapters | None" = None) -> None:
        self.spec = spec
        self.tokenizer = tokenizer
        self.method = method
        self.adapters = adapters
        self.last_stats = GenerationStats()

    # What a backend provides.
    @abc.abstractmethod
    def _forward(self, tokens: np.ndarray) -> np.ndarray:
        """Logits (batch, time, vocab) as float32 numpy for int tokens (batch, time), no cache."""

    @abc.abstractmethod
    def _new_cache(self, max_length: int) -> object:
        """An empty KV cache for one sequence of up to max_length tokens."""

    @abc.abstractmethod
    def _step(self, tokens: Sequence[int], cache: object) -> np.ndarray:
        """Append tokens to the cache and return the last position's logits (vocab,) as numpy."""

    @abc.abstractmethod
    def canonical_weights(self) -> dict[str, np.ndarray]:
        """The weights under their canonical names, as float32 numpy."""

    # The shared API.
    def logits(self, tokens) -> np.ndarray:
        """Next-token logits for every position: (time, vocab) for one sequence, (batch, time, vocab) for a batch."""
        try:
            array = np.asarray(tokens)
        except ValueError:  # rows of different lengths
            array = np.zeros(0)
        if array.ndim not in (1, 2) or array.size == 0 or not np.issubdtype(array.dtype, np.integer):
            raise PnlmError("tokens must be a non-empty sequence of ints, or a batch of equal-length sequences")
        self._check_ids(array)
        if array.shape[-1] > self.spec.context:
            raise PnlmError(f"{array.shape[-1]} tokens exceed the model's context of {self.spec.context}")
        batch = array.reshape(-1, array.shape[-1]).astype(np.int64)
        out = self._forward(batch)
        return out[0] if array.ndim == 1 else out

    def _check_ids(self, ids: np.ndarray) -> None:
        if ids.size and (ids.min() < 0 or ids.max() >= self.spec.vocab_size):
            raise PnlmError(f"token ids must be in [0, {self.spec.vocab_size}), got {int(ids.min())}..{int(ids.max())}")

    def generate_ids(self, prompt_ids: Sequence[int], max_tokens: int = 64, temperature: float = 0.0,
                     top_p: float = 1.0, seed: int | None = None, stop_at_eos: bool = True) -> Iterator[int]:
        """Yield new token ids one by one, with a KV cache; greedy when temperature is 0."""
        if isinstance(prompt_ids, (str, bytes)) or not all(isinstance(i, (int, np.integer)) and not isinstance(i, bool)
                                                           for i in prompt_ids):
            raise PnlmError("prompt ids must be a sequence of token ids (ints); give text to generate() instead")
        prompt_ids = [int(i) for i in prompt_ids]
        if not prompt_ids:
            raise PnlmError("the prompt is empty: give at least one token")
        self._check_ids(np.asarray(prompt_ids))
        values.whole("max_tokens", max_tokens, 0)
        if seed is not None:
            values.seed(seed)
        total = len(prompt_ids) + max_tokens
        if total > self.spec.context:
            raise PnlmError(f"prompt ({len(prompt_ids)} tokens) + max_tokens ({max_tokens}) exceeds the model's "
                            f"context of {self.spec.context}")
        sampler = TokenSampler(SamplingConfig(temperature, top_p, seed))
        stats = self.last_stats = GenerationStats(prompt_tokens=len(prompt_ids))
        if max_tokens == 0:
            return
        cache = self._new_cache(total)
        start = time.perf_counter()
        for n, token in enumerate(self._tokens(prompt_ids, max_tokens, cache, sampler)):
            now = time.perf_counter()
            if n == 0:  # the first token comes with the prompt's forward pass
                stats.prompt_s, start = now - start, now
            stats.generated_tokens += 1
            stats.generate_s = now - start
            yield token
            if (stop_at_eos and token == self.tokenizer.eos_id) or n == max_tokens - 1:
                return

    def _tokens(self, prompt_ids: Sequence[int], max_tokens: int, cache: object, sampler: TokenSampler) -> Iterator[int]:
        """New tokens one by one, each chosen by the sampler from the last step's logits. A backend may
        override this (greedily: keep the argmax on its device and overlap the steps)."""
        logits = self._step(prompt_ids, cache)
        for _ in range(max_tokens):
            token = sampler(logits)
            yield token
            logits = self._step([token], cache)

    def generate(self, prompt: str | Sequence[int], max_tokens: int = 64, temperature: float = 0.0,
                 top_p: float = 1.0, seed: int | None = None) -> str:
        """The completion of a text prompt (or of token ids) as text."""
        if not isinstance(prompt, str) and not isinstance(prompt, (list, tuple, np.ndarray)):
            raise PnlmError(f"prompt must be a text or a sequence of token ids, got {type(prompt).__name__}")
        ids = self.tokenizer.encode(prompt) if isinstance(prompt, str) else list(prompt)
        new = list(self.generate_ids(ids, max_tokens, temperature, top_p, seed))
        return self.tokenizer.decode(new)

    def save(self, path: str | Path, method: str | None = None, overwrite: bool = False) -> Path:
        """Write the model as a plain checkpoint folder at path. As every output of pnlm, path may be new or
        empty; a checkpoint pnlm wrote is replaced only with overwrite=True, and never a training run's own
        (RUN/latest, RUN/best), a file, or a folder holding anything pnlm did not write."""
        from pnlm.checkpoints.checkpoint import save_checkpoint
        from pnlm.files.outputs import CHECKPOINT, writing_output

        weights = self.canonical_weights()
        if self.adapters is not None:  # a plain checkpoint holds base and adapters fused
            weights = fuse(weights, self.adapters.weights, self.spec, self.adapters.lora)
        with writing_output(path, CHECKPOINT, overwrite):
            return save_checkpoint(path, self.spec, weights, self.tokenizer, method or self.method)


SCORED_LOGITS = 1 << 25  # logits scored at once (128 MiB of float32)


class LogitsScorer:
    """An inference model scored the way evaluation scores a train step (its nll): for models that have no
    train step, a quantized MLX folder."""

    def __init__(self, model: InferenceModel) -> None:
        self.model = model

    def nll(self, inputs: np.ndarray, targets: np.ndarray, mask: np.ndarray | None = None,
            expert: object = None) -> tuple[float, int]:
        inputs, targets = np.asarray(inputs), np.asarray(targets)
        mask = np.ones(targets.shape, dtype=np.float32) if mask is None else np.asarray(mask, dtype=np.float32)
        # Rows a few at a time: a batch's whole logits (8 x 1024 x 32k float32: 1 GiB) never exist at once.
        rows = max(1, SCORED_LOGITS // max(1, inputs.shape[1] * self.model.spec.vocab_size))
        total = 0.0
        for start in range(0, len(inputs), rows):
            logprobs = log_softmax(self.model.logits(inputs[start:start + rows]))
            picked = np.take_along_axis(logprobs, targets[start:start + rows, :, None].astype(np.int64), -1)[..., 0]
            total -= float((picked.astype(np.float64) * mask[start:start + rows]).sum())
        return total, int(mask.sum())
