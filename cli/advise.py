"""`pnlm advise`: a method for N domains, from an experiment's measured curves."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

import pnlm
from pnlm.cli.console import console, print_json


def advise(
    results: Path = typer.Option(..., "--results", help="An experiment folder (`pnlm experiment run --out DIR`)."),
    domains: int = typer.Option(..., "--domains", help="N: how many domains will each get a model."),
    domain_tokens: int = typer.Option(..., "--domain-tokens", help="T: tokens of each domain's training data."),
    inference_params: int = typer.Option(..., "--inference-params", help="P: the most parameters the model "
                                         "may have at inference."),
    budget_hours: float | None = typer.Option(None, "--budget-hours", help="The most device-hours to spend in all "
                                              "(pretraining + N specializations); default: no limit."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object instead of a table."),
) -> None:
    """Recommend a method: the lowest perplexity within the amortized cost C_generic + N · C_specialization."""
    advice = pnlm.advise(results, domains, domain_tokens, inference_params, budget_hours)
    if json_out:
        print_json(advice.to_json())
        return
    table = Table(title=f"{domains} domains × {domain_tokens:,} tokens, ≤ {inference_params:,} parameters "
                        "(device-hours measured in the experiment)")
    for column in ("method", "budget (steps)", "perplexity", "C_generic", "C_specialization", "total"):
        table.add_column(column, justify="left" if column == "method" else "right")
    for o in advice.options:
        style = "bold green" if o is advice.recommended else None
        table.add_row(o.method, f"{o.budget_steps:,}", f"{o.perplexity:,.2f}", f"{o.generic_hours:.3g}",
                      f"{o.specialization_hours:.3g}", f"{o.total_hours:.3g}", style=style)
    console.print(table)
    for note in advice.notes:
        console.print(f"note: {note}")
    best, near = advice.recommended, advice.cheapest_near_best
    limit = f" within {advice.budget_hours:g} device-hours" if advice.budget_hours is not None else ""
    console.print(f"recommended{limit}: [bold]{best.method}[/bold] pretrained for {best.budget_steps:,} steps: "
                  f"perplexity {best.perplexity:,.2f} for {best.total_hours:.3g} device-hours "
                  f"({best.generic_hours:.3g} shared + {domains} × {best.specialization_hours:.3g})")
    if near is not best:
        console.print(f"within 2% of it for less: {near.method} at {near.budget_steps:,} steps, perplexity "
                      f"{near.perplexity:,.2f} for {near.total_hours:.3g} device-hours")
