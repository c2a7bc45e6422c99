"""The two backends' training steps are the same computation: same losses, same updated weights."""

import numpy as np
import pytest

from pnlm.model.spec import OptimizerSpec
from pnlm.checkpoints.weights import init_weights


def train(backend, spec, batches, optimizer):
    if backend == "mlx":
        from pnlm.backends.mlx.model import Transformer
        from pnlm.backends.mlx.train_step import TrainStep
    else:
        from pnlm.backends.torch.model import Transformer
        from pnlm.backends.torch.train_step import TrainStep
    model = Transformer(spec)
    model.load_canonical(init_weights(spec, seed=0))
    step = TrainStep(model, optimizer)
    losses = [step(batch[:, :-1], batch[:, 1:]) for batch in batches]
    return losses, model.canonical_weights()


@pytest.mark.parametrize("optimizer", [OptimizerSpec(lr=1e-3), OptimizerSpec(lr=3e-3, weight_decay=0.1, clip_norm=0.5)])
def test_torch_and_mlx_train_alike(tiny_spec, optimizer):
    rng = np.random.default_rng(0)
    # A repeated batch, so the loss must fall: the steps really learn.
    batches = [rng.integers(0, tiny_spec.vocab_size, (4, 65))] * 6
    torch_losses, torch_weights = train("torch", tiny_spec, batches, optimizer)
    mlx_losses, mlx_weights = train("mlx", tiny_spec, batches, optimizer)
    assert torch_losses[-1] < torch_losses[0] - 0.05
    assert np.abs(np.array(torch_losses) - np.array(mlx_losses)).max() < 1e-5
    # Adam divides by sqrt(v): where a gradient is near zero, last-bit differences in it move the weight
    # visibly. So the weights are compared with how far training moved them (gradients agree to ~1e-6).
    start = init_weights(tiny_spec, seed=0)
    for name in torch_weights:
        moved = np.abs(torch_weights[name] - start[name]).max()
        assert np.abs(torch_weights[name] - mlx_weights[name]).max() < 0.02 * moved, name


@pytest.mark.parametrize("backend", ["torch", "mlx"])
def test_mask_counts_only_real_targets(tiny_spec, backend):
    rng = np.random.default_rng(3)
    batch = rng.integers(0, tiny_spec.vocab_size, (3, 33))
    mask = np.ones((3, 32), dtype=np.float32)
    mask[1, 20:] = 0
    mask[2, 5:] = 0
    step = make_step(backend, tiny_spec, OptimizerSpec())
    total, count = step.nll(batch[:, :-1], batch[:, 1:], mask)
    assert count == int(mask.sum())
    # the same sums, one row at a time, cut to the real targets
    rows = [step.nll(batch[i:i + 1, :n], batch[i:i + 1, 1:n + 1]) for i, n in enumerate((32, 20, 5))]
    assert total == pytest.approx(sum(r[0] for r in rows), rel=1e-5)
    loss = step(batch[:, :-1], batch[:, 1:], mask)
    assert loss == pytest.approx(total / count, rel=1e-5)


@pytest.mark.parametrize("first, second", [("torch", "torch"), ("mlx", "mlx"), ("torch", "mlx"), ("mlx", "torch")])
def test_optimizer_state_round_trip_continues_training(tiny_spec, first, second):
    rng = np.random.default_rng(4)
    batches = [rng.integers(0, tiny_spec.vocab_size, (2, 33)) for _ in range(6)]
    straight = make_step(first, tiny_spec, OptimizerSpec(lr=2e-3))
    losses = [straight(b[:, :-1], b[:, 1:]) for b in batches]
    interrupted = make_step(first, tiny_spec, OptimizerSpec(lr=2e-3))
    for b in batches[:3]:
        interrupted(b[:, :-1], b[:, 1:])
    resumed = make_step(second, tiny_spec, OptimizerSpec(lr=2e-3), weights=interrupted.model.canonical_weights())
    resumed.load_optimizer_state(interrupted.optimizer_state())
    assert int(resumed.optimizer_state()["step"]) == 3
    after = [resumed(b[:, :-1], b[:, 1:]) for b in batches[3:]]
    tolerance = 0 if first == second == "torch" else 1e-5
    assert np.abs(np.array(after) - np.array(losses[3:])).max() <= tolerance


def make_step(backend, spec, optimizer, weights=None):
    if backend == "mlx":
        from pnlm.backends.mlx.model import Transformer
        from pnlm.backends.mlx.train_step import TrainStep
    else:
        from pnlm.backends.torch.model import Transformer
        from pnlm.backends.torch.train_step import TrainStep
    model = Transformer(spec)
    model.load_canonical(init_weights(spec, seed=0) if weights is None else weights)
    return TrainStep(model, optimizer)


def test_evaluation_sees_the_trained_weights(tiny_spec):
    rng = np.random.default_rng(5)
    batch = rng.integers(0, tiny_spec.vocab_size, (2, 33))
    mlx_step = make_step("mlx", tiny_spec, OptimizerSpec(lr=1e-2))
    before = mlx_step.nll(batch[:, :-1], batch[:, 1:])[0]
    for _ in range(5):
        mlx_step(batch[:, :-1], batch[:, 1:])
    after = mlx_step.nll(batch[:, :-1], batch[:, 1:])[0]
    torch_step = make_step("torch", tiny_spec, OptimizerSpec(), weights=mlx_step.model.canonical_weights())
    assert after < before
    assert after == pytest.approx(torch_step.nll(batch[:, :-1], batch[:, 1:])[0], rel=1e-5)


@pytest.mark.parametrize("backend", ["torch", "mlx"])
def test_gradient_accumulation_gives_the_same_update(tiny_spec, backend):
    from pnlm.backends import make_train_step

    rng = np.random.default_rng(4)
    batch = rng.integers(0, tiny_spec.vocab_size, (4, 33))
    mask = np.ones((4, 32), dtype=np.float32)
    mask[1, 20:] = 0  # uneven token counts per slice: the loss is still the whole batch's mean
    weights = init_weights(tiny_spec, seed=0)
    runs = {}
    for micro_batches in (1, 2, 4):
        step = make_train_step(backend, tiny_spec, weights, OptimizerSpec(lr=1e-3))
        losses = [step(batch[:, :-1], batch[:, 1:], mask, micro_batches=micro_batches) for _ in range(3)]
        runs[micro_batches] = losses, step.model.canonical_weights()
    for micro_batches in (2, 4):
        assert np.abs(np.array(runs[1][0]) - np.array(runs[micro_batches][0])).max() < 1e-5
        # As above, Adam magnifies last-bit differences of near-zero gradients in single elements: compare
        # the norm of the difference with the norm of the update.
        for name, value in runs[1][1].items():
            moved = np.linalg.norm(value - weights[name])
            assert np.linalg.norm(value - runs[micro_batches][1][name]) < 0.01 * moved, name


@pytest.mark.parametrize("backend", ["torch", "mlx"])
def test_bfloat16_compute_keeps_float32_weights_and_tracks_float32(tiny_spec, backend):
    from pnlm.backends import make_train_step

    rng = np.random.default_rng(5)
    batch = rng.integers(0, tiny_spec.vocab_size, (4, 65))
    weights = init_weights(tiny_spec, seed=0)
    losses = {}
    for precision in ("float32", "bfloat16"):
        step = make_train_step(backend, tiny_spec, weights, OptimizerSpec(lr=3e-3), precision=precision)
        losses[precision] = [step(batch[:, :-1], batch[:, 1:]) for _ in range(6)]
        step.nll(batch[:, :-1], batch[:, 1:])
        if backend == "mlx":
            from mlx.utils import tree_flatten
            dtypes = {str(v.dtype) for _, v in tree_flatten(step.model.parameters())}
        else:
            dtypes = {str(p.dtype) for p in step.model.parameters()}
        assert dtypes == {"mlx.core.float32" if backend == "mlx" else "torch.float32"}, dtypes
    assert losses["bfloat16"][-1] < losses["bfloat16"][0] - 0.05
    assert np.abs(np.array(losses["float32"]) - np.array(losses["bfloat16"])).max() < 0.05
