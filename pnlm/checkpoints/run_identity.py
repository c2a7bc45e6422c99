"""What a training run was started with, and the check that --resume continues that run and no other.

A run records its method, its model spec, its tokenizer's sha256, its token store's content hash and,
for batches drawn by cluster, which clustering labels them. Resuming with any of them changed would go
on with other token ids, other data or another model under the same name: refused, naming the field.
"""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from typing import Any

from pnlm.checkpoints.checkpoint import TRAINER_FILE, read_trainer_state
from pnlm.errors import PnlmError
from pnlm.files.json_object import read_json_object

_MAX_JSON_BYTES = 1 << 20
_LABELS = {"method": "method", "tokenizer_sha256": "tokenizer", "store_sha256": "token store (its data)",
           "clusters": "clustering of the store", "base_sha256": "base model (its weights)",
           "teacher_sha256": "teacher (its weights)"}


def store_sha256(store: Any) -> str:
    """One hash of a token store's data: of the sha256 meta.json records for its files (so equal bytes, equal
    hash, whatever the folder is called)."""
    return hashlib.sha256(json.dumps(store.meta["sha256"], sort_keys=True).encode()).hexdigest()


def _comparable_spec(spec: dict[str, Any]) -> dict[str, Any]:
    """A spec as far as a resumed run depends on it: how the experts were initialized no longer matters."""
    spec = copy.deepcopy(spec)
    if isinstance(spec.get("projection"), dict):
        spec["projection"].pop("expert_similarity", None)
        spec["projection"].pop("init", None)
    return spec


def run_identity(spec: Any, tokenizer: Any, store: Any, method: str, sampler: Any,
                 started_from: dict[str, str] | None = None) -> dict[str, Any]:
    """started_from: the sha256 of the checkpoints a run keeps reading, by role: base_sha256 (what a
    fine-tune or its adapters start from), teacher_sha256 (what a student is distilled from)."""
    clusters = None
    if getattr(sampler, "name", "uniform") != "uniform":
        info = store.clusters_info() or {}
        labels = info.get("labels_sha256") if isinstance(info.get("labels_sha256"), dict) else {}
        clusters = {"centroids_sha256": info.get("centroids_sha256"), "train_labels_sha256": labels.get("train")}
    return {"method": method, "spec": spec.to_dict(), "tokenizer_sha256": tokenizer.sha256,
            "store_sha256": store_sha256(store), "clusters": clusters, **(started_from or {})}


def _recorded(latest: Path, trainer: dict[str, Any]) -> dict[str, Any]:
    """What the run recorded; a run from before the record: what its checkpoint's config.json says."""
    if isinstance(trainer.get("started_with"), dict):
        return trainer["started_with"]
    config = read_json_object(latest / "config.json", _MAX_JSON_BYTES, PnlmError)
    tokenizer = config.get("tokenizer") if isinstance(config.get("tokenizer"), dict) else {}
    return {"method": config.get("method"), "spec": config.get("spec"), "tokenizer_sha256": tokenizer.get("sha256")}


def _short(value: Any) -> str:
    if isinstance(value, str) and len(value) == 64:
        return value[:12] + "…"
    if isinstance(value, dict):
        return ", ".join(f"{k} {_short(v)}" for k, v in value.items())
    return repr(value)


def check_same_run(latest: str | Path, identity: dict[str, Any]) -> None:
    """Refuse, naming the first field that differs, to resume latest with anything it was not started with."""
    latest = Path(latest)
    trainer = read_trainer_state(latest / TRAINER_FILE)
    recorded = _recorded(latest, trainer)
    for field in _LABELS:
        if field in recorded and recorded[field] != identity.get(field):
            raise PnlmError(f"{latest}: was started with another {_LABELS[field]} ({_short(recorded[field])}, now "
                            f"{_short(identity.get(field))}); resume it with the same one, or start a new run with "
                            f"another --out")
    if isinstance(recorded.get("spec"), dict):
        old, new = _comparable_spec(recorded["spec"]), _comparable_spec(identity["spec"])
        for key in sorted(set(old) | set(new)):
            if old.get(key) != new.get(key):
                raise PnlmError(f"{latest}: was started with model {key} = {_short(old.get(key))}, now "
                                f"{_short(new.get(key))}; resume it with the same model, or start a new run with "
                                f"another --out")
