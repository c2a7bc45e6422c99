"""What the CUDA training path promises, checked where a CPU can: bfloat16 autocast keeps the residual stream
and the attention's inputs in bfloat16; the cross-entropy over the vocabulary is computed in chunks, equal to
the full one, without ever holding the whole batch's float32 logits; the training loop reads nothing from
the device between log steps; the batches made ahead arrive in the steps' order. (tests/test_cuda.py holds
the checks that need a GPU; bench/gpu_check.sh runs them.)"""

import dataclasses
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

import pnlm
from pnlm.backends import make_train_step
from pnlm.backends.torch.cross_entropy import chunk_rows, linear_cross_entropy
from pnlm.model.spec import OptimizerSpec, PRESETS
from pnlm.training.prefetch import Prefetcher
from pnlm.checkpoints.weights import init_weights

ROOT = Path(__file__).resolve().parent.parent


class Recorder(TorchDispatchMode):
    """Every aten operation this thread runs, with its outputs (a real torch facility, nothing replaced)."""

    def __init__(self, on_op=None):
        super().__init__()
        self.on_op = on_op

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.on_op(func, args, kwargs or {}, out)
        return out


def test_bfloat16_autocast_keeps_the_residual_stream_and_attention_inputs_in_bfloat16():
    spec = PRESETS["tiny"]
    step = make_train_step("torch", spec, init_weights(spec, 0), OptimizerSpec(), precision="bfloat16")
    seen = {}

    def record(name):
        return lambda module, args, *rest: seen.setdefault(name, []).append(args[0].dtype)

    body = step.model.model
    for i, block in enumerate(body.layers):
        block.register_forward_pre_hook(record("residual stream (block input)"))
        block.self_attn.register_forward_pre_hook(record("attention input (normed)"))
        block.self_attn.o_proj.register_forward_pre_hook(record("attention output"))
        block.mlp.register_forward_pre_hook(record("mlp input (normed)"))
    body.norm.register_forward_pre_hook(record("final norm input"))
    sdpa = []

    def on_op(func, args, kwargs, out):
        if "scaled_dot_product" in str(func):
            sdpa.extend(a.dtype for a in args[:3])

    tokens = np.random.default_rng(0).integers(0, spec.vocab_size, (2, 33))
    with Recorder(on_op):
        step(tokens[:, :-1], tokens[:, 1:])
    assert set(seen) == {"residual stream (block input)", "attention input (normed)", "attention output",
                         "mlp input (normed)", "final norm input"}
    for name, dtypes in seen.items():
        assert set(dtypes) == {torch.bfloat16}, (name, dtypes)
    assert sdpa and set(sdpa) == {torch.bfloat16}, sdpa  # queries, keys, values
    # The master weights stay float32.
    assert {p.dtype for p in step.model.parameters()} == {torch.float32}


def test_chunked_cross_entropy_equals_the_full_one_in_float32():
    rng = torch.Generator().manual_seed(0)
    hidden = torch.randn(300, 64, generator=rng, requires_grad=True)
    weight = (torch.randn(1000, 64, generator=rng) * 0.1).requires_grad_()
    targets = torch.randint(0, 1000, (300,), generator=rng)
    mask = (torch.rand(300, generator=rng) > 0.2).float()
    full = (F.cross_entropy(hidden @ weight.t(), targets, reduction="none") * mask).sum()
    full_grads = torch.autograd.grad(full / mask.sum(), (hidden, weight))
    chunked = linear_cross_entropy(hidden, weight, targets, mask, rows_per_chunk=64)  # 5 chunks, the last short
    chunked_grads = torch.autograd.grad(chunked / mask.sum(), (hidden, weight))
    assert abs(float(chunked.detach() - full.detach())) / float(mask.sum()) < 1e-6  # the mean loss per token
    for a, b in zip(chunked_grads, full_grads):
        assert (a - b).abs().max() < 1e-6
    with torch.no_grad():
        assert abs(float(linear_cross_entropy(hidden, weight, targets, mask, rows_per_chunk=64) - full)) < 1e-3


def test_a_step_never_holds_the_whole_batchs_float32_logits():
    # A 32,000-piece vocabulary over 8 x 512 targets: whole, the float32 logits would be 524 MB.
    spec = dataclasses.replace(PRESETS["tiny"], vocab_size=32000, d_model=64, n_layers=1, n_heads=2, n_kv_heads=1,
                               d_ff=128, context=512)
    # float32 compute: the rows are chunked alike under bfloat16 autocast (the chunk depends on the vocabulary only,
    # backends/torch/cross_entropy.py), and a CPU without bfloat16 units took half a minute over its products.
    step = make_train_step("torch", spec, init_weights(spec, 0), OptimizerSpec(), precision="float32")
    tokens = np.random.default_rng(0).integers(0, spec.vocab_size, (8, 513))
    whole = 8 * 512 * spec.vocab_size
    largest = [0]

    def on_op(func, args, kwargs, out):
        for tensor in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(tensor, torch.Tensor) and tensor.dtype == torch.float32 and tensor.dim() == 2:
                if tensor.shape[-1] == spec.vocab_size and tensor.shape[0] != spec.vocab_size:  # logits, not a weight
                    largest[0] = max(largest[0], tensor.numel())

    with Recorder(on_op):
        loss = step(tokens[:, :-1], tokens[:, 1:])
    assert np.isfinite(loss)
    # One chunk of rows at a time: 2,097 of the 4,096 (2^26 float32 logits, 256 MiB at most, whatever the batch).
    assert largest[0] == chunk_rows(spec.vocab_size) * spec.vocab_size < whole, (largest[0], whole)


def test_the_training_loop_reads_nothing_from_the_device_between_log_steps(tmp_path, tokenizer):
    from pnlm.data import iter_documents
    from pnlm.data.prepare import prepare_store
    from conftest import SAMPLE_DATA

    store = prepare_store(iter(list(iter_documents(SAMPLE_DATA[:1]))), tokenizer, tmp_path / "store", context=64,
                          valid_fraction=0, test_fraction=0, workers=1)[0]
    forwards, reads = [0], []
    main = threading.get_ident()

    def on_op(func, args, kwargs, out):
        name = str(func)
        if threading.get_ident() != main:
            return
        if name.startswith("aten.embedding."):
            forwards[0] += 1  # one forward per step (one micro-batch)
        # What waits for a GPU: a tensor read into a Python number, a data-dependent shape, a copy to the host.
        elif ("_local_scalar_dense" in name or "nonzero" in name or "unique" in name
              or (name.startswith("aten._to_copy") and str(kwargs.get("device")) == "cpu")):
            reads.append((forwards[0], name))

    with Recorder(on_op):
        summary = pnlm.pretrain(store.path, tmp_path / "run", model="tiny", backend="torch", steps=12, batch_size=4,
                                log_every=4)
    assert summary.steps == forwards[0] == 12
    at_steps = sorted({step for step, _ in reads})
    # Reads at step 0 (loading the weights) and at the log steps 4, 8, 12 (the losses, once each; at 12 the
    # checkpoint too), and nowhere else: steps 1-3, 5-7 and 9-11 only queue work.
    assert set(at_steps) <= {0, 4, 8, 12}, reads
    assert {4, 8, 12} <= set(at_steps), reads
    assert [name for step, name in reads if step in (4, 8)] == ["aten._to_copy.default"] * 2, reads


def test_prefetched_batches_come_in_the_steps_order_and_errors_reach_the_caller():
    made = []

    def make(step):
        made.append(step)
        if step == 7:
            raise ValueError("window 7 is unreadable")
        return step * 10

    with Prefetcher(make, 3, 20, depth=2) as batches:
        assert [batches.get(s) for s in range(3, 7)] == [30, 40, 50, 60]
        with pytest.raises(ValueError, match="window 7"):
            batches.get(7)
    assert made == list(range(3, 8))  # in order, never past the failing step
    with Prefetcher(make, 0, 1000, depth=2) as batches:  # closed while the thread waits for room
        assert batches.get(0) == 0
    with pytest.raises(RuntimeError, match="in order"):
        Prefetcher(make, 0, 5, depth=0).get(1)


def test_gpu_check_refuses_cleanly_without_a_gpu(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: bench/gpu_check.sh runs for real there")
    result = subprocess.run(["bash", str(ROOT / "bench" / "gpu_check.sh"), str(tmp_path / "figures.json")],
                            capture_output=True, text=True, env={"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin"},
                            timeout=120)
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "no CUDA device" in lines[0] and "Traceback" not in result.stderr, result.stderr
    assert not (tmp_path / "figures.json").exists()
