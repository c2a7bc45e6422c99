"""A model that cannot fit is refused before anything is allocated: one line with the estimate and the
memory free, no folder left behind. A model that fits is estimated within reason of what it really takes."""

import resource
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import cli_in_process as pnlm, micro_run_inputs
from pnlm.training.memory import available_bytes, training_estimate
from pnlm.model.spec import load_spec

# Inside the spec's bounds (115 billion parameters), about 430 GiB of float32 weights alone.
HUGE_MODEL = ("[model]\nvocab_size = 512\nd_model = 8192\nn_layers = 120\nn_heads = 64\nn_kv_heads = 8\n"
              "d_ff = 32768\ncontext = 1024\n")


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("memory")
    monkeypatch = pytest.MonkeyPatch()
    capsys = _NoCapture()
    tok, store, model = micro_run_inputs(root, capsys, monkeypatch)
    monkeypatch.undo()
    (root / "huge.toml").write_text(HUGE_MODEL)
    assert pnlm(capsys, pytest.MonkeyPatch(), "pretrain", "--model", model, "--data", store, "--steps", 1,
                "--batch-size", 2, "--out", root / "base")[0] == 0
    return root, tok, store


class _NoCapture:
    """What cli_in_process needs of capsys, for a module fixture (capsys is per test)."""

    def readouterr(self):
        return type("Captured", (), {"err": "", "out": ""})()


@pytest.mark.parametrize("command", [
    lambda root, tok, store: ["init", "--model", root / "huge.toml", "--tokenizer", tok],
    lambda root, tok, store: ["pretrain", "--model", root / "huge.toml", "--data", store, "--steps", 1],
    lambda root, tok, store: ["pretrain", "--model", "tiny", "--data", store, "--steps", 1, "--batch-size", 2**22],
    lambda root, tok, store: ["finetune", root / "base" / "latest", "--data", store, "--steps", 1,
                              "--batch-size", 2**22, "--backend", "torch"],
    lambda root, tok, store: ["distill", "--teacher", root / "base" / "latest", "--student", root / "base" / "latest",
                              "--data", store, "--steps", 1, "--batch-size", 2**22],
], ids=["init", "pretrain-model", "pretrain-batch", "finetune-batch", "distill-batch"])
def test_what_cannot_fit_is_refused_before_it_is_allocated(inputs, command, tmp_path, capsys, monkeypatch):
    root, tok, store = inputs
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    status, err = pnlm(capsys, monkeypatch, *command(root, tok, store), "--out", tmp_path / "out")
    assert status == 2 and "needs about" in err and "GiB free" in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "out").exists()  # the run folder it locked is gone with the refusal
    assert (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024 < 256 * 2**20


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="reads the peak memory from /proc")
def test_the_estimate_is_of_the_order_of_what_training_takes(inputs, tmp_path):
    """A 13M-parameter model on 8 windows of 32 tokens, in a fresh process: its peak memory less that of the
    interpreter with torch imported, against the estimate (from half to twice)."""
    root, tok, store = inputs
    model = root / "wide.toml"
    model.write_text("[model]\nvocab_size = 512\nd_model = 512\nn_layers = 4\nn_heads = 8\nn_kv_heads = 8\n"
                     "d_ff = 1536\ncontext = 32\n")
    estimate = training_estimate(load_spec(model), 8, 32).total
    # VmHWM: this process image's peak (ru_maxrss would carry the parent's peak across fork and exec).
    peak = "int(next(l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM')))"
    probe = (f"import sys, torch; from pnlm.cli.app import main; base = {peak}; sys.argv = sys.argv[1:]; code = 0\n"
             "try: main()\nexcept SystemExit as exc: code = exc.code\n"
             f"print(code, {peak} - base)")
    argv = ["pnlm", "pretrain", "--model", model, "--data", store, "--steps", 2, "--batch-size", 8, "--backend",
            "torch", "--out", tmp_path / "run"]
    result = subprocess.run([sys.executable, "-c", probe, *map(str, argv)], capture_output=True, text=True, check=True)
    code, grown = result.stdout.strip().splitlines()[-1].split()
    assert code in ("0", "None"), result.stderr
    measured = int(grown) * 1024
    assert estimate / 2 < measured < estimate * 2, (measured, estimate)
    assert available_bytes() is None or available_bytes() > 0
