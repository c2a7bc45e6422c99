"""Checkpoints are verified before use and never half-written."""

import json
import os
import signal
import struct
import subprocess
import sys
import time
import tracemalloc

import numpy as np
import pytest

from pnlm.checkpoints.checkpoint import load_checkpoint, verify_checkpoint
from pnlm.errors import CheckpointError
from pnlm.tokenizer import file_sha256
from pnlm.checkpoints.weights import init_weights


def copy_checkpoint(src, dst):
    dst.mkdir()
    for name in os.listdir(src):
        (dst / name).write_bytes((src / name).read_bytes())
    return dst


def rewrite_manifest(path):
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["sha256"] = {name: file_sha256(path / name) for name in manifest["sha256"]}
    (path / "manifest.json").write_text(json.dumps(manifest))


def test_round_trip(tmp_path, tiny_checkpoint, tiny_spec):
    checkpoint = load_checkpoint(tiny_checkpoint)
    assert checkpoint.spec == tiny_spec
    expected = init_weights(tiny_spec, seed=0)
    assert all(np.array_equal(expected[name], checkpoint.weights[name]) for name in expected)
    assert sorted(os.listdir(tiny_checkpoint)) == ["config.json", "manifest.json", "model.safetensors", "tokenizer.model"]


def test_one_flipped_byte_names_the_file(tmp_path, tiny_checkpoint):
    path = copy_checkpoint(tiny_checkpoint, tmp_path / "flipped")
    weights = bytearray((path / "model.safetensors").read_bytes())
    weights[len(weights) // 2] ^= 0x01
    (path / "model.safetensors").write_bytes(bytes(weights))
    with pytest.raises(CheckpointError, match="model.safetensors: sha256 does not match"):
        load_checkpoint(path)
    result = subprocess.run([sys.executable, "-m", "pnlm.cli", "generate", str(path), "--prompt", "a", "--backend", "torch"],
                            capture_output=True, text=True)
    assert result.returncode == 2 and "model.safetensors" in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_missing_manifest_is_not_a_checkpoint(tmp_path, tiny_checkpoint):
    path = copy_checkpoint(tiny_checkpoint, tmp_path / "nomanifest")
    (path / "manifest.json").unlink()
    with pytest.raises(CheckpointError, match="manifest.json: missing"):
        load_checkpoint(path)


@pytest.mark.parametrize("field, value", [("vocab_size", 10**12), ("d_model", 1 << 30), ("n_layers", 100000),
                                          ("context", -1), ("n_heads", 0)])
def test_absurd_config_refused_before_allocation(tmp_path, tiny_checkpoint, field, value):
    path = copy_checkpoint(tiny_checkpoint, tmp_path / "absurd")
    config = json.loads((path / "config.json").read_text())
    config["spec"][field] = value
    (path / "config.json").write_text(json.dumps(config))
    rewrite_manifest(path)
    tracemalloc.start()
    with pytest.raises(CheckpointError, match=field):
        load_checkpoint(path)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 4 * 1024 * 1024


def test_large_but_valid_config_refused_by_the_weights_header(tmp_path, tiny_checkpoint):
    path = copy_checkpoint(tiny_checkpoint, tmp_path / "big")
    config = json.loads((path / "config.json").read_text())
    config["spec"].update(d_model=8192, d_ff=32768, n_heads=64, n_kv_heads=64, n_layers=64)
    (path / "config.json").write_text(json.dumps(config))
    rewrite_manifest(path)
    tracemalloc.start()
    with pytest.raises(CheckpointError, match="do not match the spec"):
        load_checkpoint(path)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 4 * 1024 * 1024


@pytest.mark.parametrize("lie", ["offset_past_end", "shape_too_big", "header_length"])
def test_safetensors_header_that_lies_is_refused(tmp_path, tiny_checkpoint, lie):
    path = copy_checkpoint(tiny_checkpoint, tmp_path / lie)
    raw = (path / "model.safetensors").read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + length])
    name = "model.norm.weight"
    if lie == "offset_past_end":
        header[name]["data_offsets"][1] += 1 << 40
    elif lie == "shape_too_big":
        header[name]["shape"] = [1 << 40]
    if lie == "header_length":
        data = struct.pack("<Q", 1 << 60) + raw[8:]
    else:
        blob = json.dumps(header).encode()
        data = struct.pack("<Q", len(blob)) + blob + raw[8 + length:]
    (path / "model.safetensors").write_bytes(data)
    rewrite_manifest(path)
    with pytest.raises(CheckpointError, match="model.safetensors"):
        load_checkpoint(path)


SAVE_LOOP = """
import sys
from pnlm.checkpoints.checkpoint import save_checkpoint
from pnlm.model.spec import ModelSpec
from pnlm.tokenizer import load_tokenizer
from pnlm.checkpoints.weights import init_weights
tok = load_tokenizer(sys.argv[2])
spec = ModelSpec(vocab_size=tok.vocab_size, d_model=512, n_layers=6, n_heads=8, n_kv_heads=8, d_ff=1536, context=64)
weights = init_weights(spec, 0)
print("ready", flush=True)
while True:
    save_checkpoint(sys.argv[1], spec, weights, tok)
"""


def test_save_killed_midway_never_leaves_a_loadable_partial(tmp_path, tokenizer):
    target = tmp_path / "ckpt"
    rng = np.random.default_rng(0)
    for attempt in range(6):
        child = subprocess.Popen([sys.executable, "-c", SAVE_LOOP, str(target), str(tokenizer.path)],
                                 stdout=subprocess.PIPE, text=True)
        assert child.stdout.readline().strip() == "ready"
        time.sleep(float(rng.uniform(0.05, 0.6)))
        child.send_signal(signal.SIGKILL)
        child.wait()
        # The target is either absent (killed during the first save) or a complete, verified checkpoint.
        if target.exists():
            verify_checkpoint(target)
        for leftover in tmp_path.iterdir():
            if leftover == target:
                continue
            # Hidden, never the target: .ckpt.tmp-* a save in progress (complete too, when the kill fell between
            # its manifest and its rename), .ckpt.old-* the previous checkpoint, moved aside between the two renames.
            assert leftover.name.startswith((".ckpt.tmp-", ".ckpt.old-"))
    assert target.exists(), "six kills never let one save finish: make the model smaller or wait longer"
