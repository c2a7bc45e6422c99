"""An experiment's CSV files (the runner's outputs, docs/experiments.md): their columns, writing them, reading
them into typed rows, and the aggregates the report and `pnlm advise` share: macro-averages over domains, costs per method and budget."""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pnlm.errors import PnlmError
from pnlm.files.atomic import atomic_file
from pnlm.methods import METHODS

METHOD_ORDER = tuple(METHODS)  # the registry's order (pnlm/methods/__init__.py)
RESULT_TYPES = {"method": str, "budget_steps": int, "domain": str, "domain_tokens": int, "train_tokens": int,
                "params_pretrain": int, "params_inference": int, "pretrained_ppl": float, "finetuned_ppl": float,
                "finetune_steps": int, "generic_flops": float, "specialization_flops": float}
COST_TYPES = {"method": str, "budget_steps": int, "domain": str, "domain_tokens": int,
              "generic_device_hours": float, "specialization_device_hours": float, "device": str}
RUN_TYPES = {"kind": str, "method": str, "budget_steps": int, "domain": str, "domain_tokens": int, "steps": int,
             "tokens": int, "flops": float, "seconds": float, "device_hours": float, "device": str, "backend": str}
DOMAIN_TYPES = {"domain": str, "domain_tokens": int, "train_windows": int, "top_cluster": int, "top_share": float,
                "entropy": float}


RESULT_COLUMNS = ("method", "budget_steps", "domain", "domain_tokens", "train_tokens", "params_pretrain",
                  "params_inference", "expert", "pretrained_ppl", "finetuned_ppl", "finetune_steps",
                  "generic_flops", "specialization_flops")
COST_COLUMNS = ("method", "budget_steps", "domain", "domain_tokens", "generic_device_hours",
                "specialization_device_hours", "device")
RUN_COLUMNS = ("kind", "method", "budget_steps", "domain", "domain_tokens", "steps", "tokens", "flops", "seconds",
               "device_hours", "device", "backend")
DOMAIN_COLUMNS = ("domain", "domain_tokens", "train_windows", "top_cluster", "top_share", "entropy")


def write_csv(path: Path, columns: tuple[str, ...], rows: list[dict[str, Any]]) -> None:
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows({c: _cell(row.get(c, "")) for c in columns} for row in rows)
    with atomic_file(path) as f:
        f.write(text.getvalue().encode())


def _cell(value: Any) -> Any:
    # Perplexities are rounded so that a rerun's float noise in the last bits does not change the file.
    return f"{value:.6g}" if isinstance(value, float) else value


def read_csv(path: Path, types: dict[str, type], required: bool = True) -> list[dict[str, Any]]:
    """Rows with typed values; a missing column or an unparsable value names the file, line and column."""
    if not path.is_file():
        if required:
            raise PnlmError(f"{path}: missing; run `pnlm experiment run` into this folder first")
        return []
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = [c for c in types if c not in (reader.fieldnames or [])]
        if missing:
            raise PnlmError(f"{path}: line 1: missing column(s) {', '.join(missing)}")
        rows = []
        for line, raw in enumerate(reader, start=2):
            row = {}
            for column, kind in types.items():
                text = raw[column]
                try:
                    row[column] = kind(text) if kind is not float else float(text)
                except (TypeError, ValueError):
                    raise PnlmError(f"{path}: line {line}: column {column}: expected {kind.__name__}, got {text!r}") from None
                if kind is float and not math.isfinite(row[column]):
                    raise PnlmError(f"{path}: line {line}: column {column}: expected a finite number, got {text!r}")
                if kind in (int, float) and row[column] < 0:  # counts, costs, perplexities: none is negative
                    raise PnlmError(f"{path}: line {line}: column {column}: expected a number >= 0, got {text!r}")
            rows.append(row)
    return rows


@dataclass
class Results:
    folder: Path
    results: list[dict[str, Any]]
    costs: list[dict[str, Any]]
    runs: list[dict[str, Any]]
    domains: list[dict[str, Any]]

    @property
    def methods(self) -> list[str]:
        present = {r["method"] for r in self.results}
        return [m for m in METHOD_ORDER if m in present] + sorted(present - set(METHOD_ORDER))

    @property
    def sizes(self) -> list[int]:
        return sorted({r["domain_tokens"] for r in self.results})

    @property
    def domain_names(self) -> list[str]:
        return list(dict.fromkeys(r["domain"] for r in self.results))

    def budgets(self, method: str) -> list[int]:
        return sorted({r["budget_steps"] for r in self.results if r["method"] == method})

    def macro_ppl(self, method: str, budget: int, size: int, column: str = "finetuned_ppl") -> float | None:
        """The paper's macro-average: exp of the mean over domains of ln ppl; None unless every domain has a row."""
        values = [r[column] for r in self.results
                  if r["method"] == method and r["budget_steps"] == budget and r["domain_tokens"] == size]
        if not values or len(values) < len(self.domain_names):
            return None
        return math.exp(sum(math.log(v) for v in values) / len(values))

    def cost(self, method: str, budget: int, column: str, size: int | None = None) -> float | None:
        """Mean device-hours of a method × budget (and size) over the domains' rows of costs.csv."""
        values = [c[column] for c in self.costs if c["method"] == method and c["budget_steps"] == budget
                  and (size is None or c["domain_tokens"] == size)]
        return sum(values) / len(values) if values else None

    def device(self) -> str:
        devices = sorted({r["device"] for r in self.runs} | {c["device"] for c in self.costs})
        return ", ".join(devices) if devices else "unknown"


def read_results(folder: str | Path) -> Results:
    folder = Path(folder)
    if not folder.is_dir():
        raise PnlmError(f"{folder}: not a folder of experiment results")
    return Results(folder, read_csv(folder / "results.csv", RESULT_TYPES), read_csv(folder / "costs.csv", COST_TYPES),
                   read_csv(folder / "runs.csv", RUN_TYPES, required=False),
                   read_csv(folder / "domains.csv", DOMAIN_TYPES, required=False))


def interpolate_log(points: list[tuple[float, float]], x: float) -> float | None:
    """y at x on the polyline through points (x > 0), linear in log x; None outside their range."""
    points = sorted(p for p in points if p[0] > 0)
    if not points or x <= 0:
        return None
    for (x0, y0), (x1, y1) in zip(points, points[1:]):
        if x0 <= x <= x1:
            if x1 == x0:
                return y0
            t = (math.log(x) - math.log(x0)) / (math.log(x1) - math.log(x0))
            return y0 + t * (y1 - y0)
    return points[0][1] if math.isclose(x, points[0][0], rel_tol=1e-9) else None

