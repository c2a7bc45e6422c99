"""The report and `pnlm advise` on a hand-made experiment folder whose right answers are known."""

import csv
import math
import subprocess
import sys

import pytest

from pnlm.errors import PnlmError
from pnlm.experiment.advise import advise
from pnlm.experiment.report import write_report
from pnlm.experiment.results import RESULT_TYPES, interpolate_log, read_results

DOMAINS = ("law", "code")
SIZES = (1000, 4000)
# method: (budgets, generic hours per budget, specialization hours per domain, ppl after at the small size)
METHODS = {
    "slm": ((100, 400), (1.0, 4.0), 0.1, (40.0, 30.0)),
    "mix": ((100, 400), (8.0, 32.0), 0.1, (30.0, 22.0)),   # dear to pretrain, cheap per domain
    "is": ((100, 400), (0.0, 0.0), 2.0, (28.0, 21.0)),     # nothing shared, dear per domain
}


def _write(path, rows):
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


@pytest.fixture
def folder(tmp_path):
    results, costs, runs = [], [], []
    for method, (budgets, generic, special, ppls) in METHODS.items():
        for budget, hours, ppl in zip(budgets, generic, ppls):
            for domain, factor in zip(DOMAINS, (1.0, 4.0)):  # law ppl × 1, code × 4: macro = 2 × ppl
                for size, gain in zip(SIZES, (1.0, 0.5)):
                    results.append({"method": method, "budget_steps": budget, "domain": domain, "domain_tokens": size,
                                    "train_tokens": size, "params_pretrain": 1000, "params_inference": 500 if method != "mix" else 600,
                                    "expert": "", "pretrained_ppl": 99.0, "finetuned_ppl": ppl * factor * gain,
                                    "finetune_steps": 10, "generic_flops": hours * 1e9, "specialization_flops": 1e9})
                    costs.append({"method": method, "budget_steps": budget, "domain": domain, "domain_tokens": size,
                                  "generic_device_hours": hours, "specialization_device_hours": special, "device": "cpu"})
            runs.append({"kind": "pretrain", "method": method, "budget_steps": budget, "domain": "", "domain_tokens": 0,
                         "steps": budget, "tokens": budget * 1000, "flops": hours * 1e9, "seconds": hours * 3600,
                         "device_hours": hours, "device": "cpu", "backend": "torch"})
    _write(tmp_path / "results.csv", results)
    _write(tmp_path / "costs.csv", costs)
    _write(tmp_path / "runs.csv", runs)
    _write(tmp_path / "domains.csv", [{"domain": d, "domain_tokens": s, "train_windows": 10, "top_cluster": 1,
                                       "top_share": 0.625, "entropy": 0.5} for d in DOMAINS for s in SIZES])
    return tmp_path


def test_macro_average_and_interpolation(folder):
    r = read_results(folder)
    assert math.isclose(r.macro_ppl("slm", 100, 1000), 80.0)  # sqrt(40 × 160)
    assert math.isclose(interpolate_log([(1.0, 80.0), (4.0, 60.0)], 2.0), 70.0)  # log-midpoint
    assert interpolate_log([(1.0, 80.0), (4.0, 60.0)], 8.0) is None


def test_report_has_every_table_and_real_plots(folder):
    text = write_report(folder).read_text()
    for table in ("Table 1", "Table 2", "Table 4", "Table 7", "Table 8", "Table 9", "Per domain"):
        assert table in text
    assert "| slm | 100 | 99.00 | 80.00 | 40.00 |" in text  # before, after at 1,000 and at 4,000 tokens
    assert "| slm | 80.00 | 60.00 |" in text  # table 7 at the SLM's own costs (1 h, 4 h)
    assert "0.625" in text
    for plot in ("perplexity_vs_pretraining_cost.png", "specialization_cost.png"):
        data = (folder / "plots" / plot).read_bytes()
        assert data.startswith(b"\x89PNG") and len(data) > 5000


def test_amortization_changes_the_advice(folder):
    few = advise(folder, domains=1, domain_tokens=1000, inference_params=10_000)
    many = advise(folder, domains=100, domain_tokens=1000, inference_params=10_000, budget_hours=60)
    assert (few.recommended.method, few.recommended.budget_steps) == ("is", 400)  # ppl 42 for 2 h
    # For 100 domains IS costs 200 h and is out of the 60 h budget; the mixture's 32 h of pretraining is shared.
    assert (many.recommended.method, many.recommended.budget_steps) == ("mix", 400)
    assert math.isclose(many.recommended.total_hours, 32.0 + 100 * 0.1)
    small = advise(folder, domains=100, domain_tokens=1000, inference_params=550)
    assert {o.method for o in small.options} == {"slm", "is"}  # the mix's 600 parameters are too many
    between = advise(folder, domains=1, domain_tokens=2000, inference_params=10_000)
    assert math.isclose(between.recommended.perplexity, 42.0 * 0.75)  # halfway in log size


def test_bad_inputs_are_one_clear_line(folder):
    with pytest.raises(PnlmError, match="at most 10 parameters"):
        advise(folder, domains=1, domain_tokens=1000, inference_params=10)
    with pytest.raises(PnlmError, match="nothing fits in 0.5 device-hours"):
        advise(folder, domains=1, domain_tokens=1000, inference_params=10_000, budget_hours=0.5)
    text = (folder / "results.csv").read_text().splitlines()
    text[3] = text[3].replace("99.0", "lots")
    (folder / "results.csv").write_text("\n".join(text) + "\n")
    with pytest.raises(PnlmError, match=r"results.csv: line 4: column pretrained_ppl"):
        read_results(folder)
    columns = [c for c in RESULT_TYPES if c != "finetuned_ppl"]
    _write(folder / "results.csv", [dict.fromkeys(columns, "1")])
    with pytest.raises(PnlmError, match="missing column"):
        write_report(folder)


def test_advise_on_the_command_line(folder):
    run = subprocess.run([sys.executable, "-m", "pnlm.cli", "advise", "--results", str(folder), "--domains", "100",
                          "--domain-tokens", "1000", "--inference-params", "10000", "--budget-hours", "60", "--json"],
                         capture_output=True, text=True, check=True)
    import json

    advice = json.loads(run.stdout)
    assert advice["recommended"]["method"] == "mix" and len(advice["options"]) == 6
    bad = subprocess.run([sys.executable, "-m", "pnlm.cli", "advise", "--results", str(folder / "nowhere"),
                          "--domains", "1", "--domain-tokens", "1", "--inference-params", "1"],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "nowhere" in bad.stderr and "Traceback" not in bad.stderr


def test_report_on_the_command_line_with_and_without_matplotlib(folder, tmp_path):
    import json
    import os

    run = subprocess.run([sys.executable, "-m", "pnlm.cli", "experiment", "report", str(folder), "--json"],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout) == {"report": str(folder / "report.md"),
                                      "plots": sorted(str(p) for p in (folder / "plots").glob("*.png"))}
    assert len(json.loads(run.stdout)["plots"]) == 2
    # Where matplotlib cannot be imported, the tables are written and the report says how to get the plots.
    shadow = tmp_path / "shadow" / "matplotlib"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('no matplotlib in this environment')\n")
    for plot in (folder / "plots").glob("*.png"):
        plot.unlink()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path / "shadow"), os.environ.get("PYTHONPATH", "")])}
    run = subprocess.run([sys.executable, "-m", "pnlm.cli", "experiment", "report", str(folder)],
                         capture_output=True, text=True, env=env)
    assert run.returncode == 0 and "Traceback" not in run.stderr, run.stderr
    assert "no plots" in run.stderr and "pnlm[report]" in run.stderr
    text = (folder / "report.md").read_text()
    assert "Table 9" in text and "need matplotlib" in text and "plots/" not in text


def test_the_report_checks_the_papers_orderings(folder):
    from pnlm.experiment.orderings import check, high_entropy_domains

    rows = list(csv.DictReader(open(folder / "results.csv")))
    costs = list(csv.DictReader(open(folder / "costs.csv")))
    extra_results, extra_costs = [], []
    # pn: better than the SLM at equal steps on law only (code: worse), and dearer per step (2x the SLM's hours),
    # so at the SLM's 4 h it sits at its own 100-step point: worse than the SLM's 400 steps there
    for budget, hours, ppl_law, ppl_code in ((100, 2.0, 35.0, 170.0), (400, 8.0, 25.0, 125.0)):
        for domain, ppl in (("law", ppl_law), ("code", ppl_code)):
            for size, gain in zip(SIZES, (1.0, 0.5)):
                extra_results.append({**rows[0], "method": "pn", "budget_steps": budget, "domain": domain,
                                      "domain_tokens": size, "finetuned_ppl": ppl * gain})
                extra_costs.append({**costs[0], "method": "pn", "budget_steps": budget, "domain": domain,
                                    "domain_tokens": size, "generic_device_hours": hours})
    for domain, ppl in (("law", 50.0), ("code", 100.0)):  # no pretraining: worse than all but is on code
        for size in SIZES:
            extra_results.append({**rows[0], "method": "nopt", "budget_steps": 0, "domain": domain,
                                  "domain_tokens": size, "finetuned_ppl": ppl})
            extra_costs.append({**costs[0], "method": "nopt", "budget_steps": 0, "domain": domain,
                                "domain_tokens": size, "generic_device_hours": 0.0})
    _write(folder / "results.csv", rows + extra_results)
    _write(folder / "costs.csv", costs + extra_costs)
    domains = list(csv.DictReader(open(folder / "domains.csv")))
    for row in domains:
        row["entropy"] = 1.9 if row["domain"] == "code" else 0.4
    _write(folder / "domains.csv", domains)

    r = read_results(folder)
    assert high_entropy_domains(r, 1) == ["code"]
    verdicts = {(v.ordering.claim, v.size): v for v in check(r)}
    assert {claim for claim, _ in verdicts} == {
        "PN below the SLM at equal steps", "PN below the SLM at the SLM's pretraining cost",
        "the hard mixture below the SLM at equal steps", "importance sampling below the SLM at equal steps",
        "every pretrained method below no pretraining (nopt)"}  # no LLM ran: its orderings are not claimed
    steps = verdicts[("PN below the SLM at equal steps", 1000)]
    # at 400 steps, the largest budget they share: macro sqrt(25 x 125) = 55.9 against the SLM's sqrt(30 x 120) = 60
    assert steps.budget == 400 and steps.macro is True
    assert steps.domains_holding == ["law"] and steps.domains_measured == ["law", "code"]
    # at the SLM's 4 h, halfway in log cost between the PN's 2 h and 8 h: law 30 (not below 30), code 147.5
    cost = verdicts[("PN below the SLM at the SLM's pretraining cost", 1000)]
    assert cost.macro is False and cost.domains_holding == [] and cost.domains_measured == ["law", "code"]
    assert verdicts[("the hard mixture below the SLM at equal steps", 4000)].macro is True
    nopt = verdicts[("every pretrained method below no pretraining (nopt)", 1000)]
    assert nopt.macro is True and nopt.domains_holding == ["law"]  # on code the SLM's 120 is above nopt's 100
    text = write_report(folder).read_text()
    assert "| PN below the SLM at the SLM's pretraining cost | 7 | 1,000 | does not hold | 0 of 2 |" in text
    assert "| pn | 1,000 | law 0.833, code 1.042 | 1.042 | 0.833 |" in text  # high-entropy code, then the rest
