"""Shared output for the CLI: a rich console on stderr for humans, plain JSON on stdout for scripts."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

T = TypeVar("T")
console = Console(stderr=True)


def print_json(data: object) -> None:
    sys.stdout.write(json.dumps(data, indent=2) + "\n")


def track(items: Iterable[T], description: str, total: int | None = None, unit: str = "items") -> Iterator[T]:
    """Iterate with a progress bar that shows the count and the rate."""
    columns = (SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("[cyan]{task.fields[rate]}"), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True) as bar:
        task = bar.add_task(description, total=total, rate="")
        start = time.perf_counter()
        for n, item in enumerate(items, 1):
            yield item
            elapsed = time.perf_counter() - start
            bar.update(task, completed=n, rate=f"{n / elapsed:,.0f} {unit}/s" if elapsed > 0 else "")


class RateCounter:
    """A progress line for work whose total is unknown: a running count and its rate."""

    def __init__(self, description: str, unit: str) -> None:
        self.unit = unit
        self.progress = Progress(SpinnerColumn(), TextColumn("{task.description}"),
                                 TextColumn("[cyan]{task.fields[status]}"), TimeElapsedColumn(), console=console,
                                 transient=True)
        self.task = self.progress.add_task(description, total=None, status="")
        self.start = time.perf_counter()

    def __enter__(self) -> "RateCounter":
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def update(self, count: int, extra: str = "") -> None:
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        status = f"{count:,} {self.unit} ({count / elapsed:,.0f} {self.unit}/s){extra}"
        self.progress.update(self.task, status=status)
