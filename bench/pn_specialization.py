"""How specialized a trained projected network's experts are: validation perplexity with each cluster's
windows through its own expert, through the next cluster's expert (c + 1 mod k), and through the expert
of the training split's cluster histogram (p @ E, one model for all).

    python bench/pn_specialization.py RUN_OR_CHECKPOINT STORE [--backend torch] [--split valid]

If the experts had learnt nothing of their own, all three would be equal; the gap between own and next
is what routing each row to its own expert is worth. Prints one JSON line, with the mean cosine between
the rows of E (how far the experts moved from their start, expert_similarity).
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np

from pnlm.backends import make_train_step
from pnlm.checkpoints.checkpoint import load_checkpoint
from pnlm.data.samplers import cluster_groups
from pnlm.data.store import TokenStore
from pnlm.training.batches import shifted
from pnlm.model.projection import EXPERT_EMBEDDING, expert_vector, instantiate
from pnlm.model.spec import OptimizerSpec


def perplexity(step_fn, store: TokenStore, split: str, k: int, route) -> float:
    """route(cluster): the expert index for that cluster's windows, or None for a plain model."""
    total = count = 0
    for indices, cluster in cluster_groups(store, split, 32, k):
        nll, tokens = step_fn.nll(*shifted(*store.batch(split, indices)), expert=route(cluster))
        total, count = total + nll, count + tokens
    return math.exp(total / count)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", type=Path, help="a PN checkpoint, or a run folder (its latest/)")
    parser.add_argument("store", type=Path, help="a token store labelled with the PN's clusters")
    parser.add_argument("--backend", default="torch")
    parser.add_argument("--split", default="valid")
    args = parser.parse_args()
    path = args.checkpoint / "latest" if (args.checkpoint / "latest").is_dir() else args.checkpoint
    model = load_checkpoint(path)
    if model.spec.projection is None:
        raise SystemExit(f"{path}: not a projected network")
    k = model.spec.projection.k
    store = TokenStore(args.store)
    step_fn = make_train_step(args.backend, model.spec, model.weights, OptimizerSpec())
    table = model.weights[EXPERT_EMBEDDING]
    labels = store.cluster_ids("train")
    if labels is None:
        raise SystemExit(f"{args.store}: no cluster labels; run `pnlm data cluster` or `pnlm data assign` on it")
    generic = expert_vector(model.weights, histogram=np.bincount(labels, minlength=k))
    generic_model = make_train_step(args.backend, model.spec.plain(),
                                    instantiate(model.weights, model.spec, generic), OptimizerSpec())
    unit = table / np.linalg.norm(table, axis=1, keepdims=True)
    cosine = unit @ unit.T
    result = {
        "checkpoint": str(path),
        "own": perplexity(step_fn, store, args.split, k, lambda c: c),
        "next": perplexity(step_fn, store, args.split, k, lambda c: (c + 1) % k),
        "generic_histogram": perplexity(generic_model, store, args.split, k, lambda c: None),
        "expert_cosine": float(cosine[~np.eye(k, dtype=bool)].mean()),
    }
    print(json.dumps({key: round(v, 3) if isinstance(v, float) else v for key, v in result.items()}))


if __name__ == "__main__":
    main()
