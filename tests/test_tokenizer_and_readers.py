import gzip
import json

import pytest

from pnlm.data import iter_documents
from pnlm.errors import InputError, TokenizerError
from pnlm.tokenizer import load_tokenizer, train_tokenizer


def test_tokenizer_round_trip_and_special_ids(tokenizer):
    text = "It is a truth universally acknowledged — 1813, naïve café. 😀"
    ids = tokenizer.encode(text, bos=True, eos=True)
    assert ids[0] == tokenizer.bos_id == 1 and ids[-1] == tokenizer.eos_id == 2
    assert tokenizer.decode(ids[1:-1]) == text  # byte fallback covers what the vocabulary does not


def test_tokenizer_hash_is_of_the_file(tokenizer):
    again = load_tokenizer(tokenizer.path.parent)
    assert again.sha256 == tokenizer.sha256 and len(again.sha256) == 64


def test_training_is_deterministic(tmp_path):
    docs = [f"document {i}: the quick brown fox jumps over the lazy dog {i * 7}" for i in range(200)]
    a = train_tokenizer(docs, 300, tmp_path / "a", threads=1)
    b = train_tokenizer(docs, 300, tmp_path / "b", threads=1)
    assert a.sha256 == b.sha256


def test_not_a_tokenizer(tmp_path):
    (tmp_path / "tokenizer.model").write_bytes(b"\x00garbage" * 10)
    with pytest.raises(TokenizerError, match="tokenizer.model"):
        load_tokenizer(tmp_path)


def test_readers_stream_jsonl_gz_and_txt(tmp_path):
    with gzip.open(tmp_path / "a.jsonl.gz", "wt") as f:
        f.write(json.dumps({"text": "one"}) + "\n\n" + json.dumps({"text": "two", "source": "x"}) + "\n")
    (tmp_path / "b.txt").write_text("three\n\nstill three")
    assert list(iter_documents([tmp_path / "a.jsonl.gz", tmp_path / "b.txt"])) == ["one", "two", "three\n\nstill three"]


@pytest.mark.parametrize("content, message", [
    ('{"text": "ok"}\n{"text": 3}\n', ":2: expected an object"),
    ('{"text": "ok"}\n{"text": "a"\n', ":2: not valid JSON"),
    ('["text"]\n', ":1: expected an object"),
])
def test_bad_jsonl_names_file_and_line(tmp_path, content, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(content)
    with pytest.raises(InputError, match=message) as info:
        list(iter_documents([path]))
    assert str(path) in str(info.value)


def test_unknown_format_and_missing_file(tmp_path):
    (tmp_path / "x.csv").write_text("a,b")
    with pytest.raises(InputError, match="unknown format"):
        list(iter_documents([tmp_path / "x.csv"]))
    with pytest.raises(InputError, match="no such file"):
        list(iter_documents([tmp_path / "nope.jsonl"]))
