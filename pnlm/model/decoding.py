"""Choosing the next token from logits: greedy, temperature, nucleus (top-p). Numpy, so both backends sample alike."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pnlm import values
from pnlm.errors import PnlmError


@dataclass(frozen=True)
class SamplingConfig:
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None

    def __post_init__(self) -> None:
        values.real("temperature", self.temperature, 0.0)
        values.real("top_p", self.top_p, 0.0, 1.0, above=True)
        if self.seed is not None:
            values.seed(self.seed)


class TokenSampler:
    """Temperature 0 is greedy (argmax); otherwise softmax(logits / T), cut to the smallest set of mass >= top_p."""

    def __init__(self, config: SamplingConfig) -> None:
        self.config = config
        self.rng = np.random.default_rng(config.seed)

    def __call__(self, logits: np.ndarray) -> int:
        logits = np.asarray(logits, dtype=np.float64)
        if self.config.temperature == 0.0:
            return int(np.argmax(logits))
        scaled = logits / self.config.temperature
        probs = np.exp(scaled - scaled.max())
        probs /= probs.sum()
        if self.config.top_p < 1.0:
            order = np.argsort(-probs, kind="stable")
            cumulative = np.cumsum(probs[order])
            keep = order[: int(np.searchsorted(cumulative, self.config.top_p)) + 1]
            kept = probs[keep] / probs[keep].sum()
            return int(keep[self.rng.choice(len(keep), p=kept)])
        return int(self.rng.choice(len(probs), p=probs))
