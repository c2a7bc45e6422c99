"""Evaluation: the mean negative log-likelihood per target token over a split, the number the paper's
perplexities are made of (exp of it; a macro-average over domains is exp of the mean of theirs)."""

from __future__ import annotations

from typing import Any

from pnlm.data.samplers import ordered_groups
from pnlm.data.store import TokenStore
from pnlm.errors import PnlmError
from pnlm.training.batches import shifted


def evaluate(step_fn: Any, store: TokenStore, split: str, batch_size: int, max_batches: int = 0,
             sampler: Any = None) -> tuple[float, int]:
    """Mean NLL per target token over a split (or its first max_batches batches), and the token count.
    The sampler groups the windows (by expert for a projected network); by default in order."""
    groups = sampler.eval_groups(split, batch_size) if sampler else ordered_groups(store, split, batch_size)
    total, count = 0.0, 0
    for n, (indices, expert) in enumerate(groups):
        if max_batches and n >= max_batches:
            break
        nll, tokens_counted = step_fn.nll(*shifted(*store.batch(split, indices)), expert=expert)
        total, count = total + nll, count + tokens_counted
    if not count:
        raise PnlmError(f"{store.path}: the {split} split has no tokens to evaluate on")
    return total / count, count
