"""Data parallelism: torchrun with 2 CPU processes (gloo) trains like one process on the same global batch,
through the prefetching loader and with gradient accumulation (2 micro-batches per rank); compiled too
(a long test: torch.compile costs ~30 s per process here)."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import LONG, SAMPLE_DATA, kill_after_first_checkpoint
from pnlm.checkpoints.checkpoint import load_checkpoint
from pnlm.data import iter_documents
from pnlm.data.prepare import prepare_store

TORCHRUN = shutil.which("torchrun", path=str(Path(sys.executable).parent))


@pytest.mark.skipif(TORCHRUN is None, reason="torchrun is not installed beside this python")
@pytest.mark.parametrize("sharding", [[], ["--fsdp"], pytest.param(["--compile"], marks=pytest.mark.long)],
                         ids=["ddp", "fsdp", "ddp-compiled"])
def test_two_processes_give_the_losses_of_one(tmp_path, tokenizer, sharding):
    store = prepare_store(iter(list(iter_documents(SAMPLE_DATA[:1]))), tokenizer, tmp_path / "store", context=64,
                          valid_fraction=0, test_fraction=0, workers=1)[0]
    common = ["pretrain", "--model", "tiny", "--data", str(store.path), "--backend", "torch", "--steps", "10",
              "--batch-size", "8", "--grad-accum", "2", "--lr", "1e-3", "--seed", "1", "--json"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one = subprocess.run([sys.executable, "-m", "pnlm.cli", *common, *sharding, "--out", str(tmp_path / "one")],
                         capture_output=True, text=True, env=env)
    assert one.returncode == 0, one.stderr
    two = subprocess.run([TORCHRUN, "--standalone", "--nproc_per_node", "2", "-m", "pnlm.cli", *common, *sharding,
                          "--checkpoint-every", "5", "--out", str(tmp_path / "two")],
                         capture_output=True, text=True, env=env, timeout=300)
    assert two.returncode == 0, two.stderr[-2000:]
    assert json.loads(two.stdout)["steps"] == 10, two.stdout + two.stderr[-2000:]  # one JSON object: only rank 0 reports

    def losses(run):
        return np.array([json.loads(line)["loss"] for line in (tmp_path / run / "metrics.jsonl").read_text().splitlines()])

    assert len(losses("one")) == len(losses("two")) == 10
    difference = np.abs(losses("one") - losses("two")).max()
    assert difference < 1e-5, (difference, losses("one"), losses("two"))
    # Adam amplifies last-bit gradient differences where gradients are near zero (see test_train_step.py),
    # so the final weights agree to a small fraction of the 10 steps' movement (at most 10 * lr = 1e-2).
    a, b = load_checkpoint(tmp_path / "one" / "latest").weights, load_checkpoint(tmp_path / "two" / "latest").weights
    assert max(np.abs(a[n] - b[n]).max() for n in a) < 1e-3

    if sharding and not LONG:
        return  # the kill and resume of the sharded and compiled runs: with the benchmarks (CI time: 4 torchrun jobs)
    # Kill -9 the whole torchrun job after its step-5 checkpoint and resume: the same last 5 losses.
    killed = tmp_path / "killed"
    command = [TORCHRUN, "--standalone", "--nproc_per_node", "2", "-m", "pnlm.cli", *common, *sharding,
               "--checkpoint-every", "5", "--out", killed]
    assert kill_after_first_checkpoint(command, killed) == 5  # OMP_NUM_THREADS=1 is set by conftest
    resumed = subprocess.run([TORCHRUN, "--standalone", "--nproc_per_node", "2", "-m", "pnlm.cli", *common, *sharding,
                              "--checkpoint-every", "5", "--out", str(killed), "--resume"],
                             capture_output=True, text=True, env=env, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert np.abs(losses("killed") - losses("two")).max() < 1e-6


EVALUATE = """
import json, sys
import numpy as np
from pnlm.backends import make_train_step
from pnlm.model.spec import PRESETS, OptimizerSpec
from pnlm.checkpoints.weights import init_weights

results = {}
for preset in ("tiny", "pn-tiny"):
    spec = PRESETS[preset]
    step = make_train_step("torch", spec, init_weights(spec, 0), OptimizerSpec())
    rng = np.random.default_rng(0)
    for rows in (1, 3, 8):  # 1 row over 2 ranks: one rank evaluates none and still takes part
        tokens = rng.integers(0, spec.vocab_size, (rows, 33))
        expert = rng.integers(0, spec.projection.k, rows) if spec.projection else None
        results[f"{preset}-{rows}"] = step.nll(tokens[:, :-1], tokens[:, 1:], expert=expert)
if step.is_main:
    with open(sys.argv[1], "w") as f:
        json.dump(results, f)
"""


@pytest.mark.skipif(TORCHRUN is None, reason="torchrun is not installed beside this python")
def test_evaluation_sharded_over_two_processes_gives_one_processs_figures(tmp_path):
    script = tmp_path / "evaluate.py"
    script.write_text(EVALUATE)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one = subprocess.run([sys.executable, str(script), str(tmp_path / "one.json")], capture_output=True, text=True,
                         env=env, timeout=300)
    assert one.returncode == 0, one.stderr[-2000:]
    two = subprocess.run([TORCHRUN, "--standalone", "--nproc_per_node", "2", str(script), str(tmp_path / "two.json")],
                         capture_output=True, text=True, env=env, timeout=300)
    assert two.returncode == 0, two.stderr[-2000:]
    alone, sharded = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("one", "two"))
    assert alone.keys() == sharded.keys()
    for key, (total, count) in alone.items():
        assert sharded[key][1] == count and abs(sharded[key][0] - total) < 1e-4 * max(1.0, abs(total)), key
