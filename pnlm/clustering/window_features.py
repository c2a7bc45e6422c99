"""What the embedder reads of each window: its tokens decoded to text with the store's tokenizer, then
tokenized by the embedder's own tokenizer (truncated at its max_seq_length, as sentence-transformers
does), made ahead of the model in worker processes (pnlm/data/workers.py) so that a GPU never waits on either
tokenizer. A worker opens the store, the store's tokenizer and the embedder's tokenizer once.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pnlm.data.store import TokenStore
from pnlm.data.workers import WorkerDied, ordered_map
from pnlm.errors import BackendError, InputError
from pnlm.tokenizer import Tokenizer, load_tokenizer

HF_TOKENIZER_FILE = "tokenizer.json"


def window_texts(store: TokenStore, tokenizer: Tokenizer, split: str, begin: int, end: int) -> list[str]:
    """The decoded text of windows begin..end-1 of a split (BOS and EOS decode to nothing)."""
    tokens, lengths = store.batch(split, np.arange(begin, end))
    return tokenizer.decode_batch([row[:length].tolist() for row, length in zip(tokens, lengths)])


class EmbedderTokenizer:
    """The embedder's tokenizer: its tokenizer.json through the tokenizers library (what transformers' fast
    tokenizer runs), or transformers' AutoTokenizer for a folder without one. Special tokens added,
    truncated at max_length, not padded."""

    def __init__(self, folder: str | Path, max_length: int) -> None:
        folder = Path(folder)
        self.max_length = max_length
        settings = folder / "sentence_bert_config.json"
        try:  # sentence-transformers lowercases first where its folder says so, and strips every text
            self.lower = bool(json.loads(settings.read_text()).get("do_lower_case")) if settings.is_file() else False
        except (OSError, ValueError, AttributeError):
            self.lower = False
        if (folder / HF_TOKENIZER_FILE).is_file():
            from tokenizers import Tokenizer as FastTokenizer

            self._fast = FastTokenizer.from_file(str(folder / HF_TOKENIZER_FILE))
            self._fast.no_padding()
            self._fast.enable_truncation(max_length)
            self._auto = None
        else:
            try:
                from transformers import AutoTokenizer
            except ImportError:
                raise BackendError(f"{folder}: has no tokenizer.json; reading its tokenizer needs transformers "
                                   "(pip install 'pnlm[data]')") from None
            self._fast, self._auto = None, AutoTokenizer.from_pretrained(str(folder))

    def __call__(self, texts: list[str]) -> list[np.ndarray]:
        texts = [text.strip().lower() if self.lower else text.strip() for text in texts]
        if self._fast is not None:
            return [np.asarray(e.ids, dtype=np.int32) for e in self._fast.encode_batch(texts)]
        ids = self._auto(texts, truncation=True, max_length=self.max_length)["input_ids"]
        return [np.asarray(row, dtype=np.int32) for row in ids]


@dataclass(frozen=True)
class WindowFeatures:
    """Windows [begin, end) of a split as the embedder's token ids (a list of int32 arrays, one a window).
    Plain paths only, so it travels to a worker; what it opens is kept per process."""

    store: str
    tokenizer: str
    embedder: str
    max_length: int

    def __call__(self, split: str, begin: int, end: int) -> list[np.ndarray]:
        store, tokenizer, embedder_tokenizer = _opened(self)
        return embedder_tokenizer(window_texts(store, tokenizer, split, begin, end))


_OPENED: dict[WindowFeatures, tuple[TokenStore, Tokenizer, EmbedderTokenizer]] = {}


def _opened(features: WindowFeatures) -> tuple[TokenStore, Tokenizer, EmbedderTokenizer]:
    if features not in _OPENED:
        # The main process has verified the store against its sha256 already; a worker only reads it.
        _OPENED[features] = (TokenStore(features.store, verify=False), load_tokenizer(features.tokenizer),
                             EmbedderTokenizer(features.embedder, features.max_length))
    return _OPENED[features]


def feature_stream(features: WindowFeatures, split: str, ranges: Iterable[tuple[Any, int, int]],
                   workers: int) -> Iterator[tuple[Any, list[np.ndarray]]]:
    """(key, features) for each (key, begin, end) of ranges, in their order: made here (workers=0) or by
    that many worker processes (pnlm/data/workers.py), up to two ranges a worker ahead of the consumer."""
    if workers < 0:
        raise InputError(f"--workers must be 0 (decode in this process) or more, got {workers}")
    if workers == 0:
        for key, begin, end in ranges:
            yield key, features(split, begin, end)
        return
    keyed = list(ranges)
    try:
        results = ordered_map(features, ((split, begin, end) for _, begin, end in keyed), workers,
                              "decoding windows for the embedder")
        for (key, _, _), result in zip(keyed, results):
            yield key, result
    except WorkerDied as died:
        raise WorkerDied(f"{died}; the chunks embedded so far are kept: run the same command again, perhaps "
                         "with fewer --workers") from None
