"""Projected networks in numpy: the algebra, and the oracle both backends are tested against.

Every MLP weight matrix of layer l (gate_proj, up_proj, down_proj) is, for expert i,

    W(l,i) = sum_q E[i,q] sum_r M(l)[q,r] T(l)[r]        E: (k, m)   M(l): (m, h)   T(l): (h, out, in)

so the expert's coefficients over the h basis tensors are a(l,i) = E[i] @ M(l) and
W(l,i) = sum_r a(l,i)[r] T(l)[r]. Attention, norms and embeddings are shared by all experts. Any
vector e in E's space gives a model (e = E[i] is expert i; e = p @ E mixes experts by a histogram p),
and that model is an ordinary SLM: same shapes, same cost.

Canonical names: `model.layers.L.mlp.NAME.basis` (h, out, in), `model.layers.L.mlp.NAME.mix` (m, h),
and `model.expert_embedding` (k, m).
"""

from __future__ import annotations

import numpy as np

from pnlm.errors import PnlmError
from pnlm.model.spec import ModelSpec, Projection

PROJECTED = ("gate_proj", "up_proj", "down_proj")
EXPERT_EMBEDDING = "model.expert_embedding"


def projected_matrices(spec: ModelSpec) -> dict[str, tuple[int, int]]:
    """Name prefix of every projected matrix (`model.layers.L.mlp.NAME`) → its (out, in) shape."""
    shapes = {"gate_proj": (spec.d_ff, spec.d_model), "up_proj": (spec.d_ff, spec.d_model),
              "down_proj": (spec.d_model, spec.d_ff)}
    return {f"model.layers.{layer}.mlp.{name}": shapes[name] for layer in range(spec.n_layers) for name in PROJECTED}


def coefficients(expert_vector: np.ndarray, mix: np.ndarray) -> np.ndarray:
    """a = e @ M: the weights of the h basis tensors for the expert vector e (m,)."""
    return expert_vector.astype(np.float64) @ mix.astype(np.float64)


def projected_weight(coefficient: np.ndarray, basis: np.ndarray) -> np.ndarray:
    """W = sum_r a[r] T[r]."""
    return np.tensordot(coefficient, basis.astype(np.float64), axes=1)


def expert_indices(expert, rows: int | None = None) -> np.ndarray:
    """Expert indices as given to a train step: one, or one per row of a batch of `rows`. An expert vector of
    floats (p @ E) is a model of its own: instantiate it (pnlm.model.projection.instantiate) rather than route rows
    to it."""
    indices = np.asarray(expert)
    if indices.dtype.kind not in "iu":
        raise PnlmError(f"a train step takes expert indices (integers), not {indices.dtype} values; "
                        f"instantiate an expert vector (p @ E) as a plain model to evaluate it")
    if rows is not None and indices.ndim and indices.shape != (rows,):
        raise PnlmError(f"{indices.size} expert indices for a batch of {rows} rows; give one, or one per row")
    return indices


def group_rows(row_experts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The experts present in a batch (sorted) and, for each row, the position of its expert among them:
    a mixed batch forms one W per expert present, never one per row."""
    present, slot = np.unique(expert_indices(row_experts).reshape(-1), return_inverse=True)
    return present, slot.reshape(-1)


def rows_by_expert(inputs: np.ndarray, targets: np.ndarray, mask: np.ndarray | None, expert, soft_targets: tuple | None):
    """A batch with its rows sorted by expert when each row has its own (a summed loss does not depend on
    the order of the rows), so that each expert's rows are one contiguous block; else as it is."""
    if expert is None:
        return inputs, targets, mask, expert, soft_targets
    indices = expert_indices(expert, len(inputs))
    if indices.ndim == 0:
        return inputs, targets, mask, expert, soft_targets
    order = np.argsort(indices, kind="stable")
    if soft_targets is not None:
        soft_targets = tuple(None if part is None else part[order] for part in soft_targets)
    return inputs[order], targets[order], None if mask is None else mask[order], indices[order], soft_targets


def routed_projection(x: np.ndarray, row_experts: np.ndarray, table: np.ndarray, mix: np.ndarray,
                      basis: np.ndarray) -> np.ndarray:
    """y[b] = x[b] @ W(e_b)^T for a batch x (B, T, in) whose row b belongs to expert e_b: the oracle of the
    backends' grouped products."""
    present, slot = group_rows(row_experts)
    out = np.empty(x.shape[:-1] + (basis.shape[1],), dtype=np.float64)
    for position, expert in enumerate(present):
        weight = projected_weight(coefficients(table[expert], mix), basis)
        rows = slot == position
        out[rows] = x[rows].astype(np.float64) @ weight.T
    return out


def expert_vector(weights: dict[str, np.ndarray], expert: int | None = None,
                  histogram: np.ndarray | None = None) -> np.ndarray:
    """E[expert], or p @ E for a histogram p over the k experts (normalized here)."""
    table = weights[EXPERT_EMBEDDING].astype(np.float64)
    if (expert is None) == (histogram is None):
        raise PnlmError("give an expert index or a histogram, one of them")
    if expert is not None:
        if not 0 <= expert < len(table):
            raise PnlmError(f"expert {expert} does not exist: the network has {len(table)} (0 to {len(table) - 1})")
        return table[expert]
    p = np.asarray(histogram, dtype=np.float64)
    if p.shape != (len(table),) or (p < 0).any() or p.sum() <= 0:
        raise PnlmError(f"a histogram over the {len(table)} experts must have {len(table)} non-negative entries, not all 0")
    return (p / p.sum()) @ table


def instantiate(weights: dict[str, np.ndarray], spec: ModelSpec, vector: np.ndarray) -> dict[str, np.ndarray]:
    """The plain SLM weights of the model given by the expert vector: projected matrices formed, the rest shared."""
    if spec.projection is None:
        raise PnlmError("instantiate needs a projected network's weights")
    plain = {name: value for name, value in weights.items()
             if name != EXPERT_EMBEDDING and not name.endswith((".basis", ".mix"))}
    for prefix in projected_matrices(spec):
        a = coefficients(vector, weights[f"{prefix}.mix"])
        plain[f"{prefix}.weight"] = projected_weight(a, weights[f"{prefix}.basis"]).astype(np.float32)
    return plain


def projection_shapes(spec: ModelSpec) -> dict[str, tuple[int, ...]]:
    """The tensors a projection adds (and the `.weight` names they replace)."""
    p: Projection = spec.projection
    shapes: dict[str, tuple[int, ...]] = {EXPERT_EMBEDDING: (p.k, p.m)}
    for prefix, (rows, cols) in projected_matrices(spec).items():
        shapes[f"{prefix}.basis"] = (p.h, rows, cols)
        shapes[f"{prefix}.mix"] = (p.m, p.h)
    return shapes


def init_expert_embedding(projection: Projection, rng: np.random.Generator) -> np.ndarray:
    """E (k, m) with unit rows sqrt(c) u + sqrt(1 - c) g_i: u one shared unit vector, g_i each expert's own
    unit vector orthogonal to u, c the spec's expert_similarity, so E[i] . E[j] = c + (1 - c) g_i . g_j,
    c on average. c = 0: independent random unit rows. (m = 1 leaves no room for g_i: every row is u.)"""
    k, m, c = projection.k, projection.m, float(projection.expert_similarity)
    own = rng.standard_normal((k, m))
    if c > 0:
        shared = rng.standard_normal(m)
        shared /= np.linalg.norm(shared)
        own -= np.outer(own @ shared, shared)
        norms = np.linalg.norm(own, axis=1, keepdims=True)
        own = np.divide(own, norms, out=np.zeros_like(own), where=norms > 1e-12)
        table = np.sqrt(c) * shared + np.sqrt(1 - c) * own
    else:
        table = own
    return (table / np.linalg.norm(table, axis=1, keepdims=True)).astype(np.float32)


def init_projection(spec: ModelSpec, rng: np.random.Generator, std: dict[str, float]) -> dict[str, np.ndarray]:
    """Random E, M and T such that every instantiated expert starts at the scale of a fresh SLM.

    E's rows have unit norm (how alike they start is the spec's expert_similarity, init_expert_embedding;
    with 0, E is what it was before that setting existed, draw for draw), M's entries are drawn with variance
    1/h and T's with the SLM's variance σ² for that matrix (`std`: each projected matrix name prefix to its
    SLM standard deviation), so a = E[i] @ M has |a|² ≈ 1 on average over draws. One draw of a matrix's M
    lands anywhere from about |a| = 0.5 to 2, so its experts' W = Σ a_r T_r start at that multiple of the SLM's
    scale, and AdamW, which moves every entry of T by about the learning rate, moves W by |a|_1 times it
    (0.8 to 2.8 at h = 4): the spec's init "unit-variance" (the default) keeps that draw. "matched" then
    rescales each matrix: M by 1 / mean_i |a_i|_1, then T by 1 / rms_i |a_i| of the rescaled a, the
    experts' W unchanged but for one factor: they start at the SLM's scale (rms over the experts) and move
    at the SLM's pace. It trained no better at `small` (docs/results/pn-ablation.md, section 7), nor did an
    M with orthonormal rows, |a| = 1 exactly, at `tiny` (section 3).
    """
    p: Projection = spec.projection
    table = init_expert_embedding(p, rng)
    out = {EXPERT_EMBEDDING: table}
    for prefix, (rows, cols) in projected_matrices(spec).items():
        basis = rng.standard_normal((p.h, rows, cols), dtype=np.float32) * np.float32(std[prefix])
        mix = rng.standard_normal((p.m, p.h)) / np.sqrt(p.h)
        if p.init == "matched":
            a = coefficients(table, mix)  # every expert's, once
            step = np.abs(a).sum(axis=1).mean()
            mix = mix / step
            scale = np.sqrt((np.linalg.norm(a / step, axis=1) ** 2).mean())
            basis = basis / np.float32(scale)
        out[f"{prefix}.basis"] = basis
        out[f"{prefix}.mix"] = mix.astype(np.float32)
    return out

