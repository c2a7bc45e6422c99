"""Token store: a folder of memory-mapped token arrays, one per split, cut into windows.

    STORE/
      tokenizer.model        a copy of the tokenizer the ids refer to (or tokenizer.json +
                             tokenizer_config.json, an imported model's: pnlm/tokenizer.py)
      meta.json              format, tokenizer sha256, vocab size, context, dtype, counts per split,
                             and the sha256 of every file above it (checked when the store is opened)
      train.tokens           flat uint16 (vocab <= 65536) or uint32 token ids, every document of the split
      train.windows.npy      int64 (windows, 2): start offset into train.tokens, length (<= context)
      train.clusters.npy     int32 (windows,): cluster id per window, once `pnlm data cluster|assign` ran
      clusters.json          which clustering the labels come from, and the sha256 of each labels file
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

from pnlm.files.atomic import atomic_file
from pnlm.errors import InputError
from pnlm.files.json_object import read_json_object
from pnlm.tokenizer import TOKENIZER_FILE, TOKENIZER_FILE_SETS, Tokenizer, file_sha256, load_tokenizer, tokenizer_file_names

FORMAT = "pnlm-token-store"
VERSION = 2  # 2: meta.json holds the sha256 of every file
META_FILE = "meta.json"
CLUSTERS_FILE = "clusters.json"
SPLITS = ("train", "valid", "test")
MIN_WINDOW = 2
MAX_META_BYTES = 1 << 20
DTYPES = ("uint16", "uint32")


def data_files(splits: list[str] | tuple[str, ...], tokenizer_files: tuple[str, ...]) -> list[str]:
    """The files meta.json hashes: each split's tokens and windows, and the tokenizer's."""
    return [f"{split}{suffix}" for split in splits for suffix in (".tokens", ".windows.npy")] + list(tokenizer_files)


def write_meta(folder: Path, meta: dict[str, Any]) -> None:
    """meta.json, written last, with the sha256 of every data file of the folder."""
    tokenizer_files = tokenizer_file_names(p.name for p in folder.iterdir()) or (TOKENIZER_FILE,)
    hashes = {name: file_sha256(folder / name) for name in data_files(list(meta["splits"]), tokenizer_files)}
    with atomic_file(folder / META_FILE) as f:
        f.write((json.dumps({**meta, "sha256": hashes}, indent=2) + "\n").encode())


def labels_sha256(folder: Path, splits: list[str]) -> dict[str, str]:
    """The sha256 of the labels file of each split that has one (recorded in clusters.json)."""
    return {split: file_sha256(folder / f"{split}.clusters.npy") for split in splits
            if (folder / f"{split}.clusters.npy").is_file()}


def _is_count(value: Any, high: int = 1 << 62) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= high


def check_meta(meta: dict[str, Any], path: Path) -> dict[str, Any]:
    """meta.json's fields, their types and ranges, or an InputError naming the first one that is wrong."""
    if meta.get("format") != FORMAT:
        raise InputError(f"{path}: expected format {FORMAT!r}, got {meta.get('format')!r}")
    if meta.get("version") != VERSION:
        raise InputError(f"{path}: store format version {meta.get('version')!r}; this pnlm reads version {VERSION} "
                         f"(checksummed): prepare the store again")
    problems = []
    if meta.get("dtype") not in DTYPES:
        problems.append(f"dtype must be one of {', '.join(DTYPES)}")
    if not _is_count(meta.get("vocab_size"), 1 << 32) or not meta["vocab_size"]:
        problems.append("vocab_size must be a positive integer")
    if not _is_count(meta.get("context"), 1 << 20) or meta["context"] < MIN_WINDOW:
        problems.append(f"context must be an integer from {MIN_WINDOW} to {1 << 20}")
    if not isinstance(meta.get("tokenizer_sha256"), str):
        problems.append("tokenizer_sha256 must be a string")
    splits = meta.get("splits")
    if not isinstance(splits, dict) or not splits or not set(splits) <= set(SPLITS) or not all(
            isinstance(c, dict) and all(_is_count(c.get(k)) for k in ("documents", "tokens", "windows"))
            for c in splits.values()):
        problems.append(f"splits must map some of {', '.join(SPLITS)} to counts of documents, tokens and windows")
    hashes = meta.get("sha256")
    tokenizer_files = (tokenizer_file_names(hashes) if isinstance(hashes, dict) else None) or TOKENIZER_FILE_SETS[0]
    if not problems and (not isinstance(hashes, dict) or set(hashes) != set(data_files(list(splits), tokenizer_files))
                         or not all(isinstance(h, str) for h in hashes.values())):
        problems.append(f"sha256 must give the hash of {', '.join(data_files(list(splits), tokenizer_files))}")
    if problems:
        raise InputError(f"{path}: {problems[0]}")
    return meta


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16 if vocab_size <= 1 << 16 else np.uint32)


def window_bounds(length: int, context: int) -> list[tuple[int, int]]:
    """(offset, length) of the non-overlapping windows of a document of `length` tokens."""
    return [(start, min(context, length - start)) for start in range(0, length, context)
            if length - start >= MIN_WINDOW]


class TokenStore:
    """Read access to a token store; tokens stay on disk (np.memmap).

    Opening checks every file against the sha256 meta.json records (verify=False skips the hashing,
    for a store this process has just written or verified)."""

    def __init__(self, path: str | Path, verify: bool = True) -> None:
        self.path = Path(path)
        meta_path = self.path / META_FILE
        if not meta_path.is_file():
            raise InputError(f"{self.path}: not a token store (no {META_FILE}; make one with `pnlm data prepare`)")
        self.meta: dict[str, Any] = check_meta(read_json_object(meta_path, MAX_META_BYTES, InputError), meta_path)
        self.dtype = np.dtype(self.meta["dtype"])
        if verify:
            self.verify()
        self._tokens: dict[str, np.ndarray] = {}
        self._windows: dict[str, np.ndarray] = {}
        for split in self.splits:
            self._check_split(split)

    def verify(self) -> None:
        """Every data file against its sha256 in meta.json: a truncated or changed file is named."""
        for name, expected in self.meta["sha256"].items():
            file = self.path / name
            if not file.is_file():
                raise InputError(f"{file}: missing; the store is incomplete (prepare it again)")
            if file_sha256(file) != expected:
                raise InputError(f"{file}: sha256 does not match {META_FILE}; the file is corrupted or was changed")

    def _check_split(self, split: str) -> None:
        counts = self.meta["splits"][split]
        tokens_file = self.path / f"{split}.tokens"
        if not tokens_file.is_file() or tokens_file.stat().st_size != counts["tokens"] * self.dtype.itemsize:
            raise InputError(f"{tokens_file}: missing or not {counts['tokens']} tokens long; the store is damaged")
        windows_file = self.path / f"{split}.windows.npy"
        try:
            windows = np.load(windows_file, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise InputError(f"{windows_file}: not a window index ({exc})") from None
        if windows.shape != (counts["windows"], 2) or windows.dtype != np.int64:
            raise InputError(f"{windows_file}: expected {counts['windows']} windows of (start, length) int64")
        if len(windows) and (int(windows[:, 0].min()) < 0 or int(windows[:, 1].min()) < MIN_WINDOW
                             or int(windows[:, 1].max()) > self.context
                             or int((windows[:, 0] + windows[:, 1]).max()) > counts["tokens"]):
            raise InputError(f"{windows_file}: windows out of the split's {counts['tokens']} tokens or longer than "
                             f"the context {self.context}; the store is damaged")
        self._windows[split] = windows
        self._tokens[split] = (np.memmap(tokens_file, dtype=self.dtype, mode="r") if counts["tokens"]
                               else np.zeros(0, dtype=self.dtype))

    @property
    def splits(self) -> list[str]:
        return [s for s in SPLITS if s in self.meta["splits"]]

    @property
    def context(self) -> int:
        return int(self.meta["context"])

    def check_context(self, context: int, model: str) -> None:
        """Refuse a model whose context is shorter than the store's windows (positions it has never seen)."""
        if self.context > context:
            raise InputError(f"{self.path}: windows of {self.context} tokens exceed the context of {model} "
                             f"({context} tokens); prepare the store with --context {context} or less")

    @property
    def vocab_size(self) -> int:
        return int(self.meta["vocab_size"])

    @property
    def tokenizer_sha256(self) -> str:
        return str(self.meta["tokenizer_sha256"])

    @property
    def tokenizer_files(self) -> tuple[str, ...]:
        """The names of the tokenizer's files in the store (meta.json hashes them)."""
        return tokenizer_file_names(self.meta["sha256"]) or TOKENIZER_FILE_SETS[0]

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
        path = self.path / self.tokenizer_files[0]
        if not path.is_file():
            raise InputError(f"{self.path}: holds no copy of its tokenizer (prepared by an older pnlm); prepare it again")
        tokenizer = load_tokenizer(path)
        if tokenizer.sha256 != self.tokenizer_sha256:
            raise InputError(f"{path}: sha256 differs from the one in {META_FILE}; the store is damaged")
        return tokenizer

    def cluster_ids(self, split: str) -> np.ndarray | None:
        """Cluster id per window, or None when the store is not labelled (or a relabelling did not finish).
        The labels are checked against the sha256 clusters.json records."""
        path = self.path / f"{self._split(split)}.clusters.npy"
        info = self.clusters_info()
        if not path.is_file() or info is None:
            return None
        expected = info.get("labels_sha256", {}).get(split) if isinstance(info.get("labels_sha256"), dict) else None
        if expected is None:
            return None  # labels clusters.json does not vouch for: left by an interrupted relabelling
        if file_sha256(path) != expected:
            raise InputError(f"{path}: sha256 does not match {CLUSTERS_FILE}; the labels are corrupted or were changed")
        try:
            ids = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise InputError(f"{path}: not a labels file ({exc})") from None
        if ids.shape != (self.num_windows(split),):
            raise InputError(f"{path}: {ids.shape[0]} labels for {self.num_windows(split)} windows; relabel the store")
        return ids

    def clusters_info(self) -> dict[str, Any] | None:
        path = self.path / CLUSTERS_FILE
        return read_json_object(path, MAX_META_BYTES, InputError) if path.is_file() else None

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
        kept = [split for split in self.splits if (self.path / f"{split}.clusters.npy").is_file()]
        info = {**info, "labels_sha256": labels_sha256(self.path, kept)}
        with atomic_file(self.path / CLUSTERS_FILE) as f:
            f.write((json.dumps(info, indent=2) + "\n").encode())
