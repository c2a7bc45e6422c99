"""Model folders pnlm did not write as checkpoints but runs as they are: a Hugging Face Llama folder (what
`pnlm export --format hf` writes) or an MLX one, quantized to 4 or 8 bits by mlx-lm (`pnlm export --format
mlx --quantize 4`). `pnlm.load` and `pnlm generate` take either; a quantized one runs on MLX only.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pnlm.checkpoint import MANIFEST_FILE, read_json
from pnlm.errors import CheckpointError, PnlmError
from pnlm.hf import read_hf_config, spec_from_hf
from pnlm.spec import ModelSpec
from pnlm.tokenizer import TOKENIZER_FILE, Tokenizer, load_tokenizer
from pnlm.weights import QUANTIZED_ITEMSIZE, read_safetensors_header

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


def read_model_folder(path: str | Path) -> ModelFolder:
    """Its spec, tokenizer (tokenizer.model), weight files (headers checked) and quantization."""
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
    index = path / "model.safetensors.index.json"
    if index.is_file():
        weight_map = read_json(index).get("weight_map")
        if not isinstance(weight_map, dict) or not all(isinstance(f, str) and Path(f).name == f
                                                       for f in weight_map.values()):
            raise CheckpointError(f"{index}: weight_map must map tensor names to file names in the folder")
        files = [path / name for name in sorted(set(weight_map.values()))]
    else:
        files = [path / "model.safetensors"]
    for file in files:
        if not file.is_file():
            raise CheckpointError(f"{path}: weights file {file.name} is missing")
        read_safetensors_header(file, QUANTIZED_ITEMSIZE)  # bounded and checked before MLX reads it
    if not (path / TOKENIZER_FILE).is_file():
        raise CheckpointError(f"{path}: no {TOKENIZER_FILE}; pnlm runs folders with its SentencePiece tokenizer "
                              f"(those `pnlm export` writes)")
    tokenizer = load_tokenizer(path / TOKENIZER_FILE)
    if tokenizer.vocab_size != spec.vocab_size:
        raise CheckpointError(f"{path}: tokenizer has {tokenizer.vocab_size} pieces, config.json says {spec.vocab_size}")
    return ModelFolder(path, spec, tokenizer, files, quantization)
