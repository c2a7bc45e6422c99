"""The methods of the paper (Grangier et al., arXiv 2402.01093), one module each, registered here once:
the CLI's `--method`, the experiment plans' `methods`, the results' order and the docs read METHODS.

    dense         SLM, LLM (one model pretrained on every generic window), SLM-nopt (no pretraining)
    projected     SLM-pn: a projected network, pretrained over the clusters, instantiated per domain
    mixture       SLM-mix: a hard mixture, one SLM per cluster, the domain's expert picked
    importance    SLM-is: an SLM pretrained on the generic windows resampled to the domain's clusters
    distillation  SLM-d: the SLM fine-tuned on the domain with the fine-tuned LLM as teacher
    soup          SLM-soup: a soup of experts, the SLM for the domain's histogram (beyond the paper)

experts.py holds what the methods with experts share: the clusters a run records, the expert a domain
chooses, the instantiated checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass

from pnlm.errors import PnlmError


@dataclass(frozen=True)
class Method:
    name: str  # as the CLI and the plans spell it
    label: str  # as the paper's tables do
    module: str  # pnlm.methods.<module> holds it
    pretrains: bool  # `pnlm pretrain --method NAME` trains its generic model
    needs_clusters: bool  # pretraining reads the generic set's clusters
    summary: str


METHODS: dict[str, Method] = {m.name: m for m in (
    Method("slm", "SLM", "dense", True, False, "a small model pretrained on the generic set, then fine-tuned"),
    Method("llm", "LLM", "dense", True, False, "a large model pretrained on the generic set, then fine-tuned"),
    Method("nopt", "SLM-nopt", "dense", False, False, "the small model trained on the domain alone, from random weights"),
    Method("distill", "SLM-d", "distillation", False, False,
           "the pretrained SLM fine-tuned on the domain with the fine-tuned LLM as teacher"),
    Method("mix", "SLM-mix", "mixture", True, True, "one SLM per cluster; the domain fine-tunes its cluster's"),
    Method("pn", "SLM-pn", "projected", True, True,
           "a projected network over the clusters; the domain fine-tunes the SLM instantiated for it"),
    Method("is", "SLM-is", "importance", True, True,
           "an SLM pretrained on generic windows resampled to the domain's cluster histogram"),
    Method("soup", "SLM-soup", "soup", True, True,
           "a soup of experts over the clusters; the domain fine-tunes the SLM for its histogram (beyond the paper)"),
)}
PRETRAINED = tuple(name for name, method in METHODS.items() if method.pretrains)


def method(name: str) -> Method:
    if name not in METHODS:
        raise PnlmError(f"unknown method {name!r}; expected one of {', '.join(METHODS)}")
    return METHODS[name]
