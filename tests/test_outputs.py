"""--out never loses what pnlm did not write: every command that writes a folder refuses one holding
anything else, refuses to land on its own inputs, and replaces its own kind of output only when asked."""

import json

import pytest

from conftest import SAMPLE_DATA, cli_in_process as pnlm
from pnlm.files.outputs import output_kind


def commands(inputs, out):
    """Every command with --out, each given inputs that exist (the refusal comes before they are read)."""
    data, ckpt, tok, plan = inputs["data"], inputs["ckpt"], inputs["tok"], inputs["plan"]
    return {
        "data tokenizer": ["data", "tokenizer", SAMPLE_DATA[0], "--vocab-size", 512, "--out", out],
        "data prepare": ["data", "prepare", SAMPLE_DATA[0], "--tokenizer", tok, "--context", 64, "--out", out],
        "data subset": ["data", "subset", data, "--train-tokens", 100, "--out", out],
        "data cluster": ["data", "cluster", data, "--k", 2, "--out", out],
        "init": ["init", "--model", "tiny", "--tokenizer", tok, "--out", out],
        "pretrain": ["pretrain", "--model", "tiny", "--data", data, "--steps", 1, "--out", out],
        "pretrain --method mix": ["pretrain", "--method", "mix", "--model", "tiny", "--data", data, "--clusters", data,
                                  "--steps", 1, "--out", out],
        "finetune": ["finetune", ckpt, "--data", data, "--steps", 1, "--out", out],
        "distill": ["distill", "--teacher", ckpt, "--student", ckpt, "--data", data, "--steps", 1, "--out", out],
        "instantiate": ["instantiate", ckpt, "--domain", data, "--out", out],
        "fuse": ["fuse", ckpt, "--out", out],
        "import": ["import", ckpt, "--out", out],
        "export": ["export", ckpt, "--out", out],
        "experiment run": ["experiment", "run", plan, "--out", out],
    }


OVERWRITABLE = {"data tokenizer", "data prepare", "data subset", "data cluster", "init", "instantiate", "fuse", "import"}
WRITTEN_INTO = {"pretrain", "pretrain --method mix", "finetune", "distill", "experiment run"}  # never replaced


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, tiny_checkpoint):
    root = tmp_path_factory.mktemp("inputs")
    (root / "store").mkdir()
    (root / "tok").mkdir()
    (root / "plan.toml").write_text("name = 'x'\n")
    return {"data": root / "store", "ckpt": tiny_checkpoint, "tok": root / "tok", "plan": root / "plan.toml"}


@pytest.mark.parametrize("command", list(commands({k: "x" for k in ("data", "ckpt", "tok", "plan")}, "o")))
def test_no_command_deletes_a_folder_pnlm_did_not_write(command, inputs, tmp_path, capsys, monkeypatch):
    out = tmp_path / "precious"
    out.mkdir()
    (out / "thesis.tex").write_text("years of work")
    (out / "figures").mkdir()
    (out / "figures" / "plot.png").write_bytes(b"\x89PNG")
    args = commands(inputs, out)[command]
    for extra in ([], ["--overwrite"] if command in OVERWRITABLE else ["--resume"] if "--steps" in args else []):
        status, err = pnlm(capsys, monkeypatch, *args, *extra)
        assert status == 2, err  # here the (empty) inputs fail the commands that write into a folder
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
        if command not in WRITTEN_INTO:
            assert f"{out}: holds files pnlm did not write" in err
        assert (out / "thesis.tex").read_text() == "years of work" and (out / "figures" / "plot.png").is_file()
        assert {p.name for p in out.iterdir()} - {".pnlm.lock"} == {"figures", "thesis.tex"}


def test_hidden_files_are_a_users_too(inputs, tmp_path, capsys, monkeypatch):
    out = tmp_path / "repo"
    (out / ".git").mkdir(parents=True)
    (out / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    status, err = pnlm(capsys, monkeypatch, *commands(inputs, out)["init"], "--overwrite")
    assert status == 2 and f"{out}: holds files pnlm did not write" in err
    assert (out / ".git" / "HEAD").is_file()


@pytest.mark.parametrize("command", ["data subset", "import", "instantiate", "finetune", "fuse", "export"])
def test_an_output_never_lands_on_an_input(command, inputs, capsys, monkeypatch):
    source = inputs["data"] if command == "data subset" else inputs["ckpt"]
    before = sorted((p.name, p.stat().st_size) for p in source.iterdir())
    for out in (source, source / "inside"):
        args = commands(inputs, out)[command]
        status, err = pnlm(capsys, monkeypatch, *args, *(["--overwrite"] if command in OVERWRITABLE else []))
        assert status == 2 and f"{out}: is also an input of this command" in err, err
        assert len(err.strip().splitlines()) == 1
    assert sorted((p.name, p.stat().st_size) for p in source.iterdir()) == before


def test_a_file_is_never_an_out(inputs, tmp_path, capsys, monkeypatch):
    out = tmp_path / "notes.txt"
    out.write_text("keep me")
    status, err = pnlm(capsys, monkeypatch, *commands(inputs, out)["init"], "--overwrite")
    assert status == 2 and f"{out}: is a file, not a folder" in err
    assert out.read_text() == "keep me"


def test_pnlm_replaces_its_own_output_of_the_same_kind_only_when_asked(tmp_path, capsys, monkeypatch):
    tok, ckpt, store = tmp_path / "tok", tmp_path / "ckpt", tmp_path / "store"
    assert pnlm(capsys, monkeypatch, "data", "tokenizer", SAMPLE_DATA[0], "--vocab-size", 512, "--out", tok)[0] == 0
    assert pnlm(capsys, monkeypatch, "init", "--model", "tiny", "--tokenizer", tok, "--out", ckpt, "--seed", 1)[0] == 0
    assert pnlm(capsys, monkeypatch, "data", "prepare", SAMPLE_DATA[0], "--tokenizer", tok, "--context", 64,
                "--out", store)[0] == 0
    assert (output_kind(tok), output_kind(ckpt), output_kind(store)) == ("tokenizer", "checkpoint", "token store")
    first = json.loads((ckpt / "manifest.json").read_text())["sha256"]

    status, err = pnlm(capsys, monkeypatch, "init", "--model", "tiny", "--tokenizer", tok, "--out", ckpt, "--seed", 2)
    assert status == 2 and f"{ckpt}: holds a pnlm checkpoint already; pass --overwrite to replace it" in err
    assert json.loads((ckpt / "manifest.json").read_text())["sha256"] == first

    status, err = pnlm(capsys, monkeypatch, "init", "--model", "tiny", "--tokenizer", tok, "--out", store, "--overwrite")
    assert status == 2 and f"{store}: holds a pnlm token store, not a checkpoint" in err
    assert output_kind(store) == "token store"

    status, err = pnlm(capsys, monkeypatch, "init", "--model", "tiny", "--tokenizer", tok, "--out", ckpt, "--seed", 2,
                       "--overwrite")
    assert status == 0, err
    assert json.loads((ckpt / "manifest.json").read_text())["sha256"] != first

    empty = tmp_path / "empty"
    empty.mkdir()
    assert pnlm(capsys, monkeypatch, "init", "--model", "tiny", "--tokenizer", tok, "--out", empty)[0] == 0

    # --overwrite replaces what pnlm wrote, never a user's file put beside it.
    (ckpt / "notes.txt").write_text("mine")
    status, err = pnlm(capsys, monkeypatch, "init", "--model", "tiny", "--tokenizer", tok, "--out", ckpt, "--overwrite")
    assert status == 2 and f"{ckpt}: holds files pnlm did not write (notes.txt)" in err
    assert (ckpt / "notes.txt").read_text() == "mine"


def test_a_run_folder_is_continued_only_with_resume(tmp_path, capsys, monkeypatch):
    tok, store, run = tmp_path / "tok", tmp_path / "store", tmp_path / "run"
    assert pnlm(capsys, monkeypatch, "data", "tokenizer", SAMPLE_DATA[0], "--vocab-size", 512, "--out", tok)[0] == 0
    assert pnlm(capsys, monkeypatch, "data", "prepare", SAMPLE_DATA[0], "--tokenizer", tok, "--context", 32,
                "--out", store)[0] == 0
    model = tmp_path / "m.toml"
    model.write_text("[model]\npreset = 'tiny'\nd_model = 32\nn_layers = 1\nn_heads = 2\nn_kv_heads = 1\nd_ff = 64\n")
    args = ["pretrain", "--model", model, "--data", store, "--steps", 2, "--batch-size", 2, "--out", run]
    # A run killed before its first checkpoint leaves its metrics only: still a run, still not to be restarted
    # over without --resume.
    run.mkdir()
    (run / "metrics.jsonl").write_text('{"step": 1, "loss": 5.0}\n')
    assert output_kind(run) == "training run"
    status, err = pnlm(capsys, monkeypatch, *args)
    assert status == 2 and f"{run}: holds a pnlm training run already; pass --resume to continue it" in err
    assert pnlm(capsys, monkeypatch, *args, "--resume")[0] == 0
    assert (run / "latest" / "manifest.json").is_file()

    # A job's log beside a fresh run is written into, and kept.
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    (fresh / "train.log").write_text("job 42 started\n")
    assert pnlm(capsys, monkeypatch, *args[:-1], fresh)[0] == 0
    assert (fresh / "train.log").read_text() == "job 42 started\n" and (fresh / "latest").is_dir()


def test_fuse_never_writes_over_the_base_its_adapters_name(tmp_path, capsys, monkeypatch):
    """The base is an input of fuse even when not given (the adapters record it): --overwrite must not
    replace it, or the adapters would name a base that is gone."""
    from conftest import micro_run_inputs

    tok, store, model = micro_run_inputs(tmp_path, capsys, monkeypatch)
    base = tmp_path / "base"
    assert pnlm(capsys, monkeypatch, "init", "--model", model, "--tokenizer", tok, "--out", base)[0] == 0
    assert pnlm(capsys, monkeypatch, "finetune", base, "--data", store, "--lora-rank", 2, "--steps", 1, "--eval-every",
                0, "--no-early-stop", "--backend", "torch", "--out", tmp_path / "run")[0] == 0
    before = (base / "manifest.json").read_bytes()
    status, err = pnlm(capsys, monkeypatch, "fuse", tmp_path / "run" / "latest", "--out", base, "--overwrite")
    assert status == 2 and f"{base}: the fused checkpoint needs another folder than their base's" in err, err
    assert (base / "manifest.json").read_bytes() == before
