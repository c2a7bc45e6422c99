"""Model folders pnlm did not write as checkpoints but runs as they are: a Hugging Face Llama folder (what
`pnlm export --format hf` writes) or an MLX one, quantized to 4 or 8 bits by mlx-lm (`pnlm export --format
mlx --quantize 4`). `pnlm.load` and `pnlm generate` take either; a quantized one runs on MLX only.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pnlm.checkpoints.checkpoint import MANIFEST_FILE, read_json
from pnlm.errors import CheckpointError, PnlmError
from pnlm.checkpoints.hf import folder_tokenizer, read_hf_config, spec_from_hf, weight_files
from pnlm.model.spec import ModelSpec
from pnlm.tokenizer import Tokenizer
from pnlm.checkpoints.weights import QUANTIZED_ITEMSIZE, read_safetensors_header

BITS = (2, 3, 4, 5, 6, 8)


@dataclass
class Quantization:
    bits: int
    group_size: int


@dataclass
class ModelFolder:
    path: Path
    spec: ModelSpec
    tokenizer: Tokenizer
    weight_files: list[Path]
    quantization: Quantization | None


def is_model_folder(path: str | Path) -> bool:
    """A folder whose config.json is a model's (model_type) rather than a pnlm checkpoint's (format): a pnlm
    checkpoint that lost its manifest is still one, and gets the checkpoint's error."""
    path = Path(path)
    if not (path / "config.json").is_file() or (path / MANIFEST_FILE).is_file():
        return False
    try:
        config = read_json(path / "config.json")
    except PnlmError:
        return False
    return "format" not in config and "model_type" in config


def is_quantized_folder(path: str | Path) -> bool:
    """A model folder whose config.json declares a quantization (mlx-lm's): only MLX runs it."""
    return is_model_folder(path) and read_json(Path(path) / "config.json").get("quantization") is not None


def read_model_folder(path: str | Path) -> ModelFolder:
    """Its spec, tokenizer (tokenizer.model or tokenizer.json), weight files (headers checked) and quantization."""
    path = Path(path)
    config = read_hf_config(path)
    source = str(path / "config.json")
    spec = spec_from_hf(config, source)
    if spec.projection is not None:
        raise CheckpointError(f"{source}: a projected network is not a model folder")
    quantization = None
    if config.get("quantization") is not None:
        q = config["quantization"]
        if not isinstance(q, dict) or q.get("mode", "affine") != "affine" or q.get("bits") not in BITS \
                or isinstance(q.get("group_size"), bool) or q.get("group_size") not in (32, 64, 128):
            raise CheckpointError(f"{source}: quantization must be affine, bits one of {BITS} and group_size 32, "
                                  f"64 or 128, not {q!r}"[:400])
        quantization = Quantization(int(q["bits"]), int(q["group_size"]))
    files = weight_files(path)
    for file in files:
        read_safetensors_header(file, QUANTIZED_ITEMSIZE)  # bounded and checked before MLX reads it
    tokenizer = folder_tokenizer(path, spec)
    return ModelFolder(path, spec, tokenizer, files, quantization)
