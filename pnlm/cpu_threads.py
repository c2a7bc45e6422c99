"""How many CPU threads a model's framework should use: the cores of this process that no other work keeps busy.

Threads that meet at every matrix product run at the pace of the slowest: beside a process that holds
a core at normal priority, a second thread gets half a core, and the whole step waits for it. On 2 cores
beside a busy loop, a LoRA step of the demo model ran at 0.29x (torch) and 0.47x (MLX, whose matrix
products are MKL's) of its quiet speed with a thread per core, and at 0.67x and 0.79x with the one free
core (docs/benchmarks.md). Work at low priority (nice > 0) yields its core to anyone who wants it, so it is
not counted. The count is taken once per process, over a quarter of a second, from /proc/stat's lines of
the CPUs this process may run on (its affinity: a Slurm or taskset job counts its own only), and taken
from their physical cores (two SMT siblings share one core's arithmetic units). OMP_NUM_THREADS or
MKL_NUM_THREADS set by the user are kept.
"""

from __future__ import annotations

import os
import sys
import time
from functools import lru_cache
from pathlib import Path

SAMPLE_SECONDS = 0.25
CHOSEN_BY_PNLM = "PNLM_FREE_CORES_THREADS"  # marks an OMP_NUM_THREADS pnlm set, which a child process chooses anew


def available_cpus() -> list[int]:
    """The CPUs this process may run on (its affinity mask, else all of the machine's)."""
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))


def physical_cores(cpus: list[int]) -> int | None:
    """How many physical cores those CPUs are (SMT siblings counted once: one set of thread siblings per core);
    None where sysfs cannot tell."""
    cores = set()
    for cpu in cpus:
        try:
            cores.add(Path(f"/sys/devices/system/cpu/cpu{cpu}/topology/thread_siblings_list").read_text().strip())
        except OSError:
            return None
    return len(cores) or None


def _busy_ticks(cpus: set[int]) -> int:
    """Clock ticks those CPUs spent on work at normal priority or higher (user, system, irq, softirq, steal;
    not nice, not idle) since boot."""
    busy = 0
    with open("/proc/stat") as f:
        for line in f:
            name, *fields = line.split()
            if name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in cpus:
                user, _nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[:8])
                busy += user + system + irq + softirq + steal
    return busy


def _own_ticks() -> int:
    with open("/proc/self/stat") as f:
        stat = f.read()
    fields = stat[stat.rfind(")") + 2:].split()
    return int(fields[11]) + int(fields[12])


def cores_used_by_others(seconds: float = SAMPLE_SECONDS, cpus: list[int] | None = None) -> float:
    """How many of this process's cores other work at normal priority kept busy over the next `seconds`
    (this process's own time taken out); 0 where /proc cannot tell (macOS)."""
    if not sys.platform.startswith("linux") or not os.path.isfile("/proc/stat"):
        return 0.0
    cpus = set(cpus if cpus is not None else available_cpus())
    busy, own = _busy_ticks(cpus), _own_ticks()
    time.sleep(seconds)
    used = (_busy_ticks(cpus) - busy) - (_own_ticks() - own)
    return max(0.0, used / os.sysconf("SC_CLK_TCK") / seconds)


@lru_cache(maxsize=1)
def cpu_threads() -> int | None:
    """The thread count for this process's framework: its physical cores less those busy with other work now
    (at least one); None when the user set OMP_NUM_THREADS or MKL_NUM_THREADS, or where the machine cannot
    tell (not Linux), which leaves the framework's own default. It also sets OMP_NUM_THREADS,
    so that an OpenMP runtime loaded later (torch's, MKL's under MLX) starts with it, marked as pnlm's."""
    chosen_by_pnlm = os.environ.get(CHOSEN_BY_PNLM) == os.environ.get("OMP_NUM_THREADS")
    if (os.environ.get("OMP_NUM_THREADS") and not chosen_by_pnlm) or os.environ.get("MKL_NUM_THREADS"):
        return None
    cpus = available_cpus()
    cores = physical_cores(cpus) if sys.platform.startswith("linux") else None
    if cores is None:
        return None  # no /proc or /sys to tell (macOS, some containers): the framework's own default
    try:
        threads = max(1, round(cores - cores_used_by_others(cpus=cpus)))
    except (OSError, ValueError):  # an unreadable or unexpected /proc/stat
        return None
    os.environ["OMP_NUM_THREADS"] = os.environ[CHOSEN_BY_PNLM] = str(threads)
    return threads


FOLLOW_S = 30.0  # how often a long CPU run counts the free cores again


class FreeCores:
    """A long run's thread count, following the machine: every FOLLOW_S seconds the cores other work kept
    busy since the last count are counted again (from /proc/stat, without waiting), and the count changes
    when they did. A run started beside another job takes the cores back once that job ends."""

    def __init__(self, threads: int) -> None:
        self.threads = threads
        self.cpus = available_cpus()
        self.cores = physical_cores(self.cpus) or len(self.cpus)
        self._mark()

    def _mark(self) -> None:
        self.at, self.busy, self.own = time.monotonic(), _busy_ticks(set(self.cpus)), _own_ticks()

    def update(self) -> int | None:
        """The new thread count when it changed since the last count, else None."""
        now = time.monotonic()
        if now - self.at < FOLLOW_S:
            return None
        seconds, busy, own = now - self.at, self.busy, self.own
        self._mark()
        others = ((self.busy - busy) - (self.own - own)) / os.sysconf("SC_CLK_TCK") / seconds
        threads = max(1, round(self.cores - max(0.0, others)))
        if threads == self.threads:
            return None
        self.threads = threads
        return threads


def following() -> FreeCores | None:
    """A FreeCores for this process when pnlm chose its thread count (cpu_threads), else None: threads set by
    the user (OMP_NUM_THREADS, MKL_NUM_THREADS) are the user's, and stay."""
    threads = cpu_threads()
    return FreeCores(threads) if threads else None
