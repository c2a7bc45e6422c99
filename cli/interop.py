"""`pnlm export` and `pnlm import`: the Hugging Face Llama format, for transformers and mlx-lm."""

from __future__ import annotations

from pathlib import Path

import typer

import pnlm
from pnlm.cli.console import console
from pnlm.cli.options import OVERWRITE
from pnlm.errors import PnlmError


def export(
    checkpoint: Path = typer.Argument(..., help="A plain pnlm checkpoint (instantiate a PN or mix run, fuse adapters first)."),
    format: str = typer.Option("hf", "--format", help="hf: a Hugging Face Llama folder (transformers, mlx-lm)."),
    out: Path = typer.Option(..., "--out", help="The folder to write."),
) -> None:
    """Write a checkpoint as a Hugging Face Llama model folder."""
    if format != "hf":
        raise PnlmError(f"--format {format!r}: this version exports hf (Hugging Face Llama) only")
    pnlm.export_hf(checkpoint, out)
    console.print(f"exported {checkpoint} to {out} (Hugging Face Llama: transformers, mlx_lm.load)")


def import_command(
    folder: Path = typer.Argument(..., help="A local Hugging Face Llama folder with tokenizer.model."),
    out: Path = typer.Option(..., "--out", help="The pnlm checkpoint to write."),
    overwrite: bool = OVERWRITE,
) -> None:
    """Read a local Hugging Face Llama folder (any size, safetensors) into a pnlm checkpoint."""
    path = pnlm.import_hf(folder, out, overwrite=overwrite)
    console.print(f"imported {folder} into {path}")
