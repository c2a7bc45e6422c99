import math

import pytest

from pnlm.training.schedule import learning_rate


def test_warmup_then_cosine_to_the_floor():
    rates = [learning_rate(s, 1e-3, warmup_steps=10, total_steps=110, min_ratio=0.1) for s in range(120)]
    assert rates[0] == pytest.approx(1e-4) and rates[9] == pytest.approx(1e-3)
    assert all(a <= b for a, b in zip(rates[:10], rates[1:10]))
    assert all(a >= b for a, b in zip(rates[10:110], rates[11:111]))
    assert rates[60] == pytest.approx(1e-3 * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5))))
    assert rates[110] == pytest.approx(1e-4) and rates[119] == pytest.approx(1e-4)


def test_constant_without_cosine_and_without_warmup():
    assert learning_rate(0, 3e-4, 0, 100, cosine=False) == 3e-4
    assert learning_rate(99, 3e-4, 0, 100, cosine=False) == 3e-4
    assert learning_rate(5, 3e-4, 0, 0) == 3e-4
