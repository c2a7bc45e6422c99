"""`pnlm experiment run`: the smoke plan end to end, resumption after kill -9, plan errors, store subsets."""

import csv
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from pnlm.errors import InputError

from conftest import FREE_THREADS, micro_plan
from pnlm.data.store import TokenStore
from pnlm.data.subset import subset_store
from pnlm.experiment.plan import METHODS, PlanError, load_plan

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "plans" / "smoke.toml"
PNLM = [sys.executable, "-m", "pnlm.cli"]
TABLES = ("Table 1", "Table 2", "Table 4", "Table 7", "Table 8", "Table 9")
PLOTS = ("perplexity_vs_pretraining_cost.png", "specialization_cost.png")


def read_rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def one_domain_smoke_plan(folder: Path, embedder: Path) -> Path:
    """The smoke plan with one domain, one domain size and 15 and 45 pretraining steps: every method, two
    budgets, a quarter of the cells; its windows embedded by the tiny random BERT (CI time: MiniLM took
    2 of its 3 minutes here; `pnlm experiment run plans/smoke.toml` runs all of it, with MiniLM)."""
    text = (SMOKE.read_text().replace('"../pnlm/', f'"{ROOT}/pnlm/')
            .replace("clusters = 4\n", f'clusters = 4\nembedder = "{embedder}"\n')
            .replace("domain_tokens = [3000, 12000]", "domain_tokens = [12000]")
            .replace("budgets = [40, 120]", "budgets = [15, 45]"))
    lines = [line for line in text.splitlines() if not line.startswith("bierce = ")]
    plan = folder / "smoke-one-domain.toml"
    plan.write_text("\n".join(lines) + "\n")
    assert list(load_plan(plan).domains) == ["hamlet"] and load_plan(plan).domain_tokens == (12000,)
    assert load_plan(plan).pretrain.budgets == (15, 45) and load_plan(plan).embedder == embedder
    return plan


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory, tiny_embedder):
    folder = tmp_path_factory.mktemp("smoke")
    out = folder / "run"
    # Both cores when free: the plan runs torch only (no MLX to collapse beside another thread), and this process waits.
    threads = {"OMP_NUM_THREADS": FREE_THREADS, "MKL_NUM_THREADS": FREE_THREADS}
    plan = one_domain_smoke_plan(folder, tiny_embedder)
    subprocess.run([*PNLM, "experiment", "run", str(plan), "--out", str(out)], check=True, capture_output=True,
                   env={**os.environ, **threads})
    return out


@pytest.mark.slow
def test_smoke_plan_gives_every_cell_table_and_plot(smoke_run):
    plan = load_plan(smoke_run.parent / "smoke-one-domain.toml")
    rows = read_rows(smoke_run / "results.csv")
    cells = {(r["method"], int(r["budget_steps"]), r["domain"], int(r["domain_tokens"])) for r in rows}
    expected = {(m, 0 if m == "nopt" else b, d, t) for m in plan.methods for d in plan.domains
                for t in plan.domain_tokens for b in plan.pretrain.budgets}
    assert cells == expected and len(rows) == len(expected)
    for row in rows:
        assert math.isfinite(float(row["pretrained_ppl"])) and math.isfinite(float(row["finetuned_ppl"]))
        assert float(row["finetuned_ppl"]) < float(row["pretrained_ppl"])  # fine-tuning helps on every cell
        assert float(row["specialization_flops"]) > 0
        assert (float(row["generic_flops"]) == 0) == (row["method"] in ("nopt", "is"))
    by_cell = {(r["method"], r["budget_steps"], r["domain"], r["domain_tokens"]): r for r in rows}
    for domain in plan.domains:  # a longer pretraining gives a better generic SLM
        short, long = (by_cell[("slm", str(b), domain, str(plan.domain_tokens[0]))] for b in plan.pretrain.budgets)
        assert float(long["pretrained_ppl"]) < float(short["pretrained_ppl"])
    report = (smoke_run / "report.md").read_text()
    for table in TABLES:
        assert table in report
    for plot in PLOTS:
        data = (smoke_run / "plots" / plot).read_bytes()
        assert data.startswith(b"\x89PNG") and len(data) > 5000 and f"plots/{plot}" in report
    assert {r["domain"] for r in read_rows(smoke_run / "domains.csv")} == set(plan.domains)
    assert {r["kind"] for r in read_rows(smoke_run / "runs.csv")} == {"pretrain", "finetune", "distill"}


def _kill_when(command: list, ready) -> None:
    child = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    while not ready():
        assert child.poll() is None, "the run ended before the point to kill it at"
        time.sleep(0.002)
    os.killpg(child.pid, signal.SIGKILL)
    child.wait()


@pytest.mark.long  # 1 min: the fault suite kills `experiment run` at 2 random moments in every `make test`
def test_killed_twice_and_rerun_gives_the_same_results(tmp_path, tiny_embedder):
    """Killed in the middle of a pretraining (after its first checkpoint), then among the cells, and
    rerun: the same results.csv, byte for byte, as an uninterrupted run (a micro plan, for time;
    tests/test_faults.py kills it at 2 random moments more, 50 in the recorded run)."""
    plan = tmp_path / "micro.toml"
    plan.write_text(micro_plan(tiny_embedder))
    straight, out = tmp_path / "straight", tmp_path / "run"
    subprocess.run([*PNLM, "experiment", "run", str(plan), "--out", str(straight)], check=True, capture_output=True)
    command = [*PNLM, "experiment", "run", str(plan), "--out", str(out)]
    _kill_when(command, lambda: (out / "work" / "pretrain" / "slm-12" / "latest" / "trainer.json").exists())
    assert not (out / "work" / "pretrain" / "slm-12.json").exists()
    _kill_when(command, lambda: len(list((out / "cells").glob("*.json"))) >= 1 if (out / "cells").is_dir() else False)
    assert not (out / "results.csv").exists() or len(read_rows(out / "results.csv")) < len(read_rows(straight / "results.csv"))
    subprocess.run(command, check=True, capture_output=True)
    assert (out / "results.csv").read_bytes() == (straight / "results.csv").read_bytes()
    assert (out / "domains.csv").read_bytes() == (straight / "domains.csv").read_bytes()


def test_a_rerun_with_another_plan_is_refused(smoke_run, tmp_path):
    changed = tmp_path / "smoke.toml"
    changed.write_text(SMOKE.read_text().replace("budgets = [40, 120]", "budgets = [40, 80]"))
    (tmp_path / "sample_data").symlink_to(ROOT / "pnlm" / "sample_data")
    changed.write_text(changed.read_text().replace("../pnlm/sample_data/", "sample_data/"))
    result = subprocess.run([*PNLM, "experiment", "run", str(changed), "--out", str(smoke_run)],
                            capture_output=True, text=True)
    assert result.returncode == 2 and "another plan" in result.stderr and "Traceback" not in result.stderr


def test_a_method_dropped_then_added_back_keeps_every_other_result(smoke_run, tmp_path):
    """A plan that differs only by a method (and the settings only it reads) continues the experiment: the
    other methods' cells are kept, not redone."""
    out = tmp_path / "run"
    shutil.copytree(smoke_run, out)
    plan = smoke_run.parent / "smoke-one-domain.toml"
    without = tmp_path / "without-soup.toml"
    without.write_text(plan.read_text().replace(', "soup"]', "]").replace("soup = { banks = 2 }\n", ""))
    assert "soup" not in load_plan(without).methods
    before = {path.name: path.stat().st_mtime_ns for path in (out / "cells").glob("*.json")}
    dropped = subprocess.run([*PNLM, "experiment", "run", str(without), "--out", str(out)], capture_output=True,
                             text=True, timeout=120)
    assert dropped.returncode == 0, dropped.stderr
    assert "drops soup; the other methods' results are kept" in dropped.stderr
    rows = read_rows(out / "results.csv")
    assert {r["method"] for r in rows} == set(load_plan(without).methods)
    assert rows == [r for r in read_rows(smoke_run / "results.csv") if r["method"] != "soup"]
    added = subprocess.run([*PNLM, "experiment", "run", str(plan), "--out", str(out)], capture_output=True,
                           text=True, timeout=120)
    assert added.returncode == 0 and "adds soup" in added.stderr, added.stderr
    assert (out / "results.csv").read_bytes() == (smoke_run / "results.csv").read_bytes()
    assert before == {path.name: path.stat().st_mtime_ns for path in (out / "cells").glob("*.json")}
    changed = tmp_path / "other-soup.toml"  # the soup kept, its settings changed: another plan
    changed.write_text(plan.read_text().replace("soup = { banks = 2 }", "soup = { banks = 3 }"))
    refused = subprocess.run([*PNLM, "experiment", "run", str(changed), "--out", str(out)], capture_output=True,
                             text=True, timeout=120)
    assert refused.returncode == 2 and "another plan" in refused.stderr
    # Dropped, then added back with other settings: its runs were made with the old ones.
    assert subprocess.run([*PNLM, "experiment", "run", str(without), "--out", str(out)], capture_output=True,
                          timeout=120).returncode == 0
    readded = subprocess.run([*PNLM, "experiment", "run", str(changed), "--out", str(out)], capture_output=True,
                             text=True, timeout=120)
    assert readded.returncode == 2 and "made with another model than the plan's" in readded.stderr, readded.stderr
    assert (out / "results.csv").read_bytes() != (smoke_run / "results.csv").read_bytes()  # still without soup


@pytest.mark.parametrize("edit, message", [
    (lambda t: t.replace('name = "smoke"', 'name = "a b"'), "name"),
    (lambda t: t.replace('name = "smoke"', 'name = "smoke\\n"'), "name"),  # `$` would match before the newline
    (lambda t: t.replace('"is", "soup"]', '"isx", "soup"]'), "methods"),
    (lambda t: t.replace("budgets = [40, 120]", "budgets = []"), "budgets"),
    (lambda t: t.replace("domain_tokens = [3000, 12000]", 'domain_tokens = ["many"]'), "domain_tokens"),
    (lambda t: t.replace("shakespeare_hamlet.jsonl.gz\"]\nbierce", "missing.jsonl.gz\"]\nbierce"), "data.domains.hamlet"),
    (lambda t: t.replace('backend = "torch"\n', 'backend = "tpu"\n', 1), "backend"),
    (lambda t: t.replace("d_ff = 176", "d_ff = -1"), "d_ff"),
    (lambda t: t.replace("lr = 3e-3", 'lr = "fast"'), "lr"),
    (lambda t: t + "\n[[broken", "not valid TOML"),
    (lambda t: t.replace("clusters = 4\n", 'clusters = 4\nembedder = "no-such-folder"\n'), "data.embedder"),
    (lambda t: t.replace("soup = { banks = 2 }", "soup = { banks = 0 }"), "models.soup.banks"),
    (lambda t: t.replace("soup = { banks = 2 }", "soup = { banks = 2, k = 4 }"), "models.soup"),
    (lambda t: t.replace("soup = { banks = 2 }", "soup = { banks = 2, clusters_per_draw = 5 }"),
     "models.soup.clusters_per_draw"),
])
def test_bad_plans_are_one_clear_error(tmp_path, edit, message):
    (tmp_path / "pnlm").mkdir()
    (tmp_path / "pnlm" / "sample_data").symlink_to(ROOT / "pnlm" / "sample_data")
    (tmp_path / "plans").mkdir()
    plan = tmp_path / "plans" / "plan.toml"
    plan.write_text(edit(SMOKE.read_text()))
    with pytest.raises(PlanError, match=message) as caught:
        load_plan(plan)
    assert str(plan) in str(caught.value) and "\n" not in str(caught.value)
    result = subprocess.run([*PNLM, "experiment", "run", str(plan), "--out", str(tmp_path / "out")],
                            capture_output=True, text=True)
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()


def test_the_shipped_plans_load():
    """Every plan in plans/ reads; those naming the shared corpora only where they are present."""
    for path in sorted((ROOT / "plans").glob("*.toml")):
        try:
            plan = load_plan(path)
        except PlanError as exc:
            assert path.name != "smoke.toml" and "shared/corpora" in str(exc), exc
            continue
        assert set(plan.methods) == set(METHODS), path


def test_subset_keeps_a_train_prefix_and_whole_evaluation_splits(tmp_path, tokenizer):
    from pnlm.data.prepare import prepare_store

    documents = [" ".join(f"word{i} and {j}" for j in range(40 + i)) for i in range(60)]
    source = prepare_store(documents, tokenizer, tmp_path / "full", 32, 0.2, 0.2, workers=1)[0]
    labels = {s: np.arange(source.num_windows(s), dtype=np.int32) % 3 for s in source.splits}
    source.write_cluster_ids(labels, {"k": 3, "centroids_sha256": "x"})
    small = subset_store(source.path, tmp_path / "small", 500)
    assert 500 <= small.num_tokens("train") < 500 + source.context
    n = small.num_windows("train")
    for i in range(n):
        assert np.array_equal(small.window("train", i), source.window("train", i))
    assert np.array_equal(small.cluster_ids("train"), labels["train"][:n])
    for split in ("valid", "test"):
        assert small.num_windows(split) == source.num_windows(split)
        assert np.array_equal(small.cluster_ids(split), labels[split])
    assert TokenStore(tmp_path / "small").tokenizer().sha256 == tokenizer.sha256
    everything = subset_store(source.path, tmp_path / "all", source.num_tokens("train"))
    assert everything.num_tokens("train") == source.num_tokens("train")
    with pytest.raises(InputError, match="fewer than the 1,000,000,000 asked for"):  # not silently all of it
        subset_store(source.path, tmp_path / "more", 10 ** 9)
    assert not (tmp_path / "more").exists()
