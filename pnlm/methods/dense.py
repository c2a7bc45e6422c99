"""SLM, LLM and SLM-nopt: one plain model. SLM and LLM are pretrained on every generic window (uniform
batches) and fine-tuned on the domain; SLM-nopt skips the pretraining: the same small model, trained on
the domain alone from random weights (`pnlm.finetune(..., from_scratch=True)`)."""

from __future__ import annotations

from pnlm.errors import PnlmError
from pnlm.training.runs import Pretraining, TrainSummary
from pnlm.model.spec import ModelSpec
from pnlm.checkpoints.weights import init_weights


def pretrain(job: Pretraining, method: str, model: str) -> TrainSummary:
    """A plain model on the generic store's uniform batches (method "slm" or "llm": the same recipe, the
    size is the spec's)."""
    if job.spec.projection is not None:
        raise PnlmError(f"--model {model} is a projected network: pretrain it with --method pn --clusters C")
    if job.spec.soup is not None:
        raise PnlmError(f"--model {model} is a soup of experts: pretrain it with --method soup --clusters C")
    return job.run(job.train_step(fsdp=job.fsdp), method)


def no_pretraining_weights(spec: ModelSpec, seed: int) -> dict:
    """SLM-nopt's starting point: the pretrained model's shapes, random weights."""
    return init_weights(spec, seed)
