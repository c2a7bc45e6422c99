"""The unigram baseline: its NLL against a direct computation, and `pnlm eval --unigram`."""

import json
import math
import subprocess
import sys

import numpy as np
import pytest

from pnlm.data.prepare import prepare_store
from pnlm.errors import PnlmError
from pnlm.tokenizer import train_tokenizer
from pnlm.training.unigram import fit_unigram, target_counts

WORDS = "the a of truth man fortune wife house letter sister ball London morning walk".split()


def pnlm_cli(*args):
    return subprocess.run([sys.executable, "-m", "pnlm.cli", *map(str, args)], capture_output=True, text=True)


def generated_docs(seed, n=60):
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=int(rng.integers(1, 60)))) + f" ({i})" for i in range(n)]


@pytest.fixture(scope="module")
def stores(tmp_path_factory, tokenizer):
    root = tmp_path_factory.mktemp("unigram")
    generic, _ = prepare_store(iter(generated_docs(0)), tokenizer, root / "generic", context=16,
                               valid_fraction=0.2, test_fraction=0.2, workers=1)
    domain, _ = prepare_store(iter(generated_docs(1, 30)), tokenizer, root / "domain", context=16,
                              valid_fraction=0.2, test_fraction=0.3, workers=1)
    return generic, domain


@pytest.fixture(scope="module")
def other_store(tmp_path_factory):
    """A store prepared with another tokenizer."""
    root = tmp_path_factory.mktemp("other")
    other_tok = train_tokenizer(iter(generated_docs(2, 200)), 300, root / "tok")
    return prepare_store(iter(generated_docs(3)), other_tok, root / "other", context=16, workers=1)[0]


def direct_targets(store, split):
    """Every token of every window but its first, read window by window."""
    return np.concatenate([store.window(split, i)[1:] for i in range(store.num_windows(split))]).astype(np.int64)


def test_unigram_nll_equals_a_direct_computation(stores):
    generic, domain = stores
    assert (generic.window_index("train")[:, 1] < 16).any()  # short windows: padding is there to be excluded
    train = direct_targets(generic, "train")
    vocab = generic.vocab_size
    counts = np.bincount(train, minlength=vocab)
    assert np.array_equal(target_counts(generic, "train", chunk_tokens=40), counts)  # several chunks
    model = fit_unigram(generic)
    assert np.array_equal(model.counts, counts) and model.tokens == len(train)
    probs = (counts + 1) / (len(train) + vocab)
    assert math.isclose(probs.sum(), 1.0) and np.allclose(np.exp(-model.neg_log_probs()), probs)
    for store, split in [(generic, "test"), (domain, "test"), (domain, "valid")]:
        targets = direct_targets(store, split)
        expected = -np.log(probs[targets]).mean()
        nll, count = model.nll(store, split)
        assert count == len(targets) == int((store.window_index(split)[:, 1] - 1).sum())
        assert nll == pytest.approx(expected, rel=1e-12)
    assert (counts == 0).any() and np.isfinite(model.neg_log_probs()).all()  # unseen tokens: finite NLL


def test_unigram_refuses_another_tokenizer(stores, other_store):
    with pytest.raises(PnlmError, match="another tokenizer"):
        fit_unigram(stores[0]).nll(other_store, "train")


def test_eval_prints_the_unigram_beside_the_model(stores, tiny_checkpoint):
    generic, domain = stores
    result = pnlm_cli("eval", tiny_checkpoint,
                      "--data", generic.path, "--data", domain.path, "--unigram", generic.path, "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    model = fit_unigram(generic)
    for store in (generic, domain):
        entry = report["domains"][store.name]
        nll, count = model.nll(store, "test")
        assert entry["tokens"] == count  # the model and the unigram score the same targets
        assert entry["unigram_ppl"] == pytest.approx(math.exp(nll), rel=1e-9)
    expected_macro = math.exp(np.mean([model.nll(s, "test")[0] for s in (generic, domain)]))
    assert report["unigram_macro_ppl"] == pytest.approx(expected_macro, rel=1e-9)
    assert report["unigram"]["tokens"] == model.tokens
    text = pnlm_cli("eval", tiny_checkpoint,
                    "--data", domain.path, "--unigram", generic.path)
    assert text.returncode == 0 and "unigram" in text.stderr  # the table goes to the console (stderr)


def test_eval_unigram_with_another_tokenizer_is_one_line_and_exit_2(tiny_checkpoint, stores, other_store):
    result = pnlm_cli("eval", tiny_checkpoint, "--data", stores[1].path, "--unigram", other_store.path)
    assert result.returncode == 2
    assert "another tokenizer" in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
