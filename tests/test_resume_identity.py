"""--resume continues the run it names and no other: another token store, tokenizer, model or method is
refused with one line naming what differs, before any weight is loaded."""

import sys

import pytest

from conftest import MICRO_MODEL as SMALL, SAMPLE_DATA, cli_in_process as pnlm
from pnlm.cli.app import main


@pytest.fixture(scope="module")
def started(tmp_path_factory):
    """A run stopped at step 2 of 4, and the inputs to resume it with (right and wrong)."""
    root = tmp_path_factory.mktemp("resume")
    monkeypatch = pytest.MonkeyPatch()

    def cli(*args):
        monkeypatch.setattr(sys, "argv", ["pnlm", *map(str, args)])
        try:
            main()
        except SystemExit as exc:
            assert exc.code == 0, args

    hamlet, austen = SAMPLE_DATA[2], SAMPLE_DATA[0]
    cli("data", "tokenizer", hamlet, "--vocab-size", 512, "--out", root / "tok")
    cli("data", "tokenizer", austen, "--vocab-size", 512, "--out", root / "tok-other")
    cli("data", "prepare", hamlet, "--tokenizer", root / "tok", "--context", 32, "--out", root / "store")
    cli("data", "prepare", austen, "--tokenizer", root / "tok", "--context", 32, "--out", root / "store-other-data")
    cli("data", "prepare", hamlet, "--tokenizer", root / "tok-other", "--context", 32, "--out", root / "store-other-tok")
    (root / "small.toml").write_text(SMALL)
    (root / "rope.toml").write_text(SMALL + "rope_theta = 500000.0\n")
    (root / "wide.toml").write_text(SMALL.replace("d_ff = 64", "d_ff = 96"))
    cli("pretrain", "--model", root / "small.toml", "--data", root / "store", "--steps", 2, "--batch-size", 2,
        "--checkpoint-every", 1, "--out", root / "run")
    monkeypatch.undo()
    return root


def resume_args(root, model="small.toml", store="store", method="slm", steps=4):
    return ["pretrain", "--method", method, "--model", root / model, "--data", root / store, "--steps", steps,
            "--batch-size", 2, "--checkpoint-every", 1, "--out", root / "run", "--resume"]


@pytest.mark.parametrize("change, fragment", [
    ({"store": "store-other-data"}, "was started with another token store (its data)"),
    ({"store": "store-other-tok"}, "was started with another tokenizer"),
    ({"model": "rope.toml"}, "was started with model rope_theta = 10000.0, now 500000.0"),
    ({"model": "wide.toml"}, "was started with model d_ff = 64, now 96"),
    ({"method": "llm"}, "was started with another method ('slm', now 'llm')"),
])
def test_resume_refuses_a_run_it_did_not_start(started, change, fragment, capsys, monkeypatch):
    status, err = pnlm(capsys, monkeypatch, *resume_args(started, **change))
    assert status == 2, err
    assert f"{started / 'run' / 'latest'}: {fragment}" in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_resume_continues_its_own_run(started, capsys, monkeypatch):
    status, err = pnlm(capsys, monkeypatch, *resume_args(started), "--json")
    assert status == 0, err


@pytest.mark.parametrize("command, role, label", [
    (["finetune", "--lora-rank", 2], None, "base model (its weights)"),
    (["finetune"], None, "base model (its weights)"),
    (["distill", "--student", "base-a/latest"], "--teacher", "teacher (its weights)"),
])
def test_resume_refuses_another_base_or_teacher(started, tmp_path, command, role, label, capsys, monkeypatch):
    """A fine-tune's base and a student's teacher are read at every step: another checkpoint of the same
    shape (other weights) is another run."""
    for name, seed in (("base-a", 0), ("base-b", 1)):
        if not (started / name).exists():
            assert pnlm(capsys, monkeypatch, "pretrain", "--model", started / "small.toml", "--data",
                        started / "store", "--steps", 1, "--batch-size", 2, "--seed", seed,
                        "--out", started / name)[0] == 0
    command = [started / part if isinstance(part, str) and part.startswith("base-") else part for part in command]

    def args(base, steps):
        source = [role, base] if role else [base]
        return [command[0], *source, *command[1:], "--data", started / "store", "--steps", steps, "--batch-size", 2,
                "--eval-every", 0, "--no-early-stop", "--checkpoint-every", 1, "--out", tmp_path / "run",
                "--resume"]

    status, err = pnlm(capsys, monkeypatch, *args(started / "base-a" / "latest", 2))
    assert status == 0, err
    status, err = pnlm(capsys, monkeypatch, *args(started / "base-b" / "latest", 3))
    assert status == 2 and f"{tmp_path / 'run' / 'latest'}: was started with another {label}" in err, err
    assert len(err.strip().splitlines()) == 1
    status, err = pnlm(capsys, monkeypatch, *args(started / "base-a" / "latest", 3))
    assert status == 0, err
