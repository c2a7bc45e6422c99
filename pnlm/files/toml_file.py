"""Reading a TOML file a user wrote (a model spec, an experiment plan, a command's --config)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from pnlm.errors import PnlmError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


def read_toml(path: Path, max_bytes: int, error: type[PnlmError], what: str) -> dict[str, Any]:
    """The TOML table in path, of at most max_bytes, or `error` naming the file: missing, too large, or not
    TOML (bad UTF-8, absurd numbers and too deep nesting included). what: the kind of file, for the message."""
    if not path.is_file():
        raise error(f"{path}: no such {what}")
    if path.stat().st_size > max_bytes:
        raise error(f"{path}: larger than {max_bytes} bytes; not a {what}")
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (ValueError, RecursionError) as exc:  # TOMLDecodeError, bad UTF-8, absurd numbers, deep nesting
        raise error(f"{path}: not valid TOML: {exc}") from None
