"""LoRA: adapted layers equal the numpy oracle, fine-tuning lowers validation loss in both backends,
adapters live beside their base and fuse into a plain checkpoint with the same logits."""

import json
import subprocess
import sys

import numpy as np
import pytest

import pnlm
from conftest import SAMPLE_DATA
from pnlm.checkpoints.adapter_checkpoint import load_adapter_checkpoint
from pnlm.data import iter_documents
from pnlm.data.prepare import prepare_store
from pnlm.errors import CheckpointError
from pnlm.model.lora import LoraSpec, fuse, init_adapters
from pnlm.checkpoints.weights import init_weights


def pnlm_cli(*args):
    return subprocess.run([sys.executable, "-m", "pnlm.cli", *map(str, args)], capture_output=True, text=True)


@pytest.fixture(scope="module")
def domain(tmp_path_factory, tokenizer):
    docs = list(iter_documents(SAMPLE_DATA[:1]))
    return prepare_store(iter(docs), tokenizer, tmp_path_factory.mktemp("d") / "domain", context=64,
                         valid_fraction=0.1, test_fraction=0.1, workers=1)[0]


def random_adapters(spec, lora):
    rng = np.random.default_rng(2)
    adapters = init_adapters(spec, lora, seed=1)
    return {name: rng.normal(0, 0.05, value.shape).astype(np.float32) if name.endswith("lora_B") else value
            for name, value in adapters.items()}


@pytest.mark.parametrize("backend", ["torch", "mlx"])
def test_adapted_model_equals_the_fused_oracle(tiny_spec, backend):
    from pnlm.backends import make_train_step

    lora = LoraSpec(rank=4, alpha=8.0, targets=("q_proj", "v_proj", "down_proj")).validate(tiny_spec)
    weights, adapters = init_weights(tiny_spec, 0), random_adapters(tiny_spec, lora)
    tokens = np.random.default_rng(3).integers(0, tiny_spec.vocab_size, (2, 40))
    adapted = make_train_step(backend, tiny_spec, weights, pnlm.model.spec.OptimizerSpec(), lora=lora, adapters=adapters)
    fused = make_train_step(backend, tiny_spec, fuse(weights, adapters, tiny_spec, lora), pnlm.model.spec.OptimizerSpec())
    a, _ = adapted.nll(tokens[:, :-1], tokens[:, 1:])
    b, _ = fused.nll(tokens[:, :-1], tokens[:, 1:])
    assert abs(a - b) < 1e-5 * abs(b)
    assert set(adapted.model.adapter_weights()) == set(adapters)
    assert set(adapted.model.canonical_weights()) == set(weights)  # the base keeps its canonical names
    assert adapted.optimizer_state().keys() - {"step"} == {f"{n}.{m}" for n in adapters for m in ("exp_avg", "exp_avg_sq")} \
        or not adapted.optimizer_state().keys() - {"step"}  # before the first step there are no moments


@pytest.mark.parametrize("backend", ["torch", "mlx"])
def test_lora_finetune_lowers_validation_loss_and_fuses_exactly(tmp_path, tiny_checkpoint, domain, backend):
    run = tmp_path / "run"
    result = pnlm_cli("finetune", tiny_checkpoint, "--data", domain.path, "--backend", backend, "--out", run,
                      "--lora-rank", 8, "--lr", 3e-3, "--steps", 30, "--eval-every", 10, "--batch-size", 8, "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    base = json.loads(pnlm_cli("eval", tiny_checkpoint, "--data", domain.path, "--split", "valid",
                               "--backend", backend, "--json").stdout)["domains"][domain.name]["nll"]
    assert summary["best_val_loss"] < base - 0.1
    # Adapters only, beside the base: small, and they name the base they adapt.
    saved = load_adapter_checkpoint(run / "best")
    assert saved.base_path == tiny_checkpoint.resolve()
    assert not (run / "best" / "model.safetensors").exists()
    fused = pnlm_cli("fuse", run / "best", "--out", tmp_path / "fused")
    assert fused.returncode == 0, fused.stderr
    tokens = np.random.default_rng(0).integers(0, saved.base.spec.vocab_size, (2, 48))
    for load_backend in ("torch", "mlx"):
        adapted = pnlm.load(run / "best", backend=load_backend).logits(tokens)
        plain = pnlm.load(tmp_path / "fused", backend=load_backend).logits(tokens)
        assert np.abs(adapted - plain).max() < 1e-5
    # Evaluating the adapter folder is evaluating base + adapters.
    evaluated = json.loads(pnlm_cli("eval", run / "best", "--data", domain.path, "--split", "valid",
                                    "--backend", backend, "--json").stdout)["domains"][domain.name]["nll"]
    assert abs(evaluated - summary["best_val_loss"]) < 1e-5


@pytest.mark.parametrize("backend", ["torch", "mlx"])
def test_lora_resume_continues_exactly(tmp_path, tiny_checkpoint, domain, backend):
    common = ["finetune", tiny_checkpoint, "--data", domain.path, "--backend", backend, "--lora-rank", 4,
              "--lr", 3e-3, "--no-early-stop", "--eval-every", 0, "--checkpoint-every", 4]
    assert pnlm_cli(*common, "--steps", 8, "--out", tmp_path / "straight").returncode == 0
    assert pnlm_cli(*common, "--steps", 4, "--out", tmp_path / "split").returncode == 0
    resumed = pnlm_cli(*common, "--steps", 8, "--out", tmp_path / "split", "--resume")
    assert resumed.returncode == 0, resumed.stderr

    def losses(run):
        return [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]

    assert losses(tmp_path / "straight") == losses(tmp_path / "split")


def test_adapters_refuse_a_changed_base(tmp_path, tiny_checkpoint, tokenizer, tiny_spec, domain):
    from pnlm.checkpoints.checkpoint import save_checkpoint

    base = save_checkpoint(tmp_path / "base", tiny_spec, init_weights(tiny_spec, 0), tokenizer)
    run = tmp_path / "run"
    result = pnlm_cli("finetune", base, "--data", domain.path, "--backend", "torch", "--out", run,
                      "--lora-rank", 2, "--steps", 2, "--eval-every", 0, "--no-early-stop")
    assert result.returncode == 0, result.stderr
    save_checkpoint(tmp_path / "base", tiny_spec, init_weights(tiny_spec, 1), tokenizer)
    with pytest.raises(CheckpointError, match="other weights"):
        load_adapter_checkpoint(run / "latest")
    refused = pnlm_cli("generate", run / "latest", "--prompt", "a", "--max-tokens", 2, "--backend", "torch")
    assert refused.returncode == 2 and len(refused.stderr.strip().splitlines()) == 1
    # A copy of the original base elsewhere (same weights: seed 0) is accepted with --base.
    moved = pnlm_cli("fuse", run / "latest", "--out", tmp_path / "f", "--base", tiny_checkpoint)
    assert moved.returncode == 0, moved.stderr
