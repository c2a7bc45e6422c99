"""Text files read as lines and paragraphs, a piece at a time (plain or gzip): a run of blank lines passed over
at once, a long line gathered in pieces and joined once, every line's number and every byte's offset kept for
the messages (pnlm/data/readers.py reads documents from them). The bounds on a line and on a document, so that
a small compressed file that expands to gigabytes costs what the bounds cost."""

from __future__ import annotations

import gzip
import re
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, NamedTuple

from pnlm.errors import InputError

MAX_LINE_BYTES = 64 * 1024 * 1024
# The most text pnlm tokenizes as one document (a .txt file, a paragraph, a JSONL record): 16 MiB, some
# 4,000 pages. Read no further than that, a longer one is refused by name (or skipped with skip_bad), so a
# small compressed file that expands to gigabytes costs 16 MiB, not gigabytes (docs/data.md).
MAX_DOCUMENT_BYTES = 16 * 1024 * 1024

_BOM = b"\xef\xbb\xbf"
_PIECE_BYTES = 1 << 16  # read at a time; a damaged gzip loses at most this much of what precedes the damage
# Blank lines (white space as bytes.strip() sees it), up to the last newline of the run.
_BLANK_RUN = re.compile(rb"[ \t\r\x0b\x0c\n]*\n")
_PARAGRAPH_BREAK = re.compile(rb"\n[ \t\r\x0b\x0c\n]*\n")  # the end of a line, then one or more blank ones
_ASCII_SPACE_ODD = re.compile("[\x1c-\x1f]")  # white space to str.strip() (not to bytes.strip())


class _BadRecord(InputError):
    """A problem confined to one record: skipped and counted under `skip_bad`, raised otherwise."""


# --- bytes: opening, gzip, UTF-8 -------------------------------------------------------------------

def _is_gz(path: Path) -> bool:
    return path.name.endswith(".gz")


def _open_binary(path: Path) -> IO[bytes]:
    try:
        return gzip.open(path, "rb") if _is_gz(path) else open(path, "rb")
    except OSError as exc:
        raise InputError(f"{path}: cannot be opened ({exc.strerror or exc})") from None


def _unreadable(path: Path, exc: Exception, after_line: int | None = None) -> InputError:
    where = f" after line {after_line}" if after_line else ""
    if _is_gz(path):
        return InputError(f"{path}: corrupt or truncated gzip data{where} ({exc})")
    return InputError(f"{path}: cannot be read{where} ({exc})")


def _invalid_utf8(path: Path, line_no: int, offset: int, byte: int) -> _BadRecord:
    of_what = " of the decompressed data" if _is_gz(path) else ""
    return _BadRecord(f"{path}:{line_no}: invalid UTF-8 byte 0x{byte:02x} at byte offset {offset}{of_what}")


class _Line(NamedTuple):
    path: Path
    number: int
    offset: int  # of the line's first byte in the (decompressed) file
    raw: bytes

    def decode(self) -> str:
        try:
            return self.raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise _invalid_utf8(self.path, self.number, self.offset + exc.start, self.raw[exc.start]) from None


def _blocks(path: Path, size: int, lines_read: Callable[[], int]) -> Iterator[bytes]:
    """The file's bytes, decompressed, a piece of at most `size` at a time, each given as soon as it is read
    (a damaged gzip gives what precedes the damage, but for the piece being read); the first piece is its
    first 3 bytes (a BOM, or not), the last one b"". A read error is one line naming the file and the lines
    read before it."""
    with _open_binary(path) as f:
        try:
            yield f.read(len(_BOM))
            while block := f.read1(size):
                yield block
        except (OSError, EOFError, zlib.error) as exc:
            raise _unreadable(path, exc, lines_read()) from None
    yield b""


def _lines(path: Path, limit: int = -1) -> Iterator[_Line]:
    """Lines split at b"\\n" (a UTF-8 multi-byte character never contains that byte), so a bad byte
    can be located exactly. With `limit`, a line is cut after `limit` bytes: the caller checks.

    Read a piece at a time, and a run of blank lines (ASCII white space only) comes out as one blank line,
    its numbers counted over: a file of millions of empty lines (a gzip of a few KB can hold them) costs
    what its size costs, not a Python step a line; every caller takes one blank line as it takes many."""
    number, offset, first = 0, 0, True  # the lines before the line begun, and its offset
    begun: list[bytes] = []  # the line begun and not yet ended, in pieces (joined once it ends: no quadratic copy)
    length = 0  # of the line begun
    for block in _blocks(path, _PIECE_BYTES if limit < 0 else min(_PIECE_BYTES, limit), lambda: number):
        if first:
            first = False
            if block == _BOM:
                offset = len(_BOM)
                continue
        if block and b"\n" not in block and (limit < 0 or length + len(block) <= limit):
            begun.append(block)
            length += len(block)
            continue
        data = b"".join([*begun, block]) if begun else block
        begun, pos = [], 0  # its pieces freed: a long line is held once
        while pos < len(data):
            if blank := _BLANK_RUN.match(data, pos):
                yield _Line(path, number + 1, offset + pos, b"\n")
                number += data.count(b"\n", pos, blank.end())
                pos = blank.end()
                continue
            end = data.find(b"\n", pos)
            if end < 0 and block and (limit < 0 or len(data) - pos <= limit):
                break  # the rest of this line comes with the next pieces
            stop = len(data) if end < 0 else end + 1
            if 0 <= limit < stop - pos:
                stop = pos + limit
            number += 1
            yield _Line(path, number, offset + pos, data[pos:stop])
            pos = stop
        offset += pos
        begun, length = ([data[pos:]], len(data) - pos) if pos < len(data) else ([], 0)


def _read_head(path: Path, size: int) -> bytes:
    """The first `size` bytes of the file, decompressed (all of it if shorter); a read error is one line."""
    with _open_binary(path) as f:
        try:
            return f.read(size)
        except (OSError, EOFError, zlib.error) as exc:
            raise _unreadable(path, exc) from None


def _read_all(path: Path) -> str:
    data = _read_head(path, MAX_DOCUMENT_BYTES + 1)
    if len(data) > MAX_DOCUMENT_BYTES:
        raise InputError(f"{path}: longer than {MAX_DOCUMENT_BYTES:,} bytes (16 MiB), the most pnlm reads as one "
                         f"document; read it by paragraphs (--txt-mode blank-line), or split it")
    skip = len(_BOM) if data.startswith(_BOM) else 0
    try:
        return data[skip:].decode("utf-8")
    except UnicodeDecodeError as exc:
        at = skip + exc.start
        raise _invalid_utf8(path, data.count(b"\n", 0, at) + 1, at, data[at]) from None


def _paragraph_bytes(path: Path) -> Iterator[tuple[int, int, bytes]]:
    """Each run of non-blank lines between blank ones (ASCII white space), as (its first line's number, its
    offset, its bytes), found a piece at a time: no Python step a line. As a line at a time would: a line
    longer than MAX_LINE_BYTES is refused, and so is a paragraph whose lines add up to more than a document
    may be, by the line where it passes the bound (lines of other white space, U+00A0 or U+3000, part
    paragraphs in _paragraphs, after this bound)."""
    number, offset, first = 1, 0, True  # the line and the byte at which `data` starts
    data, scan = b"", 0  # no paragraph break starts before `scan` in `data` (all before it was searched)
    begun: list[bytes] = []  # pieces without a newline, after `data`
    length = 0  # of the line begun: `data` after its last newline, and the pieces
    for block in _blocks(path, _PIECE_BYTES, lambda: number - 1 + data.count(b"\n")):
        if first:
            first = False
            if block == _BOM:
                offset = len(_BOM)
                continue
        if block and b"\n" not in block:
            begun.append(block)
            length += len(block)
            if length > MAX_LINE_BYTES:
                line = number + data.count(b"\n")
                raise InputError(f"{path}:{line}: line longer than {MAX_LINE_BYTES} bytes (64 MiB)")
            continue
        data = b"".join([data, *begun, block])
        begun, at_end, pos = [], not block, 0  # the pieces freed: a long line is held once
        while True:
            if blank := _BLANK_RUN.match(data, pos):  # blank lines before a paragraph
                number += data.count(b"\n", pos, blank.end())
                pos = blank.end()
            found = _PARAGRAPH_BREAK.search(data, max(pos, scan))
            if found:
                end = found.start() + 1
            elif at_end:  # the last paragraph, less a last line of white space only
                last = max(data.rfind(b"\n", pos) + 1, pos)
                end = len(data) if data[last:].strip() else last
            else:  # the lines ended so far
                end = max(data.rfind(b"\n", pos) + 1, pos)
            if end - pos > MAX_DOCUMENT_BYTES:
                line = number + data.count(b"\n", pos, pos + MAX_DOCUMENT_BYTES)
                raise InputError(f"{path}:{line}: a paragraph longer than {MAX_DOCUMENT_BYTES:,} bytes (16 MiB), "
                                 "the most pnlm reads as one document; split it")
            if not found and not at_end:
                length = len(data) - end
                if length > MAX_LINE_BYTES:
                    line = number + data.count(b"\n", pos, end)
                    raise InputError(f"{path}:{line}: line longer than {MAX_LINE_BYTES} bytes (64 MiB)")
                break
            if end <= pos:
                break
            yield number, offset + pos, data[pos:end]
            number += data.count(b"\n", pos, end)
            pos = end
        offset += pos
        data = data[pos:]
        scan = max(data.rfind(b"\n"), 0)  # a break not found yet starts at the last newline or after it


def _paragraphs(path: Path) -> Iterator[str]:
    for number, offset, raw in _paragraph_bytes(path):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise _invalid_utf8(path, number + raw.count(b"\n", 0, exc.start), offset + exc.start,
                                raw[exc.start]) from None
        if text.isascii() and not _ASCII_SPACE_ODD.search(text):
            yield text.rstrip("\r\n")
            continue
        paragraph: list[str] = []  # lines of other white space only (U+00A0, U+3000, U+001C...) part paragraphs too
        for line in text.split("\n"):
            if line.strip():
                paragraph.append(line)
            elif paragraph:
                yield "\n".join(paragraph).rstrip("\r\n")
                paragraph = []
        if paragraph:
            yield "\n".join(paragraph).rstrip("\r\n")
