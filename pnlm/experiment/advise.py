"""`pnlm advise`: which method, from an experiment's measurements, for N domains of T tokens each and a
model of at most P parameters at inference, under the paper's amortized cost C_generic + N · C_specialization."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pnlm.errors import PnlmError
from pnlm.experiment.results import Results, read_results

NEAR_BEST = 0.02  # "as good": within 2% of the best perplexity


@dataclass
class Option:
    method: str
    budget_steps: int
    params_inference: int
    perplexity: float
    generic_hours: float
    specialization_hours: float
    total_hours: float


@dataclass
class Advice:
    recommended: Option
    cheapest_near_best: Option
    options: list[Option]
    domains: int
    domain_tokens: int
    inference_params: int
    budget_hours: float | None
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "recommended": asdict(self.recommended),
                "cheapest_near_best": asdict(self.cheapest_near_best), "options": [asdict(o) for o in self.options]}


def _at_size(points: dict[int, float], tokens: int) -> tuple[float, str | None]:
    """A value at `tokens` domain tokens from its values at the measured sizes: linear in log size between
    two of them; the nearest one outside their range (with a note)."""
    sizes = sorted(points)
    if tokens <= sizes[0] or tokens >= sizes[-1]:
        nearest = sizes[0] if tokens <= sizes[0] else sizes[-1]
        note = None if tokens == nearest else f"{tokens:,} domain tokens is outside the measured sizes: used {nearest:,}"
        return points[nearest], note
    upper = next(i for i, s in enumerate(sizes) if s >= tokens)
    lo, hi = sizes[upper - 1], sizes[upper]
    t = (math.log(tokens) - math.log(lo)) / (math.log(hi) - math.log(lo))
    return points[lo] + t * (points[hi] - points[lo]), None


def options(r: Results, domains: int, domain_tokens: int, inference_params: int) -> tuple[list[Option], list[str]]:
    found, notes = [], set()
    for method in r.methods:
        params = max(x["params_inference"] for x in r.results if x["method"] == method)
        if params > inference_params:
            continue
        for budget in r.budgets(method):
            ppl = {s: r.macro_ppl(method, budget, s) for s in r.sizes}
            special = {s: r.cost(method, budget, "specialization_device_hours", s) for s in r.sizes}
            ppl = {s: v for s, v in ppl.items() if v is not None and special[s] is not None}
            if not ppl:
                continue
            perplexity, note = _at_size(ppl, domain_tokens)
            special_hours, _ = _at_size({s: special[s] for s in ppl}, domain_tokens)
            generic_hours = r.cost(method, budget, "generic_device_hours") or 0.0
            if note:
                notes.add(note)
            found.append(Option(method, budget, params, perplexity, generic_hours, special_hours,
                                generic_hours + domains * special_hours))
    return found, sorted(notes)


def advise(results: str | Path, domains: int, domain_tokens: int, inference_params: int,
           budget_hours: float | None = None) -> Advice:
    if domains < 1 or domain_tokens < 1 or inference_params < 1:
        raise PnlmError("--domains, --domain-tokens and --inference-params must be positive")
    if budget_hours is not None and budget_hours <= 0:
        raise PnlmError(f"--budget-hours must be positive, got {budget_hours}")
    r = read_results(results)
    if not r.results:
        raise PnlmError(f"{r.folder / 'results.csv'}: no finished cell yet")
    found, notes = options(r, domains, domain_tokens, inference_params)
    if not found:
        smallest = min(x["params_inference"] for x in r.results)
        raise PnlmError(f"no method measured in {r.folder} runs with at most {inference_params:,} parameters at "
                        f"inference (the smallest measured: {smallest:,})")
    within = [o for o in found if budget_hours is None or o.total_hours <= budget_hours]
    if not within:
        cheapest = min(found, key=lambda o: o.total_hours)
        raise PnlmError(f"nothing fits in {budget_hours:g} device-hours for {domains} domains: the cheapest option, "
                        f"{cheapest.method} at {cheapest.budget_steps} steps, costs {cheapest.total_hours:.3g}")
    best = min(within, key=lambda o: (o.perplexity, o.total_hours))
    near = min((o for o in within if o.perplexity <= best.perplexity * (1 + NEAR_BEST)), key=lambda o: o.total_hours)
    found.sort(key=lambda o: (o.total_hours, o.perplexity))
    return Advice(best, near, found, domains, domain_tokens, inference_params, budget_hours, notes)
