"""`pnlm info`: parameter counts and spec of a checkpoint or a preset, computed without building the model."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

import pnlm
from pnlm.cli.console import console, print_json


def info(
    checkpoint: Path | None = typer.Argument(None, help="A checkpoint folder."),
    model: str | None = typer.Option(None, "--model", help="A preset or spec.toml instead of a checkpoint."),
    vocab_size: int | None = typer.Option(None, "--vocab-size", help="With --model: the vocabulary (default: the preset's)."),
    experts: int | None = typer.Option(None, "--experts", help="With --model: a hard mixture of this many copies "
                                       "(SLM-mix: pretraining trains them all, inference runs one)."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object instead of a table."),
) -> None:
    """Parameters at pretraining and at inference (the paper's table 1) and the model's shapes."""
    result = pnlm.info(checkpoint, model=model, vocab_size=vocab_size, experts=experts).to_json()
    if json_out:
        print_json(result)
        return
    table = Table(title=str(checkpoint or model), show_header=False)
    for key in ("method", "experts", "tokenizer_sha256"):
        if result.get(key):
            table.add_row(key, str(result[key]))
    table.add_row("params_pretrain", f"{result['params_pretrain']:,}")
    table.add_row("params_inference", f"{result['params_inference']:,}")
    table.add_row("mlp_params", f"{result['mlp_params']:,} ({100 * result['mlp_share']:.1f}% of the inference "
                  "parameters: what a projected network's projection multiplies)")
    for key, value in result["spec"].items():
        table.add_row(key, str(value))
    console.print(table)
