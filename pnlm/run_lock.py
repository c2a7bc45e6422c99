"""One writer per run folder: a second process that would write the same run is refused at once, naming the
holder. The lock is the operating system's (flock on RUN/.pnlm.lock), so a process that dies, even by
kill -9, leaves nothing to clean up: the next writer simply takes it.
"""

from __future__ import annotations

import fcntl
import os
import socket
from pathlib import Path

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
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        holder = os.pread(fd, 200, 0).decode("utf-8", "replace").strip() or "another process"
        os.close(fd)
        raise PnlmError(f"{folder}: another pnlm process is writing this run ({holder}); wait for it to "
                        f"finish, or write elsewhere") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
    _held[key] = fd
    return True


def unlock_run(folder: str | Path) -> None:
    fd = _held.pop(Path(folder).resolve(), None)
    if fd is not None:
        os.close(fd)
