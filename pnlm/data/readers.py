"""Streaming document readers. A corpus is never held in memory whole.

- `.jsonl` / `.jsonl.gz`: one JSON object a line with a string field `text` (the mlx-lm convention;
  `text_field` names another key).
- `.txt` / `.txt.gz`: the whole file is one document (`txt_mode="file"`), or documents are separated
  by one or more blank lines (`txt_mode="blank-line"`, read line by line).
- `.md` / `.markdown` (`.gz` too): read as `.txt` is; markdown stays as it is written.
- `.html` / `.htm` (`.gz` too): one document a file, its main text as trafilatura extracts it
  (navigation, menus, footers and scripts left out); a page with no main text is an empty document.
- `.parquet`: a string column `text` (or `text_field`), read one record batch at a time; nulls are
  empty documents.

An input may be a file, a folder (every file in it and its subfolders with one of those suffixes,
hidden ones left out, in name order; files of other types are counted in `ReadStats.other_files`) or a
glob pattern (`docs/**/*.md`).

Empty or whitespace-only documents are counted in `ReadStats.empty` and not yielded. With `skip_bad`,
a JSONL line that is not UTF-8, not JSON, or lacks a string text field is counted in `ReadStats.bad`
and skipped, and a file that cannot be read (corrupt gzip or Parquet, invalid UTF-8 in a text file, a
missing column, an over-long line) is skipped from where it fails, its error kept in
`ReadStats.bad_files`; without it, any of these raises `InputError`, named by file and, where there is
one, line. A file named on its own with no documents is an error; one found in a folder or by a glob
is not (a page with no main text, an empty note).
"""

from __future__ import annotations

import glob
import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from pnlm.data.lines import (MAX_DOCUMENT_BYTES, MAX_LINE_BYTES, _BadRecord, _is_gz, _Line, _lines, _paragraphs,
                             _read_all, _read_head)
from pnlm.data.parquet import first_names, pyarrow_parquet, read_parquet
from pnlm.errors import InputError

# A web page's bytes: trafilatura's time grows faster than the page (4 MB of flat HTML: 8 s on this CPU).
MAX_HTML_BYTES = 4 * 1024 * 1024
HTML_MAX_DEPTH = 256  # what libxml2 parses without XML_PARSE_HUGE; deeper elements would be cut off
TXT_MODES = ("file", "blank-line")
TxtMode = Literal["file", "blank-line"]

# With skip_bad, a JSONL file whose bad records outnumber its documents by this much at any line past its first
# 1,000 bad ones is not a file of documents: it is refused whole instead of read to its end a record at a time.
_BAD_RECORDS_PER_DOCUMENT, _BAD_RECORDS_ALLOWED = 10, 1000


@dataclass
class ReadStats:
    """What `iter_documents` saw: documents yielded, empty documents dropped, bad records skipped."""

    documents: int = 0
    empty: int = 0
    bad: int = 0
    first_bad: str | None = None  # the first skipped record's message, for a warning that shows one
    by_type: dict[str, int] = field(default_factory=dict)  # documents per file type: txt, md, html, jsonl, parquet
    bad_files: list[str] = field(default_factory=list)  # with skip_bad: the error of each file skipped
    other_files: int = 0  # files of a folder or glob that are of no type pnlm reads

    def to_json(self) -> dict[str, object]:
        return {"documents_by_type": dict(sorted(self.by_type.items())), "bad_records_skipped": self.bad,
                "bad_files_skipped": list(self.bad_files), "other_files_ignored": self.other_files}


@dataclass(frozen=True)
class _Options:
    text_field: str
    txt_mode: TxtMode
    skip_bad: bool
    stats: ReadStats

    def reject(self, problem: _BadRecord) -> None:
        if not self.skip_bad:
            raise problem
        self.stats.bad += 1
        if self.stats.first_bad is None:
            self.stats.first_bad = str(problem)


# --- formats -----------------------------------------------------------------------------------------

def _jsonl_text(line: _Line, field: str) -> str:
    text = line.decode()
    try:
        record = json.loads(text)
    except (ValueError, RecursionError) as exc:  # also numbers too long to convert, nesting too deep
        expected = f"{{\"{field}\": ...}}"
        reason = exc.msg if isinstance(exc, json.JSONDecodeError) else str(exc)
        raise _BadRecord(f"{line.path}:{line.number}: not valid JSON ({reason}); expected {expected}") from None
    if not isinstance(record, dict):
        got = f"a JSON {type(record).__name__}"
    elif field not in record:
        got = f"no field \"{field}\" (fields: {first_names(record)})"
    elif not isinstance(record[field], str):
        got = f"\"{field}\" of type {type(record[field]).__name__}"
    elif len(record[field]) > MAX_DOCUMENT_BYTES:
        raise _BadRecord(f"{line.path}:{line.number}: a document of {len(record[field]):,} characters, more than the "
                         f"{MAX_DOCUMENT_BYTES:,} (16 MiB) pnlm tokenizes as one; split it, or skip it (--skip-bad)")
    else:
        return record[field]
    raise _BadRecord(f"{line.path}:{line.number}: expected an object with a string field \"{field}\", got {got}")


def _read_jsonl(path: Path, opts: _Options) -> Iterator[str]:
    bad = good = 0
    first_problem: _BadRecord | None = None
    for line in _lines(path, MAX_LINE_BYTES + 1):
        if len(line.raw) > MAX_LINE_BYTES:
            raise InputError(f"{path}:{line.number}: line longer than {MAX_LINE_BYTES} bytes (64 MiB)")
        if not line.raw.strip():
            continue
        try:
            text = _jsonl_text(line, opts.text_field)
        except _BadRecord as problem:
            opts.reject(problem)
            bad += 1
            first_problem = problem if bad == 1 else first_problem
            if bad > _BAD_RECORDS_ALLOWED and bad > _BAD_RECORDS_PER_DOCUMENT * good:
                raise InputError(f"{path}:{line.number}: {bad:,} bad records and {good:,} good ones up to here: not "
                                 f"a JSONL file of documents (the first bad one: {first_problem})") from None
            continue
        good += 1
        yield text


def _read_txt(path: Path, opts: _Options) -> Iterator[str]:
    if opts.txt_mode == "blank-line":
        yield from _paragraphs(path)
    else:
        yield _read_all(path)


def _read_html(path: Path, opts: _Options) -> Iterator[str]:
    trafilatura = _trafilatura(path)
    page = _read_head(path, MAX_HTML_BYTES + 1)  # bytes: trafilatura reads the page's own encoding (many are not UTF-8)
    if len(page) > MAX_HTML_BYTES:
        raise InputError(f"{path}: a page of more than {MAX_HTML_BYTES:,} bytes (4 MiB), the most pnlm extracts "
                         "text from (the extraction's time grows faster than the page); save its text as .txt")
    _check_html_depth(path, page)
    try:
        yield trafilatura.extract(page, include_comments=False, include_tables=True) or ""
    except Exception as exc:  # lxml's and trafilatura's own errors, whatever their kind: one line naming the page
        raise InputError(f"{path}: its text could not be extracted ({type(exc).__name__}: "
                         f"{str(exc).splitlines()[0][:200] if str(exc) else 'no message'})") from None


def _check_html_depth(path: Path, page: bytes) -> None:
    """Refuse a page nested deeper than the HTML parser goes: it would cut the rest of the page off, silently."""
    try:
        from lxml import etree
    except ImportError:
        return
    parser = etree.HTMLParser()
    try:
        etree.fromstring(page, parser)
    except (etree.LxmlError, ValueError):
        return  # not parseable at all: trafilatura says so, or finds nothing
    if any(error.type_name == "ERR_RESOURCE_LIMIT" for error in parser.error_log):
        raise InputError(f"{path}: elements nested more than {HTML_MAX_DEPTH} deep, where the HTML parser stops "
                         "(the rest of the page would be lost); not read")


def _trafilatura(path: Path):
    try:
        import trafilatura
    except ImportError:
        raise InputError(f"{path}: reading HTML needs trafilatura: pip install 'pnlm[data]'") from None
    return trafilatura


Reader = Callable[[Path, _Options], Iterator[str]]
_FORMATS: dict[str, tuple[Reader, bool, str]] = {  # suffix -> (reader, may be gzipped, the type counted)
    ".jsonl": (_read_jsonl, True, "jsonl"),
    ".txt": (_read_txt, True, "txt"),
    ".md": (_read_txt, True, "md"),
    ".markdown": (_read_txt, True, "md"),
    ".html": (_read_html, True, "html"),
    ".htm": (_read_html, True, "html"),
    ".parquet": (read_parquet, False, "parquet"),
}


def _format_of(path: Path) -> tuple[Reader, bool, str] | None:
    gz = _is_gz(path)
    name = (path.name[:-3] if gz else path.name).lower()
    for suffix, (reader, compressible, kind) in _FORMATS.items():
        if name.endswith(suffix) and (compressible or not gz):
            return reader, compressible, kind
    return None


def _known_formats() -> str:
    return ", ".join(suffix + ("[.gz]" if compressible else "") for suffix, (_, compressible, _) in _FORMATS.items())


def reader_for(path: Path) -> Reader:
    found = _format_of(path)
    if found is None:
        raise InputError(f"{path}: unknown format; expected one of {_known_formats()}")
    return found[0]


def _hidden(path: Path, root: Path) -> bool:
    return any(part.startswith(".") for part in path.relative_to(root).parts)


def expand_inputs(paths: Iterable[str | Path], stats: ReadStats | None = None) -> list[tuple[Path, bool]]:
    """(file, named on its own) for every input: a file as it is, a folder's files of the known types
    (recursively, hidden ones left out, in name order), a glob pattern's matches of the known types."""
    stats = stats if stats is not None else ReadStats()
    files: list[tuple[Path, bool]] = []
    for raw in paths:
        path = Path(raw)
        if path.is_file():
            files.append((path, True))
            continue
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and not _hidden(p, path))
            where = f"{path}: a folder with no file of a type pnlm reads ({_known_formats()})"
        elif glob.has_magic(str(raw)):
            found = sorted(Path(p) for p in glob.glob(str(raw), recursive=True) if Path(p).is_file())
            where = f"{raw}: the pattern matches no file of a type pnlm reads ({_known_formats()})"
        elif path.exists():  # a FIFO, a device (/dev/zero), a socket: nothing pnlm reads as a corpus
            raise InputError(f"{path}: not a regular file or a folder (a pipe or a device?); give files of "
                             f"{_known_formats()}, or folders of them")
        else:
            raise InputError(f"{path}: no such file or folder")
        readable = [p for p in found if _format_of(p) is not None]
        stats.other_files += len(found) - len(readable)
        if not readable:
            raise InputError(where)
        files += [(p, False) for p in readable]
    unique: dict[Path, tuple[Path, bool]] = {}  # a file named twice (a folder and a file in it) is read once
    for path, explicit in files:
        first = unique.get(path.resolve())
        unique[path.resolve()] = (path, explicit) if first is None else (first[0], first[1] or explicit)
    return list(unique.values())


# --- documents ---------------------------------------------------------------------------------------

def _documents(path: Path, explicit: bool, opts: _Options) -> Iterator[str]:
    stats = opts.stats
    reader, _, kind = _format_of(path) or (reader_for(path), False, "")
    empty_before, bad_before, found = stats.empty, stats.bad, 0
    try:
        for text in reader(path, opts):
            if not text or text.isspace():
                stats.empty += 1
                continue
            found += 1
            stats.documents += 1
            stats.by_type[kind] = stats.by_type.get(kind, 0) + 1
            yield text
    except InputError as problem:
        if not opts.skip_bad:
            raise
        stats.bad_files.append(str(problem))
        return
    if not found and explicit:
        raise _no_documents(path, stats.empty - empty_before, stats.bad - bad_before)


def _no_documents(path: Path, empty: int, bad: int) -> InputError:
    dropped = [f"{n} {what}" for n, what in ((empty, "empty"), (bad, "bad, skipped")) if n]
    return InputError(f"{path}: no documents" + (f" ({', '.join(dropped)})" if dropped else ""))


def iter_documents(
    paths: Iterable[str | Path],
    text_field: str = "text",
    txt_mode: TxtMode = "file",
    skip_bad: bool = False,
    stats: ReadStats | None = None,
) -> Iterator[str]:
    """Non-empty documents of every file in turn (files, folders, glob patterns), as strings; `stats`, if
    given, is updated as they go.

    No files, missing files, unknown formats and a missing pyarrow or trafilatura fail here, before any reading.
    """
    if txt_mode not in TXT_MODES:
        raise ValueError(f"txt_mode must be one of {', '.join(TXT_MODES)}, not {txt_mode!r}")
    if not text_field:
        raise ValueError("text_field must be a non-empty string")
    stats = stats if stats is not None else ReadStats()
    sources = expand_inputs(paths, stats)
    for path, _ in sources:
        reader = reader_for(path)
        if reader is read_parquet:
            pyarrow_parquet(path)
        if reader is _read_html:
            _trafilatura(path)
    if not sources:
        raise InputError("no input files")
    opts = _Options(text_field, txt_mode, skip_bad, stats)
    return (document for path, explicit in sources for document in _documents(path, explicit, opts))
