"""report.md and plots/ of an experiment folder: the paper's tables 1, 2, 4, 7, 8 and 9 from the CSV files.

    pnlm experiment report DIR      (also written at the end of `pnlm experiment run`)
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

from pnlm.files.atomic import atomic_file
from pnlm.experiment.orderings import orderings_section
from pnlm.experiment.results import Results, interpolate_log, read_results
from pnlm.methods import METHODS

PLOTS = ("perplexity_vs_pretraining_cost.png", "specialization_cost.png")
DASH = "—"


def _ppl(value: float | None) -> str:
    return DASH if value is None else f"{value:,.2f}"


def _num(value: float | None) -> str:
    return DASH if value is None else f"{value:.3g}"


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def parameters_table(r: Results) -> str:
    rows = []
    for method in r.methods:
        row = next(x for x in r.results if x["method"] == method)
        label = METHODS[method].label if method in METHODS else method
        rows.append([method, label, f"{row['params_pretrain']:,}", f"{row['params_inference']:,}"])
    return ("**Table 1.** Parameters per method: trained during pretraining (mix: all experts; distill: "
            "teacher and student; pn: every expert's bases; soup: the shared matrices, the expert banks and the "
            "coefficient network) and run at inference (results.csv).\n\n"
            + _table(["method", "label", "pretraining", "inference"], rows))


def cost_per_token_table(r: Results) -> str:
    sums: dict[tuple[str, str], list[float]] = defaultdict(lambda: [0.0, 0.0, 0.0])
    for run in r.runs:
        s = sums[(run["kind"], run["method"])]
        s[0] += run["tokens"]
        s[1] += run["device_hours"]
        s[2] += run["flops"]
    order = {m: i for i, m in enumerate(r.methods)}
    rows = [[kind, method, f"{tokens:,.0f}", _num(hours / tokens * 1e9), _num(flops / tokens)]
            for (kind, method), (tokens, hours, flops) in sorted(sums.items(), key=lambda kv: (kv[0][0] != "pretrain",
                                                                                        kv[0][0], order.get(kv[0][1], 99)))
            if tokens]
    return (f"**Table 2.** Measured cost per 1B training tokens on {r.device()} (runs.csv: the sum of the "
            "runs' device-hours over the sum of their tokens), and FLOPs per token (6N + 12·L·d·T; a "
            "distillation's include the teacher's forward passes only in results.csv).\n\n"
            + _table(["run", "method", "tokens", "device-hours / 1B tokens", "FLOPs / token"], rows))


def perplexity_table(r: Results) -> str:
    sizes = r.sizes
    rows = []
    for method in r.methods:
        for budget in r.budgets(method):
            before = r.macro_ppl(method, budget, sizes[0], "pretrained_ppl")
            rows.append([method, str(budget), _ppl(before)] + [_ppl(r.macro_ppl(method, budget, s)) for s in sizes])
    return ("**Table 4.** Macro-averaged test perplexity over the domains (exp of the mean log-perplexity), "
            f"per method and pretraining budget (steps): the specialization's starting point (at {sizes[0]:,} "
            "domain tokens, where pn and mix choose their expert) and after fine-tuning with each domain size.\n\n"
            + _table(["method", "budget (steps)", "before fine-tuning"] + [f"fine-tuned, {s:,} tokens" for s in sizes],
                     rows))


def placed_cost(r: Results, method: str, budget: int, size: int) -> float | None:
    """Where a method × budget sits on the pretraining-cost axis: its shared pretraining's device-hours;
    for methods without one (is, nopt), what one domain costs them (generic + specialization)."""
    generic = r.cost(method, budget, "generic_device_hours", size)
    if generic:
        return generic
    special = r.cost(method, budget, "specialization_device_hours", size)
    return None if special is None else (generic or 0.0) + special


def curve(r: Results, method: str, size: int, column: str = "finetuned_ppl") -> list[tuple[float, float]]:
    points = []
    for budget in r.budgets(method):
        cost, ppl = placed_cost(r, method, budget, size), r.macro_ppl(method, budget, size, column)
        if cost is not None and ppl is not None:
            points.append((cost, ppl))
    return sorted(points)


def fixed_cost_table(r: Results, size: int) -> str:
    levels = sorted({c for c, _ in curve(r, "slm", size)}) or sorted({c for m in r.methods for c, _ in curve(r, m, size)})
    if len(levels) > 4:
        levels = [levels[round(i * (len(levels) - 1) / 3)] for i in range(4)]
    rows = [[m] + [_ppl(interpolate_log(curve(r, m, size), level)) for level in levels] for m in r.methods]
    return (f"**Table 7** ({size:,} domain tokens). Macro-averaged perplexity after fine-tuning at fixed "
            "pretraining costs (device-hours), interpolated linearly in log cost between each method's budgets; "
            f"{DASH} where its measured range does not reach the level (no extrapolation). The levels are the SLM's "
            "measured pretraining costs. is and nopt have no shared pretraining: they are placed at what one domain "
            "costs them.\n\n" + _table(["method"] + [f"{level:.3g} h" for level in levels], rows))


def clusters_tables(r: Results) -> str:
    header = ["domain"] + [f"{s:,} tokens" for s in r.sizes]
    by = {(d["domain"], d["domain_tokens"]): d for d in r.domains}
    share = [[name] + [DASH if (name, s) not in by else f"{by[(name, s)]['top_share']:.3f} (cluster "
                       f"{by[(name, s)]['top_cluster']})" for s in r.sizes] for name in r.domain_names]
    entropy = [[name] + [DASH if (name, s) not in by else f"{by[(name, s)]['entropy']:.3f}" for s in r.sizes]
               for name in r.domain_names]
    return ("**Table 8.** Share of each domain's train windows in its most frequent generic cluster (domains.csv).\n\n"
            + _table(header, share) + "\n\n**Table 9.** Entropy (nats) of each domain's histogram over the generic "
            "clusters.\n\n" + _table(header, entropy))


def per_domain_table(r: Results) -> str:
    size = r.sizes[-1]
    rows = []
    for method in r.methods:
        budget = r.budgets(method)[-1]
        values = {x["domain"]: x["finetuned_ppl"] for x in r.results
                  if x["method"] == method and x["budget_steps"] == budget and x["domain_tokens"] == size}
        rows.append([f"{method} ({budget})"] + [_ppl(values.get(d)) for d in r.domain_names])
    return (f"**Per domain.** Test perplexity after fine-tuning on {size:,} tokens, each method at its largest "
            "budget (steps in parentheses).\n\n" + _table(["method"] + r.domain_names, rows))


def write_plots(r: Results, folder: Path) -> bool:
    """The two figures, as PNG files in folder; False (and nothing written) without matplotlib."""
    try:
        import matplotlib
    except ImportError:
        return False
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    size = r.sizes[-1]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=False)
    for ax, column, title in ((axes[0], "pretrained_ppl", f"before fine-tuning ({r.sizes[0]:,} tokens' expert)"),
                              (axes[1], "finetuned_ppl", f"after fine-tuning on {size:,} tokens")):
        for method in r.methods:
            points = curve(r, method, r.sizes[0] if column == "pretrained_ppl" else size, column)
            if points:
                ax.plot(*zip(*points), marker="o", label=method)
        ax.set_xscale("log")
        ax.set_xlabel("pretraining device-hours (is, nopt: one domain's cost)")
        ax.set_ylabel("macro-averaged test perplexity")
        ax.set_title(title)
        ax.grid(True, alpha=0.3)
    axes[1].legend()
    _save(fig, folder / PLOTS[0])
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for method in r.methods:
        points = sorted((r.cost(method, b, "specialization_device_hours", size), r.macro_ppl(method, b, size))
                        for b in r.budgets(method))
        points = [p for p in points if p[0] is not None and p[1] is not None]
        if points:
            ax.plot(*zip(*points), marker="o", label=method)
    ax.set_xscale("log")
    ax.set_xlabel(f"specialization device-hours per domain ({size:,} tokens)")
    ax.set_ylabel("macro-averaged test perplexity after fine-tuning")
    ax.set_title("what each domain costs (distillation pays for its teacher)")
    ax.grid(True, alpha=0.3)
    ax.legend()
    _save(fig, folder / PLOTS[1])
    return True


def _save(fig, path: Path) -> None:
    import matplotlib.pyplot as plt

    with atomic_file(path) as f:
        fig.savefig(f, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)


def write_report(folder: str | Path) -> Path:
    r = read_results(folder)
    info_path, plan_path = r.folder / "run.json", r.folder / "plan.json"
    info = json.loads(info_path.read_text()) if info_path.is_file() else {}
    plan = json.loads(plan_path.read_text()) if plan_path.is_file() else {}
    if not r.results:
        body = "No cell has finished yet."
    else:
        plotted = write_plots(r, r.folder / "plots")
        sections = [parameters_table(r), cost_per_token_table(r), perplexity_table(r)]
        sections += [fixed_cost_table(r, size) for size in r.sizes]
        sections += [clusters_tables(r), per_domain_table(r), orderings_section(r)]
        sections += [f"![perplexity against pretraining cost](plots/{PLOTS[0]})",
                     f"![perplexity against specialization cost](plots/{PLOTS[1]})"] if plotted else \
            [f"(No plots: they need matplotlib, `pip install 'pnlm[report]'`, then `pnlm experiment report "
             f"{r.folder}`.)"]
        body = "\n\n".join(sections)
    cells = len(r.results)
    head = (f"# Experiment {plan.get('name', r.folder.name)}\n\n"
            f"Started {info.get('started', '?')}, finished {info.get('finished') or 'not yet'}; commit "
            f"{info.get('commit') or '?'}; {info.get('machine', '?')}; pnlm {info.get('pnlm', '?')}. "
            f"{cells} cells ({len(r.domain_names)} domains, sizes {', '.join(f'{s:,}' for s in r.sizes)} tokens). "
            "Numbers from results.csv (deterministic), costs.csv and runs.csv (measured), domains.csv.")
    path = r.folder / "report.md"
    with atomic_file(path) as f:
        f.write((head + "\n\n" + body + "\n").encode())
    return path
