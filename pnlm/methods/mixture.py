"""SLM-mix, the hard mixture: k independent SLMs, expert i pretrained only on the generic windows of
cluster i; a domain fine-tunes the expert of its most frequent cluster (or a chosen one). Inference runs
one expert: the SLM's cost, k times its pretraining.

    RUN/mix.json      k, the clusters, the spec of every expert (written first; a rerun must match it)
    RUN/expert-07/    an ordinary SLM run (latest/, best/, metrics.jsonl) on cluster 7's windows only

Under torchrun each process trains its share of the experts, on its own.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pnlm.files.atomic import atomic_file
from pnlm.checkpoints.checkpoint import load_checkpoint
from pnlm.clustering.clusters import Clusters
from pnlm.data.samplers import ExpertSampler
from pnlm.errors import PnlmError
from pnlm.methods.experts import Instantiated, chosen_index, clusters_record, domain_histogram, final_checkpoint
from pnlm.files.json_object import read_json_object
from pnlm.training.runs import Pretraining, TrainSummary
from pnlm.model.spec import MAX_EXPERTS, ModelSpec

MIX_FILE = "mix.json"


def expert_dir(run: str | Path, expert: int) -> Path:
    return Path(run) / f"expert-{expert:02d}"


def write_mix_file(run: Path, k: int, clusters: dict[str, Any], spec: ModelSpec) -> None:
    run.mkdir(parents=True, exist_ok=True)
    with atomic_file(run / MIX_FILE) as f:
        f.write((json.dumps({"format": "pnlm-mix", "k": k, "clusters": clusters, "spec": spec.to_dict()},
                            indent=2) + "\n").encode())


@dataclass
class MixDescription:
    k: int
    clusters: dict[str, Any]
    spec: ModelSpec


def read_mix_file(run: Path) -> MixDescription:
    """A mixture run's mix.json: read bounded, every field checked, or one line naming the file."""
    path = run / MIX_FILE
    try:
        data = read_json_object(path, 1 << 20, PnlmError)  # bounded: a mixture's description is small
    except OSError as exc:
        raise PnlmError(f"{path}: not a readable mixture description ({exc.strerror or exc})") from None
    k = data.get("k")
    if data.get("format") != "pnlm-mix" or isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= MAX_EXPERTS:
        raise PnlmError(f"{path}: not a pnlm mixture description (format \"pnlm-mix\", k from 1 to {MAX_EXPERTS})")
    clusters = clusters_record(data.get("clusters"), str(path))
    if clusters["k"] != k:
        raise PnlmError(f"{path}: k is {k} but its clusters have {clusters['k']}")
    return MixDescription(k, clusters, ModelSpec.from_dict(data.get("spec"), source=str(path)))


@dataclass
class MixtureSummary:
    out: Path
    k: int
    experts: dict[int, TrainSummary]

    def to_json(self) -> dict[str, Any]:
        return {"out": str(self.out), "k": self.k, "experts": {str(i): s.to_json() for i, s in self.experts.items()}}


def parse_experts(text: str | None, k: int) -> list[int]:
    """Which experts a process trains: "0,3,7", or all (None)."""
    if text is None:
        return list(range(k))
    try:
        chosen = sorted({int(part) for part in text.split(",")})
    except ValueError:
        raise PnlmError(f"--experts {text!r}: expected indices separated by commas, such as 0,3,7") from None
    if not all(0 <= i < k for i in chosen):
        raise PnlmError(f"--experts {text}: the clusters have k={k} (0 to {k - 1})")
    return chosen


def pretrain(job: Pretraining, clusters: Clusters, chosen: list[int]) -> MixtureSummary:
    """Train the chosen experts, each an SLM on its cluster's windows, into job.out/expert-NN."""
    spec, out, options = job.spec.plain(), job.out, {}
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:  # under torchrun: each rank trains its share of the experts, on its own
        chosen = chosen[int(os.environ.get("RANK", "0"))::world]
        options = {"distributed": False}
    if (out / MIX_FILE).is_file():  # a rerun: the experts must join the mixture they were started in
        recorded = read_mix_file(out)
        if (recorded.k, recorded.clusters.get("centroids_sha256"), recorded.spec) != (
                clusters.k, clusters.centroids_sha256, spec):
            raise PnlmError(f"{out / MIX_FILE}: this mixture was started with other clusters or another model; "
                            f"continue it with the same ones, or choose another --out")
    else:
        write_mix_file(out, clusters.k, clusters.store_info(), spec)
    summaries = {}
    for expert in chosen:
        sampler = ExpertSampler(job.store, job.config.batch_size, job.seed, clusters.k, expert)
        step_fn = job.train_step(spec, seed=job.seed + expert, **options)
        summaries[expert] = job.run(step_fn, "mix", spec, expert_dir(out, expert), sampler=sampler,
                                    note=f"expert {expert} (cluster {expert}'s {len(sampler.members):,} train windows)")
    return MixtureSummary(out, clusters.k, summaries)


def instantiate(run: Path, domain: str | Path | None, choice: str) -> Instantiated:
    """The expert a domain gets: its top cluster's (auto, with its store) or a given index."""
    description = read_mix_file(run)
    report: dict[str, Any] = {"run": str(run), "kind": "mix", "choice": choice}
    if choice in ("auto", "histogram"):
        if domain is None:
            raise PnlmError(f"--expert {choice} needs the domain's store (--domain)")
        report.update(domain=str(domain), **domain_histogram(domain, description.clusters))
    if choice == "histogram":
        raise PnlmError("--expert histogram mixes a projected network's experts; a hard mixture has no such blend")
    index = report["expert"] = chosen_index(choice, description.k, report)
    source = final_checkpoint(expert_dir(run, index))
    chosen = load_checkpoint(source)
    report["source"] = str(source)
    return Instantiated(chosen.spec, chosen.weights, chosen.tokenizer, "slm-mix", report)
