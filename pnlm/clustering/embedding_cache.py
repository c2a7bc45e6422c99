"""The embedding cache of a store: one file per split, written chunk by chunk so that a killed job
continues where it stopped.

    STORE/embeddings/<embedder id>/
      embedder.json              which embedder made the files
      <split>.npy                float16 (windows, dim): one normalized embedding per window, in window order
      <split>.partial.npy        the same file while it is being written (every row at its final place)
      <split>.partial.json       what it is the embedding of: windows, dim, chunk size, embedder id
      <split>.partial.chunks/    one journal per process that wrote chunks: a line `chunk N` for each
                                 chunk whose rows are on disk

A chunk is a fixed run of windows (its size a function of the split's size, so every run and every
rank cuts the split alike). Its rows are written in place and fsynced before its journal line is
appended and fsynced: a line names only rows that are there, and a line cut short by a kill has no
newline and names nothing. When every chunk is done the partial file is renamed to <split>.npy, the
file an uninterrupted run writes, bit for bit. Processes (torchrun's ranks, on one machine or many
sharing the folder) write disjoint rows of the one file, each into its own journal.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import time
from pathlib import Path
from typing import Any

import numpy as np

from pnlm.errors import InputError
from pnlm.files.atomic import atomic_file, fsync_dir

MIN_CHUNK = 32
MAX_CHUNK = 4096
CHUNKS_PER_SPLIT = 64
_LINE = re.compile(r"chunk (\d+)")


def chunk_windows(windows: int) -> int:
    """Windows per chunk: about 64 chunks a split, between 32 and 4,096 windows each."""
    return int(min(MAX_CHUNK, max(MIN_CHUNK, -(-windows // CHUNKS_PER_SPLIT))))


def cached_split(folder: Path, split: str, windows: int) -> np.ndarray | None:
    """A split's finished embeddings (memory-mapped), or None when there are none that fit the split."""
    path = folder / f"{split}.npy"
    if not path.is_file():
        return None
    try:
        embeddings = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError):
        return None
    if embeddings.dtype != np.float16 or embeddings.ndim != 2 or len(embeddings) != windows:
        return None
    return embeddings


class SplitCache:
    """The partial embedding of one split: which chunks are done, writing one, finishing the file."""

    def __init__(self, folder: Path, split: str, windows: int, dim: int, embedder_id: str) -> None:
        self.folder, self.split, self.windows, self.dim = folder, split, windows, dim
        self.chunk = chunk_windows(windows)
        self.chunks = -(-windows // self.chunk)
        self.identity = {"split": split, "windows": windows, "dim": dim, "chunk": self.chunk, "dtype": "float16",
                         "embedder": embedder_id}
        self.final = folder / f"{split}.npy"
        self.partial = folder / f"{split}.partial.npy"
        self.identity_file = folder / f"{split}.partial.json"
        self.journals = folder / f"{split}.partial.chunks"
        self._fd: int | None = None
        self._journal: Any = None
        self._offset = 0

    def bounds(self, chunk: int) -> tuple[int, int]:
        begin = chunk * self.chunk
        return begin, min(self.windows, begin + self.chunk)

    # --- set up (one process: the only one, or rank 0 while the others wait) --------------------------

    def prepare(self) -> bool:
        """Make the partial file, or keep the one an earlier run left when it is the embedding of the same
        windows by the same embedder. True when an earlier run's chunks are kept."""
        if self._matches():
            return True
        self.discard()
        self.journals.mkdir()
        # A sparse file of the final size, header first: chunks are written at their rows in any order.
        array = np.lib.format.open_memmap(self.partial, mode="w+", dtype=np.float16, shape=(self.windows, self.dim))
        del array
        with open(self.partial, "rb+") as f:
            os.fsync(f.fileno())
        with atomic_file(self.identity_file) as f:  # last: the partial counts only once this is there
            f.write((json.dumps(self.identity, indent=2) + "\n").encode())
        return False

    def _matches(self) -> bool:
        if not (self.identity_file.is_file() and self.partial.is_file() and self.journals.is_dir()):
            return False
        try:
            recorded = json.loads(self.identity_file.read_text(encoding="utf-8"))
            header = np.load(self.partial, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError, UnicodeDecodeError):
            return False
        return recorded == self.identity and header.shape == (self.windows, self.dim) and header.dtype == np.float16

    def discard(self) -> None:
        self.discard_files(self.folder, self.split)

    @staticmethod
    def discard_files(folder: Path, split: str) -> None:
        """Remove what pnlm left of an unfinished embedding of a split (its own files, by name)."""
        (folder / f"{split}.partial.json").unlink(missing_ok=True)
        (folder / f"{split}.partial.npy").unlink(missing_ok=True)
        journals = folder / f"{split}.partial.chunks"
        if journals.is_dir() and not journals.is_symlink():
            shutil.rmtree(journals)
        elif journals.exists() or journals.is_symlink():
            journals.unlink()

    # --- which chunks are done ------------------------------------------------------------------------

    def done(self) -> set[int]:
        """The chunks some journal says are on disk."""
        found: set[int] = set()
        if not self.journals.is_dir():
            return found
        for journal in self.journals.iterdir():
            try:
                text = journal.read_text(encoding="ascii", errors="replace")
            except OSError:
                continue
            for line in text.split("\n")[:-1]:  # the part after the last newline is a line cut short
                match = _LINE.fullmatch(line)
                if match and int(match[1]) < self.chunks:
                    found.add(int(match[1]))
        return found

    # --- writing (every process, its own chunks) --------------------------------------------------------

    def open_for_writing(self, rank: int) -> None:
        if not self._matches():
            raise InputError(f"{self.partial}: the partial embedding went away or changed while this job "
                             "ran (another job on the same store?); run the command again")
        with open(self.partial, "rb") as f:
            np.lib.format.read_magic(f)
            np.lib.format.read_array_header_1_0(f)
            self._offset = f.tell()
        self._fd = os.open(self.partial, os.O_WRONLY)
        name = f"rank{rank:05d}-{socket.gethostname()[:32]}-{os.getpid()}-{time.time_ns()}.log"
        self._journal = open(self.journals / name, "a", encoding="ascii")
        fsync_dir(self.journals)

    def write(self, chunk: int, rows: np.ndarray) -> None:
        """Commit a chunk: its rows on disk first, then its line in this process's journal."""
        begin, end = self.bounds(chunk)
        data = np.ascontiguousarray(rows, dtype=np.float16)
        if data.shape != (end - begin, self.dim):
            raise ValueError(f"chunk {chunk}: {data.shape} rows for windows {begin}..{end}")
        payload, position = memoryview(data).cast("B"), self._offset + begin * self.dim * 2
        while payload:
            written = os.pwrite(self._fd, payload, position)
            payload, position = payload[written:], position + written
        os.fsync(self._fd)
        self._journal.write(f"chunk {chunk}\n")
        self._journal.flush()
        os.fsync(self._journal.fileno())

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self._journal is not None:
            self._journal.close()
            self._journal = None

    # --- finishing (one process, once every chunk is done) ----------------------------------------------

    def finish(self) -> None:
        missing = sorted(set(range(self.chunks)) - self.done())
        if missing:
            raise InputError(f"{self.partial}: chunks {', '.join(map(str, missing[:5]))} of {self.chunks} are not "
                             "embedded; run the command again to finish them")
        with open(self.partial, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(self.partial, self.final)
        fsync_dir(self.folder)
        self.discard()
