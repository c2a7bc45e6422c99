"""A smaller copy of a token store: the domain data of a given size (the paper's 1M/8M/64M tokens).

The train split keeps its first documents' windows in store order until it holds the tokens asked
for; valid and test are copied whole, so every size of a domain is evaluated on the same windows,
and a smaller size's train split is a prefix of a larger one's. Cluster labels and clusters.json
come along, so a subset is labelled wherever its source was.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from pnlm.files.atomic import atomic_dir
from pnlm.data.store import CLUSTERS_FILE, TokenStore, labels_sha256, write_meta
from pnlm.errors import InputError


def train_prefix_windows(store: TokenStore, train_tokens: int) -> int:
    """How many of the first train windows hold at least train_tokens tokens (all of them if fewer)."""
    lengths = np.asarray(store.window_index("train")[:, 1])
    if not len(lengths):
        raise InputError(f"{store.path}: the train split has no windows")
    reached = np.flatnonzero(np.cumsum(lengths) >= train_tokens)
    return int(reached[0]) + 1 if len(reached) else len(lengths)


def subset_store(source: str | Path, out: str | Path, train_tokens: int) -> TokenStore:
    """Write to out a copy of source whose train split holds its first ~train_tokens tokens."""
    if isinstance(train_tokens, bool) or not isinstance(train_tokens, int) or train_tokens < 1:
        raise InputError(f"a subset needs a whole number of train tokens, at least 1, got {train_tokens!r}")
    store = TokenStore(source)
    if train_tokens > store.num_tokens("train"):
        raise InputError(f"{source}: its train split has {store.num_tokens('train'):,} tokens, fewer than the "
                         f"{train_tokens:,} asked for; ask for at most that many (an experiment plan: domain_tokens)")
    count = train_prefix_windows(store, train_tokens)
    index = np.asarray(store.window_index("train")[:count])
    tokens = np.concatenate([store.window("train", i) for i in range(count)]).astype(store.dtype)
    offsets = np.concatenate([[0], np.cumsum(index[:, 1])[:-1]]).astype(np.int64)
    bos = store.meta.get("bos_id")
    documents = int(sum(store.window("train", i)[0] == bos for i in range(count))) if bos is not None else 0
    labels = store.cluster_ids("train")
    with atomic_dir(out) as folder:
        tokens.tofile(folder / "train.tokens")
        np.save(folder / "train.windows.npy", np.stack([offsets, index[:, 1]], axis=1), allow_pickle=False)
        if labels is not None:
            np.save(folder / "train.clusters.npy", labels[:count].astype(np.int32), allow_pickle=False)
        for split in store.splits:
            if split == "train":
                continue
            for suffix in (".tokens", ".windows.npy", ".clusters.npy"):
                if (store.path / f"{split}{suffix}").is_file() and (suffix != ".clusters.npy" or labels is not None):
                    shutil.copyfile(store.path / f"{split}{suffix}", folder / f"{split}{suffix}")
        for name in store.tokenizer_files:
            shutil.copyfile(store.path / name, folder / name)
        if labels is not None:
            info = {**store.clusters_info(), "labels_sha256": labels_sha256(folder, store.splits)}
            (folder / CLUSTERS_FILE).write_text(json.dumps(info, indent=2) + "\n")
        splits = dict(store.meta["splits"])
        splits["train"] = {"documents": documents, "tokens": int(len(tokens)), "windows": count}
        meta = {key: value for key, value in store.meta.items() if key != "sha256"}
        write_meta(folder, {**meta, "splits": splits,
                            "subset_of": {"store": str(store.path), "train_tokens_asked": train_tokens}})
    return TokenStore(out, verify=False)
