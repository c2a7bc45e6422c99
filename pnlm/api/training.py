"""Training and evaluation: pretrain with any method of the paper, fine-tune (whole, LoRA, or from scratch
for SLM-nopt), distill, and measure perplexity per domain and its macro-average.

Each training function writes a RUN folder (latest/, best/, metrics.jsonl; pnlm/training/loop.py), continues it
exactly with resume=True, refuses a folder holding anything else, and returns a TrainSummary (a mixture:
a MixtureSummary of its experts). Progress goes to the TrainingProgress given (pnlm/training/runs.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pnlm.backend_loader import load_inference_model, make_train_step, resolve_backend
from pnlm.checkpoints.checkpoint import load_checkpoint, weights_sha256
from pnlm.clustering.clusters import load_clusters
from pnlm.data.store import TokenStore
from pnlm import values
from pnlm.errors import PnlmError
from pnlm.methods.experts import check_labelled
from pnlm.inference import LogitsScorer, read_model, refuse_projected
from pnlm.training.evaluation import evaluate as evaluate_split
from pnlm.training.loop import TrainConfig
from pnlm.model.lora import LoraSpec, init_adapters, trainable_parameters
from pnlm.training.memory import check_fits, training_estimate
from pnlm.files.run_lock import run_locks_released
from pnlm.methods import METHODS, PRETRAINED, dense, importance, mixture, projected, soup
from pnlm.methods.distillation import distill
from pnlm.methods.mixture import MixtureSummary
from pnlm.training.runs import (Pretraining, TrainingProgress, TrainSummary, default_compile, default_log_every,
                                default_precision, main_process, open_run, run_training, steps_for)
from pnlm.model.spec import OptimizerSpec, load_spec

__all__ = ["pretrain", "finetune", "distill", "evaluate", "TrainSummary", "MixtureSummary", "TrainingProgress",
           "Evaluation"]


@run_locks_released()
def pretrain(data: str | Path, out: str | Path, model: str | Path = "tiny", method: str = "slm", *,
             clusters: str | Path | None = None, domain: str | Path | None = None, projection: str | None = None,
             pn_batches: str = "mixed", experts: str | None = None, backend: str = "auto",
             steps: int | None = None, tokens: int | None = None, batch_size: int = 8, grad_accum: int = 1,
             lr: float = 1e-4, precision: str | None = None, compile: bool | None = None, fsdp: bool = False,
             warmup: int | None = None, eval_every: int = 0, checkpoint_every: int = 0, log_every: int | None = None,
             seed: int = 0,
             resume: bool = False, progress: TrainingProgress | None = None) -> TrainSummary | MixtureSummary:
    """Pretrain on a token store with a method of the paper (pnlm.methods): "slm" or "llm" (one model on
    every window), "pn" (a projected network over `clusters`), "mix" (one model per cluster) or "is" (an SLM
    on the windows resampled to `domain`'s cluster histogram). AdamW with warmup and cosine decay (the
    paper's), a step count or a token budget; the model a preset name or a spec.toml, its vocabulary the
    store's."""
    if method not in PRETRAINED:
        raise PnlmError(f"--method {method!r}: expected one of {', '.join(PRETRAINED)}")
    backend = resolve_backend(backend)
    model = str(model)
    # A mixture's processes each train their own experts into one RUN: each expert's folder guards itself.
    out = open_run(out, resume, [data, clusters, domain, *([Path(model)] if model.endswith(".toml") else [])],
                   continuing=resume or method == "mix", lock=method != "mix")
    store = TokenStore(data, verify=main_process())  # every file hashed once, not once per rank
    spec = load_spec(model).with_vocab(store.vocab_size)
    store.check_context(spec.context, f"--model {model}")
    total = steps_for(steps, tokens, batch_size, store.context)
    config = TrainConfig(steps=total, batch_size=batch_size, micro_batches=grad_accum, optimizer=OptimizerSpec(lr=lr),
                         warmup_steps=min(1000, total // 10) if warmup is None else warmup,
                         eval_every=eval_every, checkpoint_every=checkpoint_every,
                         log_every=default_log_every(log_every, backend), seed=seed).validate()
    job = Pretraining(store, spec, config, out, backend, seed, resume,
                      {"precision": default_precision(precision, backend),
                       "compile": default_compile(compile, backend)}, fsdp, progress)
    if METHODS[method].module == "dense":
        return dense.pretrain(job, method, model)
    if clusters is None:
        raise PnlmError(f"--method {method} needs --clusters (from `pnlm data cluster`)")
    fitted = load_clusters(clusters)
    check_labelled(store, fitted.store_info())
    if method == "pn":
        return projected.pretrain(job, fitted, projection, pn_batches)
    if method == "is":
        return importance.pretrain(job, fitted, domain)
    if method == "soup":
        return soup.pretrain(job, fitted)
    return mixture.pretrain(job, fitted, mixture.parse_experts(experts, fitted.k))


def finetune_lr(lr: float | None, lora_rank: int) -> float:
    """The paper fine-tunes at its pretraining rate / 3. LoRA's update is scaled by alpha/rank = 2 by
    default: at 1e-4 its effective step matches mlx-lm's defaults (1e-5 at scale 20)."""
    if lr is not None:
        return lr
    return 1e-4 if lora_rank else 1e-4 / 3


@run_locks_released()
def finetune(checkpoint: str | Path, data: str | Path, out: str | Path, *, backend: str = "auto", steps: int = 1000,
             batch_size: int = 8, grad_accum: int = 1, lr: float | None = None, lora_rank: int = 0,
             lora_alpha: float | None = None, precision: str | None = None, compile: bool | None = None,
             eval_every: int = 50, eval_batches: int = 0, patience: int = 3, early_stop: bool = True,
             from_scratch: bool = False, checkpoint_every: int = 0, log_every: int | None = None, seed: int = 0,
             resume: bool = False,
             progress: TrainingProgress | None = None) -> TrainSummary:
    """Fine-tune a checkpoint on a domain's store at a constant rate, keeping the weights with the best
    validation loss (RUN/best) and stopping after `patience` evaluations without improvement. lora_rank > 0
    trains LoRA adapters saved beside the base instead of every weight; from_scratch starts from random
    weights of the same shape (SLM-nopt)."""
    backend = resolve_backend(backend)
    out = open_run(out, resume, [checkpoint, data])
    base = load_checkpoint(checkpoint)
    refuse_projected(base.spec, checkpoint)
    store = TokenStore(data, verify=main_process())
    if store.tokenizer_sha256 != base.tokenizer.sha256:
        raise PnlmError(f"{data}: prepared with another tokenizer than {checkpoint}'s")
    store.check_context(base.spec.context, str(checkpoint))
    if lora_rank and from_scratch:
        raise PnlmError("--lora-rank adapts a pretrained model; --from-scratch trains every weight: choose one")
    config = TrainConfig(steps=steps, batch_size=batch_size, micro_batches=grad_accum,
                         optimizer=OptimizerSpec(lr=finetune_lr(lr, lora_rank)), cosine=False,
                         eval_every=eval_every, eval_batches=eval_batches, patience=patience if early_stop else 0,
                         checkpoint_every=checkpoint_every, log_every=default_log_every(log_every, backend),
                         seed=seed).validate()
    weights = dense.no_pretraining_weights(base.spec, seed) if from_scratch else base.weights
    method = "slm-nopt" if from_scratch else base.method
    lora, adapters, writer = None, None, None
    if lora_rank:
        from pnlm.checkpoints.adapter_checkpoint import AdapterWriter

        lora = LoraSpec(rank=lora_rank, alpha=2.0 * lora_rank if lora_alpha is None else lora_alpha).validate(base.spec)
        adapters = init_adapters(base.spec, lora, seed)
        writer = AdapterWriter(checkpoint, base, lora, method)
    trainable = trainable_parameters(base.spec, lora) if lora else None
    check_fits(training_estimate(base.spec, config.rows_per_micro_batch, store.context, trainable, loaded=True),
               f"fine-tuning {checkpoint}", backend,
               "use --lora-rank, a smaller --batch-size or more --grad-accum")
    step_fn = make_train_step(backend, base.spec, weights, config.optimizer, precision=default_precision(precision, backend),
                              lora=lora, adapters=adapters, compile=default_compile(compile, backend))
    return run_training(step_fn, base.spec, base.tokenizer, store, config, out, resume, method, progress, writer,
                        started_from={"base_sha256": weights_sha256(checkpoint)})


@dataclass
class DomainPerplexity:
    ppl: float
    nll: float  # mean negative log-likelihood per target token
    tokens: int
    unigram_ppl: float | None = None
    unigram_nll: float | None = None


@dataclass
class Evaluation:
    """Perplexity per domain and the paper's macro-average: exp of the mean over domains of each one's
    mean NLL (so every domain counts alike, whatever its size)."""

    domains: dict[str, DomainPerplexity]
    macro_ppl: float
    split: str
    backend: str
    unigram: dict[str, Any] | None = None  # the add-one unigram baseline, when asked for
    unigram_macro_ppl: float | None = None

    def to_json(self) -> dict[str, Any]:
        domains = {name: {k: v for k, v in d.__dict__.items() if v is not None} for name, d in self.domains.items()}
        report = {"domains": domains, "macro_ppl": self.macro_ppl, "split": self.split, "backend": self.backend}
        if self.unigram is not None:
            report.update(unigram_macro_ppl=self.unigram_macro_ppl, unigram=self.unigram)
        return report


def evaluate(checkpoint: str | Path, data: str | Path | list[str | Path], *, split: str = "test",
             backend: str = "auto", batch_size: int = 8, unigram: str | Path | None = None) -> Evaluation:
    """Perplexity of a checkpoint (or LoRA adapters with their base) on one or several domains' stores.
    unigram: a store (the generic set) whose train split fits an add-one unigram model, the floor to beat."""
    from pnlm.training.unigram import fit_unigram  # only needed with unigram

    stores = [data] if isinstance(data, (str, Path)) else list(data)
    values.whole("--batch-size", batch_size, 1)
    ckpt = read_model(checkpoint)
    backend = resolve_backend(backend, mlx_only=ckpt.quantized is not None)
    baseline = None
    if unigram is not None:
        unigram_store = TokenStore(unigram)
        if unigram_store.tokenizer_sha256 != ckpt.tokenizer.sha256:
            raise PnlmError(f"{unigram}: prepared with another tokenizer than {checkpoint}'s")
        baseline = fit_unigram(unigram_store, "train")
    adapters = ckpt.adapters
    if ckpt.quantized is not None:  # no float weights to train: scored through MLX's quantized layers
        if backend != "mlx":
            raise PnlmError(f"{checkpoint}: quantized to {ckpt.quantized.quantization.bits} bits by mlx-lm; "
                            f"evaluate it with --backend mlx")
        step_fn: Any = LogitsScorer(load_inference_model(checkpoint, "mlx"))
    else:
        step_fn = make_train_step(backend, ckpt.spec, ckpt.weights, OptimizerSpec(), lora=adapters and adapters.lora,
                                  adapters=adapters and adapters.weights)
    domains = {}
    for path in stores:
        store = TokenStore(path)
        if store.tokenizer_sha256 != ckpt.tokenizer.sha256:
            raise PnlmError(f"{path}: prepared with another tokenizer than {checkpoint}'s")
        store.check_context(ckpt.spec.context, str(checkpoint))
        nll, count = evaluate_split(step_fn, store, split, batch_size)
        domains[store.name] = DomainPerplexity(math.exp(nll), nll, count)
        if baseline is not None:
            unigram_nll, _ = baseline.nll(store, split)  # the same targets as evaluate's
            domains[store.name].unigram_ppl, domains[store.name].unigram_nll = math.exp(unigram_nll), unigram_nll
    macro = math.exp(sum(d.nll for d in domains.values()) / len(domains))
    if baseline is None:
        return Evaluation(domains, macro, split, backend)
    unigram_macro = math.exp(sum(d.unigram_nll for d in domains.values()) / len(domains))
    return Evaluation(domains, macro, split, backend, {"store": str(unigram), "split": "train",
                                                       "tokens": baseline.tokens, "smoothing": "add-one"},
                      unigram_macro)
