"""A unigram baseline: the floor a trained model has to beat.

Counts are taken over exactly the targets the training loop predicts (`pnlm.training.batches.shifted`): every
token of a window except its first, padding never counted. Probabilities use add-one (Laplace)
smoothing over the whole vocabulary, so a token never seen in training has a finite NLL:

    p(t) = (count(t) + 1) / (N + V)

The mean NLL per target token on a split is therefore directly comparable, token for token, with
`pnlm.training.evaluation.evaluate` on the same split. Stores are read in chunks of windows (memory-mapped), never
loaded whole.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pnlm.data.store import TokenStore
from pnlm.errors import PnlmError
from pnlm.training.batches import shifted

CHUNK_TOKENS = 1 << 22  # tokens read at a time


def target_counts(store: TokenStore, split: str, chunk_tokens: int = CHUNK_TOKENS) -> np.ndarray:
    """How often each token id is a target in the split: int64 (vocab_size,).

    Reads the split in batches of windows through the loop's own `shifted`, so the targets are those
    `pnlm.training.evaluation.evaluate` scores."""
    counts = np.zeros(store.vocab_size, dtype=np.int64)
    windows_per_chunk = max(1, chunk_tokens // max(store.context, 1))
    for tokens, lengths in store.iter_batches(split, windows_per_chunk, shuffle=False):
        _, targets, mask = shifted(tokens, lengths)
        real = targets[mask > 0]
        if real.size and (int(real.max()) >= store.vocab_size or int(real.min()) < 0):
            raise PnlmError(f"{store.path}: a token id in {split} is outside the vocabulary of {store.vocab_size}; "
                            "the store is damaged")
        counts += np.bincount(real, minlength=store.vocab_size)
    return counts


@dataclass(frozen=True)
class Unigram:
    """Add-one smoothed unigram model over a store's vocabulary."""

    counts: np.ndarray        # int64 (vocab_size,): target counts of the fitting split
    tokenizer_sha256: str
    source: str               # the store and split it was fit on, for messages

    @property
    def vocab_size(self) -> int:
        return len(self.counts)

    @property
    def tokens(self) -> int:
        return int(self.counts.sum())

    def neg_log_probs(self) -> np.ndarray:
        """-ln p(t) for every token id, float64."""
        return np.log(self.tokens + self.vocab_size) - np.log(self.counts + 1.0)

    def nll(self, store: TokenStore, split: str) -> tuple[float, int]:
        """Mean NLL per target token of the split, and the number of targets (as `pnlm.training.evaluation.evaluate`)."""
        if store.tokenizer_sha256 != self.tokenizer_sha256:
            raise PnlmError(f"{store.path}: prepared with another tokenizer than the unigram model's ({self.source})")
        if store.vocab_size != self.vocab_size:
            raise PnlmError(f"{store.path}: vocabulary of {store.vocab_size}, the unigram model's has {self.vocab_size}")
        counts = target_counts(store, split)
        total = int(counts.sum())
        if not total:
            raise PnlmError(f"{store.path}: the {split} split has no tokens to evaluate on")
        return float(counts @ self.neg_log_probs()) / total, total


def fit_unigram(store: TokenStore, split: str = "train") -> Unigram:
    """Fit the unigram model on a store's split (by default the train split, what pretraining sees)."""
    counts = target_counts(store, split)
    if not counts.sum():
        raise PnlmError(f"{store.path}: the {split} split has no tokens to fit a unigram model on")
    return Unigram(counts, store.tokenizer_sha256, f"{store.path} {split}")
