"""LoRA adapters as PEFT adapters and back: PEFT's PeftModel on the exported base gives pnlm's base + adapters
logits, and an adapter imported back from PEFT is the same adapter."""

import json
import subprocess
import sys

import numpy as np
import pytest

import pnlm
from pnlm.checkpoints.adapter_checkpoint import load_adapter_checkpoint, save_adapter_checkpoint
from pnlm.checkpoints.checkpoint import load_checkpoint
from pnlm.model.lora import LoraSpec, adapter_shapes

peft = pytest.importorskip("peft")
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

PNLM = [sys.executable, "-m", "pnlm.cli"]


@pytest.fixture(scope="module")
def adapters(tmp_path_factory, tiny_checkpoint):
    """Adapters of rank 4 on q, v and down, with B not zero (a trained adapter's, so that they change the logits)."""
    base = load_checkpoint(tiny_checkpoint)
    lora = LoraSpec(rank=4, alpha=6.0, targets=("q_proj", "v_proj", "down_proj")).validate(base.spec)
    rng = np.random.default_rng(0)
    weights = {name: (rng.standard_normal(shape) * 0.05).astype(np.float32)
               for name, shape in adapter_shapes(base.spec, lora).items()}
    return save_adapter_checkpoint(tmp_path_factory.mktemp("lora") / "adapters", tiny_checkpoint, base, lora, weights)


def pnlm_logits(path, tokens):
    return pnlm.load(path, backend="torch").logits(tokens)


def test_peft_gives_pnlms_logits_and_an_imported_adapter_is_the_same(tmp_path, adapters, tiny_checkpoint):
    out = pnlm.export_peft(adapters, tmp_path / "peft")
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["r"] == 4 and config["lora_alpha"] == 6.0
    assert sorted(config["target_modules"]) == ["down_proj", "q_proj", "v_proj"]
    tokens = np.random.default_rng(1).integers(3, 500, (2, 40))
    base_model = transformers.AutoModelForCausalLM.from_pretrained(str(out / "base"), torch_dtype=torch.float32)
    model = peft.PeftModel.from_pretrained(base_model, str(out)).eval()
    with torch.no_grad():
        theirs = model(torch.from_numpy(tokens)).logits.numpy()
    ours = pnlm_logits(adapters, tokens)
    assert np.abs(theirs - ours).max() < 1e-4
    assert np.abs(ours - pnlm_logits(tiny_checkpoint, tokens)).max() > 1e-2  # the adapters change the logits

    # PEFT's own save of that model, imported back onto the pnlm base: the same adapters, the same logits.
    model.save_pretrained(str(tmp_path / "saved-by-peft"))
    back = pnlm.import_peft(tmp_path / "saved-by-peft", tiny_checkpoint, tmp_path / "back")
    original, imported = load_adapter_checkpoint(adapters), load_adapter_checkpoint(back)
    assert imported.lora == original.lora
    assert all(np.array_equal(imported.adapters[name], original.adapters[name]) for name in original.adapters)
    assert np.abs(pnlm_logits(back, tokens) - ours).max() < 1e-6


def test_peft_errors_are_one_line(tmp_path, adapters, tiny_checkpoint):
    out = pnlm.export_peft(adapters, tmp_path / "peft")
    result = subprocess.run([*PNLM, "import", str(out), "--out", str(tmp_path / "x")], capture_output=True, text=True)
    assert result.returncode == 2 and "--base" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    config = json.loads((out / "adapter_config.json").read_text())
    (out / "adapter_config.json").write_text(json.dumps({**config, "use_dora": True}))
    result = subprocess.run([*PNLM, "import", str(out), "--base", str(tiny_checkpoint), "--out", str(tmp_path / "y")],
                            capture_output=True, text=True)
    assert result.returncode == 2 and "use_dora" in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not (tmp_path / "y").exists()
    result = subprocess.run([*PNLM, "export", str(tiny_checkpoint), "--format", "peft", "--out", str(tmp_path / "z")],
                            capture_output=True, text=True)
    assert result.returncode == 2 and "not LoRA adapters" in result.stderr, result.stderr
