"""The Python API keeps the CLI's promises when a script calls it: a refused call leaves no folder and no
lock behind, and a finished one releases its run, so the next writer (a script or the CLI) is not refused."""

import subprocess
import sys

import pytest

import pnlm
from conftest import MICRO_MODEL, SAMPLE_DATA


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("api")
    pnlm.train_tokenizer([SAMPLE_DATA[2]], 512, root / "tok")
    pnlm.prepare([SAMPLE_DATA[2]], root / "tok", 32, root / "store")
    (root / "micro.toml").write_text(MICRO_MODEL)
    return root


def test_a_refused_call_leaves_no_folder_and_no_lock(inputs, tmp_path):
    out = tmp_path / "run"
    with pytest.raises(pnlm.PnlmError, match="needs --clusters"):
        pnlm.pretrain(inputs / "store", out, inputs / "micro.toml", method="pn", steps=2)
    assert not out.exists()
    summary = pnlm.pretrain(inputs / "store", out, inputs / "micro.toml", steps=2, batch_size=2)
    assert summary.steps == 2 and summary.checkpoint == out / "latest"


def test_a_finished_run_is_free_for_the_next_writer(inputs, tmp_path):
    out = tmp_path / "run"
    pnlm.pretrain(inputs / "store", out, inputs / "micro.toml", steps=2, batch_size=2, checkpoint_every=1)
    resumed = subprocess.run([sys.executable, "-m", "pnlm.cli", "pretrain", "--model", str(inputs / "micro.toml"),
                              "--data", str(inputs / "store"), "--steps", "3", "--batch-size", "2",
                              "--checkpoint-every", "1", "--out", str(out), "--resume"],
                             capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert not list(tmp_path.glob(".*.pnlm.lock"))  # output locks are gone with their writers too
