"""`pnlm export` and `pnlm import`: the Hugging Face Llama format, for transformers and mlx-lm."""

from __future__ import annotations

from pathlib import Path

import typer

import pnlm
from pnlm.cli.console import console, print_json
from pnlm.cli.options import OVERWRITE
from pnlm.errors import PnlmError
from pnlm.checkpoints.peft_adapters import is_peft_adapter


def folder_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def export(
    checkpoint: Path = typer.Argument(..., help="A plain pnlm checkpoint (instantiate a PN or mix run first), or "
                                      "LoRA adapters with --format peft."),
    format: str = typer.Option("hf", "--format", help="hf: a Hugging Face Llama folder (transformers, mlx-lm); "
                               "mlx: an MLX folder through mlx-lm's conversion (with --quantize); "
                               "peft: LoRA adapters as a PEFT adapter, their base beside them in OUT/base."),
    out: Path = typer.Option(..., "--out", help="The folder to write."),
    quantize: int | None = typer.Option(None, "--quantize", help="--format mlx: 4 or 8 bits per weight "
                                        "(mlx-lm's affine quantization)."),
    group_size: int = typer.Option(64, "--group-size", help="--format mlx --quantize: weights per scale and bias "
                                   "(32, 64 or 128; mlx-lm's default 64)."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object instead of text."),
) -> None:
    """Write a checkpoint as a Hugging Face Llama model folder or an MLX one (4 or 8 bits), or LoRA adapters as
    a PEFT adapter."""
    if format not in ("hf", "mlx", "peft"):
        raise PnlmError(f"--format {format!r}: expected hf (Hugging Face Llama), mlx or peft (LoRA adapters)")
    if quantize is not None and format != "mlx":
        raise PnlmError("--quantize goes with --format mlx")
    if format == "mlx":
        pnlm.export_mlx(checkpoint, out, quantize=quantize, group_size=group_size)
        kind = f"{quantize}-bit, groups of {group_size}" if quantize else "float"
        said = f"MLX, {kind}: mlx_lm.load, mlx_lm.server, pnlm generate"
    elif format == "peft":
        pnlm.export_peft(checkpoint, out)
        said = f"PEFT LoRA adapter; its base: {out / 'base'}"
    else:
        pnlm.export_hf(checkpoint, out)
        said = "Hugging Face Llama: transformers, mlx_lm.load"
    if json_out:
        print_json({"out": str(out), "format": format, "quantize": quantize,
                    "group_size": group_size if quantize else None, "bytes": folder_bytes(out)})
    else:
        console.print(f"exported {checkpoint} to {out} ({said})")


def import_command(
    folder: Path = typer.Argument(..., help="A Hugging Face Llama folder (tokenizer.model or tokenizer.json) or "
                                  "Hub id (owner/name), or a PEFT LoRA adapter (with --base)."),
    out: Path = typer.Option(..., "--out", help="The pnlm checkpoint (or adapter folder) to write."),
    base: Path | None = typer.Option(None, "--base", help="For a PEFT adapter: the pnlm checkpoint it adapts."),
    overwrite: bool = OVERWRITE,
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object instead of text."),
) -> None:
    """Read a Hugging Face Llama folder or Hub id (any size, safetensors) into a pnlm checkpoint, or a PEFT LoRA
    adapter onto a pnlm base."""
    if is_peft_adapter(folder):
        if base is None:
            raise PnlmError(f"{folder}: a PEFT adapter; name the pnlm checkpoint it adapts with --base")
        path = pnlm.import_peft(folder, base, out, overwrite=overwrite)
        said = f"imported the PEFT adapter {folder} onto {base} into {path}"
    else:
        if base is not None:
            raise PnlmError(f"{folder}: --base is for PEFT adapters (a folder with adapter_config.json)")
        path = pnlm.import_hf(folder, out, overwrite=overwrite)
        said = f"imported {folder} into {path}"
    if json_out:
        print_json({"out": str(path), "source": str(folder), "kind": "peft-adapter" if base is not None else "checkpoint"})
    else:
        console.print(said)
