"""`pnlm info`: parameter counts and spec of a checkpoint or a preset, computed without building the model."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from pnlm.checkpoint import read_spec, verify_checkpoint
from pnlm.cli.console import console, print_json
from pnlm.errors import PnlmError
from pnlm.experts import MIX_FILE, read_mix_file
from pnlm.spec import load_spec


def info(
    checkpoint: Path | None = typer.Argument(None, help="A checkpoint folder."),
    model: str | None = typer.Option(None, "--model", help="A preset or spec.toml instead of a checkpoint."),
    vocab_size: int | None = typer.Option(None, "--vocab-size", help="With --model: the vocabulary (default: the preset's)."),
    experts: int | None = typer.Option(None, "--experts", help="With --model: a hard mixture of this many copies "
                                       "(SLM-mix: pretraining trains them all, inference runs one)."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object instead of a table."),
) -> None:
    """Parameters at pretraining and at inference (the paper's table 1) and the model's shapes."""
    if (checkpoint is None) == (model is None):
        raise PnlmError("give a checkpoint folder or --model PRESET, not both and not neither")
    result: dict = {}
    if checkpoint is not None and (checkpoint / MIX_FILE).is_file():
        description = read_mix_file(checkpoint)
        spec, experts = description.spec, description.k
        result.update(checkpoint=str(checkpoint), method="mix")
    elif checkpoint is not None:
        config = verify_checkpoint(checkpoint)
        spec = read_spec(checkpoint, config)
        result.update(checkpoint=str(checkpoint), method=config.get("method"),
                      tokenizer_sha256=config.get("tokenizer", {}).get("sha256"))
    else:
        spec = load_spec(model)
        if vocab_size is not None:
            spec = spec.with_vocab(vocab_size)
        result["model"] = model
    result.update(params_pretrain=spec.params_pretrain(), params_inference=spec.params_inference(), spec=spec.to_dict())
    if experts is not None:
        if experts < 1 or spec.projection is not None:
            raise PnlmError("--experts counts a mixture of plain models: a positive number, and a spec without projection")
        result.update(experts=experts, params_pretrain=experts * spec.params_pretrain())
    if json_out:
        print_json(result)
        return
    table = Table(title=str(checkpoint or model), show_header=False)
    for key in ("method", "experts", "tokenizer_sha256"):
        if result.get(key):
            table.add_row(key, str(result[key]))
    table.add_row("params_pretrain", f"{result['params_pretrain']:,}")
    table.add_row("params_inference", f"{result['params_inference']:,}")
    for key, value in result["spec"].items():
        table.add_row(key, str(value))
    console.print(table)
