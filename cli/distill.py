"""`pnlm distill`: fine-tune a student on a domain with a teacher's next-token distributions (SLM-d; pnlm.distill)."""

from __future__ import annotations

from pathlib import Path

import typer

import pnlm
from pnlm.cli.config_file import CONFIG
from pnlm.cli.console import print_json, training_progress
from pnlm.cli.options import BACKEND_HELP, LOG_EVERY_HELP, LOG_TO, PRECISION_HELP


def distill(
    teacher: Path = typer.Option(..., "--teacher", help="The teacher checkpoint (a fine-tuned large model)."),
    student: Path = typer.Option(..., "--student", help="The student checkpoint to start from (a small model)."),
    data: Path = typer.Option(..., "--data", help="The domain's token store (train and valid splits)."),
    backend: str = typer.Option("auto", "--backend", help=BACKEND_HELP + " The teacher runs on it too."),
    out: Path = typer.Option(..., "--out", help="RUN folder; the distilled student is RUN/best (RUN/latest without evaluation)."),
    alpha: float = typer.Option(0.5, "--alpha", help="Weight of the teacher's term: (1-α)·CE + α·T²·KL."),
    temperature: float = typer.Option(2.0, "--temperature", help="T: both distributions are softened by it."),
    cache_top_k: int = typer.Option(0, "--cache-top-k", help="Run the teacher once and keep its top-k log-probabilities "
                                    "on disk (RUN/teacher-cache) instead of running it beside the student (0)."),
    steps: int = typer.Option(1000, "--steps", help="At most this many steps."),
    batch_size: int = typer.Option(8, "--batch-size", help="Windows per step."),
    lr: float = typer.Option(1e-4 / 3, "--lr", help="Constant learning rate (the paper's fine-tuning rate)."),
    eval_every: int = typer.Option(50, "--eval-every", help="Evaluate (loss and KL to the teacher) every N steps."),
    eval_batches: int = typer.Option(0, "--eval-batches", help="Evaluate on the first N batches of the valid split "
                                     "(0: all of it)."),
    patience: int = typer.Option(3, "--patience", help="Stop after this many evaluations without improvement."),
    early_stop: bool = typer.Option(True, "--early-stop/--no-early-stop", help="Stop when validation stops improving."),
    precision: str | None = typer.Option(None, "--precision", help=PRECISION_HELP),
    checkpoint_every: int = typer.Option(0, "--checkpoint-every", help="Save a resumable checkpoint every N steps."),
    log_every: int | None = typer.Option(None, "--log-every", help=LOG_EVERY_HELP, show_default=False),
    seed: int = typer.Option(0, "--seed", help="Seed of the data order."),
    resume: bool = typer.Option(False, "--resume", help="Continue RUN from its latest checkpoint, exactly; start it when it has none yet."),
    log_to: list[str] = LOG_TO,
    config: Path | None = CONFIG,
    json_out: bool = typer.Option(False, "--json", help="Print one JSON summary instead of text."),
) -> None:
    """Distill: the student learns the domain's tokens and the teacher's distributions at once."""
    summary = pnlm.distill(teacher, student, data, out, backend=backend, alpha=alpha, temperature=temperature,
                           cache_top_k=cache_top_k, steps=steps, batch_size=batch_size, lr=lr, eval_every=eval_every,
                           eval_batches=eval_batches, patience=patience, early_stop=early_stop, precision=precision,
                           checkpoint_every=checkpoint_every, log_every=log_every, seed=seed, resume=resume,
                           progress=training_progress(json_out, log_to))
    if json_out and summary is not None:
        print_json(summary.to_json())
