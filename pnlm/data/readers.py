"""Streaming document readers. A corpus is never held in memory whole.

- `.jsonl` / `.jsonl.gz`: one JSON object a line with a string field `text` (the mlx-lm convention).
- `.txt` / `.txt.gz`: the whole file is one document.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterable, Iterator
from pathlib import Path

from pnlm.errors import InputError

MAX_LINE_BYTES = 64 * 1024 * 1024


def _open_text(path: Path):
    if path.name.endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8", newline="")
    return open(path, encoding="utf-8", newline="")


def _read_jsonl(path: Path) -> Iterator[str]:
    with _open_text(path) as f:
        line_no = 0
        while True:
            try:
                line = f.readline(MAX_LINE_BYTES + 1)
            except (UnicodeDecodeError, OSError, EOFError) as exc:
                raise InputError(f"{path}:{line_no + 1}: cannot be read as UTF-8 text: {exc}") from None
            if not line:
                return
            line_no += 1
            if len(line) > MAX_LINE_BYTES:
                raise InputError(f"{path}:{line_no}: line longer than {MAX_LINE_BYTES} characters")
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise InputError(f"{path}:{line_no}: not valid JSON ({exc.msg}); expected {{\"text\": ...}}") from None
            if not isinstance(record, dict) or not isinstance(record.get("text"), str):
                raise InputError(f"{path}:{line_no}: expected an object with a string field \"text\"")
            yield record["text"]


def _read_txt(path: Path) -> Iterator[str]:
    try:
        with _open_text(path) as f:
            yield f.read()
    except (UnicodeDecodeError, OSError, EOFError) as exc:
        raise InputError(f"{path}: cannot be read as UTF-8 text: {exc}") from None


READERS = {".jsonl": _read_jsonl, ".txt": _read_txt}


def reader_for(path: Path):
    name = path.name[:-3] if path.name.endswith(".gz") else path.name
    for suffix, reader in READERS.items():
        if name.endswith(suffix):
            return reader
    raise InputError(f"{path}: unknown format; expected one of {', '.join(s + '[.gz]' for s in READERS)}")


def iter_documents(paths: Iterable[str | Path]) -> Iterator[str]:
    """Documents of every file in turn, as strings. Missing files and unknown formats fail here, before any reading."""
    sources = []
    for raw in paths:
        path = Path(raw)
        if not path.is_file():
            raise InputError(f"{path}: no such file")
        sources.append((path, reader_for(path)))
    return (document for path, reader in sources for document in reader(path))
