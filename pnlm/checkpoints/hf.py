"""The Hugging Face Llama format: export a pnlm checkpoint for transformers and mlx-lm, import a local
Llama folder as a pnlm checkpoint.

pnlm's canonical weights already carry the Llama names and layouts, so the weights pass unchanged;
what this module writes and reads is the configuration around them. A SentencePiece tokenizer goes
both ways as tokenizer.model; on export, tokenizer.json (built by transformers from it, with a BOS token
first, as pnlm encodes) makes `AutoTokenizer` give pnlm's ids. A folder with tokenizer.json only (the
`tokenizers` library's format, modern Llama-architecture models) imports with it and exports it back.
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from pnlm.files.atomic import atomic_dir
from pnlm.checkpoints.checkpoint import Checkpoint, load_checkpoint, read_json, save_checkpoint
from pnlm.errors import CheckpointError, PnlmError
from pnlm.model.spec import ModelSpec
from pnlm.tokenizer import HF_TOKENIZER_CONFIG, HF_TOKENIZER_FILE, TOKENIZER_FILE, Tokenizer, load_tokenizer
from pnlm.checkpoints.weights import load_safetensors, read_safetensors_header, save_safetensors

def hf_config(spec: ModelSpec, bos_id: int, eos_id: int) -> dict[str, Any]:
    rope = {"rope_type": "default", "rope_theta": spec.rope_theta}
    scaling = None
    if spec.rope_scaling is not None:
        s = spec.rope_scaling
        scaling = {"rope_type": "llama3", "factor": s.factor, "low_freq_factor": s.low_freq_factor,
                   "high_freq_factor": s.high_freq_factor, "original_max_position_embeddings": s.original_context}
        rope = {**scaling, "rope_theta": spec.rope_theta}
    return {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "vocab_size": spec.vocab_size, "hidden_size": spec.d_model, "intermediate_size": spec.d_ff,
        "num_hidden_layers": spec.n_layers, "num_attention_heads": spec.n_heads,
        "num_key_value_heads": spec.n_kv_heads, "head_dim": spec.head_dim, "hidden_act": "silu",
        "max_position_embeddings": spec.context, "rms_norm_eps": spec.norm_eps,
        "rope_theta": spec.rope_theta,  # top level: what mlx-lm reads
        "rope_parameters": rope,  # what transformers 5 reads
        **({"rope_scaling": scaling} if scaling else {}),  # what mlx-lm and transformers 4 read
        "tie_word_embeddings": spec.tied_embeddings, "attention_bias": False, "mlp_bias": False,
        "bos_token_id": bos_id, "eos_token_id": eos_id, "torch_dtype": "float32",
    }


def export_hf(checkpoint: str | Path, out: str | Path) -> Path:
    """Write a Hugging Face Llama folder (config.json, model.safetensors, tokenizer files,
    generation_config.json) for a plain pnlm checkpoint, atomically."""
    from pnlm.checkpoints.checkpoint import ADAPTER_FORMAT, checkpoint_kind

    checkpoint = Path(checkpoint)
    if checkpoint_kind(checkpoint) == ADAPTER_FORMAT:
        raise PnlmError(f"{checkpoint}: LoRA adapters; export the fused model: pnlm fuse {checkpoint} --out CKPT")
    model = load_checkpoint(checkpoint)
    if model.spec.projection is not None or model.spec.soup is not None:
        what = "a projected network; export one expert" if model.spec.projection else "a soup of experts; export a domain's model"
        raise PnlmError(f"{checkpoint}: {what}: pnlm instantiate {checkpoint} --domain STORE --out CKPT")
    return write_hf_folder(model, out)


def write_hf_folder(model: Checkpoint, out: str | Path) -> Path:
    """A loaded plain model as a Hugging Face Llama folder, atomically (export_hf's writing half)."""
    tokenizer = model.tokenizer
    with atomic_dir(out) as tmp:
        (tmp / "config.json").write_text(json.dumps(hf_config(model.spec, tokenizer.bos_id, tokenizer.eos_id),
                                                    indent=2) + "\n")
        (tmp / "generation_config.json").write_text(json.dumps(
            {"bos_token_id": tokenizer.bos_id, "eos_token_id": tokenizer.eos_id, "do_sample": False}, indent=2) + "\n")
        save_safetensors(model.weights, tmp / "model.safetensors", metadata={"format": "pt"})
        tokenizer.copy_to(tmp)
        if tokenizer.path.name == TOKENIZER_FILE:
            _write_hf_tokenizer(tmp, model.spec.context)
    return Path(out)


def _write_hf_tokenizer(folder: Path, context: int) -> None:
    """tokenizer.json and tokenizer_config.json from tokenizer.model, with transformers."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        from transformers import LlamaTokenizer
    except ImportError as exc:
        raise PnlmError(f"export needs transformers to write tokenizer.json: pip install transformers ({exc})") from None
    hf = LlamaTokenizer.from_pretrained(str(folder), add_bos_token=True, add_eos_token=False, legacy=True)
    hf.model_max_length = context
    hf.save_pretrained(str(folder))
    # SentencePiece always adds its dummy "▁" prefix, also before text that starts with a space;
    # tokenizers' Metaspace adds it only where the text does not already start with one, which changes
    # the ids of lines with leading whitespace (code). Prepend-then-replace normalizes as SentencePiece does.
    tokenizer_path = folder / "tokenizer.json"
    tokenizer_json = json.loads(tokenizer_path.read_text(encoding="utf-8"))
    tokenizer_json["normalizer"] = {"type": "Sequence", "normalizers": [
        {"type": "Prepend", "prepend": "\u2581"}, {"type": "Replace", "pattern": {"String": " "}, "content": "\u2581"}]}
    tokenizer_json["pre_tokenizer"] = None
    tokenizer_path.write_text(json.dumps(tokenizer_json, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    config_path = folder / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    for key in ("is_local", "local_files_only"):  # facts of this save, not of the model
        config.pop(key, None)
    # LlamaTokenizer would rebuild the Metaspace pre-tokenizer over the normalizer above; the generic
    # fast tokenizer loads tokenizer.json as it is.
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    config_path.write_text(json.dumps(config, indent=2) + "\n")


def read_hf_config(folder: Path) -> dict[str, Any]:
    path = folder / "config.json"
    if not path.is_file():
        raise CheckpointError(f"{folder}: no config.json; not a Hugging Face model folder")
    config = read_json(path)  # bounded in size, a JSON object, or a clear error
    if config.get("model_type") != "llama":
        raise CheckpointError(f"{path}: model_type {config.get('model_type')!r}; pnlm imports Llama models only")
    return config


_MISSING = object()


def _field(config: dict[str, Any], key: str, source: str, kind: str, default: Any = _MISSING) -> Any:
    """config[key] checked to be of its kind: "count" (an integer >= 1), "number" (finite, > 0), "flag" (true or
    false, not a string), "object" (a JSON object or absent). A missing key takes the default, or is an error."""
    value = config.get(key, default)
    if value is _MISSING:
        raise CheckpointError(f"{source}: missing {key!r}")
    if value is None and kind == "object":
        return {}
    ok = {"count": lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1,
          "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0,
          "flag": lambda v: isinstance(v, bool),
          "object": lambda v: isinstance(v, dict)}[kind](value)
    if not ok:
        expected = {"count": "a whole number >= 1", "number": "a finite number > 0", "flag": "true or false",
                    "object": "a JSON object"}[kind]
        raise CheckpointError(f"{source}: {key} must be {expected}, not {value!r}"[:400])
    return value


def _rope_scaling(config: dict[str, Any], source: str) -> dict[str, Any] | None:
    """Llama 3's RoPE scaling from rope_scaling (transformers 4, mlx-lm) or rope_parameters (transformers 5);
    None for plain RoPE; any other kind refused by name."""
    rope = _field(config, "rope_parameters", source, "object", None)
    scaling = _field(config, "rope_scaling", source, "object", None) or rope
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    if kind == "default":
        return None
    if kind != "llama3":
        raise CheckpointError(f"{source}: RoPE scaling of type {kind!r} is not supported (plain or llama3)"[:400])
    where = f"{source} (rope scaling)"
    return {"factor": float(_field(scaling, "factor", where, "number")),
            "low_freq_factor": float(_field(scaling, "low_freq_factor", where, "number")),
            "high_freq_factor": float(_field(scaling, "high_freq_factor", where, "number")),
            "original_context": _field(scaling, "original_max_position_embeddings", where, "count")}


def spec_from_hf(config: dict[str, Any], source: str) -> ModelSpec:
    rope = _field(config, "rope_parameters", source, "object", None)
    scaling = _rope_scaling(config, source)
    if _field(config, "attention_bias", source, "flag", False) or _field(config, "mlp_bias", source, "flag", False):
        raise CheckpointError(f"{source}: attention or MLP biases are not supported")
    partial = config.get("partial_rotary_factor", 1.0)
    if partial != 1.0 and partial != 1:
        raise CheckpointError(f"{source}: partial_rotary_factor {partial!r}: pnlm rotates whole heads (1.0)"[:400])
    heads, width = _field(config, "num_attention_heads", source, "count"), _field(config, "hidden_size", source, "count")
    head_dim = config.get("head_dim")
    if head_dim is not None and head_dim != width // heads:
        raise CheckpointError(f"{source}: head_dim {head_dim!r} differs from hidden_size / heads ({width // heads})")
    kv_heads = config.get("num_key_value_heads")
    data = {"vocab_size": _field(config, "vocab_size", source, "count"), "d_model": width,
            "n_layers": _field(config, "num_hidden_layers", source, "count"), "n_heads": heads,
            "n_kv_heads": heads if kv_heads is None else _field(config, "num_key_value_heads", source, "count"),
            "d_ff": _field(config, "intermediate_size", source, "count"),
            "context": _field(config, "max_position_embeddings", source, "count", 2048),
            "rope_theta": float(_field(config, "rope_theta", source, "number",
                                       _field(rope, "rope_theta", source, "number", 10000.0))),
            "norm_eps": float(_field(config, "rms_norm_eps", source, "number", 1e-6)),
            "tied_embeddings": _field(config, "tie_word_embeddings", source, "flag", False),
            **({"rope_scaling": scaling} if scaling else {})}
    return ModelSpec.from_dict(data, source=source)


HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,95}/[A-Za-z0-9][A-Za-z0-9_.-]{0,95}")


def model_folder(source: str | Path) -> Path:
    """A local folder as it is; a Hugging Face Hub id (owner/name) that is not a local path, downloaded into the
    Hub's cache with huggingface_hub: config.json and the tokenizer first, checked, and only then the
    weights (a model pnlm would refuse is refused before gigabytes come down)."""
    path = Path(source)
    if path.exists() or str(source).startswith((".", "/", "~")) or not HUB_ID.fullmatch(str(source)):
        return path
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise PnlmError(f"{source}: no such folder; to download it from the Hugging Face Hub install "
                        f"huggingface_hub (pip install 'pnlm[hf]')") from None

    def download(patterns: list[str]) -> Path:
        try:
            return Path(snapshot_download(str(source), allow_patterns=patterns))
        except Exception as exc:  # no network, offline mode, unknown or gated repository: one line, whichever
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise PnlmError(f"{source}: no such folder, and it could not be downloaded from the Hugging Face "
                            f"Hub ({type(exc).__name__}: {reason})"[:500]) from None

    tokenizer_files = [TOKENIZER_FILE, HF_TOKENIZER_FILE, HF_TOKENIZER_CONFIG]
    folder = download(["config.json", *tokenizer_files])
    folder_tokenizer(folder, spec_from_hf(read_hf_config(folder), f"{source}: config.json"))
    return download(["config.json", *tokenizer_files, "model*.safetensors", "model.safetensors.index.json",
                     "generation_config.json"])


def folder_tokenizer(folder: Path, spec: ModelSpec) -> Tokenizer:
    """A Llama folder's tokenizer (tokenizer.model, else tokenizer.json), checked against config.json's vocabulary."""
    if not (folder / TOKENIZER_FILE).is_file() and not (folder / HF_TOKENIZER_FILE).is_file():
        raise CheckpointError(f"{folder}: no {TOKENIZER_FILE} or {HF_TOKENIZER_FILE}; pnlm needs the model's tokenizer")
    tokenizer = load_tokenizer(folder)
    if tokenizer.vocab_size != spec.vocab_size:
        raise CheckpointError(f"{folder}: tokenizer has {tokenizer.vocab_size} pieces, config.json says {spec.vocab_size}")
    return tokenizer


def weight_files(folder: Path) -> list[Path]:
    """A Llama folder's safetensors files: the shards its index names (files of the folder), or model.safetensors."""
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        weight_map = read_json(index).get("weight_map")  # bounded in size, a JSON object, or a clear error
        if not isinstance(weight_map, dict) or not weight_map or not all(
                isinstance(name, str) and isinstance(shard, str) and Path(shard).name == shard
                for name, shard in weight_map.items()):
            raise CheckpointError(f"{index}: weight_map must map tensor names to file names in the folder")
        shards = sorted(set(weight_map.values()))
    else:
        shards = ["model.safetensors"]
    for shard in shards:
        if not (folder / shard).is_file():
            raise CheckpointError(f"{folder}: weights file {shard} is missing")
    return [folder / shard for shard in shards]


def import_hf(folder: str | Path, out: str | Path) -> Path:
    """A Hugging Face Llama folder (one or several safetensors files), local or a Hub id, as a pnlm checkpoint."""
    folder = model_folder(folder)
    spec = spec_from_hf(read_hf_config(folder), str(folder / "config.json"))
    tokenizer = folder_tokenizer(folder, spec)
    weights: dict[str, np.ndarray] = {}
    for path in weight_files(folder):
        header, _ = read_safetensors_header(path)
        names = [n for n in header if n != "__metadata__"]
        unknown = [n for n in names if "rotary_emb" not in n and not n.startswith(("model.", "lm_head."))]
        if unknown:
            raise CheckpointError(f"{path}: tensors pnlm does not know: {', '.join(unknown[:3])}")
        weights.update({n: v.astype(np.float32) for n, v in load_safetensors(path).items() if "rotary_emb" not in n})
    if spec.tied_embeddings:
        weights.pop("lm_head.weight", None)
    return save_checkpoint(out, spec, weights, tokenizer, "slm", extra={"imported_from": str(folder.resolve())})
