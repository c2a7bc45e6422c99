"""The processes that embed and label together: one alone, or the ranks of a torchrun job.

    torchrun --nproc_per_node 8 -m pnlm.cli data cluster STORE --k 1024 --out CLUSTERS   (and --nnodes N)

Every rank runs the same command; rank 0 checks the outputs and holds their locks, fits k-means and
writes the files; each rank embeds and labels its share. The group (pnlm.backends.torch.distributed,
over gloo whatever the device: it carries only decisions, chunk lists and labels) is reached through
pnlm.backend_loader, so a single process never imports torch.distributed.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, Protocol

from pnlm.errors import PnlmError


class Ranks(Protocol):
    rank: int
    world: int

    def barrier(self) -> None: ...

    def broadcast(self, value: Any) -> Any:
        """Rank 0's value, on every rank."""

    def gather(self, value: Any) -> list[Any]:
        """Every rank's value, in rank order, on rank 0 ([] on the others)."""

    def close(self) -> None:
        """Once every rank is done with the job's steps."""


class SingleProcess:
    """The group of one process: nothing to wait for, nothing to send."""

    rank, world = 0, 1

    def barrier(self) -> None:
        pass

    def broadcast(self, value: Any) -> Any:
        return value

    def gather(self, value: Any) -> list[Any]:
        return [value]

    def close(self) -> None:
        pass


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def main_process() -> bool:
    """Rank 0 of a torchrun job, or the one process: the one that reports."""
    return int(os.environ.get("RANK", "0")) == 0


def process_group() -> Ranks:
    """This job's group: the torchrun ranks when launched by torchrun, else this process alone."""
    if not launched_by_torchrun():
        return SingleProcess()
    from pnlm.backend_loader import torchrun_group

    return torchrun_group()


def on_rank_zero(group: Ranks, work: Callable[[], Any]) -> Any:
    """work() done by rank 0 alone (the one process: itself), its result returned on every rank; a refusal it
    raises (a PnlmError, or an OSError the system gave it) is raised on every rank, so that each stops with
    rank 0's line instead of waiting for it in the next step."""
    outcome = None
    if group.rank == 0:
        try:
            outcome = (True, work())
        except (PnlmError, OSError) as exc:
            outcome = (False, exc)
    done, value = group.broadcast(outcome)
    if not done:
        raise value
    return value


def share(items: list[Any], rank: int, world: int) -> list[Any]:
    """A contiguous share of items, as even as possible (the first shares one longer)."""
    base, extra = divmod(len(items), world)
    begin = rank * base + min(rank, extra)
    return items[begin:begin + base + (rank < extra)]
