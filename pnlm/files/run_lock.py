"""One writer per run folder, and per output a command writes whole (a token store, clusters, a tokenizer, a
checkpoint): a second process that would write the same one is refused at once, naming the holder. The lock
is the operating system's (flock), so a process that dies, even by kill -9, holds nothing: the next writer
simply takes it.

    a run:        RUN/.pnlm.lock, kept (the run's folder is the run's)
    other output: PARENT/.NAME.pnlm.lock beside it (the output is replaced whole, by a rename), removed
                  when the command ends
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pnlm.files.atomic import process_alive
from pnlm.errors import PnlmError

LOCK_FILE = ".pnlm.lock"
_held: dict[Path, int] = {}  # folder -> open descriptor holding its lock, for this process's lifetime
_created: set[Path] = set()  # the folders lock_run made (they did not exist before this process)
_outputs: dict[Path, tuple[int, Path]] = {}  # output -> (descriptor, lock file beside it)


def is_lock_file(name: str) -> bool:
    """A run's lock, or an output's lock left beside it by a writer that was killed."""
    return name == LOCK_FILE or (name.startswith(".") and name.endswith(LOCK_FILE))


def lock_run(folder: str | Path) -> bool:
    """Take folder's lock until unlock_run or the end of this process, or refuse with one line. False when
    this process holds it already."""
    folder = Path(folder)
    if not folder.exists():
        folder.mkdir(parents=True)
        _created.add(folder.resolve())
    key = folder.resolve()
    if key in _held:
        return False
    _held[key] = _acquire(folder / LOCK_FILE, f"{folder}: another pnlm process is writing this run")
    return True


def lock_output(path: str | Path) -> None:
    """Take the lock of an output written whole (beside it, so that the rename that puts it in place leaves
    the lock alone) until release_outputs, or refuse with one line."""
    path = Path(path)
    key = path.resolve()
    if key in _outputs:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = path.parent / f".{path.name}{LOCK_FILE}"
    _outputs[key] = (_acquire(lock, f"{path}: another pnlm process is writing it"), lock)


def release_outputs() -> None:
    for key in list(_outputs):
        _release(key)


def _release(key: Path) -> None:
    fd, lock = _outputs.pop(key)
    lock.unlink(missing_ok=True)  # while still held: a writer waiting on this file finds it gone, below
    os.close(fd)


@contextmanager
def output_lock(path: str | Path) -> Iterator[None]:
    """Hold an output's lock while its writer runs (released at the end, unless held before)."""
    key = Path(path).resolve()
    held = key in _outputs
    lock_output(path)
    try:
        yield
    finally:
        if not held and key in _outputs:
            _release(key)


def _acquire(lock: Path, refusal: str) -> int:
    """An open descriptor holding lock, with this process's pid and host in it, or PnlmError(refusal + holder)."""
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        if not _take(fd):
            holder = " ".join(os.pread(fd, 200, 0).decode("utf-8", "replace").split()) or "another process"
            # A holder killed a moment ago may still be exiting: its lock goes with its last open file.
            if not (_gone(holder) and _take(fd, wait_s=2.0)):
                os.close(fd)
                raise PnlmError(f"{refusal} ({holder}); wait for it to finish, or write elsewhere")
        try:
            current = os.stat(lock).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            current = False
        if current:
            break
        os.close(fd)  # its holder removed the file between our open and our lock: take the new one
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
    return fd


def _take(fd: int, wait_s: float = 0.0) -> bool:
    """Whether the lock was taken; a file system without locks (some NFS, FUSE, Lustre mounts) counts as
    taken: training there goes on unguarded rather than never."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.02)


def _gone(holder: str) -> bool:
    """Whether the lock file names a process of this host that no longer runs."""
    parts = holder.split()
    if len(parts) != 4 or parts[0] != "pid" or not parts[1].isdigit() or parts[3] != socket.gethostname():
        return False
    return not process_alive(int(parts[1]))


def writer_of(path: str | Path) -> str | None:
    """Who holds the lock of the output at path, or of the run folder it lies in (RUN/latest), when another
    process does: a reader that finds the output torn asks, so that it can say "being written" rather than
    "corrupted". Creates nothing."""
    path = Path(path)
    for lock in (path.parent / f".{path.name}{LOCK_FILE}", path.parent / LOCK_FILE, path / LOCK_FILE):
        try:
            fd = os.open(lock, os.O_RDONLY)
        except OSError:
            continue
        try:
            if _take(fd):
                continue
            holder = " ".join(os.pread(fd, 200, 0).decode("utf-8", "replace").split()) or "another process"
            if holder.split()[:2] != ["pid", str(os.getpid())]:
                return holder
        finally:
            os.close(fd)
    return None


def unlock_run(folder: str | Path) -> None:
    fd = _held.pop(Path(folder).resolve(), None)
    if fd is not None:
        os.close(fd)


def abandon_runs(keys: set[Path] | None = None) -> None:
    """A command refused after it locked its run folders: release them (or those of keys), and remove those
    it made that hold nothing but the lock, so a refused command leaves no folder behind."""
    for key in list(_held) if keys is None else [k for k in keys if k in _held]:
        fd = _held.pop(key)
        if key in _created and [p.name for p in key.iterdir()] == [LOCK_FILE]:
            (key / LOCK_FILE).unlink()
            key.rmdir()
            _created.discard(key)
        os.close(fd)


@contextmanager
def run_locks_released() -> Iterator[None]:
    """The run locks taken inside are released when it ends (a function of the Python API that locks a run
    folder, used as a decorator); on an error, a folder it made that holds only its lock is removed too."""
    before = set(_held)
    try:
        yield
    except BaseException:
        abandon_runs(set(_held) - before)
        raise
    for key in set(_held) - before:
        os.close(_held.pop(key))
