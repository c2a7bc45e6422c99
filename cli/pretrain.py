"""`pnlm pretrain --method slm|llm|pn|mix`: the shared pretraining of every method, on a chosen backend.

slm and llm train one model on every window. pn trains one projected network on the same uniformly drawn
batches, each row through its own cluster's expert (pnlm/projection.py). mix trains k independent models,
expert i only on cluster i, one after another in a process, or shared out over torchrun's processes
(each rank its experts, no gradient exchange); each expert resumes on its own.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np
import typer

from pnlm.backends import make_train_step
from pnlm.checkpoint import ModelWriter
from pnlm.cli.train import BACKEND_HELP, PRECISION_HELP, _precision, _run, _steps, check_run_output
from pnlm.cluster.clusters import load_clusters
from pnlm.cli.console import console, print_json
from pnlm.data.samplers import ClusterSampler, ExpertSampler, ImportanceSampler, RoutedSampler
from pnlm.data.store import TokenStore
from pnlm.errors import PnlmError
from pnlm.experts import MIX_FILE, check_labelled, domain_histogram, expert_dir, read_mix_file, write_mix_file
from pnlm.loop import TrainConfig
from pnlm.memory import check_fits, training_estimate
from pnlm.spec import OptimizerSpec, Projection, load_spec
from pnlm.weights import init_weights

METHODS = ("slm", "llm", "pn", "mix", "is")
PN_BATCHES = {"mixed": RoutedSampler, "one-cluster": ClusterSampler}


def _projection(text: str | None, preset: Projection | None, k: int) -> Projection:
    """--projection h,k,m; else the preset's h and m with the clusters' k."""
    if text is None:
        if preset is None:
            raise PnlmError("--method pn needs --projection h,k,m (or a pn-* preset)")
        return dataclasses.replace(preset, k=k)
    try:
        h, k_given, m = (int(part) for part in text.split(","))
    except ValueError:
        raise PnlmError(f"--projection {text!r}: expected three integers h,k,m such as 4,16,8") from None
    if k_given != k:
        raise PnlmError(f"--projection has k={k_given} experts but the clusters have k={k}")
    if preset is not None:  # the spec's other settings (expert_similarity) stay
        return dataclasses.replace(preset, h=h, k=k, m=m)
    return Projection(h=h, k=k, m=m)


def _experts(text: str | None, k: int) -> list[int]:
    if text is None:
        return list(range(k))
    try:
        chosen = sorted({int(part) for part in text.split(",")})
    except ValueError:
        raise PnlmError(f"--experts {text!r}: expected indices separated by commas, such as 0,3,7") from None
    if not all(0 <= i < k for i in chosen):
        raise PnlmError(f"--experts {text}: the clusters have k={k} (0 to {k - 1})")
    return chosen


def pretrain(
    method: str = typer.Option("slm", "--method", help="slm or llm (one model on every window), pn (a projected "
                               "network over --clusters) or mix (k independent models, one per cluster)."),
    model: str = typer.Option(..., "--model", help="A preset (tiny, slm-126m, llm-771m, pn-tiny, pn-126m) or a spec.toml."),
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
    backend: str = typer.Option("torch", "--backend", help=BACKEND_HELP),
    out: Path = typer.Option(..., "--out", help="RUN folder: latest/, best/, metrics.jsonl (mix: one per expert)."),
    steps: int | None = typer.Option(None, "--steps", help="Optimizer steps (mix: per expert)."),
    tokens: int | None = typer.Option(None, "--tokens", help="Or a token budget, turned into steps."),
    batch_size: int = typer.Option(8, "--batch-size", help="Windows per step."),
    grad_accum: int = typer.Option(1, "--grad-accum", help="Compute each step's batch in this many slices "
                                   "(gradient accumulation): the same update, less memory."),
    lr: float = typer.Option(1e-4, "--lr", help="Peak learning rate (the paper: 1e-4)."),
    precision: str | None = typer.Option(None, "--precision", help=PRECISION_HELP),
    compile_model: bool = typer.Option(False, "--compile", help="torch.compile the model (torch backends)."),
    fsdp: bool = typer.Option(False, "--fsdp", help="Under torchrun, shard weights, gradients and optimizer state "
                              "over the processes (FSDP) instead of replicating them (DDP)."),
    warmup: int | None = typer.Option(None, "--warmup", help="Warmup steps (default: min(1000, steps/10))."),
    eval_every: int = typer.Option(0, "--eval-every", help="Evaluate on the valid split every N steps (0: never)."),
    checkpoint_every: int = typer.Option(0, "--checkpoint-every", help="Save a resumable checkpoint every N steps."),
    seed: int = typer.Option(0, "--seed", help="Seed of the initial weights and of the data order."),
    resume: bool = typer.Option(False, "--resume", help="Continue RUN from its latest checkpoint, exactly; start it when it has none yet "
                                "(one command line for a job that may be killed and restarted)."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON summary instead of text."),
) -> None:
    """Pretrain from scratch on a token store (AdamW, warmup + cosine decay, clipping)."""
    if method not in METHODS:
        raise PnlmError(f"--method {method!r}: expected one of {', '.join(METHODS)}")
    # A mixture's processes each train their own experts into one RUN: each expert's folder guards itself.
    check_run_output(out, resume, [data, clusters, domain, *([Path(model)] if model.endswith(".toml") else [])],
                     continuing=resume or method == "mix", lock=method != "mix")
    store = TokenStore(data)
    spec = load_spec(model).with_vocab(store.vocab_size)
    if store.context > spec.context:
        raise PnlmError(f"{data}: windows of {store.context} tokens exceed the model's context of {spec.context}")
    total = _steps(steps, tokens, batch_size, store.context)
    config = TrainConfig(steps=total, batch_size=batch_size, micro_batches=grad_accum, optimizer=OptimizerSpec(lr=lr),
                         warmup_steps=min(1000, total // 10) if warmup is None else warmup,
                         eval_every=eval_every, checkpoint_every=checkpoint_every, seed=seed).validate()
    options = {"precision": _precision(precision, backend), "compile": compile_model}
    if method in ("slm", "llm"):
        if spec.projection is not None:
            raise PnlmError(f"--model {model} is a projected network: pretrain it with --method pn --clusters C")
        step_fn = new_train_step(backend, spec, seed, config, store.context, options, fsdp)
        _run(step_fn, spec, store.tokenizer(), store, config, out, resume, method, json_out)
        return
    if clusters is None:
        raise PnlmError(f"--method {method} needs --clusters (from `pnlm data cluster`)")
    fitted = load_clusters(clusters)
    check_labelled(store, fitted.store_info())
    if method == "pn":
        if pn_batches not in PN_BATCHES:
            raise PnlmError(f"--pn-batches {pn_batches!r}: expected one of {', '.join(PN_BATCHES)}")
        spec = spec.with_projection(_projection(projection, spec.projection, fitted.k))
        writer = ModelWriter(spec, store.tokenizer(), "pn", extra={"clusters": fitted.store_info(),
                                                                   "batches": pn_batches})
        step_fn = new_train_step(backend, spec, seed, config, store.context, options, fsdp)
        _run(step_fn, spec, store.tokenizer(), store, config, out, resume, "pn", json_out, writer,
             PN_BATCHES[pn_batches](store, batch_size, seed, fitted.k))
        return
    if method == "is":
        _pretrain_resampled(spec, store, fitted, domain, config, backend, options, out, resume, json_out, seed)
        return
    _pretrain_mixture(spec.plain(), store, fitted, _experts(experts, fitted.k), config, backend, options, out,
                      resume, json_out, seed)


def new_train_step(backend: str, spec, seed: int, config: TrainConfig, context: int, options: dict, fsdp: bool = False):
    """A freshly initialized model's train step, once the memory it needs is known to be there."""
    shards = int(os.environ.get("WORLD_SIZE", "1")) if fsdp else 1
    rows = -(-config.batch_size // config.micro_batches)
    check_fits(training_estimate(spec, rows, context, shards=shards), "pretraining this model", backend,
               "choose a smaller --model, or a smaller --batch-size (or more --grad-accum)")
    return make_train_step(backend, spec, init_weights(spec, seed), config.optimizer, fsdp=fsdp, **options)


def _pretrain_resampled(spec, store, fitted, domain, config, backend, options, out, resume, json_out, seed) -> None:
    """SLM-is: an SLM on the generic windows resampled to the domain's cluster histogram."""
    if domain is None:
        raise PnlmError("--method is needs --domain STORE (labelled with the same clusters)")
    if spec.projection is not None:
        raise PnlmError("--method is trains a plain model: use a preset without projection")
    target = domain_histogram(domain, fitted.store_info())
    sampler = ImportanceSampler(store, config.batch_size, seed, fitted.k, np.array(target["histogram"]))
    sampled = sampler.sampled_histogram(config.steps)
    report = {"domain": str(domain), "effective_sample_size": sampler.effective_sample_size(),
              "generic_windows": store.num_windows("train"),
              "total_variation": float(0.5 * np.abs(sampled - sampler.domain_histogram).sum())}
    if not json_out:
        console.print(f"importance sampling towards {domain}: effective sample size {report['effective_sample_size']:,.0f}"
                      f" of {report['generic_windows']:,} generic windows; total variation between the resampled "
                      f"and the domain's histograms over {config.steps:,} steps: {report['total_variation']:.4f}")
    writer = ModelWriter(spec, store.tokenizer(), "slm-is", extra={"clusters": fitted.store_info(), "importance": report})
    step_fn = new_train_step(backend, spec, seed, config, store.context, options)
    _run(step_fn, spec, store.tokenizer(), store, config, out, resume, "slm-is", json_out, writer, sampler,
         summary=report)


def _pretrain_mixture(spec, store, fitted, chosen, config, backend, options, out, resume, json_out, seed) -> None:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:  # under torchrun: each rank trains its share of the experts, on its own
        chosen = chosen[int(os.environ.get("RANK", "0"))::world]
        options = {**options, "distributed": False}
    if (out / MIX_FILE).is_file():  # a rerun: the experts must join the mixture they were started in
        recorded = read_mix_file(out)
        if (recorded.k, recorded.clusters.get("centroids_sha256"), recorded.spec) != (
                fitted.k, fitted.centroids_sha256, spec):
            raise PnlmError(f"{out / MIX_FILE}: this mixture was started with other clusters or another model; "
                            f"continue it with the same ones, or choose another --out")
    else:
        write_mix_file(out, fitted.k, fitted.store_info(), spec)
    summaries = {}
    for expert in chosen:
        run = expert_dir(out, expert)
        sampler = ExpertSampler(store, config.batch_size, seed, fitted.k, expert)
        step_fn = new_train_step(backend, spec, seed + expert, config, store.context, options)
        if not json_out:
            console.print(f"expert {expert} (cluster {expert}'s {len(sampler.members):,} train windows):")
        summaries[str(expert)] = _run(step_fn, spec, store.tokenizer(), store, config, run, resume, "mix",
                                      json_out, sampler=sampler, report=not json_out)
    if json_out:
        print_json({"out": str(out), "k": fitted.k, "experts": summaries})
