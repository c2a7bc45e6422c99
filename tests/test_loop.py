"""The training loop through the CLI: exact resume after kill -9, early stopping keeps the best weights."""

import json
import subprocess
import sys

import numpy as np
import pytest

from conftest import SAMPLE_DATA, kill_after_first_checkpoint
from pnlm.checkpoints.checkpoint import load_checkpoint
from pnlm.data import iter_documents
from pnlm.data.prepare import prepare_store
from pnlm.data.samplers import batch_indices


def pnlm_cli(*args, **kwargs):
    return subprocess.run([sys.executable, "-m", "pnlm.cli", *map(str, args)], capture_output=True, text=True, **kwargs)


@pytest.fixture(scope="module")
def store(tmp_path_factory, tokenizer):
    docs = list(iter_documents(SAMPLE_DATA[:1]))
    return prepare_store(iter(docs), tokenizer, tmp_path_factory.mktemp("s") / "store", context=64,
                         valid_fraction=0.1, test_fraction=0.1, workers=1)[0]


def losses(run):
    return [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_batches_are_a_function_of_the_step():
    seen = np.concatenate([batch_indices(s, 3, 10, seed=1) for s in range(10)])
    assert sorted(seen[:9].tolist()) == sorted(set(seen[:9].tolist()))  # no repeats within an epoch
    assert sorted(seen[:10].tolist()) == list(range(10))                # one epoch covers every window
    assert np.array_equal(batch_indices(7, 3, 10, seed=1), seen[21:24])


@pytest.mark.parametrize("backend, tolerance", [("torch", 0.0), ("mlx", 1e-5)])
def test_kill_and_resume_gives_the_uninterrupted_losses(tmp_path, store, backend, tolerance):
    common = ["pretrain", "--model", "tiny", "--data", store.path, "--backend", backend, "--steps", 16,
              "--batch-size", 8, "--lr", 2e-3, "--checkpoint-every", 8, "--seed", 3]
    straight = pnlm_cli(*common, "--out", tmp_path / "straight")
    assert straight.returncode == 0, straight.stderr
    run = tmp_path / "killed"
    assert kill_after_first_checkpoint([sys.executable, "-m", "pnlm.cli", *common, "--out", run], run) == 8
    resumed = pnlm_cli(*common, "--out", run, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    a, b = losses(tmp_path / "straight"), losses(run)
    assert len(a) == len(b) == 16
    assert np.abs(np.array(a) - np.array(b)).max() <= tolerance


def test_resume_drops_a_torn_metrics_line_and_starts_a_run_with_no_checkpoint(tmp_path, store):
    common = ["pretrain", "--model", "tiny", "--data", store.path, "--backend", "torch", "--batch-size", 8,
              "--checkpoint-every", 4, "--warmup", 0]
    straight = pnlm_cli(*common, "--steps", 8, "--out", tmp_path / "straight")
    assert straight.returncode == 0, straight.stderr
    run = tmp_path / "run"
    fresh = pnlm_cli(*common, "--steps", 8, "--out", run, "--resume")  # nothing to resume yet: starts at step 0
    assert fresh.returncode == 0, fresh.stderr
    assert losses(run) == losses(tmp_path / "straight")
    # a run killed at step 7 while writing its metrics line, its latest checkpoint at step 4
    killed = tmp_path / "killed"
    assert pnlm_cli(*common, "--steps", 4, "--out", killed).returncode == 0
    later = (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()[4:7]
    with open(killed / "metrics.jsonl", "a") as f:
        f.write(later[0] + "\n" + later[1] + "\n" + later[2][:17])
    again = pnlm_cli(*common, "--steps", 8, "--out", killed, "--resume")
    assert again.returncode == 0, again.stderr
    steps = [json.loads(line)["step"] for line in (killed / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 9))


def test_finetune_stops_early_and_keeps_the_best(tmp_path, store, tokenizer):
    pre = pnlm_cli("pretrain", "--model", "tiny", "--data", store.path, "--backend", "torch", "--steps", 4,
                   "--out", tmp_path / "pre")
    assert pre.returncode == 0, pre.stderr
    # A domain of four short documents overfits at once: validation loss turns up and training must stop.
    small = prepare_store(iter([f"{i} " + "the quick brown fox jumps over the lazy dog " * (3 + i) for i in range(40)]),
                          tokenizer, tmp_path / "small", context=64, valid_fraction=0.3, test_fraction=0.1)[0]
    result = pnlm_cli("finetune", tmp_path / "pre" / "latest", "--data", small.path, "--backend", "torch",
                      "--out", tmp_path / "ft", "--steps", 400, "--lr", 1e-2, "--eval-every", 5, "--patience", 2,
                      "--batch-size", 4, "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["stopped_early"] and summary["steps"] < 400
    evals = [json.loads(line) for line in (tmp_path / "ft" / "metrics.jsonl").read_text().splitlines()]
    val = [e["val_loss"] for e in evals if "val_loss" in e]
    assert min(val) == summary["best_val_loss"] and val[-1] > min(val)
    best = load_checkpoint(tmp_path / "ft" / "best")
    evaluated = json.loads(pnlm_cli("eval", tmp_path / "ft" / "best", "--data", small.path, "--split", "valid",
                                    "--json").stdout)
    assert evaluated["domains"]["small"]["nll"] == pytest.approx(min(val), rel=1e-5)
    assert best.method == "slm"


def test_eval_agrees_across_backends(tmp_path, store):
    assert pnlm_cli("pretrain", "--model", "tiny", "--data", store.path, "--backend", "torch", "--steps", 3,
                    "--out", tmp_path / "run").returncode == 0
    reports = [json.loads(pnlm_cli("eval", tmp_path / "run" / "latest", "--data", store.path, "--backend", b,
                                   "--json").stdout) for b in ("torch", "mlx")]
    assert reports[0]["macro_ppl"] == pytest.approx(reports[1]["macro_ppl"], rel=1e-3)


def test_pretrained_in_torch_fine_tuned_in_mlx_evaluates_alike(tmp_path, store):
    assert pnlm_cli("pretrain", "--model", "tiny", "--data", store.path, "--backend", "torch", "--steps", 4,
                    "--lr", 1e-3, "--out", tmp_path / "pre").returncode == 0
    result = pnlm_cli("finetune", tmp_path / "pre" / "latest", "--data", store.path, "--backend", "mlx", "--steps", 6,
                      "--lr", 1e-3, "--eval-every", 3, "--out", tmp_path / "ft", "--json")
    assert result.returncode == 0, result.stderr
    reports = {b: json.loads(pnlm_cli("eval", tmp_path / "ft" / "best", "--data", store.path, "--backend", b,
                                      "--json").stdout) for b in ("torch", "mlx")}
    assert reports["torch"]["macro_ppl"] == pytest.approx(reports["mlx"]["macro_ppl"], rel=1e-3)
    pretrained = json.loads(pnlm_cli("eval", tmp_path / "pre" / "latest", "--data", store.path, "--json").stdout)
    assert reports["torch"]["macro_ppl"] < pretrained["macro_ppl"]  # the MLX fine-tune changed the model for the better
