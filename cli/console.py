"""Shared output for the CLI: a rich console on stderr for humans, plain JSON on stdout for scripts."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn,
                           TimeRemainingColumn)

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


class StepProgress:
    """A bar over a known number of steps: done/total, a status (loss, lr, tokens/s), elapsed and ETA."""

    def __init__(self, description: str, total: int) -> None:
        self.progress = Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("[cyan]{task.fields[status]}"), TimeElapsedColumn(), TextColumn("eta"),
                                 TimeRemainingColumn(), console=console, transient=True)
        self.task = self.progress.add_task(description, total=total, status="")

    def __enter__(self) -> "StepProgress":
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def update(self, step: int, status: str) -> None:
        self.progress.update(self.task, completed=step, status=status)


@contextmanager
def window_progress() -> Iterator[Callable[[str, int, int], None]]:
    """A progress callback (description, done, total), as pnlm.clustering takes: one bar per phase, with windows/s.

    The display starts with the first report, so an early error prints nothing but its own line.
    """
    columns = (SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("[cyan]{task.fields[rate]}"), TimeElapsedColumn())
    bar = Progress(*columns, console=console)
    tasks: dict[str, tuple[Any, float]] = {}

    def update(description: str, done: int, total: int) -> None:
        if not tasks:
            bar.start()
        if description not in tasks:
            tasks[description] = (bar.add_task(description, total=total, rate=""), time.perf_counter())
        task, start = tasks[description]
        elapsed = time.perf_counter() - start
        bar.update(task, completed=done, rate=f"{done / elapsed:,.0f} windows/s" if elapsed > 0 and done else "")

    try:
        yield update
    finally:
        if tasks:
            bar.stop()


class TrainingBar:
    """pnlm.training.runs.TrainingProgress drawn with rich: a bar per run, a note before it, its summary after it
    (summaries=False: a JSON caller prints them itself)."""

    def __init__(self, summaries: bool = True) -> None:
        self.summaries, self.bar = summaries, None

    def started(self, run, steps: int, note: str = "") -> None:
        if note and self.summaries:
            console.print(f"{note}:" if note.startswith("expert") else note)
        self.bar = StepProgress("training", steps).__enter__()

    def logged(self, record: dict) -> None:
        status = f"loss {record['loss']:.3f}, lr {record['lr']:.2e}, {record['tokens_per_s']:,.0f} tokens/s"
        if "val_loss" in record:
            status += f", val {record['val_loss']:.3f}"
        if "val_kl" in record:
            status += f", kl {record['val_kl']:.3f}"
        self.bar.update(record["step"], status)

    def failed(self) -> None:
        if self.bar is not None:
            self.bar.__exit__(None, None, None)
            self.bar = None

    def finished(self, summary) -> None:
        self.failed()
        if not self.summaries:
            return
        mfu = f", MFU {summary.mfu:.1%}" if summary.mfu is not None else ""
        best = f"; best validation loss {summary.best_val_loss:.4f} in {summary.out / 'best'}" \
            if summary.best_val_loss else ""
        console.print(f"{summary.steps} steps, {summary.tokens:,} tokens in {summary.seconds:.1f} s "
                      f"({summary.tokens_per_s:,} tokens/s, {summary.flops:.3g} FLOPs, {summary.device_hours:.4f} "
                      f"device-hours{mfu}); final loss {summary.final_loss:.4f}{best}; "
                      f"resumable checkpoint in {summary.out / 'latest'}"
                      + ("; stopped early" if summary.stopped_early else ""))
