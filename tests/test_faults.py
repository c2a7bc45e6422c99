"""Fault injection: kill -9 at seeded random moments of `data prepare`, `data cluster`, `pretrain`,
`finetune` and `experiment run`, rerun (with --resume where there is one) until they finish, and
compare with an uninterrupted run: the same bytes where the work is deterministic (stores, labels,
weights, optimizer state, results.csv), the same losses in metrics.jsonl, and nothing half-written
left behind. Also: disk full during a save, and a loss that turns NaN.

CI kills each command PNLM_FAULT_KILLS times (default 2; `experiment run`, the slowest, once); the long run of docs/reliability.md sets
it to 50 and PNLM_FAULT_RECORD to a file that gets one JSON line per command.
"""

from __future__ import annotations

import json
import os
import random
import re
import resource
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from pnlm.checkpoints.checkpoint import verify_checkpoint
from pnlm.data.store import TokenStore

from conftest import FREE_THREADS, micro_plan

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "pnlm" / "sample_data"
HAMLET = SAMPLES / "shakespeare_hamlet.jsonl.gz"
BIERCE = SAMPLES / "bierce_devils_dictionary.jsonl.gz"
PNLM = [sys.executable, "-m", "pnlm.cli"]
KILLS = int(os.environ.get("PNLM_FAULT_KILLS", "2"))
RECORD = os.environ.get("PNLM_FAULT_RECORD")
SEED = int(os.environ.get("PNLM_FAULT_SEED", "0"))
SMALL_MODEL = """[model]
preset = "tiny"
d_model = 64
n_layers = 2
n_heads = 4
n_kv_heads = 2
d_ff = 176
"""

pytestmark = pytest.mark.slow


def pnlm(*args: object) -> subprocess.CompletedProcess:
    result = subprocess.run([*PNLM, *map(str, args)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    return result


def leftovers(*roots: Path) -> list[Path]:
    """Hidden temporaries of a write (`.NAME.tmp-*`, `.NAME.old-*`) anywhere under roots and beside them."""
    found = []
    for root in roots:
        for folder in [root.parent, *([root, *root.rglob("*")] if root.is_dir() else [])]:
            if folder.is_dir():
                found += [p for p in folder.iterdir() if p.name.startswith(".") and (".tmp-" in p.name or ".old-" in p.name)]
    return sorted(set(found))


def tree(root: Path, ignore: tuple[str, ...] = ()) -> dict[str, bytes]:
    """Every file under root by relative path, with its bytes (the names in ignore left out)."""
    if root.is_file():
        return {root.name: root.read_bytes()}
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.name not in ignore}


def losses(run: Path) -> list[tuple]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [(r["step"], r["loss"], r.get("val_loss")) for r in map(json.loads, lines)]


@dataclass
class Target:
    """A command under test: how to run it first and after a kill, what it writes, what must hold."""

    name: str
    first: list
    again: list
    outputs: list[Path]
    reset: Callable[[], None]
    after_kill: Callable[[], None]
    ignore: tuple[str, ...] = ()
    compare_losses: bool = False
    timeout: float = 600


@dataclass
class Tally:
    name: str
    kills: int = 0
    completions: int = 0
    starts: int = 0
    reference_seconds: float = 0.0
    kill_seconds: list[float] = field(default_factory=list)
    found_after_kill: dict[str, int] = field(default_factory=dict)  # what each kill left: see state_after_kill
    wall_seconds: float = 0.0


def snapshot(target: Target) -> list[dict[str, bytes]]:
    return [tree(path, target.ignore) for path in target.outputs]


def run_killed_at(argv: list, seconds: float, timeout: float) -> bool:
    """Run argv; SIGKILL its whole process group after `seconds`. True if it was killed, False if it finished."""
    child = subprocess.Popen([str(a) for a in argv], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                             start_new_session=True)
    try:
        _, err = child.communicate(timeout=seconds)
    except subprocess.TimeoutExpired:
        os.killpg(child.pid, signal.SIGKILL)
        child.communicate()
        return True
    assert child.returncode == 0, err.decode()[-2000:]
    return False


def state_after_kill(target: Target) -> str:
    """Where a kill landed, told by what it left: temporaries of a write, outputs, or nothing yet."""
    if leftovers(*target.outputs):
        return "in a write (temporaries left)"
    if any(path.exists() for path in target.outputs):
        return "between writes"
    return "before the first write"


def inject(target: Target, kills: int, seed: int) -> Tally:
    """Reference run, then kill -9 at random moments until `kills` kills; every completion must equal the reference."""
    tally = Tally(target.name)
    begin = time.perf_counter()
    target.reset()
    start = time.perf_counter()
    assert not run_killed_at(target.first, target.timeout, target.timeout)
    tally.reference_seconds = time.perf_counter() - start
    reference = snapshot(target)
    reference_losses = [losses(path) for path in target.outputs] if target.compare_losses else None
    rng = random.Random(seed)

    def check_complete() -> None:
        assert snapshot(target) == reference, f"{target.name}: outputs differ from the uninterrupted run's"
        if reference_losses is not None:
            assert [losses(path) for path in target.outputs] == reference_losses
        assert not leftovers(*target.outputs), leftovers(*target.outputs)
        tally.completions += 1

    target.reset()
    argv = target.first
    while tally.kills < kills:
        moment = rng.uniform(0.0, tally.reference_seconds)
        tally.starts += 1
        if run_killed_at(argv, moment, target.timeout):
            tally.kills += 1
            tally.kill_seconds.append(round(moment, 3))
            state = state_after_kill(target)
            tally.found_after_kill[state] = tally.found_after_kill.get(state, 0) + 1
            target.after_kill()
            argv = target.again
        else:
            check_complete()
            target.reset()
            argv = target.first
    if argv is target.again:  # the last run was killed: finish it
        tally.starts += 1
        assert not run_killed_at(argv, target.timeout, target.timeout)
        check_complete()
    tally.wall_seconds = time.perf_counter() - begin
    if RECORD:
        with open(RECORD, "a") as f:
            f.write(json.dumps({**tally.__dict__, "seed": seed}) + "\n")
    return tally


# --- the commands ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("faults")
    pnlm("data", "tokenizer", HAMLET, BIERCE, "--vocab-size", 512, "--out", root / "tokenizer")
    pnlm("data", "prepare", HAMLET, "--tokenizer", root / "tokenizer", "--context", 64, "--valid-fraction", 0.1,
         "--test-fraction", 0.1, "--out", root / "hamlet")
    (root / "small.toml").write_text(SMALL_MODEL)
    pnlm("pretrain", "--method", "slm", "--model", root / "small.toml", "--data", root / "hamlet", "--backend",
         "torch", "--steps", 10, "--batch-size", 8, "--out", root / "base")
    return root


def _reset(*paths: Path, restore: tuple[Path, Path] | None = None) -> Callable[[], None]:
    def reset() -> None:
        for path in paths:
            if path.is_dir():
                shutil.rmtree(path)
            for stale in leftovers(path):
                shutil.rmtree(stale) if stale.is_dir() else stale.unlink()
        if restore is not None:
            shutil.copytree(*restore)
    return reset


def _store_whole_or_absent(path: Path) -> Callable[[], None]:
    def check() -> None:
        if path.exists():
            TokenStore(path)  # verifies every file's sha256
    return check


def _run_folders_verify(run: Path) -> Callable[[], None]:
    def check() -> None:
        for folder in ("latest", "best"):
            if (run / folder).exists():
                verify_checkpoint(run / folder)
    return check


def test_prepare_survives_kill_9(workspace):
    out = workspace / "prepared"
    argv = [*PNLM, "data", "prepare", HAMLET, BIERCE, "--tokenizer", workspace / "tokenizer", "--context", 64,
            "--workers", 1, "--out", out]
    # Rerun with --overwrite: a kill after the rename leaves a whole store, which a plain rerun refuses to replace.
    target = Target("data prepare", argv, [*argv, "--overwrite"], [out], _reset(out), _store_whole_or_absent(out))
    assert inject(target, KILLS, SEED).kills == KILLS


@pytest.mark.long  # 45 s; tests/test_cluster.py kills `data cluster` mid-way in every `make test`
def test_cluster_survives_kill_9(workspace):
    store, clusters, pristine = workspace / "to-cluster", workspace / "clusters", workspace / "hamlet"
    argv = [*PNLM, "data", "cluster", store, "--k", 4, "--out", clusters, "--batch-size", 16]

    def after_kill() -> None:
        if clusters.exists():
            assert (clusters / "clusters.json").is_file() and (clusters / "centroids.npy").is_file()
        opened = TokenStore(store)
        for split in opened.splits:  # labels are whole and vouched for by clusters.json, or absent
            ids = opened.cluster_ids(split)
            assert ids is None or len(ids) == opened.num_windows(split)

    target = Target("data cluster", argv, [*argv, "--overwrite"], [clusters, store],
                    _reset(clusters, store, restore=(pristine, store)), after_kill)
    assert inject(target, KILLS, SEED + 1).kills == KILLS


def _training_target(name: str, argv: list, run: Path) -> Target:
    return Target(name, argv, [*argv, "--resume"], [run], _reset(run), _run_folders_verify(run),
                  ignore=("trainer.json", "manifest.json", "metrics.jsonl", ".pnlm.lock"), compare_losses=True)


def test_pretrain_survives_kill_9(workspace):
    run = workspace / "pretrain-run"
    argv = [*PNLM, "pretrain", "--method", "slm", "--model", workspace / "small.toml", "--data", workspace / "hamlet",
            "--backend", "torch", "--steps", 40, "--batch-size", 8, "--lr", 3e-3, "--checkpoint-every", 4,
            "--eval-every", 8, "--out", run]
    assert inject(_training_target("pretrain", argv, run), KILLS, SEED + 2).kills == KILLS


def test_finetune_survives_kill_9(workspace):
    run = workspace / "finetune-run"
    argv = [*PNLM, "finetune", workspace / "base" / "latest", "--data", workspace / "hamlet", "--backend", "torch",
            "--steps", 40, "--batch-size", 8, "--lr", 1e-3, "--checkpoint-every", 4, "--eval-every", 8, "--out", run]
    assert inject(_training_target("finetune", argv, run), KILLS, SEED + 3).kills == KILLS


def test_experiment_run_survives_kill_9(workspace, tiny_embedder):
    plan, out = workspace / "micro.toml", workspace / "experiment"
    plan.write_text(micro_plan(tiny_embedder))
    # Both cores when free (the plan is torch only: no MLX to collapse beside another thread; this process waits).
    argv = ["env", f"OMP_NUM_THREADS={FREE_THREADS}", f"MKL_NUM_THREADS={FREE_THREADS}", *PNLM, "experiment", "run",
            plan, "--out", out]

    def after_kill() -> None:
        for record in [*out.glob("work/*.json"), *out.glob("cells/*.json")]:
            json.loads(record.read_text())  # records are whole

    target = Target("experiment run", argv, argv, [out / "results.csv", out / "domains.csv"],
                    _reset(out), after_kill)
    kills = int(os.environ.get("PNLM_FAULT_KILLS", "1"))  # one in CI (time); a fault campaign sets more
    assert inject(target, kills, SEED + 4).kills == kills


# --- disk full, NaN ----------------------------------------------------------------------------------

def _limit_file_size(limit: int) -> Callable[[], None]:
    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


def test_disk_full_during_a_save_keeps_the_previous_checkpoint(workspace):
    run = workspace / "full-disk"
    argv = [*PNLM, "pretrain", "--method", "slm", "--model", workspace / "small.toml", "--data", workspace / "hamlet",
            "--backend", "torch", "--batch-size", 8, "--checkpoint-every", 4, "--out", run]
    pnlm(*argv[3:], "--steps", 4)
    before = tree(run / "latest")
    weights = (run / "latest" / "model.safetensors").stat().st_size
    result = subprocess.run([str(a) for a in [*argv, "--steps", 8, "--resume"]], capture_output=True, text=True,
                            preexec_fn=_limit_file_size(weights // 2))
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.strip() and not line.startswith("step ")]
    assert len(lines) == 1 and "cannot be written" in lines[0] and "intact" in lines[0], result.stderr
    assert "Traceback" not in result.stderr
    verify_checkpoint(run / "latest")
    assert tree(run / "latest") == before and not leftovers(run)


@pytest.fixture
def small_tmpfs(tmp_path):
    """A 4 MB tmpfs (needs the right to mount: root in the CI container); skipped where there is none."""
    mount = tmp_path / "small-disk"
    mount.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)], capture_output=True)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {made.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", str(mount)], check=True)


def test_disk_full_on_a_small_tmpfs_keeps_the_previous_checkpoint(workspace, small_tmpfs):
    run = small_tmpfs / "run"
    argv = ["pretrain", "--method", "slm", "--model", workspace / "small.toml", "--data", workspace / "hamlet",
            "--backend", "torch", "--batch-size", 8, "--checkpoint-every", 4, "--warmup", 0, "--out", run]
    pnlm(*argv, "--steps", 4)
    before = tree(run / "latest")
    free = shutil.disk_usage(small_tmpfs).free
    (small_tmpfs / "filler").write_bytes(b"\0" * (free - 64 * 1024))  # what is left cannot hold a checkpoint
    result = subprocess.run([str(a) for a in [*PNLM, *argv, "--steps", 8, "--resume"]], capture_output=True, text=True)
    lines = [line for line in result.stderr.splitlines() if line.strip() and not line.startswith("step ")]
    assert result.returncode != 0 and len(lines) == 1, result.stderr
    assert "No space left on device" in lines[0] and "intact" in lines[0] and str(run) in lines[0]
    verify_checkpoint(run / "latest")
    assert tree(run / "latest") == before and not leftovers(run)
    (small_tmpfs / "filler").unlink()
    pnlm(*argv, "--steps", 8, "--resume")  # with room again, the run finishes
    assert json.loads((run / "latest" / "trainer.json").read_text())["step"] == 8


def test_a_loss_that_turns_nan_stops_at_its_step_and_keeps_the_last_checkpoint(workspace):
    run = workspace / "nan"
    result = subprocess.run([str(a) for a in [
        *PNLM, "pretrain", "--method", "slm", "--model", workspace / "small.toml", "--data", workspace / "hamlet",
        "--backend", "torch", "--steps", 200, "--batch-size", 8, "--lr", 1e30, "--warmup", 0,
        "--checkpoint-every", 1, "--out", run]], capture_output=True, text=True)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    message = result.stderr.strip()
    assert "loss is" in message and "at step" in message and str(run / "latest") in message
    step = int(re.search(r"at step (\d+)\b", message).group(1))
    trainer = json.loads((run / "latest" / "trainer.json").read_text())
    assert trainer["step"] == step - 1
    verify_checkpoint(run / "latest")
    assert np.isfinite(losses(run)[-1][1])
