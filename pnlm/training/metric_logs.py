"""Where a run's metrics go besides RUN/metrics.jsonl: TensorBoard, fed from the same records.

A log is a TrainingProgress: it sees every record metrics.jsonl gets, as the loop writes it, so what
TensorBoard shows is the file's figures. Several progress reports run side by side in a ProgressGroup
(the CLI's bar and a TensorBoard log).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from pnlm.errors import PnlmError
from pnlm.training.loop import METRICS
from pnlm.training.runs import TrainingProgress

TENSORBOARD_DIR = "tensorboard"
EVENTS_PREFIX = "events.out.tfevents."  # the files TensorBoard's writer names
LOG_TARGETS = ("tensorboard",)


class ProgressGroup(TrainingProgress):
    """Several progress reports, each told everything in turn."""

    def __init__(self, *reports: TrainingProgress) -> None:
        self.reports = reports

    def started(self, run: Path, steps: int, note: str = "") -> None:
        for report in self.reports:
            report.started(run, steps, note)

    def logged(self, record: dict[str, Any]) -> None:
        for report in self.reports:
            report.logged(record)

    def finished(self, summary: Any) -> None:
        for report in self.reports:
            report.finished(summary)

    def failed(self) -> None:
        for report in self.reports:
            report.failed()


def _tensorboard_modules() -> tuple[Any, Any, Any]:
    try:
        from tensorboard.compat.proto.event_pb2 import Event
        from tensorboard.compat.proto.summary_pb2 import Summary
        from tensorboard.summary.writer.event_file_writer import EventFileWriter
    except ImportError:
        raise PnlmError("--log-to tensorboard needs the tensorboard package: pip install 'pnlm[tensorboard]'") from None
    return Event, Summary, EventFileWriter


class TensorBoardLog(TrainingProgress):
    """Every number of every record as a TensorBoard scalar, tagged with its metrics.jsonl name, in RUN/tensorboard
    (one folder per run: a mixture's experts each have theirs). The events are metrics.jsonl's: at a run's
    first record its event files (pnlm's own, in pnlm's run folder) are written anew from RUN/metrics.jsonl,
    which a resume has cut back to its checkpoint, so nothing a killed run logged past it stays."""

    def __init__(self) -> None:
        self.event, self.summary, self.writer_class = _tensorboard_modules()
        self.run: Path | None = None
        self.folder: Path | None = None
        self.writer: Any = None

    def started(self, run: Path, steps: int, note: str = "") -> None:
        self.close()
        self.run = Path(run)
        self.folder = self.run / TENSORBOARD_DIR

    def logged(self, record: dict[str, Any]) -> None:
        if self.writer is None:
            self.folder.mkdir(parents=True, exist_ok=True)
            for old in self.folder.glob(f"{EVENTS_PREFIX}*"):
                old.unlink()
            self.writer = self.writer_class(str(self.folder))
            for line in (self.run / METRICS).read_text(encoding="utf-8").splitlines():  # this record is its last
                self._write(json.loads(line))
        else:
            self._write(record)
        self.writer.flush()

    def _write(self, record: dict[str, Any]) -> None:
        values = [self.summary.Value(tag=name, simple_value=float(value)) for name, value in record.items()
                  if name != "step" and isinstance(value, (int, float)) and not isinstance(value, bool)]
        self.writer.add_event(self.event(step=int(record["step"]), wall_time=time.time(),
                                         summary=self.summary(value=values)))

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    def finished(self, summary: Any) -> None:
        self.close()

    def failed(self) -> None:
        self.close()


def metric_logs(targets: list[str] | tuple[str, ...]) -> list[TrainingProgress]:
    """The logs named (--log-to), each checked to be known and installed before a run starts."""
    logs: list[TrainingProgress] = []
    for target in dict.fromkeys(targets):  # each once, in order
        if target not in LOG_TARGETS:
            raise PnlmError(f"--log-to {target}: expected one of {', '.join(LOG_TARGETS)}")
        logs.append(TensorBoardLog())
    return logs
