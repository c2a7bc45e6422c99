"""Canonical tensor names and shapes (Hugging Face Llama layout), safetensors I/O, random init.

Weights travel between backends as a dict of float32 numpy arrays keyed by canonical name.
The safetensors reader checks the header against the file and the spec before it reads a
single tensor, so a file that lies about shapes or offsets is refused without allocating.
"""

from __future__ import annotations

import json
import math
import os
import re
import struct
from pathlib import Path

import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file

from pnlm.errors import CheckpointError
from pnlm.model.spec import ModelSpec

MAX_HEADER_BYTES = 100 * 1024 * 1024
_ITEMSIZE = {"F32": 4, "F16": 2, "BF16": 2}  # the dtypes pnlm reads, and their bytes
QUANTIZED_ITEMSIZE = {**_ITEMSIZE, "U32": 4}  # and a quantized MLX model's packed weights


def canonical_shapes(spec: ModelSpec) -> dict[str, tuple[int, ...]]:
    """Every tensor of the model, by canonical name, with its shape. A projected network has, in place
    of each MLP matrix's `.weight`, its `.basis` and `.mix`, and one `model.expert_embedding` (pnlm/model/projection.py);
    a soup has beside each its `.bank` and the coefficient network `model.soup.*` (pnlm/model/soup.py)."""
    if spec.projection is not None:
        from pnlm.model.projection import projected_matrices, projection_shapes

        shared = {name: shape for name, shape in canonical_shapes(spec.plain()).items()
                  if name.removesuffix(".weight") not in projected_matrices(spec)}
        return {**shared, **projection_shapes(spec)}
    if spec.soup is not None:  # the plain SLM's tensors (its MLP matrices are the shared S), and the soup's
        from pnlm.model.soup import soup_shapes

        return {**canonical_shapes(spec.plain()), **soup_shapes(spec)}
    d, kv = spec.d_model, spec.n_kv_heads * spec.head_dim
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (spec.vocab_size, d)}
    for i in range(spec.n_layers):
        p = f"model.layers.{i}."
        shapes[p + "input_layernorm.weight"] = (d,)
        shapes[p + "self_attn.q_proj.weight"] = (d, d)
        shapes[p + "self_attn.k_proj.weight"] = (kv, d)
        shapes[p + "self_attn.v_proj.weight"] = (kv, d)
        shapes[p + "self_attn.o_proj.weight"] = (d, d)
        shapes[p + "post_attention_layernorm.weight"] = (d,)
        shapes[p + "mlp.gate_proj.weight"] = (spec.d_ff, d)
        shapes[p + "mlp.up_proj.weight"] = (spec.d_ff, d)
        shapes[p + "mlp.down_proj.weight"] = (d, spec.d_ff)
    shapes["model.norm.weight"] = (d,)
    if not spec.tied_embeddings:
        shapes["lm_head.weight"] = (spec.vocab_size, d)
    return shapes


def init_weights(spec: ModelSpec, seed: int = 0) -> dict[str, np.ndarray]:
    """Random weights in numpy, so a seed gives the same model whichever backend runs it.

    Normal(0, 0.02) everywhere, norms at one, and the projections that write into the
    residual stream (o_proj, down_proj) scaled by 1/sqrt(2 * layers), as in GPT-2.
    """
    rng = np.random.default_rng(seed)
    residual_std = 0.02 / np.sqrt(2 * spec.n_layers)

    def std(name: str) -> float:
        return residual_std if name.endswith(("o_proj.weight", "down_proj.weight", "down_proj")) else 0.02

    weights = {}
    for name, shape in canonical_shapes(spec.plain()).items():
        if spec.projection is not None and ".mlp." in name:
            continue  # a projected network's MLP weights come from init_projection, below
        if name.endswith("norm.weight"):
            weights[name] = np.ones(shape, dtype=np.float32)
        else:
            weights[name] = (rng.standard_normal(shape, dtype=np.float32) * np.float32(std(name)))
    if spec.projection is not None:
        from pnlm.model.projection import init_projection, projected_matrices

        weights.update(init_projection(spec, rng, {prefix: std(prefix) for prefix in projected_matrices(spec)}))
    if spec.soup is not None:
        from pnlm.model.soup import init_soup, souped_matrices

        weights.update(init_soup(spec, rng, {prefix: std(prefix + ".weight") for prefix in souped_matrices(spec)}))
    return weights


def check_shapes(shapes: dict[str, tuple[int, ...]], spec: ModelSpec, source: str) -> None:
    """Same names and shapes as the spec asks for, or a CheckpointError naming the difference."""
    expected = canonical_shapes(spec)
    missing = sorted(set(expected) - set(shapes))
    extra = sorted(set(shapes) - set(expected))
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing {', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}")
        if extra:
            parts.append(f"unexpected {', '.join(extra[:3])}{' ...' if len(extra) > 3 else ''}")
        raise CheckpointError(f"{source}: tensors do not match the spec: {'; '.join(parts)}")
    for name, shape in expected.items():
        if tuple(shapes[name]) != shape:
            raise CheckpointError(f"{source}: {name} has shape {tuple(shapes[name])}, the spec needs {shape}")


def save_safetensors(weights: dict[str, np.ndarray], path: str | Path, metadata: dict[str, str] | None = None) -> None:
    """Write float32 tensors with the safetensors library, fsynced (the caller renames it into place)."""
    try:
        save_file({name: np.ascontiguousarray(array, dtype=np.float32) for name, array in weights.items()},
                  str(path), metadata=metadata)
    except SafetensorError as exc:
        # The library reports the system's refusal (disk full, file too large) in its own error: give it back
        # as the OSError it is, which the atomic writer turns into one line that keeps the previous output.
        code = re.search(r"os error (\d+)", str(exc))
        if code is None:
            raise
        raise OSError(int(code.group(1)), os.strerror(int(code.group(1))), str(path)) from None
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def read_safetensors_header(path: str | Path, dtypes: dict[str, int] = _ITEMSIZE) -> tuple[dict[str, dict], int]:
    """The tensor table of a safetensors file and where its data starts, checked against the file size
    (dtypes: the ones accepted, with their bytes)."""
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) < 8:
            raise CheckpointError(f"{path}: too short for a safetensors file ({size} bytes)")
        (length,) = struct.unpack("<Q", raw)
        if length > MAX_HEADER_BYTES or 8 + length > size:
            raise CheckpointError(f"{path}: safetensors header claims {length} bytes, the file has {size}")
        try:
            header = json.loads(f.read(length))
        except (ValueError, RecursionError) as exc:
            raise CheckpointError(f"{path}: safetensors header is not valid JSON: {exc}") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: safetensors header is not a table")
    header.pop("__metadata__", None)
    data_start, data_size = 8 + length, size - 8 - length
    for name, entry in header.items():
        if not isinstance(entry, dict) or entry.get("dtype") not in dtypes:
            raise CheckpointError(f"{path}: tensor {name}: dtype must be one of {', '.join(dtypes)}")
        shape, offsets = entry.get("shape"), entry.get("data_offsets")
        if (not isinstance(shape, list) or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape)
                or not isinstance(offsets, list) or len(offsets) != 2
                or not all(isinstance(n, int) and not isinstance(n, bool) for n in offsets)):
            raise CheckpointError(f"{path}: tensor {name}: malformed shape or data_offsets")
        begin, end = offsets
        itemsize = dtypes[entry["dtype"]]
        # math.prod on Python ints: an int64 product of [2**32, 2**32] wraps to 0, and 2**64 overflows numpy.
        if not 0 <= begin <= end <= data_size or end - begin != math.prod(shape) * itemsize:
            raise CheckpointError(f"{path}: tensor {name}: data_offsets {offsets} do not fit shape {shape} "
                                  f"and the {data_size} bytes of data")
    return header, data_start


def load_safetensors(path: str | Path, spec: ModelSpec | None = None) -> dict[str, np.ndarray]:
    """float32 numpy arrays by name, read with the safetensors library once the header passed the checks
    it does not make (read_safetensors_header); with a spec, names and shapes are checked before any read.
    bfloat16 tensors, which numpy cannot hold, are widened from their bytes here (no torch needed)."""
    path = Path(path)
    header, data_start = read_safetensors_header(path)
    if spec is not None:
        check_shapes({name: tuple(entry["shape"]) for name, entry in header.items()}, spec, str(path))
    weights = {}
    try:
        with safe_open(str(path), framework="numpy") as tensors, open(path, "rb") as raw:
            for name, entry in header.items():
                if entry["dtype"] == "BF16":
                    begin, end = entry["data_offsets"]
                    raw.seek(data_start + begin)
                    bits = np.fromfile(raw, dtype=np.uint16, count=(end - begin) // 2).reshape(entry["shape"])
                    weights[name] = (bits.astype(np.uint32) << 16).view(np.float32)
                else:
                    weights[name] = tensors.get_tensor(name).astype(np.float32, copy=False)
    except SafetensorError as exc:
        raise CheckpointError(f"{path}: not a valid safetensors file: {exc}") from None
    return weights
