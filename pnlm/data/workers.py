"""Worker processes that make work ahead of the process they work for, in order: a corpus's documents
tokenized (pnlm/data/prepare.py), windows decoded for the embedder (pnlm/clustering/window_features.py).

A worker is started with `spawn` (never a fork of a process that holds thread pools or a CUDA context).
Its death (out of memory, a C++ abort, kill -9) is seen at once: the stream raises WorkerDied, it does not
hang. At most `ahead` items per worker are in flight, so memory stays bounded however fast the input
comes. A worker leaves Ctrl-C to the process it works for, which says why it stops and ends its workers;
and a worker whose parent is gone (killed) exits within a second rather than lingering.

Each worker has a pipe of its own for its items and one for its results, and nothing else is shared.
(concurrent.futures' pool shares one result queue behind a lock: a worker killed while writing to it
leaves a half-written result its manager waits on, and the lock held, forever. That hang is CPython's,
seen here at the 4th `data prepare` whose worker was killed -9 at work, and once in CI.)
"""

from __future__ import annotations

import multiprocessing
import os
import pickle
import queue
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from itertools import cycle
from multiprocessing.connection import Connection, wait
from typing import Any

from pnlm.errors import PnlmError

AHEAD = 2  # items in flight per worker
ORPHAN_CHECK_S = 0.5
STOP_WAIT_S = 2.0


class WorkerDied(PnlmError):
    """A worker process died; what was finished is kept where the caller keeps it."""


class _Gone(Exception):
    """A worker's pipe ended: the worker is dead."""


def _watch_parent(parent: int) -> None:
    while True:
        time.sleep(ORPHAN_CHECK_S)
        if os.getppid() != parent:
            os._exit(1)


def _read_items(items: Connection, inbox: queue.SimpleQueue) -> None:
    # Drains the item pipe as items come, so the parent's send never waits on this worker's result send.
    while True:
        try:
            item = items.recv()
        except (EOFError, OSError):
            item = None
        inbox.put(item)
        if item is None:
            return


def _serve(items: Connection, results: Connection, parent: int, work: bytes) -> None:
    # Ctrl-C reaches the terminal's whole process group: the parent says it stops and ends its workers
    # (with SIGTERM, which a worker keeps). Ignored before the work is unpickled, which imports its modules.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    threading.Thread(target=_watch_parent, args=(parent,), daemon=True).start()
    # The items are read from the start, so a parent sending a large one never waits on a worker that failed.
    inbox: queue.SimpleQueue = queue.SimpleQueue()
    threading.Thread(target=_read_items, args=(items, inbox), daemon=True).start()
    failed = None
    try:
        function, initializer, initargs = pickle.loads(work)
        if initializer is not None:
            initializer(*initargs)
    except Exception as error:  # the answer to every item: the parent raises it, as if its own
        failed = _sendable(error)
    while (item := inbox.get()) is not None:
        if failed is not None:
            outcome = (False, failed)
        else:
            try:
                outcome = (True, function(*item))
            except Exception as error:
                outcome = (False, _sendable(error))
        if not _send_back(results, outcome):
            return


def _sendable(error: Exception) -> Exception:
    """The error itself when it crosses the pipe whole, else its type and message (a lock in it, say)."""
    try:
        pickle.loads(pickle.dumps(error))
        return error
    except Exception:
        return RuntimeError(f"{type(error).__name__}: {error}")


def _send_back(results: Connection, outcome: tuple[bool, Any]) -> bool:
    """False when the parent has stopped listening (it stops, or died): the worker leaves quietly."""
    try:
        results.send(outcome)
    except OSError:
        return False
    except Exception as error:  # a result that does not pickle
        return _send_back(results, (False, _sendable(error)))
    return True


@dataclass
class _Worker:
    process: multiprocessing.process.BaseProcess
    items: Connection
    results: Connection

    def send(self, item: tuple) -> None:
        try:
            self.items.send(item)
        except OSError:
            raise _Gone from None

    def receive(self) -> tuple[bool, Any]:
        """The next result; _Gone when the worker is (a result it was writing as it died included)."""
        ready = wait([self.results, self.process.sentinel])
        if self.results not in ready:
            raise _Gone
        try:
            return self.results.recv()
        except (EOFError, OSError):  # OSError: "got end of file during message"
            raise _Gone from None

    def stop(self, finished: bool) -> None:
        if finished:
            try:
                self.items.send(None)
            except OSError:
                pass
            self.process.join(STOP_WAIT_S)
        if self.process.is_alive():
            self.process.terminate()
            self.process.join(STOP_WAIT_S)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()
        self.items.close()
        self.results.close()


def _start_worker(context, function, initializer, initargs) -> _Worker:
    item_reader, item_writer = context.Pipe(duplex=False)
    result_reader, result_writer = context.Pipe(duplex=False)
    work = pickle.dumps((function, initializer, initargs))
    process = context.Process(target=_serve, args=(item_reader, result_writer, os.getpid(), work), daemon=True)
    process.start()
    # The worker holds the other ends alone now: its death closes them, and a read sees the end at once.
    item_reader.close()
    result_writer.close()
    return _Worker(process, item_writer, result_reader)


def ordered_map(function: Callable[..., Any], items: Iterable[tuple], workers: int, what: str,
                initializer: Callable[..., None] | None = None, initargs: tuple = (),
                ahead: int = AHEAD) -> Iterator[Any]:
    """function(*item) for each item, by `workers` processes, yielded in the items' order. what: the work,
    for the one line that says a worker died ("tokenizing documents"). An exception the function or the
    initializer raises in a worker is raised here."""
    context = multiprocessing.get_context("spawn")
    pool: list[_Worker] = []
    finished = False
    try:
        for _ in range(workers):  # each kept as it starts: a failed start still stops those before it
            pool.append(_start_worker(context, function, initializer, initargs))
        senders, receivers = cycle(pool), cycle(pool)  # item j goes to, and comes back from, worker j % workers
        pending = iter(items)
        in_flight = 0
        for item in pending:
            next(senders).send(item)
            in_flight += 1
            if in_flight >= ahead * workers:
                break
        while in_flight:
            ok, value = next(receivers).receive()
            in_flight -= 1
            if not ok:
                raise value
            following = next(pending, None)
            if following is not None:
                next(senders).send(following)
                in_flight += 1
            yield value
        finished = True
    except _Gone:
        raise WorkerDied(f"a worker {what} died (out of memory, or killed)") from None
    finally:
        for worker in pool:
            worker.stop(finished)
