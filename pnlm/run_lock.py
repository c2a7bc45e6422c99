"""One writer per run folder: a second process that would write the same run is refused at once, naming the
holder. The lock is the operating system's (flock on RUN/.pnlm.lock), so a process that dies, even by
kill -9, leaves nothing to clean up: the next writer simply takes it.
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import time
from pathlib import Path

from pnlm.atomic import process_alive
from pnlm.errors import PnlmError

LOCK_FILE = ".pnlm.lock"
_held: dict[Path, int] = {}  # folder -> open descriptor holding its lock, for this process's lifetime


def lock_run(folder: str | Path) -> bool:
    """Take folder's lock until unlock_run or the end of this process, or refuse with one line. False when
    this process holds it already."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    key = folder.resolve()
    if key in _held:
        return False
    fd = os.open(folder / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    if not _take(fd):
        holder = " ".join(os.pread(fd, 200, 0).decode("utf-8", "replace").split()) or "another process"
        # A holder killed a moment ago may still be exiting: its lock goes with its last open file.
        if not (_gone(holder) and _take(fd, wait_s=2.0)):
            os.close(fd)
            raise PnlmError(f"{folder}: another pnlm process is writing this run ({holder}); wait for it to "
                            f"finish, or write elsewhere")
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
    _held[key] = fd
    return True


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


def unlock_run(folder: str | Path) -> None:
    fd = _held.pop(Path(folder).resolve(), None)
    if fd is not None:
        os.close(fd)
