"""A soup of experts in numpy: the algebra, the meta-distribution of domain weights, and the oracle both
backends are tested against (Ablin, Katharopoulos, Seto, Grangier, "Soup-of-Experts", ICML 2025, arXiv
2502.01804; docs/soup.md for pnlm's choices).

Every MLP matrix of layer l (gate_proj, up_proj, down_proj) is, for domain weights h over the k clusters,

    W(l, h) = S(l) + sum_j alpha_j(h) E_j(l)        S(l): (out, in)   E(l): (n, out, in)
    alpha(h) = B2 silu(B1 h + b1) + b2              B1: (hidden, k)   B2: (n, hidden)

one coefficient vector alpha (n,) for the whole model, and W(l, h) an ordinary SLM's matrix: the model for
h is a plain SLM (same shapes, same inference cost). Attention, norms and embeddings are shared.

Canonical names: `model.layers.L.mlp.NAME.weight` (S, the plain SLM's name), `model.layers.L.mlp.NAME.bank`
(n, out, in), `model.soup.in_proj.weight` / `.bias` (B1, b1) and `model.soup.out_proj.weight` / `.bias`
(B2, b2).
"""

from __future__ import annotations

import numpy as np

from pnlm.errors import PnlmError
from pnlm.model.spec import ModelSpec, Soup

SOUPED = ("gate_proj", "up_proj", "down_proj")
IN_PROJ, OUT_PROJ = "model.soup.in_proj", "model.soup.out_proj"


def souped_matrices(spec: ModelSpec) -> dict[str, tuple[int, int]]:
    """Name prefix of every souped matrix (`model.layers.L.mlp.NAME`) → its (out, in) shape."""
    shapes = {"gate_proj": (spec.d_ff, spec.d_model), "up_proj": (spec.d_ff, spec.d_model),
              "down_proj": (spec.d_model, spec.d_ff)}
    return {f"model.layers.{layer}.mlp.{name}": shapes[name] for layer in range(spec.n_layers) for name in SOUPED}


def soup_shapes(spec: ModelSpec) -> dict[str, tuple[int, ...]]:
    """The tensors a soup adds to the plain SLM's (whose MLP `.weight`s are its shared matrices S)."""
    s: Soup = spec.soup
    shapes: dict[str, tuple[int, ...]] = {f"{IN_PROJ}.weight": (s.hidden, s.k), f"{IN_PROJ}.bias": (s.hidden,),
                                          f"{OUT_PROJ}.weight": (s.banks, s.hidden), f"{OUT_PROJ}.bias": (s.banks,)}
    for prefix, (rows, cols) in souped_matrices(spec).items():
        shapes[f"{prefix}.bank"] = (s.banks, rows, cols)
    return shapes


def domain_weights(histogram: np.ndarray, k: int) -> np.ndarray:
    """A histogram over the k clusters as domain weights h (normalized), or a clear error."""
    h = np.asarray(histogram, dtype=np.float64)
    if h.shape != (k,) or not np.isfinite(h).all() or (h < 0).any() or h.sum() <= 0:
        raise PnlmError(f"domain weights over the {k} clusters must be {k} non-negative numbers, not all 0")
    return h / h.sum()


def step_weights(spec: ModelSpec, expert) -> np.ndarray:
    """A train step's `expert` for a soup: its domain weights h, one vector of k floats for the whole batch (the
    model every row goes through), as float32; anything else is one clear error."""
    h = np.asarray(expert)
    if expert is None or h.dtype.kind != "f" or h.shape != (spec.soup.k,):
        got = "none" if expert is None else f"{h.dtype} of shape {h.shape}"
        raise PnlmError(f"a soup of experts over {spec.soup.k} clusters takes domain weights h ({spec.soup.k} "
                        f"floats) for the batch, got {got}")
    return h.astype(np.float32)


def silu(x: np.ndarray) -> np.ndarray:
    return x / (1.0 + np.exp(-x))


def coefficients(weights: dict[str, np.ndarray], h: np.ndarray) -> np.ndarray:
    """alpha(h) = B2 silu(B1 h + b1) + b2, the banks' coefficients (n,) for domain weights h (k,)."""
    h = np.asarray(h, dtype=np.float64)
    hidden = silu(weights[f"{IN_PROJ}.weight"].astype(np.float64) @ h + weights[f"{IN_PROJ}.bias"])
    return weights[f"{OUT_PROJ}.weight"].astype(np.float64) @ hidden + weights[f"{OUT_PROJ}.bias"]


def souped_weight(shared: np.ndarray, bank: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """W = S + sum_j alpha_j E_j."""
    return shared.astype(np.float64) + np.tensordot(alpha, bank.astype(np.float64), axes=1)


def instantiate(weights: dict[str, np.ndarray], spec: ModelSpec, h: np.ndarray) -> dict[str, np.ndarray]:
    """The plain SLM weights of the soup's model for domain weights h: every souped matrix formed, the rest as
    they are."""
    if spec.soup is None:
        raise PnlmError("instantiate needs a soup of experts' weights")
    alpha = coefficients(weights, domain_weights(h, spec.soup.k))
    plain = {name: value for name, value in weights.items()
             if not name.startswith("model.soup.") and not name.endswith(".bank")}
    for prefix in souped_matrices(spec):
        plain[f"{prefix}.weight"] = souped_weight(weights[f"{prefix}.weight"], weights[f"{prefix}.bank"],
                                                  alpha).astype(np.float32)
    return plain


def init_soup(spec: ModelSpec, rng: np.random.Generator, std: dict[str, float]) -> dict[str, np.ndarray]:
    """The banks and the coefficient network, the shared matrices S being the SLM's own initialization.

    The banks' entries have the SLM's scale for their matrix; B2 and b2 start at zero, so alpha(h) = 0 and
    every h starts as the same fresh SLM (S); B2's first gradients (<dL/dW, E_j> times B1 h's activations)
    are not zero, so the coefficients learn to depend on h from the first step. B1 ~ N(0, 1): h is a
    probability vector (|h| <= 1), so B1 h starts at unit scale."""
    s: Soup = spec.soup
    out = {f"{IN_PROJ}.weight": rng.standard_normal((s.hidden, s.k), dtype=np.float32),
           f"{IN_PROJ}.bias": np.zeros(s.hidden, dtype=np.float32),
           f"{OUT_PROJ}.weight": np.zeros((s.banks, s.hidden), dtype=np.float32),
           f"{OUT_PROJ}.bias": np.zeros(s.banks, dtype=np.float32)}
    for prefix, (rows, cols) in souped_matrices(spec).items():
        out[f"{prefix}.bank"] = rng.standard_normal((s.banks, rows, cols), dtype=np.float32) * np.float32(std[prefix])
    return out


def draw_domain_weights(soup: Soup, seed: int, step: int, present: np.ndarray | None = None) -> np.ndarray:
    """A step's domain weights h (k,): `clusters_per_draw` clusters drawn at random (among those with train
    windows, `present`), Dirichlet(concentration) weights over them, zero elsewhere. A function of (seed,
    step) alone, so a resumed run draws what an uninterrupted one does."""
    rng = np.random.default_rng([seed, step, 0x50a9])
    pool = np.arange(soup.k) if present is None else np.flatnonzero(present)
    if not len(pool):
        raise PnlmError("no cluster has train windows to draw domain weights over")
    chosen = rng.choice(pool, size=min(soup.clusters_per_draw, len(pool)), replace=False)
    h = np.zeros(soup.k)
    h[chosen] = rng.dirichlet(np.full(len(chosen), float(soup.concentration)))
    return h
