"""The CUDA path on a GPU (skipped without one; bench/gpu_check.sh runs these): torch on the GPU computes the
CPU's logits, a train step never makes the host wait for the device, compiled bfloat16 trains like eager,
and `pretrain --backend cuda` reports its MFU."""

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import pnlm
from pnlm.backends import make_train_step
from pnlm.model.spec import PRESETS, OptimizerSpec
from pnlm.training.batches import Batch
from pnlm.checkpoints.weights import init_weights

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
from gpu_check import cuda_logit_difference  # noqa: E402

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU")


def batch(spec, rows=4, seed=0, experts=False):
    tokens = np.random.default_rng(seed).integers(0, spec.vocab_size, (rows, spec.context + 1))
    expert = np.arange(rows) % spec.projection.k if experts else None
    return Batch(tokens[:, :-1], tokens[:, 1:], np.ones((rows, spec.context), np.float32), expert)


def test_cuda_logits_equal_cpu_logits_in_float32():
    difference, _ = cuda_logit_difference("tiny", 2, 64)  # bench/gpu_check.py, which records it for slm-126m
    assert difference < 1e-4


@pytest.mark.parametrize("preset", ["tiny", "pn-tiny"])
def test_train_steps_never_wait_for_the_device(preset):
    spec = PRESETS[preset]
    step = make_train_step("cuda", spec, init_weights(spec, 0), OptimizerSpec(), precision="bfloat16")
    staged = [step.stage(batch(spec, seed=s, experts=spec.projection is not None), micro_batches=2) for s in range(4)]
    losses = [step.step(staged[0])]  # the first step allocates AdamW's state
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")  # any host synchronization raises
    try:
        losses += [step.step(s) for s in staged[1:]]
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert all(np.isfinite(step.to_floats(losses)))


def test_compiled_bfloat16_trains_like_eager():
    spec = PRESETS["tiny"]
    runs = {}
    for compiled in (False, True):
        step = make_train_step("cuda", spec, init_weights(spec, 0), OptimizerSpec(lr=1e-3), precision="bfloat16",
                               compile=compiled)
        runs[compiled] = step.to_floats([step.step(step.stage(batch(spec, seed=s))) for s in range(5)])
    assert np.abs(np.array(runs[True]) - np.array(runs[False])).max() < 2e-2, runs


def test_pretrain_on_cuda_reports_mfu(tmp_path, tokenizer):
    from conftest import SAMPLE_DATA
    from pnlm.data import iter_documents
    from pnlm.data.prepare import prepare_store

    store = prepare_store(iter(list(iter_documents(SAMPLE_DATA[:1]))), tokenizer, tmp_path / "store", context=64,
                          valid_fraction=0.1, test_fraction=0, workers=1)[0]
    summary = pnlm.pretrain(store.path, tmp_path / "run", model="tiny", backend="cuda", steps=20, batch_size=8, warmup=0,
                            eval_every=10, checkpoint_every=10)
    assert summary.precision == "bfloat16" and np.isfinite(summary.final_loss)
    if any(name in summary.device_name for name in ("H100", "H200", "A100")):
        assert summary.mfu is not None and 0 < summary.mfu < 1
    resumed = pnlm.pretrain(store.path, tmp_path / "run", model="tiny", backend="cuda", steps=30, batch_size=8, warmup=0,
                            eval_every=10, checkpoint_every=10, resume=True)
    assert resumed.steps == 30
