"""From a checkpoint to a quantized MLX model: `pnlm export --format mlx --quantize 4|8` goes through mlx-lm's
own conversion; mlx_lm.load and generate use the folder as it is, and so do pnlm.load, generate and eval."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import pnlm
from pnlm.errors import PnlmError

mlx_lm = pytest.importorskip("mlx_lm")

PNLM = [sys.executable, "-m", "pnlm.cli"]


def weights_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.glob("*.safetensors"))


@pytest.fixture(scope="module")
def exported(tmp_path_factory, tiny_checkpoint):
    out = tmp_path_factory.mktemp("deploy")
    return {bits: pnlm.export_mlx(tiny_checkpoint, out / f"q{bits}", quantize=bits) for bits in (4, 8)}


def test_mlx_lm_and_pnlm_run_the_quantized_folder_alike(exported, tiny_checkpoint):
    import mlx.core as mx

    tokens = np.random.default_rng(0).integers(3, 500, (2, 48))
    full = pnlm.load(tiny_checkpoint, backend="mlx").logits(tokens)
    for bits, folder in exported.items():
        model, tokenizer = mlx_lm.load(str(folder))
        theirs = np.array(model(mx.array(tokens.astype(np.int32))).astype(mx.float32))
        ours = pnlm.load(folder, backend="mlx")
        assert np.abs(ours.logits(tokens) - theirs).max() < 1e-4
        # Quantization moves the logits, 8 bits much less than 4 (random weights: small logits).
        error = np.abs(theirs - full).max() / np.abs(full).max()
        assert 0 < error < (0.02 if bits == 8 else 0.2), (bits, error)
        text = mlx_lm.generate(model, tokenizer, prompt="It is a truth", max_tokens=8)
        assert ours.generate("It is a truth", max_tokens=8) == text  # both greedy
    assert weights_bytes(exported[4]) <= 0.35 * weights_bytes(Path(tiny_checkpoint))
    assert weights_bytes(exported[4]) < weights_bytes(exported[8]) < weights_bytes(Path(tiny_checkpoint))


def test_the_cli_generates_and_pnlm_evaluates_a_quantized_folder_and_torch_refuses_it(exported, tmp_path, tokenizer):
    from conftest import SAMPLE_DATA
    from pnlm.data import iter_documents
    from pnlm.data.prepare import prepare_store

    folder = exported[4]
    result = subprocess.run([*PNLM, "generate", str(folder), "--prompt", "It is", "--max-tokens", "8",
                             "--backend", "mlx"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    store = prepare_store(iter(list(iter_documents(SAMPLE_DATA[:1]))[:20]), tokenizer, tmp_path / "store",
                          context=64, valid_fraction=0, test_fraction=0.3, workers=1)[0]
    evaluation = pnlm.evaluate(folder, store.path, backend="mlx")
    assert np.isfinite(evaluation.macro_ppl)
    with pytest.raises(PnlmError, match="run it with backend mlx"):  # the CLI's one line, exit 2
        pnlm.load(folder, backend="torch")
    with pytest.raises(PnlmError, match="4 or 8"):
        pnlm.export_mlx(folder, tmp_path / "q3", quantize=3)
    assert not (tmp_path / "q3").exists()


def test_a_checkpoint_without_its_manifest_is_not_taken_for_a_model_folder(tmp_path, tiny_checkpoint):
    import shutil

    damaged = tmp_path / "damaged"
    shutil.copytree(tiny_checkpoint, damaged)
    (damaged / "manifest.json").unlink()
    with pytest.raises(PnlmError, match="manifest.json"):
        pnlm.load(damaged, backend="torch")
