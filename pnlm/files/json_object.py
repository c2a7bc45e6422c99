"""Reading a small JSON object that a user may have handed us (configs, manifests, store metadata)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pnlm.errors import PnlmError


def read_json_object(path: Path, max_bytes: int, error: type[PnlmError]) -> dict[str, Any]:
    """The JSON object in path, of at most max_bytes, or `error` naming the file: too large, not JSON
    (bad UTF-8, numbers too long to convert, nesting too deep included), or not an object."""
    if path.stat().st_size > max_bytes:
        raise error(f"{path}: larger than {max_bytes} bytes")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, RecursionError) as exc:
        raise error(f"{path}: not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise error(f"{path}: expected a JSON object")
    return data
