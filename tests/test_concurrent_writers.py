"""Two writers on one run: the first runs to its end untouched, the second is refused with one line naming
the holder; once the first is gone (even killed with -9), its lock is free."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import SAMPLE_DATA

PNLM = [sys.executable, "-m", "pnlm.cli"]
SMALL = "[model]\npreset = 'tiny'\nd_model = 32\nn_layers = 1\nn_heads = 2\nn_kv_heads = 1\nd_ff = 64\n"


def cli(*args):
    return subprocess.run([*PNLM, *map(str, args)], capture_output=True, text=True)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("writers")
    assert cli("data", "tokenizer", SAMPLE_DATA[2], "--vocab-size", 512, "--out", root / "tok").returncode == 0
    assert cli("data", "prepare", SAMPLE_DATA[2], "--tokenizer", root / "tok", "--context", 32,
               "--out", root / "store").returncode == 0
    (root / "small.toml").write_text(SMALL)
    return root


def pretrain_args(root, run, steps):
    return ["pretrain", "--model", root / "small.toml", "--data", root / "store", "--steps", steps, "--batch-size", 2,
            "--checkpoint-every", 50, "--out", run, "--resume"]


def start_first(root, run, steps):
    first = subprocess.Popen([*PNLM, *map(str, pretrain_args(root, run, steps))], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    while not (run / "metrics.jsonl").is_file():  # training has begun: the lock is held
        assert first.poll() is None, first.communicate()[1]
        time.sleep(0.05)
    return first


def test_a_second_writer_is_refused_and_the_first_runs_on(inputs, tmp_path):
    run = tmp_path / "run"
    first = start_first(inputs, run, steps=3000)  # seconds of training: the second comes while it runs
    second = cli(*pretrain_args(inputs, run, 3000))
    assert first.poll() is None, "the first writer should still be running"
    assert second.returncode == 2
    assert f"{run}: another pnlm process is writing this run (pid {first.pid} on " in second.stderr
    assert len(second.stderr.strip().splitlines()) == 1
    out, err = first.communicate(timeout=600)
    assert first.returncode == 0, err
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 3001))  # one writer's metrics, whole


def test_the_lock_of_a_killed_writer_is_taken_over(inputs, tmp_path):
    run = tmp_path / "run"
    first = start_first(inputs, run, steps=120)
    os.kill(first.pid, signal.SIGKILL)
    first.wait()
    resumed = cli(*pretrain_args(inputs, run, 120))
    assert resumed.returncode == 0, resumed.stderr


@pytest.mark.parametrize("command", [
    lambda inputs, out: ["data", "prepare", SAMPLE_DATA[2], "--tokenizer", inputs / "tok", "--context", 32],
    lambda inputs, out: ["data", "tokenizer", SAMPLE_DATA[2], "--vocab-size", 512],
    lambda inputs, out: ["init", "--model", inputs / "small.toml", "--tokenizer", inputs / "tok"],
], ids=["store", "tokenizer", "checkpoint"])
def test_a_second_writer_of_an_output_is_refused(inputs, tmp_path, command):
    """Outputs written whole (stores, clusters, tokenizers, checkpoints) are locked beside themselves, while
    their writer runs; here this test process is the first writer."""
    from pnlm.files.run_lock import lock_output, release_outputs

    out, lock = tmp_path / "out", tmp_path / ".out.pnlm.lock"
    lock_output(out)
    try:
        second = cli(*command(inputs, out), "--out", out)
    finally:
        release_outputs()
    assert second.returncode == 2, second.stderr
    assert f"{out}: another pnlm process is writing it (pid {os.getpid()} on " in second.stderr
    assert len(second.stderr.strip().splitlines()) == 1 and not out.exists()
    assert not lock.exists()
    done = cli(*command(inputs, out), "--out", out)
    assert done.returncode == 0, done.stderr
    assert out.is_dir() and not lock.exists()  # the writer's lock goes with it
