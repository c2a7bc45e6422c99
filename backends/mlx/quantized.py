"""Quantized models on MLX: mlx-lm's conversion writes them (`pnlm export --format mlx --quantize 4`), and
pnlm runs the folder as it is, with MLX's own quantized layers and the same rule of which layers are
quantized (those with `to_quantized` whose input width the group size divides), so mlx-lm's weight names
and packing load unchanged."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn

from pnlm.errors import BackendError


def load_quantized(model: nn.Module, folder) -> None:
    """Quantize model's layers as mlx-lm did and load the folder's packed weights, scales and biases."""
    q = folder.quantization
    nn.quantize(model, group_size=q.group_size, bits=q.bits,
                class_predicate=lambda _, module: hasattr(module, "to_quantized")
                and module.weight.shape[-1] % q.group_size == 0)
    weights = {}
    for file in folder.weight_files:
        weights.update(mx.load(str(file)))
    try:
        model.load_weights(list(weights.items()), strict=True)
    except ValueError as exc:
        raise BackendError(f"{folder.path}: its weights do not fit a {q.bits}-bit model of its config.json: "
                           f"{str(exc).splitlines()[0]}"[:400]) from None


def convert(hf_folder: Path, out: Path, bits: int | None, group_size: int) -> None:
    """mlx-lm's own conversion of a Hugging Face folder into an MLX one (quantized when bits is given)."""
    try:
        from mlx_lm.convert import convert as mlx_lm_convert
    except ImportError as exc:
        raise BackendError(f"--format mlx needs mlx-lm: pip install 'pnlm[mlx]' ({exc})") from None
    with contextlib.redirect_stdout(io.StringIO()):  # its progress lines, not pnlm's output
        mlx_lm_convert(str(hf_folder), str(out), quantize=bits is not None, q_bits=bits, q_group_size=group_size,
                       dtype="float32")  # pnlm's weights as they are; only the quantized layers change
