"""Learning-rate schedule: linear warmup, then cosine decay to a floor (pretraining), or constant (fine-tuning)."""

from __future__ import annotations

import math


def learning_rate(step: int, base_lr: float, warmup_steps: int, total_steps: int, min_ratio: float = 0.1,
                  cosine: bool = True) -> float:
    """The rate for optimizer step `step` (0-based): base_lr * (step + 1) / warmup during warmup; then, with
    cosine, from base_lr down to min_ratio * base_lr at total_steps; without, base_lr."""
    if warmup_steps > 0 and step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    if not cosine or total_steps <= warmup_steps:
        return base_lr
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return base_lr * (min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress)))
