"""Writing a file or a folder so that it appears complete or not at all.

Everything goes into a hidden temporary beside the target; only when the body finishes is it fsynced
and renamed into place. An existing target folder is moved aside first and removed after, so a crash
leaves the old folder (at its name, or as `.NAME.old-*` in the instant between the two renames), never
a half-written one at the target's name.

Temporaries carry the writing process's pid and a tag of its host. A process killed with -9 cannot
remove its own, so every write first sweeps the folder it writes into: temporaries of processes of
this host that are gone are deleted, and an old folder caught between the two renames is put back
where its target is missing. A write that fails (disk full, no permission) raises WriteError naming
the target, and the target is as it was.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import shutil
import socket
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from pnlm.errors import WriteError

_HOST = hashlib.sha1(socket.gethostname().encode()).hexdigest()[:8]
_TEMPORARY = re.compile(r"^\.(?P<name>.+)\.(?P<kind>tmp|old)-(?P<pid>\d+)-(?P<host>[0-9a-f]{8})(-.*)?$")


def is_temporary(name: str) -> bool:
    """Whether a file name is one of the hidden temporaries these writes leave (of any process or host)."""
    return _TEMPORARY.match(name) is not None


def temporary_prefix(target: Path, kind: str = "tmp") -> str:
    """`.NAME.tmp-PID-HOST-`: the start of a temporary's name for target, recognized by sweep."""
    return f".{target.name}.{kind}-{os.getpid()}-{_HOST}-"


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep(folder: str | Path) -> list[Path]:
    """Remove the temporaries killed writers of this host left in folder; return what was removed or restored."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    handled = []
    for entry in folder.iterdir():
        match = _TEMPORARY.match(entry.name)
        if not match or match["host"] != _HOST:
            continue
        pid = int(match["pid"])
        if pid == os.getpid() or process_alive(pid):
            continue
        target = folder / match["name"]
        saved = entry / match["name"]
        if match["kind"] == "old" and saved.exists() and not target.exists():
            os.replace(saved, target)  # killed between moving the old folder aside and the new one in
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        handled.append(entry)
    return handled


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _write_error(target: Path, exc: OSError, previous: bool) -> WriteError:
    reason = exc.strerror or str(exc)
    if exc.filename and Path(exc.filename).name != target.name and not Path(exc.filename).name.startswith("."):
        reason = f"{exc.filename}: {reason}"
    if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        reason = f"{reason}: free some space or write elsewhere"
    kept = f"the previous {target.name} is intact" if previous else "nothing was written"
    return WriteError(f"{target}: cannot be written ({reason}); {kept}")


@contextmanager
def atomic_dir(target: str | Path) -> Iterator[Path]:
    """Yield a temporary folder to fill; on normal exit it replaces target, on an exception it is removed."""
    target = Path(target)
    previous = target.exists()
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        sweep(target.parent)
        tmp = Path(tempfile.mkdtemp(prefix=temporary_prefix(target), dir=target.parent))
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes it private; the result is an ordinary folder
    except OSError as exc:
        raise _write_error(target, exc, previous) from None
    try:
        yield tmp
        fsync_dir(tmp)
        if target.exists():
            old = Path(tempfile.mkdtemp(prefix=temporary_prefix(target, "old"), dir=target.parent))
            os.replace(target, old / target.name)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
        fsync_dir(target.parent)
    except OSError as exc:
        raise _write_error(target, exc, previous) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextmanager
def atomic_file(target: str | Path) -> Iterator[BinaryIO]:
    """Yield a temporary file beside target to write; on normal exit it is fsynced and renamed over target."""
    target = Path(target)
    previous = target.exists()
    try:
        sweep(target.parent)
        fd, name = tempfile.mkstemp(prefix=temporary_prefix(target), dir=target.parent)
        os.chmod(name, 0o666 & ~_umask())
    except OSError as exc:
        raise _write_error(target, exc, previous) from None
    tmp = Path(name)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except OSError as exc:
        raise _write_error(target, exc, previous) from None
    finally:
        tmp.unlink(missing_ok=True)
