"""The paper's protocol: plans (plan.py), the runner on the Python API (runner.py: `pnlm.experiment.run`),
its outputs (results.csv, costs.csv, runs.csv, domains.csv; results.py), the report's tables and plots
(report.py), and the advice for N domains (advise.py)."""

from __future__ import annotations

from typing import Any


def __getattr__(name: str) -> Any:
    if name in ("run", "ExperimentSummary", "Runner", "DataProgress"):
        from pnlm.experiment import runner

        return getattr(runner, name)
    if name == "write_report":
        from pnlm.experiment.report import write_report

        return write_report
    raise AttributeError(f"module 'pnlm.experiment' has no attribute {name!r}")
