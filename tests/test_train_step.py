"""The two backends' training steps are the same computation: same losses, same updated weights."""

import numpy as np
import pytest

from pnlm.spec import OptimizerSpec
from pnlm.weights import init_weights


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
