"""`pnlm experiment run PLAN.toml --out DIR` and `pnlm experiment report DIR` (pnlm.experiment)."""

from __future__ import annotations

import contextlib
from pathlib import Path

import typer
from rich.markup import escape

import pnlm.experiment
from pnlm.cli.console import RateCounter, TrainingBar, console, print_json, window_progress
from pnlm.experiment.runner import DataProgress

app = typer.Typer(no_args_is_help=True, help="Run the paper's protocol from a plan; tables and plots.")


class DataBars(DataProgress):
    """The data steps' progress as the data commands draw it."""

    @contextlib.contextmanager
    def documents(self):
        with RateCounter("reading documents", "docs") as counter:
            yield counter.update

    @contextlib.contextmanager
    def tokens(self):
        with RateCounter("tokenizing", "tokens") as counter:
            yield lambda documents, tokens: counter.update(tokens, f", {documents:,} documents")

    def windows(self):
        return window_progress()


@app.command("report")
def report(
    out: Path = typer.Argument(..., help="An experiment folder (`pnlm experiment run --out DIR`)."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object instead of text."),
) -> None:
    """(Re)write DIR/report.md and DIR/plots/ from the CSV files: the paper's tables 1, 2, 4, 7, 8, 9."""
    path = pnlm.experiment.write_report(out)
    text = path.read_text(encoding="utf-8")
    plots = sorted(str(p) for p in (Path(out) / "plots").glob("*.png") if f"plots/{p.name}" in text)
    if json_out:
        print_json({"report": str(path), "plots": plots})
    else:
        console.print(escape(f"report written to {path}" + ("" if plots else " (no plots: they need matplotlib, "
                                                              "pip install 'pnlm[report]')")))


@app.command("run")
def run(
    plan: Path = typer.Argument(..., help="The plan (TOML): corpora, domains and sizes, methods, budgets, models."),
    out: Path = typer.Option(..., "--out", help="DIR: results.csv, costs.csv, runs.csv, domains.csv, report.md, "
                             "plots/, and work/ (stores, runs, checkpoints). Rerun with the same DIR to resume."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object at the end instead of text."),
) -> None:
    """Run every cell of a plan (finished cells are skipped on a rerun), then write the report."""
    summary = pnlm.experiment.run(plan, out, say=lambda text: console.print(f"[bold]{text}[/bold]"),
                                  progress=TrainingBar(summaries=False), data_progress=DataBars())
    if json_out:
        print_json(summary.to_json())
        return
    console.print(f"{summary.cells} cells; results in {summary.results}; report in {summary.report}")
