"""`pnlm pretrain`: any method of the paper on the generic token store (pnlm.pretrain)."""

from __future__ import annotations

from pathlib import Path

import typer

import pnlm
from pnlm.cli.config_file import CONFIG
from pnlm.cli.console import print_json, training_progress
from pnlm.cli.options import BACKEND_HELP, COMPILE_HELP, LOG_EVERY_HELP, LOG_TO, PRECISION_HELP


def pretrain(
    method: str = typer.Option("slm", "--method", help="slm or llm (one model on every window), pn (a projected "
                               "network over --clusters), mix (k independent models, one per cluster) or is "
                               "(importance sampling: generic windows drawn by the --domain's cluster histogram) or soup (a soup of "
                               "experts over --clusters: a model for any domain's histogram, docs/soup.md)."),
    model: str = typer.Option(..., "--model", help="A preset (tiny, small, llm-small, slm-126m, llm-771m; projected: pn-tiny, pn-small, pn-126m) or a spec.toml."),
    data: Path = typer.Option(..., "--data", help="Token store from `pnlm data prepare` (its train split)."),
    clusters: Path | None = typer.Option(None, "--clusters", help="pn, mix and is: the clusters the store is labelled with."),
    domain: Path | None = typer.Option(None, "--domain", help="is: the domain's store, labelled with the same clusters "
                                       "(its train split's histogram is the target)."),
    projection: str | None = typer.Option(None, "--projection", help="pn: h,k,m (basis tensors, experts, expert "
                                          "embedding width); default: the preset's h and m, the clusters' k."),
    pn_batches: str = typer.Option("mixed", "--pn-batches", help="pn: mixed (the SLM's batches, each row through "
                                   "its own cluster's expert) or one-cluster (every batch one cluster's: the "
                                   "ablation of docs/results/pn-ablation.md)."),
    experts: str | None = typer.Option(None, "--experts", help="mix: which experts this process trains (default all)."),
    backend: str = typer.Option("auto", "--backend", help=BACKEND_HELP),
    out: Path = typer.Option(..., "--out", help="RUN folder: latest/, best/, metrics.jsonl (mix: one per expert)."),
    steps: int | None = typer.Option(None, "--steps", help="Optimizer steps (mix: per expert)."),
    tokens: int | None = typer.Option(None, "--tokens", help="Or a token budget, turned into steps."),
    batch_size: int = typer.Option(8, "--batch-size", help="Windows per step."),
    grad_accum: int = typer.Option(1, "--grad-accum", help="Compute each step's batch in this many slices "
                                   "(gradient accumulation): the same update, less memory."),
    lr: float = typer.Option(1e-4, "--lr", help="Peak learning rate (the paper: 1e-4)."),
    precision: str | None = typer.Option(None, "--precision", help=PRECISION_HELP),
    compile_model: bool | None = typer.Option(None, "--compile/--no-compile", help=COMPILE_HELP, show_default=False),
    fsdp: bool = typer.Option(False, "--fsdp", help="Under torchrun, shard weights, gradients and optimizer state "
                              "over the processes (FSDP) instead of replicating them (DDP)."),
    warmup: int | None = typer.Option(None, "--warmup", help="Warmup steps (default: min(1000, steps/10))."),
    eval_every: int = typer.Option(0, "--eval-every", help="Evaluate on the valid split every N steps (0: never)."),
    checkpoint_every: int = typer.Option(0, "--checkpoint-every", help="Save a resumable checkpoint every N steps."),
    log_every: int | None = typer.Option(None, "--log-every", help=LOG_EVERY_HELP, show_default=False),
    seed: int = typer.Option(0, "--seed", help="Seed of the initial weights and of the data order."),
    resume: bool = typer.Option(False, "--resume", help="Continue RUN from its latest checkpoint, exactly; start it when it has none yet "
                                "(one command line for a job that may be killed and restarted)."),
    log_to: list[str] = LOG_TO,
    config: Path | None = CONFIG,
    json_out: bool = typer.Option(False, "--json", help="Print one JSON summary instead of text."),
) -> None:
    """Pretrain from scratch on a token store (AdamW, warmup + cosine decay, clipping)."""
    summary = pnlm.pretrain(data, out, model, method, clusters=clusters, domain=domain, projection=projection,
                            pn_batches=pn_batches, experts=experts, backend=backend, steps=steps, tokens=tokens,
                            batch_size=batch_size, grad_accum=grad_accum, lr=lr, precision=precision,
                            compile=compile_model, fsdp=fsdp, warmup=warmup, eval_every=eval_every,
                            checkpoint_every=checkpoint_every, log_every=log_every, seed=seed, resume=resume,
                            progress=training_progress(json_out, log_to))
    if json_out and summary is not None:
        print_json(summary.to_json())
