"""`pnlm pretrain`, `pnlm finetune`, `pnlm eval`: the loop of pnlm/loop.py on a chosen backend."""

from __future__ import annotations

import math
from pathlib import Path

import typer

from pnlm.backends import make_train_step
from pnlm.checkpoint import load_checkpoint
from pnlm.cli.console import RateCounter, console, print_json
from pnlm.data.store import TokenStore
from pnlm.errors import PnlmError
from pnlm.loop import BEST, LATEST, TrainConfig, evaluate, train
from pnlm.spec import OptimizerSpec, load_spec
from pnlm.weights import init_weights

BACKEND_HELP = "torch (CPU), cuda (NVIDIA GPU) or mlx."
PRETRAIN_METHODS = ("slm", "llm")


def _steps(steps: int | None, tokens: int | None, batch_size: int, context: int) -> int:
    if (steps is None) == (tokens is None):
        raise PnlmError("give --steps or --tokens (one of them)")
    return steps if steps is not None else max(1, math.ceil(tokens / (batch_size * context)))


def _run(step_fn, spec, tokenizer, store, config, out, resume, method, json_out) -> None:
    if not step_fn.is_main:  # another rank of a torchrun job: train, and let rank 0 report
        train(step_fn, spec, tokenizer, store, config, out, resume=resume, method=method)
        return
    with RateCounter("training", "steps") as counter:
        def log(record: dict) -> None:
            extra = f", loss {record['loss']:.3f}, lr {record['lr']:.2e}, {record['tokens_per_s']:,.0f} tokens/s"
            if "val_loss" in record:
                extra += f", val {record['val_loss']:.3f}"
            counter.update(record["step"], extra)

        result = train(step_fn, spec, tokenizer, store, config, out, resume=resume, method=method, on_log=log)
    summary = {"out": str(out), "steps": result.steps, "stopped_early": result.stopped_early,
               "final_loss": result.final_loss, "best_val_loss": result.best_val_loss, "tokens": result.tokens,
               "seconds": round(result.seconds, 2), "tokens_per_s": round(result.tokens / max(result.seconds, 1e-9))}
    if json_out:
        print_json(summary)
        return
    best = f"; best validation loss {result.best_val_loss:.4f} in {Path(out) / BEST}" if result.best_val_loss else ""
    console.print(f"{result.steps} steps, {result.tokens:,} tokens in {result.seconds:.1f} s "
                  f"({summary['tokens_per_s']:,} tokens/s); final loss {result.final_loss:.4f}{best}; "
                  f"resumable checkpoint in {Path(out) / LATEST}"
                  + ("; stopped early" if result.stopped_early else ""))


def pretrain(
    method: str = typer.Option("slm", "--method", help="slm or llm (a small or a large model on the generic set)."),
    model: str = typer.Option(..., "--model", help="A preset (tiny, slm-126m, llm-771m) or a spec.toml."),
    data: Path = typer.Option(..., "--data", help="Token store from `pnlm data prepare` (its train split)."),
    backend: str = typer.Option("torch", "--backend", help=BACKEND_HELP),
    out: Path = typer.Option(..., "--out", help="RUN folder: latest/, best/, metrics.jsonl."),
    steps: int | None = typer.Option(None, "--steps", help="Optimizer steps."),
    tokens: int | None = typer.Option(None, "--tokens", help="Or a token budget, turned into steps."),
    batch_size: int = typer.Option(8, "--batch-size", help="Windows per step."),
    lr: float = typer.Option(1e-4, "--lr", help="Peak learning rate (the paper: 1e-4)."),
    warmup: int | None = typer.Option(None, "--warmup", help="Warmup steps (default: min(1000, steps/10))."),
    eval_every: int = typer.Option(0, "--eval-every", help="Evaluate on the valid split every N steps (0: never)."),
    checkpoint_every: int = typer.Option(0, "--checkpoint-every", help="Save a resumable checkpoint every N steps."),
    seed: int = typer.Option(0, "--seed", help="Seed of the initial weights and of the data order."),
    resume: bool = typer.Option(False, "--resume", help="Continue RUN from its latest checkpoint, exactly."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON summary instead of text."),
) -> None:
    """Pretrain a model from scratch on a token store (AdamW, warmup + cosine decay, clipping)."""
    if method not in PRETRAIN_METHODS:
        raise PnlmError(f"--method {method!r}: this version pretrains {' and '.join(PRETRAIN_METHODS)}")
    store = TokenStore(data)
    spec = load_spec(model).with_vocab(store.vocab_size)
    if store.context > spec.context:
        raise PnlmError(f"{data}: windows of {store.context} tokens exceed the model's context of {spec.context}")
    total = _steps(steps, tokens, batch_size, store.context)
    config = TrainConfig(steps=total, batch_size=batch_size, optimizer=OptimizerSpec(lr=lr),
                         warmup_steps=min(1000, total // 10) if warmup is None else warmup,
                         eval_every=eval_every, checkpoint_every=checkpoint_every, seed=seed)
    step_fn = make_train_step(backend, spec, init_weights(spec, seed), config.optimizer)
    _run(step_fn, spec, store.tokenizer(), store, config, out, resume, method, json_out)


def finetune(
    checkpoint: Path = typer.Argument(..., help="The pretrained checkpoint to specialize."),
    data: Path = typer.Option(..., "--data", help="The domain's token store (train and valid splits)."),
    backend: str = typer.Option("mlx", "--backend", help=BACKEND_HELP),
    out: Path = typer.Option(..., "--out", help="RUN folder; the fine-tuned model is RUN/best (RUN/latest without evaluation)."),
    steps: int = typer.Option(1000, "--steps", help="At most this many steps."),
    batch_size: int = typer.Option(8, "--batch-size", help="Windows per step."),
    lr: float = typer.Option(1e-4 / 3, "--lr", help="Constant learning rate (the paper: pretraining's / 3)."),
    eval_every: int = typer.Option(50, "--eval-every", help="Evaluate on the valid split every N steps."),
    patience: int = typer.Option(3, "--patience", help="Stop after this many evaluations without improvement."),
    early_stop: bool = typer.Option(True, "--early-stop/--no-early-stop", help="Stop when validation stops improving."),
    from_scratch: bool = typer.Option(False, "--from-scratch", help="Random weights of the same shape (SLM-nopt)."),
    checkpoint_every: int = typer.Option(0, "--checkpoint-every", help="Save a resumable checkpoint every N steps."),
    seed: int = typer.Option(0, "--seed", help="Seed of the data order (and of the weights with --from-scratch)."),
    resume: bool = typer.Option(False, "--resume", help="Continue RUN from its latest checkpoint, exactly."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON summary instead of text."),
) -> None:
    """Fine-tune a checkpoint on a domain's data, keeping the weights with the best validation loss."""
    base = load_checkpoint(checkpoint)
    store = TokenStore(data)
    if store.tokenizer_sha256 != base.tokenizer.sha256:
        raise PnlmError(f"{data}: prepared with another tokenizer than {checkpoint}'s")
    config = TrainConfig(steps=steps, batch_size=batch_size, optimizer=OptimizerSpec(lr=lr), cosine=False,
                         eval_every=eval_every, patience=patience if early_stop else 0,
                         checkpoint_every=checkpoint_every, seed=seed)
    weights = init_weights(base.spec, seed) if from_scratch else base.weights
    step_fn = make_train_step(backend, base.spec, weights, config.optimizer)
    method = "slm-nopt" if from_scratch else base.method
    _run(step_fn, base.spec, base.tokenizer, store, config, out, resume, method, json_out)


def eval_command(
    checkpoint: Path = typer.Argument(..., help="A checkpoint folder."),
    data: list[Path] = typer.Option(..., "--data", help="Token stores, one per domain (repeat the option)."),
    split: str = typer.Option("test", "--split", help="Split to evaluate on."),
    backend: str = typer.Option("torch", "--backend", help=BACKEND_HELP),
    batch_size: int = typer.Option(8, "--batch-size", help="Windows per batch."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object instead of a table."),
) -> None:
    """Perplexity per domain and the paper's macro-average: exp of the mean over domains of each one's mean NLL."""
    ckpt = load_checkpoint(checkpoint)
    step_fn = make_train_step(backend, ckpt.spec, ckpt.weights, OptimizerSpec())
    domains = {}
    for path in data:
        store = TokenStore(path)
        if store.tokenizer_sha256 != ckpt.tokenizer.sha256:
            raise PnlmError(f"{path}: prepared with another tokenizer than {checkpoint}'s")
        nll, count = evaluate(step_fn, store, split, batch_size)
        domains[store.name] = {"ppl": math.exp(nll), "nll": nll, "tokens": count}
    macro = math.exp(sum(d["nll"] for d in domains.values()) / len(domains))
    if json_out:
        print_json({"domains": domains, "macro_ppl": macro, "split": split, "backend": backend})
        return
    for name, d in domains.items():
        console.print(f"{name:>30}: perplexity {d['ppl']:10.3f}  (nll {d['nll']:.4f} on {d['tokens']:,} tokens)")
    console.print(f"{'macro-average':>30}: perplexity {macro:10.3f}")
