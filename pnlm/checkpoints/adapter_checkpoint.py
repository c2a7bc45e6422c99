"""Adapter folders: LoRA adapters saved beside the checkpoint they adapt, not a copy of it.

    config.json            format "pnlm-adapter", the base model's spec, the adapter settings, and
                           the base checkpoint: its path and the sha256 of its model.safetensors
    adapters.safetensors   lora_A and lora_B of every adapted layer (pnlm/model/lora.py)
    tokenizer.model        the base's (or its tokenizer.json + tokenizer_config.json), so the folder names
                           its own tokenizer
    manifest.json          sha256 of every file, written last (as in pnlm/checkpoints/checkpoint.py)

Loading one loads and verifies the base too, and refuses a base whose weights changed. `pnlm fuse`
turns base + adapters into a plain checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pnlm.files.atomic import atomic_dir
from pnlm.checkpoints.checkpoint import (ADAPTER_FILE, ADAPTER_FORMAT, CONFIG_FILE, VERSION, WEIGHTS_FILE, Checkpoint,
                             check_optimizer_state, load_checkpoint, read_spec, read_training_state, save_checkpoint,
                             verified_tokenizer, verify_checkpoint, write_json, write_manifest, write_training_state)
from pnlm.errors import CheckpointError, PnlmError
from pnlm.model.lora import LoraSpec, check_adapters, fuse
from pnlm.tokenizer import file_sha256
from pnlm.checkpoints.weights import load_safetensors, save_safetensors


@dataclass
class AdapterCheckpoint:
    lora: LoraSpec
    adapters: dict[str, np.ndarray]
    base: Checkpoint
    base_path: Path
    method: str

    def fused(self) -> dict[str, np.ndarray]:
        return fuse(self.base.weights, self.adapters, self.base.spec, self.lora)


def save_adapter_checkpoint(path: str | Path, base_path: str | Path, base: Checkpoint, lora: LoraSpec,
                            adapters: dict[str, np.ndarray], method: str = "slm",
                            optimizer_state: dict[str, np.ndarray] | None = None,
                            trainer_state: dict[str, Any] | None = None) -> Path:
    """Write an adapter folder atomically (see pnlm/checkpoints/checkpoint.py for the guarantees)."""
    path, base_path = Path(path), Path(base_path).resolve()
    check_adapters(adapters, base.spec, lora, str(path))
    with atomic_dir(path) as tmp:
        config = {"format": ADAPTER_FORMAT, "version": VERSION, "method": method, "spec": base.spec.to_dict(),
                  "tokenizer": {"file": base.tokenizer.path.name, "sha256": base.tokenizer.sha256},
                  "adapter": lora.to_dict(),
                  "base": {"path": str(base_path), "sha256": file_sha256(base_path / WEIGHTS_FILE)}}
        write_json(tmp / CONFIG_FILE, config)
        save_safetensors(adapters, tmp / ADAPTER_FILE, metadata={"format": "pt"})
        names = [CONFIG_FILE, ADAPTER_FILE, *base.tokenizer.copy_to(tmp)]
        names += write_training_state(tmp, optimizer_state, trainer_state)
        write_manifest(tmp, names, base.tokenizer, ADAPTER_FORMAT)
    return path


def load_adapter_checkpoint(path: str | Path, base: str | Path | None = None) -> AdapterCheckpoint:
    """Verify an adapter folder and its base (the recorded path, or `base` if the base has moved)."""
    path = Path(path)
    config = verify_checkpoint(path, ADAPTER_FORMAT)
    spec = read_spec(path, config)
    try:
        lora = LoraSpec.from_dict(config.get("adapter"), str(path / CONFIG_FILE))
    except PnlmError as exc:
        raise CheckpointError(str(exc)) from None
    try:
        lora.validate(spec)
        recorded = config["base"]
        base_path = Path(base) if base is not None else Path(recorded["path"])
        base_sha = str(recorded["sha256"])
    except (KeyError, TypeError) as exc:
        raise CheckpointError(f"{path / CONFIG_FILE}: no valid base checkpoint entry ({exc})") from None
    except PnlmError as exc:
        raise CheckpointError(f"{path / CONFIG_FILE}: {exc}") from None
    if not base_path.is_dir():
        raise CheckpointError(f"{path}: its base checkpoint {base_path} is not there; "
                              f"pass the base's new location (base=... / --base)")
    try:
        base_checkpoint = load_checkpoint(base_path)
    except PnlmError as exc:
        raise CheckpointError(f"{path}: its base checkpoint is not usable: {exc}") from None
    if file_sha256(base_path / WEIGHTS_FILE) != base_sha:
        raise CheckpointError(f"{path}: its base {base_path} has other weights than the ones it was trained on")
    if base_checkpoint.spec != spec:
        raise CheckpointError(f"{path}: its base {base_path} has another shape than config.json records")
    tokenizer = verified_tokenizer(path, config)
    if tokenizer.sha256 != base_checkpoint.tokenizer.sha256:
        raise CheckpointError(f"{path}: its tokenizer differs from its base's")
    adapters = load_safetensors(path / ADAPTER_FILE)
    try:
        check_adapters(adapters, spec, lora, str(path / ADAPTER_FILE))
    except PnlmError as exc:
        raise CheckpointError(str(exc)) from None
    return AdapterCheckpoint(lora, adapters, base_checkpoint, base_path, str(config.get("method", "slm")))


def load_adapter_resumable(path: str | Path) -> tuple[AdapterCheckpoint, dict[str, np.ndarray], dict[str, Any]]:
    checkpoint = load_adapter_checkpoint(path)
    return (checkpoint, *read_training_state(path))


def fuse_checkpoint(path: str | Path, out: str | Path, base: str | Path | None = None) -> Path:
    """A plain checkpoint with base + adapters merged into the weights."""
    adapter = load_adapter_checkpoint(path, base)
    for source, what in ((Path(path), "the adapters'"), (adapter.base_path, f"their base's ({adapter.base_path})")):
        if Path(out).resolve() == source.resolve():
            raise PnlmError(f"{out}: the fused checkpoint needs another folder than {what}")
    return save_checkpoint(out, adapter.base.spec, adapter.fused(), adapter.base.tokenizer, adapter.method,
                           extra={"fused_from": {"adapters": str(Path(path).resolve()),
                                                 "base": str(adapter.base_path.resolve())}})


class AdapterWriter:
    """How a LoRA run saves and restores (pnlm/training/loop.py): adapter folders that name their base."""

    def __init__(self, base_path: str | Path, base: Checkpoint, lora: LoraSpec, method: str) -> None:
        self.base_path, self.base, self.lora, self.method = Path(base_path), base, lora, method

    def save(self, path: Path, step_fn: Any, trainer_state: dict[str, Any], with_state: bool, write: bool) -> None:
        if not write:  # another rank of a torchrun job: the adapters are not sharded, rank 0 alone copies them
            return
        adapters = step_fn.model.adapter_weights()
        optimizer_state = step_fn.optimizer_state() if with_state else None
        save_adapter_checkpoint(path, self.base_path, self.base, self.lora, adapters, self.method,
                                optimizer_state=optimizer_state, trainer_state=trainer_state)

    def restore(self, path: Path, step_fn: Any) -> dict[str, Any]:
        """Load adapters and optimizer state into step_fn; return the trainer state."""
        checkpoint, optimizer_state, trainer = load_adapter_resumable(path)
        if checkpoint.lora != self.lora:
            raise CheckpointError(f"{path}: holds adapters of other settings ({checkpoint.lora})")
        check_optimizer_state(optimizer_state, checkpoint.adapters, path)
        step_fn.model.load_adapters(checkpoint.adapters)
        step_fn.load_optimizer_state(optimizer_state)
        return trainer
