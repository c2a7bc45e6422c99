"""Token stores: windowing, stable splits, round trip, and never a half-written store."""

import gzip
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from pnlm.data.prepare import prepare_store, split_of
from pnlm.data.store import TokenStore, token_dtype, window_bounds
from pnlm.errors import InputError

PROSE = ("It is a truth universally acknowledged, that a single man in possession of a good fortune, "
         "must be in want of a wife. ")


@pytest.mark.parametrize("length, context, expected", [
    (5, 8, [(0, 5)]),                          # shorter than a window
    (16, 8, [(0, 8), (8, 8)]),                 # exact multiple
    (17, 8, [(0, 8), (8, 8)]),                 # one token left over: no prediction in it, dropped
    (18, 8, [(0, 8), (8, 8), (16, 2)]),
    (1, 8, []),
    (8, 8, [(0, 8)]),
])
def test_window_bounds(length, context, expected):
    assert window_bounds(length, context) == expected


def test_token_dtype():
    assert token_dtype(32000) == np.uint16 and token_dtype(65536) == np.uint16 and token_dtype(65537) == np.uint32


def test_split_is_stable_and_close_to_the_fractions():
    docs = [f"document number {i} " + PROSE * (i % 3) for i in range(4000)]
    splits = [split_of(d, 0.1, 0.2) for d in docs]
    assert splits == [split_of(d, 0.1, 0.2) for d in docs]
    shares = {s: splits.count(s) / len(docs) for s in ("train", "valid", "test")}
    assert abs(shares["valid"] - 0.1) < 0.02 and abs(shares["test"] - 0.2) < 0.02


def test_round_trip_every_document_in_its_windows(tmp_path, tokenizer):
    docs = [PROSE * n + f"chapter {n}" for n in range(1, 40)] + ["", "   \n"]
    store, stats = prepare_store(iter(docs), tokenizer, tmp_path / "store", context=32,
                                 valid_fraction=0.2, test_fraction=0.2, workers=2)
    assert stats.empty_documents == 2
    assert sum(stats.documents.values()) == 39
    rebuilt = {}
    for split in store.splits:
        index = store.window_index(split)
        assert (index[:, 1] <= 32).all() and (index[:, 1] >= 2).all()
        assert store.num_tokens(split) >= index[:, 1].sum()
        tokens = np.concatenate([store.window(split, i) for i in range(store.num_windows(split))]) if len(index) else []
        text = tokenizer.decode([t for t in tokens if t not in (tokenizer.bos_id, tokenizer.eos_id)])
        rebuilt[split] = text
        for doc in docs[:39]:
            if split_of(doc, 0.2, 0.2) == split:
                assert doc in text
    reopened = TokenStore(tmp_path / "store")
    assert reopened.meta == store.meta and reopened.tokenizer_sha256 == tokenizer.sha256
    assert reopened.context == 32 and reopened.vocab_size == tokenizer.vocab_size


def test_batches_pad_and_cover_the_split(tmp_path, tokenizer):
    docs = [PROSE * (n % 5 + 1) for n in range(30)]
    store, _ = prepare_store(iter(docs), tokenizer, tmp_path / "store", context=16, valid_fraction=0, test_fraction=0)
    seen = 0
    for tokens, lengths in store.iter_batches("train", 7, shuffle=True, seed=1):
        assert tokens.shape[0] == len(lengths) <= 7 and tokens.dtype == np.int32
        for row, length in zip(tokens, lengths):
            assert (row[length:] == 0).all()
        seen += len(lengths)
    assert seen == store.num_windows("train")


def test_no_documents_is_an_error_and_leaves_nothing(tmp_path, tokenizer):
    with pytest.raises(InputError, match="no documents"):
        prepare_store(iter(["", " "]), tokenizer, tmp_path / "store", context=16)
    assert list(tmp_path.iterdir()) == []


def test_not_a_store(tmp_path):
    with pytest.raises(InputError, match="not a token store"):
        TokenStore(tmp_path)


def test_prepare_killed_midway_leaves_no_store_and_a_rerun_completes(tmp_path, tokenizer):
    corpus = tmp_path / "big.jsonl.gz"
    with gzip.open(corpus, "wt") as f:
        for i in range(6000):
            f.write(json.dumps({"text": f"{i} " + PROSE * 30}) + "\n")
    args = [sys.executable, "-m", "pnlm.cli", "data", "prepare", str(corpus), "--tokenizer", str(tokenizer.path.parent),
            "--context", "64", "--out", str(tmp_path / "store"), "--workers", "1"]
    child = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(2.0)
    assert child.poll() is None, "prepare finished before it could be killed: make the corpus bigger"
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert not (tmp_path / "store").exists()
    with pytest.raises(InputError):
        TokenStore(tmp_path / "store")
    result = subprocess.run(args + ["--json"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    store = TokenStore(tmp_path / "store")
    assert sum(store.meta["splits"][s]["documents"] for s in store.splits) == 6000


def test_a_truncated_or_changed_file_is_named_when_the_store_opens(tmp_path, tokenizer):
    source, _ = prepare_store(iter(["To be, or not to be: that is the question. " * 20] * 12), tokenizer,
                              tmp_path / "store", context=32, workers=1)
    for name, damage in [("train.tokens", "truncate"), ("train.windows.npy", "flip"), ("tokenizer.model", "flip")]:
        copy = tmp_path / f"copy-{name}"
        shutil.copytree(source.path, copy)
        data = bytearray((copy / name).read_bytes())
        if damage == "truncate":
            del data[-2:]
        else:
            data[len(data) // 2] ^= 1
        (copy / name).write_bytes(bytes(data))
        with pytest.raises(InputError, match=f"{copy / name}: sha256 does not match meta.json"):
            TokenStore(copy)


def test_labels_are_checked_against_clusters_json(tmp_path, tokenizer):
    store, _ = prepare_store(iter(["Something is rotten in the state of Denmark. " * 20] * 12), tokenizer,
                             tmp_path / "store", context=32, workers=1)
    labels = {split: np.zeros(store.num_windows(split), dtype=np.int32) for split in store.splits}
    store.write_cluster_ids(labels, {"centroids_sha256": "x"})
    assert np.array_equal(TokenStore(store.path).cluster_ids("train"), labels["train"])
    path = store.path / "train.clusters.npy"
    data = bytearray(path.read_bytes())
    data[-1] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(InputError, match=f"{path}: sha256 does not match clusters.json"):
        TokenStore(store.path).cluster_ids("train")


def test_a_write_sweeps_what_killed_writers_left(tmp_path):
    from pnlm.files.atomic import atomic_dir, temporary_prefix

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()

    def left_by_dead(target: str, kind: str = "tmp") -> Path:
        prefix = temporary_prefix(tmp_path / target, kind).replace(f"-{os.getpid()}-", f"-{dead.pid}-")
        return tmp_path / f"{prefix}abc"

    left_by_dead("ckpt").mkdir()  # a killed save's half-written folder
    caught = left_by_dead("other", "old")  # a save of `other` killed between its two renames
    (caught / "other").mkdir(parents=True)
    (caught / "other" / "weights").write_text("previous")
    mine = tmp_path / f"{temporary_prefix(tmp_path / 'mine')}x"  # this process's own: kept
    mine.mkdir()
    with atomic_dir(tmp_path / "ckpt") as folder:
        (folder / "weights").write_text("new")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["ckpt", "other", mine.name])
    assert (tmp_path / "ckpt" / "weights").read_text() == "new"
    assert (tmp_path / "other" / "weights").read_text() == "previous"  # put back where it was


@pytest.mark.parametrize("text", ['{"version": ' + "9" * 5000 + "}", "[" * 100_000, '["not an object"]', "\xff"])
def test_a_hostile_meta_json_is_one_clear_error(tmp_path, text):
    (tmp_path / "meta.json").write_text(text, encoding="latin-1")
    with pytest.raises(InputError, match=f"{tmp_path / 'meta.json'}: (not valid JSON|expected a JSON object)"):
        TokenStore(tmp_path)
