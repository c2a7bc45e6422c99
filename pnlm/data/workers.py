"""Worker processes that make work ahead of the process they work for, in order: a corpus's documents
tokenized (pnlm/data/prepare.py), windows decoded for the embedder (pnlm/clustering/window_features.py).

A worker is started with `spawn` (never a fork of a process that holds thread pools or a CUDA context).
Its death (out of memory, a C++ abort, kill -9) is seen at once: the stream raises WorkerDied, it does not
hang. At most `ahead` items per worker are in flight, so memory stays bounded however fast the input
comes. A worker leaves Ctrl-C to the process it works for, which says why it stops and ends its workers;
and a worker whose parent is gone (killed) exits within a second rather than lingering.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from pnlm.errors import PnlmError

AHEAD = 2  # items in flight per worker
ORPHAN_CHECK_S = 0.5


class WorkerDied(PnlmError):
    """A worker process died; what was finished is kept where the caller keeps it."""


def _watch_parent(parent: int) -> None:
    while True:
        time.sleep(ORPHAN_CHECK_S)
        if os.getppid() != parent:
            os._exit(1)


def _start(parent: int, initializer: Callable[..., None] | None, initargs: tuple) -> None:
    # Ctrl-C reaches the terminal's whole process group: the parent says it stops and ends its workers
    # (with SIGTERM, which a worker keeps: a broken pool ends the survivors so).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    threading.Thread(target=_watch_parent, args=(parent,), daemon=True).start()
    if initializer is not None:
        initializer(*initargs)


def ordered_map(function: Callable[..., Any], items: Iterable[tuple], workers: int, what: str,
                initializer: Callable[..., None] | None = None, initargs: tuple = (),
                ahead: int = AHEAD) -> Iterator[Any]:
    """function(*item) for each item, by `workers` processes, yielded in the items' order. what: the work,
    for the one line that says a worker died ("tokenizing documents")."""
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"), initializer=_start,
                               initargs=(os.getpid(), initializer, initargs))
    in_flight: deque = deque()
    pending = iter(items)
    try:
        for item in pending:
            in_flight.append(pool.submit(function, *item))
            if len(in_flight) >= ahead * workers:
                break
        while in_flight:
            result = in_flight.popleft().result()
            following = next(pending, None)
            if following is not None:
                in_flight.append(pool.submit(function, *following))
            yield result
    except BrokenProcessPool:
        raise WorkerDied(f"a worker {what} died (out of memory, or killed)") from None
    finally:
        for future in in_flight:
            future.cancel()
        pool.shutdown(wait=True, cancel_futures=True)
