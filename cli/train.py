"""`pnlm finetune`, `pnlm fuse` and `pnlm eval` (pnlm.finetune, pnlm.fuse, pnlm.evaluate)."""

from __future__ import annotations

from pathlib import Path

import typer

import pnlm
from pnlm.cli.config_file import CONFIG
from pnlm.cli.console import console, print_json, training_progress
from pnlm.cli.options import BACKEND_HELP, COMPILE_HELP, LOG_EVERY_HELP, LOG_TO, OVERWRITE, PRECISION_HELP


def finetune(
    checkpoint: Path = typer.Argument(..., help="The pretrained checkpoint to specialize."),
    data: Path = typer.Option(..., "--data", help="The domain's token store (train and valid splits)."),
    backend: str = typer.Option("auto", "--backend", help=BACKEND_HELP),
    out: Path = typer.Option(..., "--out", help="RUN folder; the fine-tuned model is RUN/best (RUN/latest without evaluation)."),
    steps: int = typer.Option(1000, "--steps", help="At most this many steps."),
    batch_size: int = typer.Option(8, "--batch-size", help="Windows per step."),
    grad_accum: int = typer.Option(1, "--grad-accum", help="Compute each step's batch in this many slices "
                                   "(gradient accumulation): the same update, less memory."),
    lr: float | None = typer.Option(None, "--lr", help="Constant learning rate (default: the paper's pretraining "
                                    "rate / 3 = 3.3e-5; with --lora-rank 1e-4)."),
    lora_rank: int = typer.Option(0, "--lora-rank", help="Train LoRA adapters of this rank instead of every weight "
                                  "(0: full fine-tuning; the paper's appendix: 64). Saved beside the base checkpoint."),
    lora_alpha: float | None = typer.Option(None, "--lora-alpha", help="LoRA scale alpha (update × alpha/rank; "
                                            "default 2 × rank)."),
    precision: str | None = typer.Option(None, "--precision", help=PRECISION_HELP),
    compile_model: bool | None = typer.Option(None, "--compile/--no-compile", help=COMPILE_HELP, show_default=False),
    eval_every: int = typer.Option(50, "--eval-every", help="Evaluate on the valid split every N steps."),
    eval_batches: int = typer.Option(0, "--eval-batches", help="Evaluate on the first N batches of the valid split "
                                     "(0: all of it)."),
    patience: int = typer.Option(3, "--patience", help="Stop after this many evaluations without improvement."),
    early_stop: bool = typer.Option(True, "--early-stop/--no-early-stop", help="Stop when validation stops improving."),
    from_scratch: bool = typer.Option(False, "--from-scratch", help="Random weights of the same shape (SLM-nopt)."),
    checkpoint_every: int = typer.Option(0, "--checkpoint-every", help="Save a resumable checkpoint every N steps."),
    log_every: int | None = typer.Option(None, "--log-every", help=LOG_EVERY_HELP, show_default=False),
    seed: int = typer.Option(0, "--seed", help="Seed of the data order (and of the weights with --from-scratch)."),
    resume: bool = typer.Option(False, "--resume", help="Continue RUN from its latest checkpoint, exactly; start it when it has none yet "
                                "(one command line for a job that may be killed and restarted)."),
    log_to: list[str] = LOG_TO,
    config: Path | None = CONFIG,
    json_out: bool = typer.Option(False, "--json", help="Print one JSON summary instead of text."),
) -> None:
    """Fine-tune a checkpoint on a domain's data, keeping the weights with the best validation loss."""
    summary = pnlm.finetune(checkpoint, data, out, backend=backend, steps=steps, batch_size=batch_size,
                            grad_accum=grad_accum, lr=lr, lora_rank=lora_rank, lora_alpha=lora_alpha,
                            precision=precision, compile=compile_model, eval_every=eval_every,
                            eval_batches=eval_batches, patience=patience, early_stop=early_stop,
                            from_scratch=from_scratch, checkpoint_every=checkpoint_every, log_every=log_every, seed=seed, resume=resume,
                            progress=training_progress(json_out, log_to))
    if json_out and summary is not None:
        print_json(summary.to_json())


def fuse_command(
    adapters: Path = typer.Argument(..., help="An adapter folder from `pnlm finetune --lora-rank` (RUN/best)."),
    out: Path = typer.Option(..., "--out", help="The plain checkpoint to write."),
    base: Path | None = typer.Option(None, "--base", help="The base checkpoint, if it moved since training."),
    overwrite: bool = OVERWRITE,
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object instead of text."),
) -> None:
    """Merge LoRA adapters into their base: a plain checkpoint, W + (alpha/rank)·B·A in every adapted layer."""
    path = pnlm.fuse(adapters, out, base=base, overwrite=overwrite)
    if json_out:
        print_json({"out": str(path), "adapters": str(adapters)})
    else:
        console.print(f"fused {adapters} into {path}")


def eval_command(
    checkpoint: Path = typer.Argument(..., help="A checkpoint folder."),
    data: list[Path] = typer.Option(..., "--data", help="Token stores, one per domain (repeat the option)."),
    split: str = typer.Option("test", "--split", help="Split to evaluate on."),
    backend: str = typer.Option("auto", "--backend", help=BACKEND_HELP),
    batch_size: int = typer.Option(8, "--batch-size", help="Windows per batch."),
    unigram: Path | None = typer.Option(None, "--unigram", help="Also print the perplexity of an add-one unigram "
                                        "model fit on this store's train split (the generic set): the floor to beat."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object instead of a table."),
) -> None:
    """Perplexity per domain and the paper's macro-average: exp of the mean over domains of each one's mean NLL."""
    result = pnlm.evaluate(checkpoint, data, split=split, backend=backend, batch_size=batch_size, unigram=unigram)
    if json_out:
        print_json(result.to_json())
        return
    with_unigram = result.unigram is not None
    for name, d in result.domains.items():
        versus = f"  unigram {d.unigram_ppl:10.3f}" if with_unigram else ""
        console.print(f"{name:>30}: perplexity {d.ppl:10.3f}{versus}  (nll {d.nll:.4f} on {d.tokens:,} tokens)")
    versus = f"  unigram {result.unigram_macro_ppl:10.3f}" if with_unigram else ""
    console.print(f"{'macro-average':>30}: perplexity {result.macro_ppl:10.3f}{versus}")
    if with_unigram:
        console.print(f"(unigram: add-one smoothed, fit on {result.unigram['tokens']:,} train tokens of {unigram})")
