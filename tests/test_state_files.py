"""State files a user can hand back to pnlm (a run's trainer.json and optimizer state, a mixture's mix.json):
bounded and checked, each refusal one line naming the file."""

import hashlib
import json

import pytest

from conftest import cli_in_process as pnlm, micro_run_inputs


def started_run(tmp_path, capsys, monkeypatch):
    """A micro run stopped at step 2, and the arguments that resume it to `steps`."""
    _, store, model = micro_run_inputs(tmp_path, capsys, monkeypatch)
    run = tmp_path / "run"

    def args(steps):
        return ["pretrain", "--model", model, "--data", store, "--steps", steps, "--batch-size", 2,
                "--checkpoint-every", 1, "--out", run, "--resume"]

    assert pnlm(capsys, monkeypatch, *args(2))[0] == 0
    return run, args


def rewrite(folder, name, text):
    """Change a checkpoint's file and vouch for it in its manifest, as a careful forger would."""
    (folder / name).write_text(text)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["sha256"][name] = hashlib.sha256(text.encode()).hexdigest()
    (folder / "manifest.json").write_text(json.dumps(manifest))


@pytest.mark.parametrize("edit, fragment", [
    (lambda t: {k: v for k, v in t.items() if k != "step"}, "trainer.json: step must be a whole number >= 0, not None"),
    (lambda t: {**t, "step": "2"}, "trainer.json: step must be a whole number >= 0, not '2'"),
    (lambda t: {k: v for k, v in t.items() if k != "tokens"}, "trainer.json: has no tokens; not a pnlm run's state"),
    (lambda t: {**t, "tokens": "16"}, "trainer.json: tokens must be a whole number >= 0, not '16'"),
    (lambda t: {**t, "elapsed_s": float("inf")}, "trainer.json: elapsed_s must be a finite number >= 0, not inf"),
    (lambda t: {**t, "config": []}, "trainer.json: config must be an object, not []"),
])
def test_a_trainer_state_without_its_fields_is_one_line(tmp_path, capsys, monkeypatch, edit, fragment):
    run, args = started_run(tmp_path, capsys, monkeypatch)
    trainer = json.loads((run / "latest" / "trainer.json").read_text())
    rewrite(run / "latest", "trainer.json", json.dumps(edit(trainer)))
    status, err = pnlm(capsys, monkeypatch, *args(4))
    assert status == 2 and fragment in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_an_oversized_mixture_description_is_refused_unread(tmp_path, capsys, monkeypatch):
    run = tmp_path / "mix"
    run.mkdir()
    (run / "mix.json").write_text('{"format": "pnlm-mix", "k": 2, "pad": "' + "x" * (2 << 20) + '"}')
    status, err = pnlm(capsys, monkeypatch, "instantiate", run, "--expert", "0", "--out", tmp_path / "out")
    assert status == 2 and f"{run / 'mix.json'}: larger than" in err, err
    assert len(err.strip().splitlines()) == 1


def test_an_optimizer_state_of_another_shape_is_one_line(tmp_path, capsys, monkeypatch):
    from pnlm.checkpoints.weights import load_safetensors, save_safetensors

    run, args = started_run(tmp_path, capsys, monkeypatch)
    latest = run / "latest"
    state = load_safetensors(latest / "optimizer.safetensors")
    key = "model.norm.weight.exp_avg"
    state[key] = state[key][:-1]
    save_safetensors(state, latest / "optimizer.safetensors")
    manifest = json.loads((latest / "manifest.json").read_text())
    manifest["sha256"]["optimizer.safetensors"] = hashlib.sha256((latest / "optimizer.safetensors").read_bytes()).hexdigest()
    (latest / "manifest.json").write_text(json.dumps(manifest))
    status, err = pnlm(capsys, monkeypatch, *args(4))
    assert status == 2 and f"optimizer.safetensors: {key} has shape (31,), its weight (32,)" in err, err
    assert len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("shape", [[2**32, 2**32], [2**64, 1], [2**63, 2]], ids=["int64-wraps-to-0", "2^64", "2^63x2"])
def test_a_safetensors_shape_whose_size_overflows_is_one_line(tmp_path, capsys, monkeypatch, shape):
    """A tensor of 2^64 elements claiming 0 bytes of data: its size is multiplied exactly, not in int64."""
    import struct

    run, args = started_run(tmp_path, capsys, monkeypatch)
    latest = run / "latest"
    blob = (latest / "optimizer.safetensors").read_bytes()
    (length,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8:8 + length])
    header["model.norm.weight.exp_avg"] = {"dtype": "F32", "shape": shape, "data_offsets": [0, 0]}
    forged = json.dumps(header).encode()
    (latest / "optimizer.safetensors").write_bytes(struct.pack("<Q", len(forged)) + forged + blob[8 + length:])
    manifest = json.loads((latest / "manifest.json").read_text())
    manifest["sha256"]["optimizer.safetensors"] = hashlib.sha256((latest / "optimizer.safetensors").read_bytes()).hexdigest()
    (latest / "manifest.json").write_text(json.dumps(manifest))
    status, err = pnlm(capsys, monkeypatch, *args(4))
    assert status == 2 and "tensor model.norm.weight.exp_avg: data_offsets [0, 0] do not fit shape" in err, err
    assert len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("field, value, fragment", [
    ("tokenizer", "tokenizer.model", "tokenizer must be an object with a sha256 string"),
    ("method", ["slm"], "method must be a method's name"),
])
def test_info_on_a_config_with_a_field_of_the_wrong_type_is_one_line(tmp_path, capsys, monkeypatch, field, value,
                                                                     fragment):
    run, _ = started_run(tmp_path, capsys, monkeypatch)
    latest = run / "latest"
    config = json.loads((latest / "config.json").read_text())
    rewrite(latest, "config.json", json.dumps({**config, field: value}))
    status, err = pnlm(capsys, monkeypatch, "info", latest)
    assert status == 2 and f"{latest / 'config.json'}: {fragment}" in err, err
    assert len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("change, fragment", [
    ({"clusters": ["a"]}, "its clusters record needs clusters (a path), k"),
    ({"k": 0}, "not a pnlm mixture description"),
    ({"spec": "tiny"}, "expected a table of model settings"),
    ({"k": 3}, "k is 3 but its clusters have 2"),
])
def test_a_forged_mixture_description_is_one_line(tmp_path, capsys, monkeypatch, change, fragment):
    run = tmp_path / "mix"
    run.mkdir()
    spec = {"vocab_size": 512, "d_model": 32, "n_layers": 1, "n_heads": 2, "n_kv_heads": 1, "d_ff": 64, "context": 32}
    clusters = {"clusters": "/c", "k": 2, "centroids_sha256": "0" * 64, "embedder": "hashing"}
    (run / "mix.json").write_text(json.dumps({"format": "pnlm-mix", "k": 2, "clusters": clusters, "spec": spec,
                                              **change}))
    for args in (["info", run], ["instantiate", run, "--expert", "0", "--out", tmp_path / "out"]):
        status, err = pnlm(capsys, monkeypatch, *args)
        assert status == 2 and f"{run / 'mix.json'}" in err and fragment in err, err
        assert len(err.strip().splitlines()) == 1
