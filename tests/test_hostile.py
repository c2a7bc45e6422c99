"""Reliability III: what a hostile user tried, class by class. Each is refused with one line naming the value
or the file and what was expected, exit status 2, and nothing that pnlm did not write is touched; or, where
the input is a valid one, it gets the right result."""

from __future__ import annotations

import gzip
import json
import math
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import SAMPLE_DATA

import pnlm
from pnlm.errors import PnlmError
from pnlm.files.run_lock import lock_output, release_outputs

PNLM = [sys.executable, "-m", "pnlm.cli"]
HAMLET = next(p for p in SAMPLE_DATA if "hamlet" in p)


def cli(*args, env=None, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run([*PNLM, *map(str, args)], capture_output=True, text=True, env=env, timeout=timeout)


def refused(result: subprocess.CompletedProcess, fragment: str) -> None:
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith("error:") and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert fragment in lines[0], lines[0]


def tree(root: Path) -> dict[str, bytes]:
    if root.is_file():
        return {root.name: root.read_bytes()}
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def work(tmp_path_factory, tokenizer):
    root = tmp_path_factory.mktemp("hostile")
    for context in (64, 512):
        pnlm.prepare([HAMLET], tokenizer.path.parent, context, root / f"store{context}")
    assert cli("pretrain", "--model", "tiny", "--data", root / "store64", "--backend", "torch", "--steps", 4,
               "--batch-size", 4, "--checkpoint-every", 2, "--out", root / "run").returncode == 0
    assert cli("finetune", root / "run" / "latest", "--data", root / "store64", "--backend", "torch", "--lora-rank", 2,
               "--steps", 2, "--batch-size", 4, "--eval-every", 0, "--no-early-stop", "--out", root / "lora"
               ).returncode == 0
    return root


# --- 1, 2: no save, no --out replaces what pnlm did not write, nor a run's own checkpoint ---------------------

def test_save_never_replaces_a_users_folder_a_file_or_a_runs_checkpoint(work, tmp_path):
    model = pnlm.load(work / "run" / "latest", backend="torch")
    folder = tmp_path / "my-folder"
    (folder / "sub").mkdir(parents=True)
    (folder / "notes.txt").write_text("mine")
    (folder / "sub" / "data.bin").write_bytes(b"\0\1\2")
    a_file = tmp_path / "a-file"
    a_file.write_text("also mine")
    before = {path: tree(path) for path in (folder, a_file, work / "run")}
    for target, overwrite, fragment in ((folder, False, "pnlm did not write"), (folder, True, "pnlm did not write"),
                                        (a_file, True, "a file, not a folder"),
                                        (work / "run" / "latest", True, "is the checkpoint of the training run")):
        with pytest.raises(PnlmError, match=fragment):
            model.save(target, overwrite=overwrite)
    assert {path: tree(path) for path in before} == before
    model.save(tmp_path / "copy")
    with pytest.raises(PnlmError, match="pass --overwrite"):
        model.save(tmp_path / "copy")
    assert model.save(tmp_path / "copy", overwrite=True) == tmp_path / "copy"


@pytest.mark.parametrize("command", ["fuse", "init"])
def test_no_output_replaces_a_runs_own_checkpoint(work, tokenizer, command):
    before = tree(work / "run")
    for folder in ("latest", "best") if (work / "run" / "best").exists() else ("latest",):
        args = {"fuse": ["fuse", work / "lora" / "latest"],
                "init": ["init", "--model", "tiny", "--tokenizer", tokenizer.path.parent]}[command]
        refused(cli(*args, "--out", work / "run" / folder, "--overwrite"), "is the checkpoint of the training run")
    assert tree(work / "run") == before
    resumed = cli("pretrain", "--model", "tiny", "--data", work / "store64", "--backend", "torch", "--steps", 6,
                  "--batch-size", 4, "--checkpoint-every", 2, "--out", work / "run", "--resume", "--json")
    assert resumed.returncode == 0, resumed.stderr[-2000:]


# --- 3, 4, 5: data preparation: dead workers, documents that expand, hostile HTML --------------------------

def children(pid: int) -> list[tuple[int, str]]:
    found = []
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            ppid = next(int(line.split()[1]) for line in status.read_text().splitlines() if line.startswith("PPid:"))
            command = (status.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, StopIteration, ValueError):
            continue
        if ppid == pid:
            found.append((int(status.parent.name), command))
    return found


def many_documents(path: Path, count: int = 40000) -> Path:
    with gzip.open(path, "wt") as f:
        for i in range(count):
            f.write(json.dumps({"text": f"Document {i}: " + "the quick brown fox jumps over the lazy dog " * 20}) + "\n")
    return path


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="finds the worker through /proc")
@pytest.mark.parametrize("stop", ["kill -9 a worker", "SIGTERM the command", "Ctrl-C"])
def test_prepare_sees_a_dead_worker_at_once_and_leaves_no_worker_behind(tokenizer, tmp_path, stop):
    corpus = many_documents(tmp_path / "many.jsonl.gz")
    child = subprocess.Popen([*PNLM, "data", "prepare", str(corpus), "--tokenizer", str(tokenizer.path.parent),
                              "--context", "64", "--workers", "2", "--out", str(tmp_path / "store")],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline, workers = time.monotonic() + 60, []
    while len(workers) < 2 and time.monotonic() < deadline:
        assert child.poll() is None, child.communicate()[1][-2000:]
        workers = [pid for pid, command in children(child.pid) if "spawn_main" in command]
        time.sleep(0.05)
    assert len(workers) == 2, "the workers never started"
    time.sleep(0.5)  # at work
    stopped = time.monotonic()
    if stop == "kill -9 a worker":
        os.kill(workers[0], signal.SIGKILL)
    elif stop == "SIGTERM the command":
        os.kill(child.pid, signal.SIGTERM)
    else:
        os.killpg(child.pid, signal.SIGINT)  # what a terminal sends the whole group
    _, err = child.communicate(timeout=30)
    assert child.returncode != 0 and time.monotonic() - stopped < 10
    if stop == "kill -9 a worker":
        refused(subprocess.CompletedProcess([], child.returncode, "", err), "a worker tokenizing documents died")
    assert "Traceback" not in err, err[-3000:]
    time.sleep(1.5)  # a worker whose parent is gone leaves within a second
    assert not [pid for pid in workers if Path(f"/proc/{pid}").exists()
                and "spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")]
    assert not (tmp_path / "store").exists()


def peak_child_mib(before: int) -> float:
    return (resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss - before) / 1024


def test_documents_that_expand_to_gigabytes_are_refused_quickly_in_bounded_memory(tokenizer, tmp_path):
    zeros = tmp_path / "zeros.txt.gz"
    with gzip.open(zeros, "wb", compresslevel=1) as f:  # 256 MiB of NULs in about 1 MB
        block = bytes(1 << 20)
        for _ in range(256):
            f.write(block)
    records = tmp_path / "records.jsonl.gz"
    with gzip.open(records, "wt") as f:
        f.write(json.dumps({"text": "a short one"}) + "\n")
        for _ in range(3):
            f.write(json.dumps({"text": "word " * 4_000_000}) + "\n")  # 20 MB each
    for path, fragment in ((zeros, "the most pnlm reads as one document"), (records, "records.jsonl.gz:2: a document")):
        started = time.monotonic()
        refused(cli("data", "prepare", path, "--tokenizer", tokenizer.path.parent, "--context", 64,
                    "--out", tmp_path / "out"), fragment)
        assert time.monotonic() - started < 60 and not (tmp_path / "out").exists()
    skipped = cli("data", "prepare", records, "--tokenizer", tokenizer.path.parent, "--context", 64, "--skip-bad",
                  "--json", "--out", tmp_path / "out")
    assert skipped.returncode == 0, skipped.stderr[-2000:]
    assert json.loads(skipped.stdout)["bad_records_skipped"] == 3


def test_hostile_web_pages_are_refused_by_name(tokenizer, tmp_path):
    pages = tmp_path / "pages"
    pages.mkdir()
    with gzip.open(pages / "huge.html.gz", "wt") as f:  # 6 MB of page in a few KB
        f.write("<html><body><article>" + "<p>Many words about nothing at all here.</p>\n" * 140_000
                + "</article></body></html>")
    (pages / "nested.html").write_text("<html><body>" + "<div>" * 400 + "<p>deep text</p>" * 50 + "</div>" * 400
                                       + "</body></html>")
    (pages / "good.html").write_text("<html><body><article><p>" + "A fine page about herons and marshes. " * 30
                                     + "</p></article></body></html>")
    refused(cli("data", "prepare", pages / "huge.html.gz", "--tokenizer", tokenizer.path.parent, "--context", 64,
                "--out", tmp_path / "out"), "huge.html.gz: a page of more than 4,194,304 bytes")
    refused(cli("data", "prepare", pages / "nested.html", "--tokenizer", tokenizer.path.parent, "--context", 64,
                "--out", tmp_path / "out"), "nested.html: elements nested more than 256 deep")
    result = cli("data", "prepare", pages, "--tokenizer", tokenizer.path.parent, "--context", 64, "--skip-bad",
                 "--json", "--out", tmp_path / "out")
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout)
    assert report["documents_by_type"] == {"html": 1} and len(report["bad_files_skipped"]) == 2


# --- 6: windows longer than the model's context -----------------------------------------------------------

@pytest.mark.parametrize("backend", ["torch", "mlx"])
def test_a_store_of_longer_windows_than_the_model_knows_is_refused(work, backend, tmp_path):
    for args in (["eval", work / "run" / "latest", "--data", work / "store512"],
                 ["finetune", work / "run" / "latest", "--data", work / "store512", "--steps", 2,
                  "--out", tmp_path / "ft"]):
        refused(cli(*args, "--backend", backend), "windows of 512 tokens exceed the context of")
    assert not (tmp_path / "ft").exists()


# --- 7, 8: plans, configs and flags: one check of every value -------------------------------------------

PLAN = """name = "p"
methods = ["slm"]
[data]
generic = ["{hamlet}"]
vocab_size = 512
context = 64
clusters = 2
domain_tokens = [3000]
[data.domains]
hamlet = ["{hamlet}"]
[models]
slm = "tiny"
[pretrain]
budgets = [4]
lr = 2e-3
[finetune]
steps = 2
"""


@pytest.mark.parametrize("edit, fragment", [
    (("[finetune]\nsteps = 2", "[finetune]\nstep = 2"), "unknown key [finetune] 'step' (did you mean 'steps'?)"),
    (("lr = 2e-3", "lr = 2e-3\nbatch-size = 8"), "unknown key [pretrain] 'batch-size' (did you mean 'batch_size'?)"),
    (("[pretrain]", "[pretrian]"), "unknown key 'pretrian' (did you mean 'pretrain'?)"),
    (("lr = 2e-3", "lr = nan"), "lr: expected a finite number"),
    (("budgets = [4]", "budgets = [4]\nbatch_size = inf"), "batch_size: expected a int"),
])
def test_a_plan_with_a_wrong_value_is_refused_before_anything_runs(tmp_path, edit, fragment):
    plan = tmp_path / "plan.toml"
    plan.write_text(PLAN.format(hamlet=HAMLET).replace(*edit))
    refused(cli("experiment", "run", plan, "--out", tmp_path / "exp"), fragment)
    assert not (tmp_path / "exp").exists()


def test_a_domain_size_beyond_the_split_is_refused(work, tmp_path):
    available = pnlm.data.store.TokenStore(work / "store64").num_tokens("train")
    with pytest.raises(PnlmError, match=f"has {available:,} tokens, fewer than the {10**12:,} asked for"):
        pnlm.subset(work / "store64", 10**12, tmp_path / "sub")
    assert not (tmp_path / "sub").exists()


@pytest.mark.parametrize("args, fragment", [
    (["--lr", "-0.01", "--backend", "mlx"], "--lr must be above 0, got -0.01"),
    (["--lr", "-0.01"], "--lr must be above 0, got -0.01"),
    (["--lr", "nan"], "--lr must be a finite number"),
    (["--seed", "-1"], "--seed must be between 0 and 4,294,967,295, got -1"),
    (["--warmup", "-10"], "--warmup must be at least 0"),
    (["--eval-every", "-1"], "--eval-every must be at least 0"),
    (["--grad-accum", "0"], "--grad-accum must be at least 1"),
])
def test_pretraining_values_out_of_range_are_refused(work, tmp_path, args, fragment):
    refused(cli("pretrain", "--model", "tiny", "--data", work / "store64", "--backend", "torch", "--steps", 2, *args,
                "--out", tmp_path / "run"), fragment)
    assert not (tmp_path / "run").exists()


def test_other_commands_check_their_values(work, tokenizer, tmp_path):
    latest = work / "run" / "latest"
    refused(cli("pretrain", "--model", "tiny", "--data", work / "store64", "--backend", "torch", "--tokens", -100,
                "--out", tmp_path / "r"), "--tokens must be at least 1")
    refused(cli("finetune", latest, "--data", work / "store64", "--backend", "torch", "--steps", 2, "--patience", -1,
                "--out", tmp_path / "r"), "--patience must be at least 0")
    refused(cli("init", "--model", "tiny", "--tokenizer", tokenizer.path.parent, "--seed", -1, "--out", tmp_path / "i"),
            "--seed must be between 0")
    refused(cli("generate", latest, "--prompt", "HAMLET", "--seed", -1, "--backend", "torch"), "--seed must be between 0")
    refused(cli("data", "cluster", work / "store64", "--k", 2, "--seed", -1, "--out", tmp_path / "c"),
            "--seed must be between 0")
    for backend in ("torch", "mlx"):
        refused(cli("eval", latest, "--data", work / "store64", "--batch-size", 0, "--backend", backend),
                "--batch-size must be at least 1")
    refused(cli("data", "prepare", HAMLET, "--tokenizer", tokenizer.path.parent, "--context", 64, "--text-field", "",
                "--out", tmp_path / "p"), "--text-field must name a JSONL key")
    assert not any((tmp_path / name).exists() for name in ("r", "i", "c", "p"))


@pytest.mark.parametrize("text, fragment", [
    ("steps = true\n", "steps must be an integer, got True"),
    ("steps = 2\nbatch-size = 4\nbatch_size = 8\n", "'batch-size' and 'batch_size' are the same setting"),
    ("steps = 2\nlr = \"fast\"\n", "lr must be a number, got 'fast'"),
    ("steps = 2\nlr = -inf\n", "--lr must be a finite number"),
])
def test_a_config_file_gives_values_of_the_flags_types(work, tmp_path, text, fragment):
    config = tmp_path / "config.toml"
    config.write_text(text)
    refused(cli("pretrain", "--model", "tiny", "--data", work / "store64", "--backend", "torch", "--config", config,
                "--out", tmp_path / "run"), fragment)


def test_api_calls_with_wrong_types_are_one_clear_error(work):
    model = pnlm.load(work / "run" / "latest", backend="torch")
    for call, fragment in ((lambda: model.generate("HAMLET", max_tokens=2.5), "max_tokens must be an integer"),
                           (lambda: model.generate(None), "prompt must be a text or a sequence of token ids"),
                           (lambda: model.generate([1, "x"]), "prompt ids must be a sequence of token ids"),
                           (lambda: model.logits([[1, 2, 3], [4, 5]]), "tokens must be a non-empty sequence"),
                           (lambda: model.generate("HAMLET", temperature=float("nan")), "temperature must be a finite")):
        with pytest.raises(PnlmError, match=fragment):
            call()


# --- 10: the smaller ones --------------------------------------------------------------------------------

def test_a_pipe_or_a_device_as_input_is_named_as_such(tokenizer, tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    for source in (fifo, Path("/dev/zero")):
        refused(cli("data", "prepare", source, "--tokenizer", tokenizer.path.parent, "--context", 64,
                    "--out", tmp_path / "out"), "not a regular file or a folder")


def test_a_checkpoint_being_replaced_is_reported_as_being_written(work, tmp_path):
    copy = tmp_path / "ckpt"
    shutil.copytree(work / "run" / "latest", copy)
    (copy / "model.safetensors").write_bytes(b"torn")  # what a reader can find mid-way through a replacement
    refused(cli("eval", copy, "--data", work / "store64", "--backend", "torch"), "sha256 does not match")
    lock_output(copy)  # as `pnlm fuse --out CKPT --overwrite` holds it while it writes
    try:
        refused(cli("eval", copy, "--data", work / "store64", "--backend", "torch"),
                "being written by another pnlm process")
    finally:
        release_outputs()


def test_a_loss_that_is_not_finite_before_any_checkpoint_names_none(work, tmp_path):
    result = cli("pretrain", "--model", "tiny", "--data", work / "store64", "--backend", "torch", "--steps", 3,
                 "--lr", "1e30", "--out", tmp_path / "run")
    lines = result.stderr.strip().splitlines()  # the steps' log lines, then the error's
    assert result.returncode == 2 and lines[-1].startswith("error: loss is nan") and "Traceback" not in result.stderr
    assert "no checkpoint was saved before it" in lines[-1] and not lines[-1].count(str(tmp_path / "run" / "latest"))


def test_advise_refuses_results_with_negative_costs(tmp_path):
    (tmp_path / "results.csv").write_text(
        "method,budget_steps,domain,domain_tokens,train_tokens,params_pretrain,params_inference,pretrained_ppl,"
        "finetuned_ppl,finetune_steps,generic_flops,specialization_flops\nslm,10,d,100,100,1,1,9.0,8.0,1,1,1\n")
    (tmp_path / "costs.csv").write_text("method,budget_steps,domain,domain_tokens,generic_device_hours,"
                                        "specialization_device_hours,device\nslm,10,d,100,-5.0,0.1,cpu\n")
    refused(cli("advise", "--results", tmp_path, "--domains", 3, "--domain-tokens", 100, "--inference-params", 10),
            "costs.csv: line 2: column generic_device_hours")


@pytest.fixture()
def read_only_folder(tmp_path):
    """A folder no one may write into: for root (CI), a tmpfs mounted read-only, which root cannot write either;
    for anyone else, a folder without its write bit."""
    locked = tmp_path / "locked"
    locked.mkdir()
    if os.geteuid() != 0:
        locked.chmod(0o500)
        yield locked
        locked.chmod(0o700)
        return
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(locked)], capture_output=True)
    if made.returncode:
        pytest.skip(f"root writes into read-only folders, and no read-only tmpfs could be mounted: {made.stderr!r}")
    yield locked
    subprocess.run(["umount", str(locked)], check=True)


def test_a_read_only_output_is_exit_status_2(work, tokenizer, read_only_folder):
    result = cli("init", "--model", "tiny", "--tokenizer", tokenizer.path.parent, "--out", read_only_folder / "ckpt")
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "Read-only file system" in result.stderr or "Permission denied" in result.stderr, result.stderr
    assert not any(read_only_folder.iterdir())


# --- 11: a long CPU run follows the cores other work leaves it ----------------------------------------------

def test_a_cpu_run_records_the_threads_it_follows(work, tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    result = cli("pretrain", "--model", "tiny", "--data", work / "store64", "--backend", "torch", "--steps", 3,
                 "--batch-size", 4, "--out", tmp_path / "run", env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert all(1 <= r["cpu_threads"] <= (os.cpu_count() or 1) for r in records)


def test_the_thread_count_follows_a_neighbour_that_comes_and_goes(monkeypatch):
    from pnlm import cpu_threads

    if not sys.platform.startswith("linux") or (os.cpu_count() or 1) < 2:
        pytest.skip("counts /proc/stat's cores, and needs two of them")
    if cpu_threads.cores_used_by_others(0.5) > 0.3:
        pytest.skip("the machine is busy with other work: the count would measure it, not the neighbour")
    monkeypatch.setattr(cpu_threads, "FOLLOW_S", 1.0)
    cores = cpu_threads.FreeCores(threads=2)
    cores.cores = 2
    neighbour = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(1.5)
        assert cores.update() == 1
    finally:
        neighbour.kill()
        neighbour.wait()
    time.sleep(1.5)
    assert cores.update() == 2
