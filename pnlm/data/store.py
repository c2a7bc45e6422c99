"""Token store: a folder of memory-mapped token arrays, one per split, cut into windows.

    STORE/
      tokenizer.model        a copy of the tokenizer the ids refer to
      meta.json              format, tokenizer sha256, vocab size, context, dtype, counts per split
      train.tokens           flat uint16 (vocab <= 65536) or uint32 token ids, every document of the split
      train.windows.npy      int64 (windows, 2): start offset into train.tokens, length (<= context)
      train.clusters.npy     int32 (windows,): cluster id per window, once `pnlm data cluster|assign` ran
      clusters.json          which clustering the labels come from
      valid.* test.*         the same for the other splits

A document is [BOS] + its tokens + [EOS], cut into non-overlapping windows of `context`
tokens; the last window of a document may be shorter (never shorter than 2 tokens: one
prediction). Windows never cross documents.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from pnlm.atomic import atomic_file
from pnlm.errors import InputError
from pnlm.tokenizer import TOKENIZER_FILE, Tokenizer, load_tokenizer

FORMAT = "pnlm-token-store"
VERSION = 1
META_FILE = "meta.json"
CLUSTERS_FILE = "clusters.json"
SPLITS = ("train", "valid", "test")
MIN_WINDOW = 2


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16 if vocab_size <= 1 << 16 else np.uint32)


def window_bounds(length: int, context: int) -> list[tuple[int, int]]:
    """(offset, length) of the non-overlapping windows of a document of `length` tokens."""
    return [(start, min(context, length - start)) for start in range(0, length, context)
            if length - start >= MIN_WINDOW]


class TokenStore:
    """Read access to a token store; tokens stay on disk (np.memmap)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        meta_path = self.path / META_FILE
        if not meta_path.is_file():
            raise InputError(f"{self.path}: not a token store (no {META_FILE}; make one with `pnlm data prepare`)")
        try:
            self.meta: dict[str, Any] = json.loads(meta_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise InputError(f"{meta_path}: not valid JSON: {exc}") from None
        if self.meta.get("format") != FORMAT or self.meta.get("version") != VERSION:
            raise InputError(f"{meta_path}: expected format {FORMAT!r} version {VERSION}")
        self.dtype = np.dtype(self.meta["dtype"])
        self._tokens: dict[str, np.ndarray] = {}
        self._windows: dict[str, np.ndarray] = {}
        for split in self.splits:
            self._check_split(split)

    def _check_split(self, split: str) -> None:
        counts = self.meta["splits"][split]
        tokens_file = self.path / f"{split}.tokens"
        if not tokens_file.is_file() or tokens_file.stat().st_size != counts["tokens"] * self.dtype.itemsize:
            raise InputError(f"{tokens_file}: missing or not {counts['tokens']} tokens long; the store is damaged")
        windows = np.load(self.path / f"{split}.windows.npy", mmap_mode="r", allow_pickle=False)
        if windows.shape != (counts["windows"], 2):
            raise InputError(f"{self.path / f'{split}.windows.npy'}: expected {counts['windows']} windows")
        self._windows[split] = windows
        self._tokens[split] = (np.memmap(tokens_file, dtype=self.dtype, mode="r") if counts["tokens"]
                               else np.zeros(0, dtype=self.dtype))

    @property
    def splits(self) -> list[str]:
        return [s for s in SPLITS if s in self.meta["splits"]]

    @property
    def context(self) -> int:
        return int(self.meta["context"])

    @property
    def vocab_size(self) -> int:
        return int(self.meta["vocab_size"])

    @property
    def tokenizer_sha256(self) -> str:
        return str(self.meta["tokenizer_sha256"])

    @property
    def name(self) -> str:
        return self.path.name

    def _split(self, split: str) -> str:
        if split not in self._windows:
            raise InputError(f"{self.path}: no split {split!r}; it has {', '.join(self.splits)}")
        return split

    def num_windows(self, split: str) -> int:
        return len(self._windows[self._split(split)])

    def num_tokens(self, split: str) -> int:
        return int(self.meta["splits"][self._split(split)]["tokens"])

    def window_index(self, split: str) -> np.ndarray:
        """(windows, 2) int64 array of (start, length), memory-mapped."""
        return self._windows[self._split(split)]

    def window(self, split: str, index: int) -> np.ndarray:
        start, length = self._windows[self._split(split)][index]
        return np.asarray(self._tokens[split][start:start + length])

    def batch(self, split: str, indices: np.ndarray, pad_id: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """Tokens (batch, longest window) int32, padded with pad_id, and each window's length."""
        index = self._windows[self._split(split)][np.asarray(indices)]
        lengths = index[:, 1].astype(np.int32)
        out = np.full((len(index), int(lengths.max()) if len(index) else 0), pad_id, dtype=np.int32)
        tokens = self._tokens[split]
        for row, (start, length) in enumerate(index):
            out[row, :length] = tokens[start:start + length]
        return out, lengths

    def iter_batches(self, split: str, batch_size: int, shuffle: bool = True, seed: int = 0,
                     pad_id: int = 0) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """One pass over the split's windows in batches (a shuffled order when shuffle)."""
        order = np.arange(self.num_windows(split))
        if shuffle:
            np.random.default_rng(seed).shuffle(order)
        for begin in range(0, len(order), batch_size):
            yield self.batch(split, order[begin:begin + batch_size], pad_id)

    def tokenizer(self) -> Tokenizer:
        """The tokenizer the store was prepared with (a copy lives in the store), checked by its sha256."""
        path = self.path / TOKENIZER_FILE
        if not path.is_file():
            raise InputError(f"{self.path}: holds no copy of its tokenizer (prepared by an older pnlm); prepare it again")
        tokenizer = load_tokenizer(path)
        if tokenizer.sha256 != self.tokenizer_sha256:
            raise InputError(f"{path}: sha256 differs from the one in {META_FILE}; the store is damaged")
        return tokenizer

    def cluster_ids(self, split: str) -> np.ndarray | None:
        """Cluster id per window, or None when the store is not labelled (or a relabelling did not finish)."""
        path = self.path / f"{self._split(split)}.clusters.npy"
        if not path.is_file() or not (self.path / CLUSTERS_FILE).is_file():
            return None
        ids = np.load(path, allow_pickle=False)
        if ids.shape != (self.num_windows(split),):
            raise InputError(f"{path}: {ids.shape[0]} labels for {self.num_windows(split)} windows; relabel the store")
        return ids

    def clusters_info(self) -> dict[str, Any] | None:
        path = self.path / CLUSTERS_FILE
        return json.loads(path.read_text()) if path.is_file() else None

    def write_cluster_ids(self, ids_by_split: dict[str, np.ndarray], info: dict[str, Any]) -> None:
        """Label windows with cluster ids; each file is written under a temporary name and renamed.

        Labels of splits not given stay when they come from the same clusters (same centroids) and
        are removed otherwise, so every label in the store comes from the clustering clusters.json names.
        """
        for split, ids in ids_by_split.items():
            if ids.shape != (self.num_windows(split),):
                raise ValueError(f"{split}: {len(ids)} labels for {self.num_windows(split)} windows")
        previous = self.clusters_info()
        same = previous is not None and previous.get("centroids_sha256") == info.get("centroids_sha256")
        # clusters.json goes first and is removed while labels change, so a crash midway never leaves
        # labels that claim to come from a clustering they do not.
        (self.path / CLUSTERS_FILE).unlink(missing_ok=True)
        if not same:
            for split in self.splits:
                if split not in ids_by_split:
                    (self.path / f"{split}.clusters.npy").unlink(missing_ok=True)
        for split, ids in ids_by_split.items():
            with atomic_file(self.path / f"{split}.clusters.npy") as f:
                np.save(f, ids.astype(np.int32), allow_pickle=False)
        with atomic_file(self.path / CLUSTERS_FILE) as f:
            f.write((json.dumps(info, indent=2) + "\n").encode())
