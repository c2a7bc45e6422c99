"""The sentence-transformers model that embeds windows, in MLX: a BERT encoder (all-MiniLM-L6-v2 and its
kin) read from the folder's model.safetensors, with the folder's pooling (mean or CLS) and a unit norm.
On Apple silicon it runs on the GPU; elsewhere on MLX's CPU. Mirrors backends/torch/embedder.py, whose
sentence-transformers model it matches within a cosine of 1e-6 in float32.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Iterator
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from pnlm.backends.mlx.cpu_ops import masked_softmax, on_cpu
from pnlm.errors import BackendError, InputError

WEIGHTS_FILE = "model.safetensors"


class Attention(nn.Module):
    def __init__(self, hidden: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.query, self.key, self.value = (nn.Linear(hidden, hidden) for _ in range(3))
        self.dense = nn.Linear(hidden, hidden)

    def __call__(self, x: mx.array, keep: mx.array) -> mx.array:
        b, n, d = x.shape
        q, k, v = ((proj(x).reshape(b, n, self.heads, d // self.heads).transpose(0, 2, 1, 3))
                   for proj in (self.query, self.key, self.value))
        scale = 1.0 / math.sqrt(d // self.heads)
        if on_cpu():
            scores = masked_softmax((q * scale) @ k.transpose(0, 1, 3, 2), keep[:, None, None, :])
            out = scores @ v
        else:
            bias = mx.where(keep, 0.0, -mx.inf)[:, None, None, :].astype(q.dtype)
            out = mx.fast.scaled_dot_product_attention(q, k, v, scale=scale, mask=bias)
        return self.dense(out.transpose(0, 2, 1, 3).reshape(b, n, d))


class Layer(nn.Module):
    def __init__(self, hidden: int, heads: int, intermediate: int, eps: float) -> None:
        super().__init__()
        self.attention = Attention(hidden, heads)
        self.attention_norm = nn.LayerNorm(hidden, eps=eps)
        self.intermediate = nn.Linear(hidden, intermediate)
        self.output = nn.Linear(intermediate, hidden)
        self.output_norm = nn.LayerNorm(hidden, eps=eps)

    def __call__(self, x: mx.array, keep: mx.array) -> mx.array:
        x = self.attention_norm(x + self.attention(x, keep))
        return self.output_norm(x + self.output(nn.gelu(self.intermediate(x))))


class Bert(nn.Module):
    def __init__(self, config: dict) -> None:
        super().__init__()
        hidden, eps = config["hidden_size"], config.get("layer_norm_eps", 1e-12)
        self.word_embeddings = nn.Embedding(config["vocab_size"], hidden)
        self.position_embeddings = nn.Embedding(config["max_position_embeddings"], hidden)
        self.token_type_embeddings = nn.Embedding(config.get("type_vocab_size", 2), hidden)
        self.embeddings_norm = nn.LayerNorm(hidden, eps=eps)
        self.layers = [Layer(hidden, config["num_attention_heads"], config["intermediate_size"], eps)
                       for _ in range(config["num_hidden_layers"])]

    def __call__(self, ids: mx.array, keep: mx.array) -> mx.array:
        positions = mx.arange(ids.shape[1])
        x = self.word_embeddings(ids) + self.position_embeddings(positions) + self.token_type_embeddings.weight[0]
        x = self.embeddings_norm(x)
        for layer in self.layers:
            x = layer(x, keep)
        return x


def _hf_name(name: str) -> str | None:
    """The module name here of a transformers BertModel weight (None: not used, e.g. the pooler)."""
    name = name.removeprefix("bert.")
    if name.startswith(("pooler.", "embeddings.position_ids")):
        return None
    name = name.replace("embeddings.LayerNorm.", "embeddings_norm.").removeprefix("embeddings.")
    name = name.replace("encoder.layer.", "layers.")
    for old, new in ((".attention.self.", ".attention."), (".attention.output.dense.", ".attention.dense."),
                     (".attention.output.LayerNorm.", ".attention_norm."), (".intermediate.dense.", ".intermediate."),
                     (".output.dense.", ".output."), (".output.LayerNorm.", ".output_norm.")):
        name = name.replace(old, new)
    return name


def _pooling(folder: Path) -> str:
    modules = json.loads((folder / "modules.json").read_text()) if (folder / "modules.json").is_file() else []
    for module in modules:
        if module.get("type", "").endswith("Pooling"):
            config = json.loads((folder / module["path"] / "config.json").read_text())
            if config.get("pooling_mode_mean_tokens"):
                return "mean"
            if config.get("pooling_mode_cls_token"):
                return "cls"
            raise BackendError(f"{folder}: pooling {config} is not one the MLX embedder computes (mean or CLS); "
                               "use --backend torch")
    return "mean"


class SentenceEncoder:
    """A BERT sentence-transformers folder in MLX, in float32 or bfloat16 (mirrors the torch one)."""

    def __init__(self, folder: str, precision: str, device: str = "default") -> None:
        path = Path(folder)
        try:
            config = json.loads((path / "config.json").read_text())
        except (OSError, ValueError) as exc:
            raise InputError(f"{path / 'config.json'}: cannot read the embedder's config ({exc})") from None
        if config.get("model_type") != "bert" or config.get("position_embedding_type", "absolute") != "absolute":
            raise BackendError(f"{folder}: a {config.get('model_type')!r} model; the MLX embedder runs BERT encoders "
                               "(all-MiniLM-L6-v2 and its kin): use --backend torch")
        if not (path / WEIGHTS_FILE).is_file():
            raise InputError(f"{path / WEIGHTS_FILE}: missing; the MLX embedder reads safetensors weights")
        self.pooling = _pooling(path)
        self.model = Bert(config)
        weights = [(local, value) for name, value in mx.load(str(path / WEIGHTS_FILE)).items()
                   if (local := _hf_name(name)) is not None]
        try:
            self.model.load_weights(weights, strict=True)
        except ValueError as exc:
            raise InputError(f"{path / WEIGHTS_FILE}: not the weights of its config.json ({exc})") from None
        dtype = mx.bfloat16 if precision == "bfloat16" else mx.float32
        self.model.set_dtype(dtype)
        mx.eval(self.model.parameters())
        self.dim = int(config["hidden_size"])
        bert_config = path / "sentence_bert_config.json"
        limit = json.loads(bert_config.read_text()).get("max_seq_length") if bert_config.is_file() else None
        self.max_seq_length = int(min(limit or config["max_position_embeddings"], config["max_position_embeddings"]))
        self.pad_id = int(config.get("pad_token_id") or 0)
        self.where = "MLX " + ("CPU" if on_cpu() else "GPU")

    def batch_size(self, requested: int | None) -> int:
        return requested if requested is not None else (64 if on_cpu() else 512)

    def _embed(self, ids: mx.array, keep: mx.array) -> mx.array:
        hidden = self.model(ids, keep).astype(mx.float32)
        if self.pooling == "cls":
            pooled = hidden[:, 0]
        else:
            weights = keep.astype(mx.float32)[..., None]
            pooled = (hidden * weights).sum(axis=1) / mx.maximum(weights.sum(axis=1), 1e-9)
        return pooled / mx.maximum(mx.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)

    def encode(self, batches: Iterable[tuple[np.ndarray, np.ndarray]]) -> Iterator[np.ndarray]:
        """Normalized float32 embeddings (rows, dim) of each (ids, attention mask) batch, in order."""
        pending = None
        for ids, mask in batches:
            current = self._embed(mx.array(ids.astype(np.int32)), mx.array(mask.astype(bool)))
            mx.async_eval(current)
            if pending is not None:
                yield np.array(pending)
            pending = current
        if pending is not None:
            yield np.array(pending)
