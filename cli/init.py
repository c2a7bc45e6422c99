"""`pnlm init`: a randomly initialized checkpoint of any preset or spec."""

from __future__ import annotations

from pathlib import Path

import typer

from pnlm.checkpoint import save_checkpoint
from pnlm.cli.console import console, print_json
from pnlm.cli.options import OVERWRITE
from pnlm.memory import check_fits, init_estimate
from pnlm.outputs import CHECKPOINT, check_output
from pnlm.spec import load_spec
from pnlm.tokenizer import load_tokenizer
from pnlm.weights import init_weights


def init(
    model: str = typer.Option(..., "--model", help="A preset (tiny, slm-126m, llm-771m) or a spec.toml."),
    tokenizer: Path = typer.Option(..., "--tokenizer", help="Tokenizer folder from `pnlm data tokenizer`; sets the vocabulary."),
    out: Path = typer.Option(..., "--out", help="Checkpoint folder to write."),
    seed: int = typer.Option(0, "--seed", help="The same seed gives the same weights on every backend."),
    overwrite: bool = OVERWRITE,
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object instead of text."),
) -> None:
    """Write a randomly initialized checkpoint (weights drawn in numpy, so backend-independent)."""
    check_output(out, CHECKPOINT, overwrite, [tokenizer])
    tok = load_tokenizer(tokenizer)
    spec = load_spec(model).with_vocab(tok.vocab_size)
    check_fits(init_estimate(spec), f"--model {model}", advice="choose a smaller model")
    save_checkpoint(out, spec, init_weights(spec, seed), tok, extra={"seed": seed})
    result = {"out": str(out), "params_inference": spec.params_inference(), "vocab_size": spec.vocab_size}
    if json_out:
        print_json(result)
    else:
        console.print(f"initialized {model} ({spec.params_inference():,} parameters) with seed {seed}: {out}")
