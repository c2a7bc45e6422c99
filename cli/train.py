"""`pnlm finetune`, `pnlm eval`, `pnlm fuse`, and what every training command shares: the loop of
pnlm/loop.py on a chosen backend, its progress and summary."""

from __future__ import annotations

import math
import os
from pathlib import Path

import typer

from pnlm.backends import make_train_step
from pnlm.adapter_checkpoint import AdapterWriter, fuse_checkpoint
from pnlm.checkpoint import load_checkpoint, weights_sha256
from pnlm.inference import read_model, refuse_projected
from pnlm.cli.console import StepProgress, console, print_json
from pnlm.cli.options import OVERWRITE
from pnlm.data.store import TokenStore
from pnlm.errors import PnlmError
from pnlm.loop import BEST, LATEST, TrainConfig, evaluate, train
from pnlm.outputs import CHECKPOINT, RUN, check_output
from pnlm.run_lock import lock_run
from pnlm.lora import LoraSpec, init_adapters, trainable_parameters
from pnlm.memory import check_fits, training_estimate
from pnlm.spec import OptimizerSpec
from pnlm.weights import init_weights

BACKEND_HELP = "torch (CPU), cuda (NVIDIA GPU) or mlx."
PRECISION_HELP = ("float32, or bfloat16 compute over float32 weights and optimizer (autocast). "
                  "Default: bfloat16 on cuda, float32 elsewhere (MLX on a CPU has no bfloat16 BLAS: ~18x slower).")


def _steps(steps: int | None, tokens: int | None, batch_size: int, context: int) -> int:
    if (steps is None) == (tokens is None):
        raise PnlmError("give --steps or --tokens (one of them)")
    return steps if steps is not None else max(1, math.ceil(tokens / (batch_size * context)))


def _precision(precision: str | None, backend: str) -> str:
    """bfloat16 on a GPU (autocast), float32 elsewhere, unless asked."""
    return precision or ("bfloat16" if backend == "cuda" else "float32")


def _finetune_lr(lr: float | None, lora_rank: int) -> float:
    """The paper fine-tunes at its pretraining rate / 3. LoRA's update is scaled by alpha/rank = 2 by
    default: at 1e-4 its effective step matches mlx-lm's defaults (1e-5 at scale 20)."""
    if lr is not None:
        return lr
    return 1e-4 if lora_rank else 1e-4 / 3


def _run(step_fn, spec, tokenizer, store, config, out, resume, method, json_out, writer=None, sampler=None,
         summary: dict | None = None, teacher=None, report: bool = True, started_from: dict | None = None) -> dict | None:
    """Train with a progress bar; print the summary (text, or one JSON object with json_out) unless
    report is False, and return it."""
    if not step_fn.is_main:  # another rank of a torchrun job: train, and let rank 0 report
        train(step_fn, spec, tokenizer, store, config, out, resume=resume, method=method, writer=writer,
              sampler=sampler, teacher=teacher, started_from=started_from)
        return None
    with StepProgress("training", config.steps) as bar:
        def log(record: dict) -> None:
            status = f"loss {record['loss']:.3f}, lr {record['lr']:.2e}, {record['tokens_per_s']:,.0f} tokens/s"
            if "val_loss" in record:
                status += f", val {record['val_loss']:.3f}"
            if "val_kl" in record:
                status += f", kl {record['val_kl']:.3f}"
            bar.update(record["step"], status)

        result = train(step_fn, spec, tokenizer, store, config, out, resume=resume, method=method, on_log=log,
                       writer=writer, sampler=sampler, teacher=teacher, started_from=started_from)
    summary = {"out": str(out), "steps": result.steps, "stopped_early": result.stopped_early,
               "final_loss": result.final_loss, "best_val_loss": result.best_val_loss, "tokens": result.tokens,
               "seconds": round(result.seconds, 2), "tokens_per_s": round(result.tokens / max(result.seconds, 1e-9)),
               "flops": result.flops, "device_hours": result.device_hours, "mfu": result.mfu,
               "devices": step_fn.devices, "device": step_fn.device_name, "precision": step_fn.precision,
               **(summary or {})}
    if not report:
        return summary
    if json_out:
        print_json(summary)
        return summary
    mfu = f", MFU {result.mfu:.1%}" if result.mfu is not None else ""
    best = f"; best validation loss {result.best_val_loss:.4f} in {Path(out) / BEST}" if result.best_val_loss else ""
    console.print(f"{result.steps} steps, {result.tokens:,} tokens in {result.seconds:.1f} s "
                  f"({summary['tokens_per_s']:,} tokens/s, {result.flops:.3g} FLOPs, {result.device_hours:.4f} "
                  f"device-hours{mfu}); final loss {result.final_loss:.4f}{best}; "
                  f"resumable checkpoint in {Path(out) / LATEST}"
                  + ("; stopped early" if result.stopped_early else ""))
    return summary


def check_run_output(out: Path, resume: bool, inputs: list, continuing: bool | None = None, lock: bool = True) -> None:
    """A RUN folder may hold only a pnlm run, continued only with --resume (continuing: whether an existing
    run may be written into); then this process locks it before building anything, so that a second writer
    is refused at once. Under torchrun only rank 0 looks and locks: the others start while it writes."""
    if int(os.environ.get("RANK", "0")) == 0:
        check_output(out, RUN, resume if continuing is None else continuing, inputs)
        if lock:
            lock_run(out)


def finetune(
    checkpoint: Path = typer.Argument(..., help="The pretrained checkpoint to specialize."),
    data: Path = typer.Option(..., "--data", help="The domain's token store (train and valid splits)."),
    backend: str = typer.Option("mlx", "--backend", help=BACKEND_HELP),
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
    compile_model: bool = typer.Option(False, "--compile", help="torch.compile the model (torch backends)."),
    eval_every: int = typer.Option(50, "--eval-every", help="Evaluate on the valid split every N steps."),
    eval_batches: int = typer.Option(0, "--eval-batches", help="Evaluate on the first N batches of the valid split "
                                     "(0: all of it)."),
    patience: int = typer.Option(3, "--patience", help="Stop after this many evaluations without improvement."),
    early_stop: bool = typer.Option(True, "--early-stop/--no-early-stop", help="Stop when validation stops improving."),
    from_scratch: bool = typer.Option(False, "--from-scratch", help="Random weights of the same shape (SLM-nopt)."),
    checkpoint_every: int = typer.Option(0, "--checkpoint-every", help="Save a resumable checkpoint every N steps."),
    seed: int = typer.Option(0, "--seed", help="Seed of the data order (and of the weights with --from-scratch)."),
    resume: bool = typer.Option(False, "--resume", help="Continue RUN from its latest checkpoint, exactly; start it when it has none yet "
                                "(one command line for a job that may be killed and restarted)."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON summary instead of text."),
) -> None:
    """Fine-tune a checkpoint on a domain's data, keeping the weights with the best validation loss."""
    check_run_output(out, resume, [checkpoint, data])
    base = load_checkpoint(checkpoint)
    refuse_projected(base.spec, checkpoint)
    store = TokenStore(data)
    if store.tokenizer_sha256 != base.tokenizer.sha256:
        raise PnlmError(f"{data}: prepared with another tokenizer than {checkpoint}'s")
    if lora_rank and from_scratch:
        raise PnlmError("--lora-rank adapts a pretrained model; --from-scratch trains every weight: choose one")
    config = TrainConfig(steps=steps, batch_size=batch_size, micro_batches=grad_accum,
                         optimizer=OptimizerSpec(lr=_finetune_lr(lr, lora_rank)), cosine=False,
                         eval_every=eval_every, eval_batches=eval_batches, patience=patience if early_stop else 0,
                         checkpoint_every=checkpoint_every, seed=seed).validate()
    weights = init_weights(base.spec, seed) if from_scratch else base.weights
    method = "slm-nopt" if from_scratch else base.method
    lora, adapters, writer = None, None, None
    if lora_rank:
        lora = LoraSpec(rank=lora_rank, alpha=2.0 * lora_rank if lora_alpha is None else lora_alpha).validate(base.spec)
        adapters = init_adapters(base.spec, lora, seed)
        writer = AdapterWriter(checkpoint, base, lora, method)
    rows = -(-config.batch_size // config.micro_batches)
    trainable = trainable_parameters(base.spec, lora) if lora else None
    check_fits(training_estimate(base.spec, rows, store.context, trainable, loaded=True), f"fine-tuning {checkpoint}",
               backend, "use --lora-rank, a smaller --batch-size or more --grad-accum")
    step_fn = make_train_step(backend, base.spec, weights, config.optimizer, precision=_precision(precision, backend),
                              lora=lora, adapters=adapters, compile=compile_model)
    _run(step_fn, base.spec, base.tokenizer, store, config, out, resume, method, json_out, writer,
         started_from={"base_sha256": weights_sha256(checkpoint)})


def fuse_command(
    adapters: Path = typer.Argument(..., help="An adapter folder from `pnlm finetune --lora-rank` (RUN/best)."),
    out: Path = typer.Option(..., "--out", help="The plain checkpoint to write."),
    base: Path | None = typer.Option(None, "--base", help="The base checkpoint, if it moved since training."),
    overwrite: bool = OVERWRITE,
) -> None:
    """Merge LoRA adapters into their base: a plain checkpoint, W + (alpha/rank)·B·A in every adapted layer."""
    check_output(out, CHECKPOINT, overwrite, [adapters, base])
    path = fuse_checkpoint(adapters, out, base)
    console.print(f"fused {adapters} into {path}")


def eval_command(
    checkpoint: Path = typer.Argument(..., help="A checkpoint folder."),
    data: list[Path] = typer.Option(..., "--data", help="Token stores, one per domain (repeat the option)."),
    split: str = typer.Option("test", "--split", help="Split to evaluate on."),
    backend: str = typer.Option("torch", "--backend", help=BACKEND_HELP),
    batch_size: int = typer.Option(8, "--batch-size", help="Windows per batch."),
    unigram: Path | None = typer.Option(None, "--unigram", help="Also print the perplexity of an add-one unigram "
                                        "model fit on this store's train split (the generic set): the floor to beat."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object instead of a table."),
) -> None:
    """Perplexity per domain and the paper's macro-average: exp of the mean over domains of each one's mean NLL."""
    from pnlm.unigram import fit_unigram  # only needed with --unigram

    ckpt = read_model(checkpoint)  # a checkpoint, or LoRA adapters with their base
    baseline = None
    if unigram is not None:
        unigram_store = TokenStore(unigram)
        if unigram_store.tokenizer_sha256 != ckpt.tokenizer.sha256:
            raise PnlmError(f"{unigram}: prepared with another tokenizer than {checkpoint}'s")
        baseline = fit_unigram(unigram_store, "train")
    adapters = ckpt.adapters
    step_fn = make_train_step(backend, ckpt.spec, ckpt.weights, OptimizerSpec(), lora=adapters and adapters.lora,
                              adapters=adapters and adapters.weights)
    domains = {}
    for path in data:
        store = TokenStore(path)
        if store.tokenizer_sha256 != ckpt.tokenizer.sha256:
            raise PnlmError(f"{path}: prepared with another tokenizer than {checkpoint}'s")
        nll, count = evaluate(step_fn, store, split, batch_size)
        domains[store.name] = {"ppl": math.exp(nll), "nll": nll, "tokens": count}
        if baseline is not None:
            unigram_nll, _ = baseline.nll(store, split)  # the same targets as evaluate's
            domains[store.name].update(unigram_ppl=math.exp(unigram_nll), unigram_nll=unigram_nll)
    macro = math.exp(sum(d["nll"] for d in domains.values()) / len(domains))
    unigram_macro = (math.exp(sum(d["unigram_nll"] for d in domains.values()) / len(domains))
                     if baseline is not None else None)
    if json_out:
        report = {"domains": domains, "macro_ppl": macro, "split": split, "backend": backend}
        if baseline is not None:
            report.update(unigram_macro_ppl=unigram_macro, unigram={"store": str(unigram), "split": "train",
                                                                    "tokens": baseline.tokens, "smoothing": "add-one"})
        print_json(report)
        return
    for name, d in domains.items():
        versus = f"  unigram {d['unigram_ppl']:10.3f}" if baseline is not None else ""
        console.print(f"{name:>30}: perplexity {d['ppl']:10.3f}{versus}  (nll {d['nll']:.4f} on {d['tokens']:,} tokens)")
    versus = f"  unigram {unigram_macro:10.3f}" if baseline is not None else ""
    console.print(f"{'macro-average':>30}: perplexity {macro:10.3f}{versus}")
    if baseline is not None:
        console.print(f"(unigram: add-one smoothed, fit on {baseline.tokens:,} train tokens of {unigram})")
