"""What a training run tells whoever watches it: a plain line per log step and per evaluation in a log file (with
peak memory, no path broken), TensorBoard events with metrics.jsonl's figures, and --config FILE.toml giving the
same run as the same flags."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

import pnlm
from conftest import MICRO_MODEL, SAMPLE_DATA

PNLM = [sys.executable, "-m", "pnlm.cli"]
ROOT = Path(__file__).resolve().parents[1]
SAME_RUN = ("step", "loss", "lr", "tokens", "val_loss", "val_ppl", "flops")  # what does not depend on the clock


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("logs")
    tokenizer = pnlm.train_tokenizer(SAMPLE_DATA[2:3], 512, root / "tok").out
    pnlm.prepare(SAMPLE_DATA[2:3], tokenizer, 32, root / "store", valid_fraction=0.1, test_fraction=0.0, workers=1)
    (root / "micro.toml").write_text(MICRO_MODEL)
    return root


def flags(inputs):
    return {"model": str(inputs / "micro.toml"), "data": str(inputs / "store"), "backend": "torch", "steps": 6,
            "batch-size": 4, "lr": 1e-3, "eval-every": 3, "log-every": 2, "seed": 3}


def pretrain(*args, stderr=subprocess.PIPE):
    return subprocess.run([*PNLM, "pretrain", *map(str, args)], stdout=subprocess.PIPE, stderr=stderr, text=True)


def records(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_a_log_file_gets_a_line_per_log_step_and_evaluation_and_tensorboard_the_same_losses(inputs, tmp_path):
    run = tmp_path / ("a-run-folder-with-a-name-long-enough-that-a-line-holding-it-is-wider-than-any-terminal" * 2)
    argv = [item for key, value in flags(inputs).items() for item in (f"--{key}", value)]
    with open(tmp_path / "log.txt", "w") as log:  # not a terminal
        result = pretrain(*argv, "--out", run, "--log-to", "tensorboard", stderr=log)
    text = (tmp_path / "log.txt").read_text()
    assert result.returncode == 0, text
    metrics = records(run)
    assert [r["step"] for r in metrics] == [2, 3, 4, 6]  # log steps, and the evaluations at 3 and 6
    lines = [line for line in text.splitlines() if line.startswith("step ")]
    assert len(lines) == len(metrics)
    for line, record in zip(lines, metrics):
        assert line.startswith(f"step {record['step']}/6") and f"loss {record['loss']:.4f}" in line
        assert "peak host" in line and "MiB" in line and "tokens/s" in line and "eta " in line
        assert ("val_loss" in line) == ("val_loss" in record)
        assert record["peak_host_mib"] > 10
    summary = [line for line in text.splitlines() if "resumable checkpoint in" in line]
    assert len(summary) == 1 and f"{run / 'latest'}; peak memory: host" in summary[0]  # the path whole, on one line

    same_in_tensorboard(run, metrics)
    # A resumed run's TensorBoard is its metrics.jsonl again (written anew from it at the first new record).
    resumed = pretrain(*argv, "--steps", 8, "--out", run, "--log-to", "tensorboard", "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert [r["step"] for r in records(run)] == [2, 3, 4, 6, 8]
    same_in_tensorboard(run, records(run))


def same_in_tensorboard(run, metrics):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    for tag in ("loss", "val_loss", "lr", "peak_host_mib"):
        logged = [(r["step"], r[tag]) for r in metrics if tag in r]
        read = [(e.step, e.value) for e in events.Scalars(tag)]
        assert [s for s, _ in read] == [s for s, _ in logged]
        assert all(abs(a - b) <= 1e-6 * max(1.0, abs(b)) for (_, a), (_, b) in zip(read, logged))  # float32


def test_a_config_file_gives_the_run_its_flags_give_and_flags_override_it(inputs, tmp_path):
    by_flags = tmp_path / "by-flags"
    argv = [item for key, value in flags(inputs).items() for item in (f"--{key}", value)]
    assert pretrain(*argv, "--out", by_flags).returncode == 0
    config = tmp_path / "pretrain.toml"
    config.write_text("\n".join(f"{key.replace('-', '_') if key == 'batch-size' else key} = {json.dumps(value)}"
                                for key, value in flags(inputs).items()) + "\n")
    by_file = tmp_path / "by-file"
    result = pretrain("--config", config, "--out", by_file)
    assert result.returncode == 0, result.stderr
    same = [[{k: r[k] for k in SAME_RUN if k in r} for r in records(run)] for run in (by_flags, by_file)]
    assert same[0] == same[1] and len(same[0]) == 4

    shorter = tmp_path / "shorter"
    assert pretrain("--config", config, "--steps", 4, "--out", shorter).returncode == 0
    assert records(shorter)[-1]["step"] == 4
    config.write_text(config.read_text() + "batch_sise = 2\n")
    wrong = pretrain("--config", config, "--out", tmp_path / "wrong")
    assert wrong.returncode == 2 and len(wrong.stderr.strip().splitlines()) == 1
    assert str(config) in wrong.stderr and "batch_sise" in wrong.stderr and not (tmp_path / "wrong").exists()


def test_the_example_config_files_hold_only_their_commands_flags():
    import typer.main

    from pnlm.cli.app import app
    from pnlm.cli.config_file import read_config

    commands = typer.main.get_command(app).commands
    examples = sorted((ROOT / "examples" / "configs").glob("*.toml"))
    assert {p.stem.split("-")[0] for p in examples} == {"pretrain", "finetune", "distill"}
    methods = {read_config(p, commands["pretrain"])["method"] for p in examples if p.stem.startswith("pretrain")}
    assert methods == {"slm", "llm", "pn", "mix", "is"}
    for path in examples:
        assert read_config(path, commands[path.stem.split("-")[0]])
