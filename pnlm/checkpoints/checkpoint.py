"""Checkpoint folders: config.json, model.safetensors, the tokenizer (tokenizer.model, or tokenizer.json +
tokenizer_config.json for an imported model), manifest.json.

A save writes everything into a hidden temporary folder beside the target (pnlm.files.atomic),
the manifest (sha256 of every file) last, and renames the folder into place: a save killed
at any point leaves either the previous checkpoint or none, never a folder that loads.
A load refuses a folder without a manifest, checks every file's hash, and validates the
spec before any tensor is read.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pnlm.files.atomic import atomic_dir
from pnlm.errors import CheckpointError, PnlmError
from pnlm.files.run_lock import writer_of
from pnlm.files.json_object import read_json_object
from pnlm.model.spec import ModelSpec
from pnlm.tokenizer import TOKENIZER_FILE_SETS, Tokenizer, file_sha256, load_tokenizer, tokenizer_file_names, tokenizer_sha256
from pnlm.checkpoints.weights import check_shapes, load_safetensors, save_safetensors

FORMAT = "pnlm-checkpoint"
VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
MANIFEST_FILE = "manifest.json"
OPTIMIZER_FILE = "optimizer.safetensors"
TRAINER_FILE = "trainer.json"
CORE_FILES = {CONFIG_FILE, WEIGHTS_FILE}  # and one of TOKENIZER_FILE_SETS
ADAPTER_FORMAT = "pnlm-adapter"
ADAPTER_FILE = "adapters.safetensors"
KINDS = {FORMAT: CORE_FILES, ADAPTER_FORMAT: {CONFIG_FILE, ADAPTER_FILE}}
OPTIONAL_FILES = {OPTIMIZER_FILE, TRAINER_FILE}
MAX_JSON_BYTES = 1 << 20


@dataclass
class Checkpoint:
    spec: ModelSpec
    weights: dict[str, np.ndarray]
    tokenizer: Tokenizer
    method: str = "slm"
    extra: dict[str, Any] = field(default_factory=dict)


def write_json(path: Path, data: dict) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write(json.dumps(data, indent=2) + "\n")
        f.flush()
        os.fsync(f.fileno())


def save_checkpoint(path: str | Path, spec: ModelSpec, weights: dict[str, np.ndarray], tokenizer: Tokenizer,
                    method: str = "slm", extra: dict[str, Any] | None = None,
                    optimizer_state: dict[str, np.ndarray] | None = None,
                    trainer_state: dict[str, Any] | None = None) -> Path:
    """Write a checkpoint folder atomically; an existing folder at path is replaced only once the new one is complete.

    optimizer_state (AdamW moments by canonical name) and trainer_state (step, data position, best
    loss...) make it resumable; they are hashed in the manifest like the rest.
    """
    path = Path(path)
    spec.validate()
    if tokenizer.vocab_size != spec.vocab_size:
        raise CheckpointError(f"tokenizer has {tokenizer.vocab_size} pieces, the spec {spec.vocab_size}")
    check_shapes({name: tuple(array.shape) for name, array in weights.items()}, spec, str(path))
    with atomic_dir(path) as tmp:
        config = {"format": FORMAT, "version": VERSION, "method": method, "spec": spec.to_dict(),
                  "tokenizer": {"file": tokenizer.path.name, "sha256": tokenizer.sha256}, **(extra or {})}
        write_json(tmp / CONFIG_FILE, config)
        save_safetensors(weights, tmp / WEIGHTS_FILE, metadata={"format": "pt"})
        names = [CONFIG_FILE, WEIGHTS_FILE, *tokenizer.copy_to(tmp)]
        names += write_training_state(tmp, optimizer_state, trainer_state)
        write_manifest(tmp, names, tokenizer, FORMAT)
    return path


def write_training_state(folder: Path, optimizer_state: dict[str, np.ndarray] | None,
                         trainer_state: dict[str, Any] | None) -> list[str]:
    """What makes a folder resumable; returns the names of the files written."""
    names = []
    if optimizer_state is not None:
        save_safetensors({k: v for k, v in optimizer_state.items() if k != "step"}, folder / OPTIMIZER_FILE)
        names.append(OPTIMIZER_FILE)
    if trainer_state is not None:
        write_json(folder / TRAINER_FILE, trainer_state)
        names.append(TRAINER_FILE)
    return names


def write_manifest(folder: Path, names: list[str], tokenizer: Tokenizer, kind: str) -> None:
    """Last file of a save: the sha256 of every other one."""
    files = {name: file_sha256(folder / name) for name in names}
    if tokenizer_sha256({name: files[name] for name in tokenizer.files}) != tokenizer.sha256:
        raise CheckpointError(f"{tokenizer.path}: changed on disk while saving")
    write_json(folder / MANIFEST_FILE, {"format": kind, "version": VERSION, "sha256": files})


def read_json(path: Path) -> dict:
    if not path.is_file():
        raise CheckpointError(f"{path}: missing; not a complete pnlm checkpoint")
    return read_json_object(path, MAX_JSON_BYTES, CheckpointError)


def checkpoint_kind(path: str | Path) -> str:
    """The format a folder's manifest declares: "pnlm-checkpoint", "pnlm-adapter" (LoRA), or a clear error."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"{path}: no such checkpoint folder")
    kind = read_json(path / MANIFEST_FILE).get("format")
    if not isinstance(kind, str) or kind not in KINDS:
        raise CheckpointError(f"{path / MANIFEST_FILE}: unknown format {kind!r}; expected {' or '.join(KINDS)}")
    return kind


def verify_checkpoint(path: str | Path, kind: str = FORMAT) -> dict:
    """Check the manifest's sha256 of every file; return the parsed config.json. A checkpoint that fails the
    check while another pnlm process is writing it is reported as being written, not as damaged."""
    try:
        return _verified(Path(path), kind)
    except CheckpointError:
        holder = writer_of(path)
        if holder is not None:
            raise CheckpointError(f"{path}: being written by another pnlm process ({holder}); read it once that "
                                  "is done") from None
        raise


def _verified(path: Path, kind: str) -> dict:
    if not path.is_dir():
        raise CheckpointError(f"{path}: no such checkpoint folder")
    manifest = read_json(path / MANIFEST_FILE)
    hashes = manifest.get("sha256")
    core = KINDS.get(kind, CORE_FILES)
    if manifest.get("format") == ADAPTER_FORMAT and kind == FORMAT:
        raise CheckpointError(f"{path}: holds LoRA adapters, not a whole model; load it with pnlm.load "
                              f"or make a plain checkpoint with `pnlm fuse {path} --out DIR`")
    tokenizer_files = tokenizer_file_names(hashes) if isinstance(hashes, dict) else None
    if (manifest.get("format") != kind or not isinstance(hashes, dict) or tokenizer_files is None
            or not core <= set(hashes) or not set(hashes) <= core | set(tokenizer_files) | OPTIONAL_FILES):
        raise CheckpointError(f"{path / MANIFEST_FILE}: not a pnlm manifest (format {kind!r} with the sha256 of "
                              f"{', '.join(sorted(core))} and {' or '.join(' + '.join(s) for s in TOKENIZER_FILE_SETS)})")
    for name, expected in hashes.items():
        file = path / name
        if not file.is_file():
            raise CheckpointError(f"{file}: missing; the checkpoint is incomplete")
        if file_sha256(file) != expected:
            raise CheckpointError(f"{file}: sha256 does not match the manifest; the file is corrupted or was changed")
    return check_config_fields(read_json(path / CONFIG_FILE), path / CONFIG_FILE)


def weights_sha256(path: str | Path) -> str:
    """The sha256 of the weights of a checkpoint load_checkpoint verified, as its manifest records it (the
    weights are not read again)."""
    return read_json(Path(path) / MANIFEST_FILE)["sha256"][WEIGHTS_FILE]


def check_config_fields(config: dict, source: Path) -> dict:
    """The fields of config.json besides the spec that callers read: a method name and a tokenizer record."""
    method, tokenizer = config.get("method", "slm"), config.get("tokenizer", {})
    if not isinstance(method, str) or not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", method):
        raise CheckpointError(f"{source}: method must be a method's name, not {method!r}"[:400])
    if not isinstance(tokenizer, dict) or not isinstance(tokenizer.get("sha256", ""), str):
        raise CheckpointError(f"{source}: tokenizer must be an object with a sha256 string, not {tokenizer!r}"[:400])
    return config


def read_spec(path: str | Path, config: dict | None = None) -> ModelSpec:
    path = Path(path)
    config = verify_checkpoint(path) if config is None else config
    if not isinstance(config.get("format"), str) or config["format"] not in KINDS or config.get("version") != VERSION:
        raise CheckpointError(f"{path / CONFIG_FILE}: expected format {FORMAT!r} version {VERSION}")
    spec = config.get("spec")
    if isinstance(spec, dict) and isinstance(spec.get("projection"), dict):
        # Written before expert_similarity existed: those networks started from independent experts (0).
        # (Without init: the unit-variance draw, the default, which to_dict leaves out.)
        spec = {**spec, "projection": {"expert_similarity": 0.0, **spec["projection"]}}
    try:
        return ModelSpec.from_dict(spec, source=str(path / CONFIG_FILE))
    except PnlmError as exc:
        raise CheckpointError(str(exc)) from None


def verified_tokenizer(path: Path, config: dict) -> Tokenizer:
    """The tokenizer of a verified folder: the files its manifest lists (not a stray file beside them), whose
    sha256 config.json records."""
    files = tokenizer_file_names(read_json(path / MANIFEST_FILE)["sha256"])
    tokenizer = load_tokenizer(path / files[0])
    recorded = config.get("tokenizer", {}).get("sha256")
    if recorded is not None and recorded != tokenizer.sha256:
        raise CheckpointError(f"{path / CONFIG_FILE}: records tokenizer sha256 {recorded[:12]}…, its tokenizer files "
                              f"give {tokenizer.sha256[:12]}…; the checkpoint is inconsistent")
    return tokenizer


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Verify and load a checkpoint into numpy weights; nothing is allocated before the spec and header pass."""
    path = Path(path)
    config = verify_checkpoint(path)
    spec = read_spec(path, config)
    tokenizer = verified_tokenizer(path, config)
    if tokenizer.vocab_size != spec.vocab_size:
        raise CheckpointError(f"{path}: tokenizer has {tokenizer.vocab_size} pieces, config.json says {spec.vocab_size}")
    weights = load_safetensors(path / WEIGHTS_FILE, spec)
    extra = {k: v for k, v in config.items() if k not in {"format", "version", "method", "spec", "tokenizer"}}
    return Checkpoint(spec, weights, tokenizer, str(config.get("method", "slm")), extra)


def load_resumable(path: str | Path) -> tuple[Checkpoint, dict[str, np.ndarray], dict[str, Any]]:
    """A resumable checkpoint, verified once: the checkpoint, its optimizer state (with the step) and its trainer state."""
    checkpoint = load_checkpoint(path)
    return (checkpoint, *read_training_state(path))


def read_training_state(path: str | Path) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """The optimizer state (with the step) and the trainer state of a verified resumable folder."""
    path = Path(path)
    if not (path / OPTIMIZER_FILE).is_file() or not (path / TRAINER_FILE).is_file():
        raise CheckpointError(f"{path}: holds no optimizer and trainer state; it cannot be resumed")
    trainer = read_trainer_state(path / TRAINER_FILE)
    optimizer = load_safetensors(path / OPTIMIZER_FILE)
    optimizer["step"] = np.array(trainer["step"], dtype=np.int64)
    return optimizer, trainer


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**63


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


# What a run's trainer.json holds (pnlm/training/loop.py writes it) and what each field must be before it is used.
_TRAINER_FIELDS = {"tokens": ("a whole number >= 0", _is_count),
                   "best_val_loss": ("a finite number or null", lambda v: v is None or _is_number(v)),
                   "evals_since_best": ("a whole number >= 0", _is_count),
                   "elapsed_s": ("a finite number >= 0", lambda v: _is_number(v) and v >= 0),
                   "config": ("an object", lambda v: isinstance(v, dict)),
                   "sampler": ("a sampler's name", lambda v: isinstance(v, str)),
                   "started_with": ("an object", lambda v: isinstance(v, dict))}
_TRAINER_OPTIONAL = {"sampler", "started_with"}  # runs from before they were recorded lack them


def read_trainer_state(path: Path) -> dict[str, Any]:
    """A run's trainer.json, every field typed, or one line naming the file and the field."""
    trainer = read_json(path)
    step = trainer.get("step")
    if not _is_count(step):
        raise CheckpointError(f"{path}: step must be a whole number >= 0, not {step!r}"[:400])
    missing = [name for name in _TRAINER_FIELDS if name not in trainer and name not in _TRAINER_OPTIONAL]
    if missing:
        raise CheckpointError(f"{path}: has no {', '.join(missing)}; not a pnlm run's state")
    for name, (expected, valid) in _TRAINER_FIELDS.items():
        if name in trainer and not valid(trainer[name]):
            raise CheckpointError(f"{path}: {name} must be {expected}, not {trainer[name]!r}"[:400])
    return trainer


def check_optimizer_state(state: dict[str, np.ndarray], weights: dict[str, np.ndarray], path: Path) -> None:
    """Every moment in the optimizer state belongs to a weight the model trains and has its shape: checked
    before a backend is handed the state (a wrong one used to fail inside AdamW)."""
    for key, value in state.items():
        if key == "step":
            continue
        name, _, moment = key.rpartition(".")
        if moment not in ("exp_avg", "exp_avg_sq") or name not in weights:
            raise CheckpointError(f"{path / OPTIMIZER_FILE}: {key} is not a moment of a weight of this model")
        if tuple(value.shape) != tuple(weights[name].shape):
            raise CheckpointError(f"{path / OPTIMIZER_FILE}: {key} has shape {tuple(value.shape)}, its weight "
                                  f"{tuple(weights[name].shape)}")
    for name in weights:
        if (f"{name}.exp_avg" in state) != (f"{name}.exp_avg_sq" in state):
            raise CheckpointError(f"{path / OPTIMIZER_FILE}: {name} has one of its two AdamW moments, not both")


class ModelWriter:
    """How a training run saves and restores a whole model (pnlm/training/loop.py): checkpoint folders.

    Every process of a distributed run calls save (gathering sharded weights is collective); only the
    one with write=True writes."""

    lora = None

    def __init__(self, spec: ModelSpec, tokenizer: Tokenizer, method: str, extra: dict[str, Any] | None = None) -> None:
        self.spec, self.tokenizer, self.method, self.extra = spec, tokenizer, method, extra

    def save(self, path: Path, step_fn: Any, trainer_state: dict[str, Any], with_state: bool, write: bool) -> None:
        weights = step_fn.canonical_weights()
        optimizer_state = step_fn.optimizer_state() if with_state else None
        if write:
            save_checkpoint(path, self.spec, weights, self.tokenizer, self.method, extra=self.extra,
                            optimizer_state=optimizer_state, trainer_state=trainer_state)

    def restore(self, path: Path, step_fn: Any) -> dict[str, Any]:
        """Load weights and optimizer state into step_fn; return the trainer state."""
        checkpoint, optimizer_state, trainer = load_resumable(path)
        check_optimizer_state(optimizer_state, checkpoint.weights, path)
        step_fn.load_canonical(checkpoint.weights)
        step_fn.load_optimizer_state(optimizer_state)
        return trainer
