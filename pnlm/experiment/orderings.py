"""The paper's orderings of the methods, checked on an experiment's results: whether each holds on the
macro-average, on how many domains, and on the domains whose windows spread most over the generic
clusters (the highest entropy: where the paper finds specialization by cluster helps least).

Each ordering compares methods after fine-tuning, at the largest pretraining budget the methods share
(equal steps, Table 4) or at the SLM's pretraining cost there (interpolated in log cost between a
method's budgets, Table 7; "not measured" where a method's budgets do not reach it).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from pnlm.experiment.results import Results, interpolate_log

# The paper's methods: its orderings are checked on them. The soup of experts (beyond the paper) is read beside
# them, in the per-domain gains table.
PRETRAINED = ("slm", "llm", "distill", "mix", "pn", "is")
SMALL = ("slm", "distill", "mix", "pn", "is", "nopt")
HIGH_ENTROPY_DOMAINS = 2


@dataclass(frozen=True)
class Ordering:
    claim: str
    table: str
    at: str  # "steps" or "cost"
    better: str  # the method the paper finds better (lower perplexity) ...
    worse: tuple[str, ...]  # ... than each of these


ORDERINGS = (
    Ordering("PN below the SLM at equal steps", "4", "steps", "pn", ("slm",)),
    Ordering("PN below the SLM at the SLM's pretraining cost", "7", "cost", "pn", ("slm",)),
    Ordering("the hard mixture below the SLM at equal steps", "4", "steps", "mix", ("slm",)),
    Ordering("importance sampling below the SLM at equal steps", "4", "steps", "is", ("slm",)),
    Ordering("the LLM below every small model at equal steps", "4", "steps", "llm", SMALL),
    Ordering("the SLM below the LLM at the SLM's pretraining cost", "7", "cost", "slm", ("llm",)),
    Ordering("every pretrained method below no pretraining (nopt)", "4", "steps", "*", ("nopt",)),
)


@dataclass
class Verdict:
    ordering: Ordering
    size: int
    budget: int
    macro: bool | None  # None: not measured
    domains_holding: list[str]
    domains_measured: list[str]

    @property
    def per_domain(self) -> str:
        return f"{len(self.domains_holding)} of {len(self.domains_measured)}"


def high_entropy_domains(r: Results, count: int = HIGH_ENTROPY_DOMAINS) -> list[str]:
    """The domains whose train windows spread most over the generic clusters (domains.csv, smallest size):
    `count` of them, and never more than half, so that there are others to read them against."""
    if not r.domains:
        return []
    size = min(d["domain_tokens"] for d in r.domains)
    rows = sorted((d for d in r.domains if d["domain_tokens"] == size), key=lambda d: -d["entropy"])
    return [d["domain"] for d in rows[:max(1, min(count, len(rows) // 2))]]


def shared_budget(r: Results) -> int | None:
    """The largest budget every pretrained method present ran."""
    common = None
    for method in (m for m in PRETRAINED if m in r.methods):
        budgets = set(r.budgets(method))
        common = budgets if common is None else common & budgets
    return max(common) if common else None


def _value(r: Results, method: str, budget: int, size: int, domain: str | None, at: str) -> float | None:
    """A method's perplexity after fine-tuning (one domain's, or the macro-average with domain None), at the
    budget's steps or at the SLM's pretraining cost at that budget."""
    def ppl(m: str, b: int) -> float | None:
        if domain is None:
            return r.macro_ppl(m, b, size)
        values = [x["finetuned_ppl"] for x in r.results if x["method"] == m and x["budget_steps"] == b
                  and x["domain_tokens"] == size and x["domain"] == domain]
        return values[0] if values else None

    if method == "nopt":  # no pretraining: one row whatever the budget
        return ppl("nopt", r.budgets("nopt")[0]) if r.budgets("nopt") else None
    if at == "steps":
        return ppl(method, budget)
    level = _cost(r, "slm", budget, size)
    points = [(c, p) for b in r.budgets(method)
              if (c := _cost(r, method, b, size)) is not None and (p := ppl(method, b)) is not None]
    return None if level is None else interpolate_log(points, level)


def _cost(r: Results, method: str, budget: int, size: int) -> float | None:
    generic = r.cost(method, budget, "generic_device_hours", size)
    if generic:
        return generic
    special = r.cost(method, budget, "specialization_device_hours", size)
    return special


def _holds(value: Callable[[str], float | None], ordering: Ordering, methods: list[str]) -> bool | None:
    better = [m for m in PRETRAINED if m in methods] if ordering.better == "*" else [ordering.better]
    worse = [m for m in ordering.worse if m in methods and m not in better]
    pairs = [(b, w) for b in better for w in worse]
    values = {m: value(m) for m in set(better) | set(worse)}
    if not pairs or any(values[m] is None for pair in pairs for m in pair):
        return None
    return all(values[b] < values[w] for b, w in pairs)


def check(r: Results) -> list[Verdict]:
    budget = shared_budget(r)
    if budget is None:
        return []
    verdicts = []
    for size in r.sizes:
        for ordering in ORDERINGS:
            if not set(ordering.worse) & set(r.methods) or (ordering.better != "*" and ordering.better not in r.methods):
                continue  # a method it compares did not run
            macro = _holds(lambda m: _value(r, m, budget, size, None, ordering.at), ordering, r.methods)
            holding, measured = [], []
            for domain in r.domain_names:
                held = _holds(lambda m: _value(r, m, budget, size, domain, ordering.at), ordering, r.methods)
                if held is not None:
                    measured.append(domain)
                    if held:
                        holding.append(domain)
            verdicts.append(Verdict(ordering, size, budget, macro, holding, measured))
    return verdicts


def gains(r: Results, method: str, size: int, budget: int) -> dict[str, float]:
    """Per domain, a method's perplexity after fine-tuning over the SLM's, at equal steps (below 1: better)."""
    out = {}
    for domain in r.domain_names:
        ours, slm = (_value(r, m, budget, size, domain, "steps") for m in (method, "slm"))
        if ours is not None and slm is not None:
            out[domain] = ours / slm
    return out


def orderings_section(r: Results) -> str:
    verdicts = check(r)
    if not verdicts:
        return ""
    high = high_entropy_domains(r)
    word = {True: "holds", False: "does not hold", None: "not measured"}
    rows = []
    for v in verdicts:
        high_held = [d for d in high if d in v.domains_holding]
        high_measured = [d for d in high if d in v.domains_measured]
        rows.append([v.ordering.claim, v.ordering.table, f"{v.size:,}", word[v.macro], v.per_domain,
                     f"{len(high_held)} of {len(high_measured)}"])
    header = ["ordering (after fine-tuning)", "paper's table", "domain tokens", "macro-average", "domains",
              f"high-entropy domains ({', '.join(high) or 'none'})"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    budget = verdicts[0].budget
    gain_rows = []
    for method in ("pn", "mix", "is", "soup"):
        if method not in r.methods:
            continue
        for size in r.sizes:
            g = gains(r, method, size, budget)
            if not g:
                continue
            spread = {d: g[d] for d in high if d in g}
            rest = {d: g[d] for d in g if d not in high}
            gain_rows.append(f"| {method} | {size:,} | " + ", ".join(f"{d} {x:.3f}" for d, x in g.items())
                             + f" | {_geomean(spread.values())} | {_geomean(rest.values())} |")
    gains_table = ("\n\n" + f"Each method's perplexity over the SLM's, per domain, at {budget:,} steps (below 1: "
                   "better than the SLM); the paper finds the specialized methods gain least on the domains that "
                   "spread most over the clusters.\n\n| method | domain tokens | per domain | high-entropy "
                   "(geometric mean) | the others |\n|---|---|---|---|---|\n" + "\n".join(gain_rows)) if gain_rows else ""
    return (f"**The paper's orderings** at {budget:,} pretraining steps (the largest budget every pretrained "
            "method ran), checked on the macro-average and per domain; at the SLM's pretraining cost, each method "
            "is interpolated between its budgets.\n\n" + "\n".join(lines) + gains_table)


def _geomean(values) -> str:
    values = list(values)
    return "—" if not values else f"{math.exp(sum(math.log(v) for v in values) / len(values)):.3f}"
