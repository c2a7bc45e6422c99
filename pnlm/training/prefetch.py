"""Batches made ahead of the step that trains on them, on a thread of their own, so that a GPU never waits
for the host to pick windows, pad rows and copy them. The order is the steps' order, whatever the thread's
timing: batch s is make(s) (a function of the step alone, pnlm/data/samplers.py), so a resumed run that
starts the prefetcher at its checkpoint's step feeds exactly the batches an uninterrupted run would have.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Any

class Prefetcher:
    """make(step) for first ≤ step < last, `depth` steps ahead; depth 0 makes each when it is asked for (a
    teacher's soft targets run a model, which is kept on the training thread)."""

    def __init__(self, make: Callable[[int], Any], first: int, last: int, depth: int = 2) -> None:
        self.make, self.next_step, self.last, self.depth = make, first, last, depth
        self._stop = threading.Event()
        self._thread = None
        if depth > 0 and first < last:
            self._queue: queue.Queue = queue.Queue(maxsize=depth)
            self._thread = threading.Thread(target=self._fill, args=(first,), name="pnlm-prefetch", daemon=True)
            self._thread.start()

    def _fill(self, step: int) -> None:
        try:
            while step < self.last and self._put((step, self.make(step), None)):
                step += 1
        except BaseException as exc:  # handed to the training thread, raised there
            self._put((step, None, exc))

    def _put(self, item: tuple) -> bool:
        """Queue item once there is room; False if the prefetcher was closed meanwhile."""
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def get(self, step: int) -> Any:
        """The batch of `step`, which must be the next one."""
        if step != self.next_step:
            raise RuntimeError(f"batches are prefetched in order: asked for step {step}, next is {self.next_step}")
        self.next_step += 1
        if self._thread is None:
            return self.make(step)
        made, item, error = self._queue.get()
        if error is not None:
            raise error
        assert made == step, (made, step)
        return item

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def __enter__(self) -> "Prefetcher":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
