"""LoRA adapters in PEFT's format, both ways.

pnlm's adapters already have PEFT's layout: lora_A (rank, in), lora_B (out, rank), an update scaled by
alpha / rank. Only the names and the configuration differ:

    pnlm     model.layers.0.self_attn.q_proj.lora_A
    PEFT     base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight

Export writes OUT/adapter_config.json and OUT/adapter_model.safetensors, with the base beside them in
OUT/base (a Hugging Face Llama folder, pnlm/checkpoints/hf.py) that adapter_config.json names, so that
`PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained("OUT/base"), "OUT")` runs as is. Import
reads a PEFT LoRA adapter of a Llama model back onto a pnlm base checkpoint of the same shape.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from pnlm.checkpoints.adapter_checkpoint import load_adapter_checkpoint, save_adapter_checkpoint
from pnlm.files.atomic import atomic_dir
from pnlm.checkpoints.checkpoint import ADAPTER_FORMAT, checkpoint_kind, load_checkpoint, read_json
from pnlm.errors import CheckpointError, PnlmError
from pnlm.checkpoints.hf import write_hf_folder
from pnlm.model.lora import LAYER_MODULES, LoraSpec, check_adapters
from pnlm.checkpoints.weights import load_safetensors, read_safetensors_header, save_safetensors

PEFT_CONFIG = "adapter_config.json"
PEFT_WEIGHTS = "adapter_model.safetensors"
PREFIX, SUFFIX = "base_model.model.", ".weight"
BASE_FOLDER = "base"
# What an adapter_config.json may set to anything: pnlm's LoRA itself, and facts that do not change what the
# adapter computes. Every other setting must stay at PEFT's default (empty, off, or the value below): DoRA,
# rsLoRA, biases, aLoRA's invocation tokens, layer patterns, replication... change the computation while
# keeping the tensors' names and shapes, so an adapter that sets one is refused, by name.
FREE = {"peft_type", "task_type", "r", "lora_alpha", "target_modules", "lora_dropout", "init_lora_weights",
        "base_model_name_or_path", "inference_mode", "revision", "peft_version", "auto_mapping"}
DEFAULTS = {"bias": "none", "megatron_core": "megatron.core", "qalora_group_size": 16}


def peft_config(lora: LoraSpec, base: str) -> dict:
    return {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": lora.rank, "lora_alpha": lora.alpha,
            "target_modules": sorted(lora.targets), "lora_dropout": 0.0, "base_model_name_or_path": base,
            "inference_mode": True, "init_lora_weights": True, "bias": "none", "use_rslora": False,
            "use_dora": False, "fan_in_fan_out": False, "modules_to_save": None, "layers_to_transform": None}


def write_peft(adapters_path: str | Path, out: str | Path) -> Path:
    """An adapter folder (pnlm finetune --lora-rank) as a PEFT LoRA adapter beside its base in OUT/base."""
    adapters_path, out = Path(adapters_path), Path(out)
    if checkpoint_kind(adapters_path) != ADAPTER_FORMAT:
        raise CheckpointError(f"{adapters_path}: not LoRA adapters (pnlm finetune --lora-rank R writes them); "
                              f"export a whole model with --format hf")
    adapter = load_adapter_checkpoint(adapters_path)
    with atomic_dir(out) as tmp:
        write_hf_folder(adapter.base, tmp / BASE_FOLDER)  # the base load_adapter_checkpoint verified
        config = peft_config(adapter.lora, str((out / BASE_FOLDER).resolve()))
        (tmp / PEFT_CONFIG).write_text(json.dumps(config, indent=2) + "\n")
        save_safetensors({f"{PREFIX}{name}{SUFFIX}": array for name, array in adapter.adapters.items()},
                         tmp / PEFT_WEIGHTS, metadata={"format": "pt"})
    return out


def is_peft_adapter(folder: str | Path) -> bool:
    return (Path(folder) / PEFT_CONFIG).is_file()


def read_peft(folder: str | Path, base: str | Path, out: str | Path) -> Path:
    """A PEFT LoRA adapter of a Llama model as a pnlm adapter folder on the pnlm checkpoint `base`."""
    folder, base = Path(folder), Path(base)
    source = str(folder / PEFT_CONFIG)
    config = read_json(folder / PEFT_CONFIG)  # bounded, a JSON object, or a clear error
    if config.get("peft_type") != "LORA":
        raise CheckpointError(f"{source}: peft_type {config.get('peft_type')!r}; pnlm reads LoRA adapters only")
    for key, value in config.items():
        if key not in FREE and value != DEFAULTS.get(key) and value not in (None, False, {}, [], ""):
            raise CheckpointError(f"{source}: {key} = {value!r}: a setting pnlm's LoRA does not have (it "
                                  f"computes x·Wᵀ + (alpha/r)·(x·Aᵀ)·Bᵀ on whole layers, nothing else)"[:400])
    rank, alpha, targets = config.get("r"), config.get("lora_alpha"), config.get("target_modules")
    if isinstance(rank, bool) or not isinstance(rank, int) or isinstance(alpha, bool) \
            or not isinstance(alpha, (int, float)):
        raise CheckpointError(f"{source}: r must be an integer and lora_alpha a number")
    if not isinstance(targets, list) or not all(isinstance(t, str) for t in targets):
        raise CheckpointError(f"{source}: target_modules must be a list of layer names (a pattern is not read)")
    unknown = sorted(set(targets) - set(LAYER_MODULES))
    if unknown:
        raise CheckpointError(f"{source}: target_modules {', '.join(unknown)}: pnlm adapts "
                              f"{', '.join(LAYER_MODULES)}")
    base_checkpoint = load_checkpoint(base)
    if base_checkpoint.spec.projection is not None or base_checkpoint.spec.soup is not None:
        raise CheckpointError(f"{base}: a projected network or a soup; adapt a plain model of it (pnlm instantiate)")
    lora = LoraSpec(rank, float(alpha), tuple(t for t in LAYER_MODULES if t in targets))
    try:
        lora.validate(base_checkpoint.spec)
    except PnlmError as exc:
        raise CheckpointError(f"{source}: {exc}") from None
    weights_path = folder / PEFT_WEIGHTS
    if not weights_path.is_file():
        raise CheckpointError(f"{folder}: no {PEFT_WEIGHTS}")
    header, _ = read_safetensors_header(weights_path)  # bounded and checked before any tensor is read
    names = [name for name in header if name != "__metadata__"]
    foreign = [name for name in names if not (name.startswith(PREFIX) and name.endswith(SUFFIX))]
    if foreign:
        raise CheckpointError(f"{weights_path}: tensors that are not PEFT LoRA weights: {', '.join(foreign[:3])}")
    adapters = {name[len(PREFIX):-len(SUFFIX)]: np.asarray(array, dtype=np.float32)
                for name, array in load_safetensors(weights_path).items()}
    check_adapters(adapters, base_checkpoint.spec, lora, str(weights_path))
    return save_adapter_checkpoint(out, base, base_checkpoint, lora, adapters, base_checkpoint.method)
