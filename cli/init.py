"""`pnlm init`: a randomly initialized checkpoint of any preset or spec."""

from __future__ import annotations

from pathlib import Path

import typer

import pnlm
from pnlm.cli.console import console, print_json
from pnlm.cli.options import OVERWRITE


def init(
    model: str = typer.Option(..., "--model", help="A preset (tiny, small, llm-small, slm-126m, llm-771m) or a spec.toml."),
    tokenizer: Path = typer.Option(..., "--tokenizer", help="Tokenizer folder from `pnlm data tokenizer`; sets the vocabulary."),
    out: Path = typer.Option(..., "--out", help="Checkpoint folder to write."),
    seed: int = typer.Option(0, "--seed", help="The same seed gives the same weights on every backend."),
    overwrite: bool = OVERWRITE,
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object instead of text."),
) -> None:
    """Write a randomly initialized checkpoint (weights drawn in numpy, so backend-independent)."""
    initialized = pnlm.init(model, tokenizer, out, seed=seed, overwrite=overwrite)
    spec, result = initialized.spec, initialized.to_json()
    if json_out:
        print_json(result)
    else:
        console.print(f"initialized {model} ({spec.params_inference():,} parameters) with seed {seed}: {out}")
