"""The MLX CPU replacements for exp, softmax, SiLU and cross-entropy against numpy, values and gradients."""

import mlx.core as mx
import numpy as np

from pnlm.backends.mlx.cpu_ops import cross_entropy, exp_nonpositive, masked_softmax, silu


def test_exp_over_its_whole_range():
    x = np.concatenate([-np.logspace(-8, 2.1, 2000), [0.0, -87.0, -88.7, -103.0, -200.0, -np.inf]]).astype(np.float32)
    got = np.array(exp_nonpositive(mx.array(x)))
    want = np.exp(x.astype(np.float64))
    normal = want > 1.2e-38
    # float32 range reduction (x * log2 e) loses |x| ulps of the exponent: mx.exp itself is 3.7e-6 off at x = -83.
    bound = 2e-7 * np.maximum(1.0, np.abs(x[normal]))
    assert np.all(np.abs(got[normal] - want[normal]) <= bound * want[normal])
    assert np.all(got[~normal] < 1.2e-38) and got[-1] == 0.0


def test_masked_softmax_and_its_gradient():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, 5, 7)).astype(np.float32) * 4
    mask = np.tril(np.ones((5, 7), dtype=bool), k=2)
    weights = rng.normal(size=x.shape).astype(np.float32)

    def loss(a):
        return (masked_softmax(a, mx.array(mask)) * mx.array(weights)).sum()

    value, grad = mx.value_and_grad(loss)(mx.array(x))
    shifted = np.where(mask, x, -np.inf).astype(np.float64)
    p = np.exp(shifted - shifted.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    want_grad = p * (weights - (p * weights).sum(-1, keepdims=True))
    assert abs(value.item() - (p * weights).sum()) < 1e-4
    assert np.abs(np.array(grad) - want_grad).max() < 1e-5


def test_silu_and_cross_entropy_with_gradients():
    rng = np.random.default_rng(1)
    x = (rng.normal(size=(64,)) * 10).astype(np.float32)
    value, grad = mx.value_and_grad(lambda a: silu(a).sum())(mx.array(x))
    s = 1 / (1 + np.exp(-x.astype(np.float64)))
    assert abs(value.item() - (x * s).sum()) < 1e-3
    assert np.abs(np.array(grad) - (s + x * s * (1 - s))).max() < 1e-5

    logits = (rng.normal(size=(4, 9, 31)) * 3).astype(np.float32)
    targets = rng.integers(0, 31, (4, 9))
    value, grad = mx.value_and_grad(lambda a: cross_entropy(a, mx.array(targets)))(mx.array(logits))
    z = logits.astype(np.float64) - logits.max(-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
    onehot = np.eye(31)[targets]
    assert abs(value.item() + np.take_along_axis(logp, targets[..., None], -1).mean()) < 1e-5
    assert np.abs(np.array(grad) - (np.exp(logp) - onehot) / targets.size).max() < 1e-6
