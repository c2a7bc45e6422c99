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
# Bars are drawn on a terminal only: in a log they would be a blank line, or a last frame, per bar.
# soft_wrap: a line is never broken by rich (a log file keeps a path whole); a terminal wraps what is wider.
console = Console(stderr=True, soft_wrap=True)


def _duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"


def log_line(record: dict, steps: int) -> str:
    """One plain line for a metrics record (for logs, where no bar is drawn): step, loss, lr, tokens/s, ETA,
    peak memory, and the validation figures at an evaluation."""
    step, elapsed = record["step"], record.get("elapsed_s", 0.0)
    eta = elapsed / max(step, 1) * max(steps - step, 0)
    parts = [f"step {step}/{steps}", f"loss {record['loss']:.4f}", f"lr {record['lr']:.2e}",
             f"{record['tokens_per_s']:,.0f} tokens/s", f"eta {_duration(eta)}",
             f"peak host {record['peak_host_mib']:,.0f} MiB"]
    if "peak_device_mib" in record:
        parts.append(f"peak device {record['peak_device_mib']:,.0f} MiB")
    if "val_loss" in record:
        parts.append(f"val_loss {record['val_loss']:.4f} (ppl {record['val_ppl']:.2f})")
    if "val_kl" in record:
        parts.append(f"val_kl {record['val_kl']:.4f}")
    return "  ".join(parts)


def write_line(line: str) -> None:
    """A line on stderr as it is: no markup, no wrapping, flushed (a log read while it grows is up to date)."""
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def print_json(data: object) -> None:
    sys.stdout.write(json.dumps(data, indent=2) + "\n")


def track(items: Iterable[T], description: str, total: int | None = None, unit: str = "items") -> Iterator[T]:
    """Iterate with a progress bar that shows the count and the rate."""
    columns = (SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("[cyan]{task.fields[rate]}"), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True, disable=not console.is_terminal) as bar:
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
                                 transient=True, disable=not console.is_terminal)
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
                                 TimeRemainingColumn(), console=console, transient=True, disable=not console.is_terminal)
        self.task = self.progress.add_task(description, total=total, status="")

    def __enter__(self) -> "StepProgress":
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def update(self, step: int, status: str) -> None:
        self.progress.update(self.task, completed=step, status=status)


LOG_EVERY_S = 30.0  # a plain progress line at most this often (and at the end of each phase)


def window_line(description: str, done: int, total: int, rate: float, eta: float | None) -> str:
    """One plain progress line of a phase that counts windows (for logs, where no bar is drawn)."""
    parts = [f"{description}: {done:,}/{total:,} windows ({100 * done / max(total, 1):.0f}%)"]
    if rate > 0:
        parts.append(f"{rate:,.0f} windows/s")
    if eta is not None:
        parts.append(f"eta {_duration(eta)}")
    return "  ".join(parts)


@contextmanager
def window_progress() -> Iterator[Callable[[str, int, int], None]]:
    """A progress callback (description, done, total), as pnlm.clustering takes: one bar per phase, with
    windows/s and the time left; where stderr is no terminal, a plain line every LOG_EVERY_S seconds.

    A phase's first report gives the windows done before this run (a resumed embedding): its rate and
    time left count this run's windows only. The display starts with the first report, so an early error
    prints nothing but its own line."""
    columns = (SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("[cyan]{task.fields[rate]}"), TimeElapsedColumn(), TextColumn("eta"),
               TimeRemainingColumn())
    plain = not console.is_terminal
    bar = Progress(*columns, console=console, disable=plain)
    phases: dict[str, list[Any]] = {}  # description -> [task, start time, done at start, last line's time]

    def update(description: str, done: int, total: int) -> None:
        now = time.perf_counter()
        if not phases and not plain:
            bar.start()
        if description not in phases:
            task = None if plain else bar.add_task(description, total=total, completed=done, rate="")
            phases[description] = [task, now, done, now]
            return
        task, start, first, last = phases[description]
        elapsed = now - start
        rate = (done - first) / elapsed if elapsed > 0 and done > first else 0.0
        eta = (total - done) / rate if rate > 0 else None
        if plain:
            if now - last >= LOG_EVERY_S or done >= total:
                phases[description][3] = now
                write_line(window_line(description, done, total, rate, eta))
            return
        bar.update(task, completed=done, rate=f"{rate:,.0f} windows/s" if rate else "")

    try:
        yield update
    finally:
        if phases and not plain:
            bar.stop()


def training_progress(json_out: bool, log_to: list[str]):
    """What a training command reports with: its bar (or plain lines), and the metric logs --log-to names."""
    from pnlm.training.metric_logs import ProgressGroup, metric_logs

    return ProgressGroup(TrainingBar(summaries=not json_out), *metric_logs(log_to))


class TrainingBar:
    """pnlm.training.runs.TrainingProgress drawn with rich on a terminal: a bar per run, a note before it, its
    summary after it (summaries=False: a JSON caller prints them itself). Where stderr is not a terminal (a
    log file, a cluster job), one plain line per log step and per evaluation instead of the bar."""

    def __init__(self, summaries: bool = True) -> None:
        self.summaries, self.bar, self.steps = summaries, None, 0
        self.plain = not console.is_terminal

    def started(self, run, steps: int, note: str = "") -> None:
        if note and self.summaries:
            console.print(f"{note}:" if note.startswith("expert") else note)
        self.steps = steps
        if not self.plain:
            self.bar = StepProgress("training", steps).__enter__()

    def logged(self, record: dict) -> None:
        if self.plain:
            write_line(log_line(record, self.steps))
            return
        status = f"loss {record['loss']:.3f}, lr {record['lr']:.2e}, {record['tokens_per_s']:,.0f} tokens/s"
        if "val_loss" in record:
            status += f", val {record['val_loss']:.3f}"
        if "val_kl" in record:
            status += f", kl {record['val_kl']:.3f}"
        status += f", peak {record['peak_host_mib']:,.0f} MiB"
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
        peaks = summary.peak_memory
        device = f", device {peaks['peak_device_mib']:,.0f} MiB" if "peak_device_mib" in peaks else ""
        memory = f"; peak memory: host {peaks.get('peak_host_mib', 0):,.0f} MiB{device}"
        best = f"; best validation loss {summary.best_val_loss:.4f} in {summary.out / 'best'}" \
            if summary.best_val_loss else ""
        console.print(f"{summary.steps} steps, {summary.tokens:,} tokens in {summary.seconds:.1f} s "
                      f"({summary.tokens_per_s:,} tokens/s, {summary.flops:.3g} FLOPs, {summary.device_hours:.4f} "
                      f"device-hours{mfu}); final loss {summary.final_loss:.4f}{best}; "
                      f"resumable checkpoint in {summary.out / 'latest'}{memory}"
                      + ("; stopped early" if summary.stopped_early else ""))
