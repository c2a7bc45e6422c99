"""The contract of the foundation: one spec and one weight layout, the same numbers in torch and MLX."""

import numpy as np
import pytest

import pnlm
from pnlm.checkpoints.checkpoint import save_checkpoint
from pnlm.errors import BackendError, PnlmError
from pnlm.model.spec import ModelSpec
from pnlm.checkpoints.weights import init_weights


@pytest.fixture(scope="module")
def two_sequences(tiny_spec):
    return np.random.default_rng(1).integers(0, tiny_spec.vocab_size, (2, 64))


@pytest.mark.parametrize("first, second", [("torch", "mlx"), ("mlx", "torch")])
def test_saved_in_one_backend_loaded_in_the_other(tmp_path, tiny_checkpoint, two_sequences, first, second):
    source = pnlm.load(tiny_checkpoint, backend=first)
    resaved = source.save(tmp_path / f"from-{first}")
    target = pnlm.load(resaved, backend=second)
    a, b = source.logits(two_sequences), target.logits(two_sequences)
    assert a.shape == (2, 64, source.spec.vocab_size)
    assert np.abs(a - b).max() < 1e-4
    prompt = source.tokenizer.encode("It is a truth universally acknowledged")
    assert list(source.generate_ids(prompt, 32, stop_at_eos=False)) == list(target.generate_ids(prompt, 32, stop_at_eos=False))


def test_resaved_weights_are_bit_identical(tmp_path, tiny_checkpoint):
    from pnlm.checkpoints.checkpoint import load_checkpoint

    original = load_checkpoint(tiny_checkpoint).weights
    for backend in ("torch", "mlx"):
        again = load_checkpoint(pnlm.load(tiny_checkpoint, backend=backend).save(tmp_path / backend)).weights
        assert all(np.array_equal(original[name], again[name]) for name in original)


@pytest.mark.parametrize("backend", ["torch", "mlx"])
def test_kv_cache_matches_full_forward(tiny_checkpoint, backend):
    model = pnlm.load(tiny_checkpoint, backend=backend)
    ids = [int(i) for i in np.random.default_rng(2).integers(3, model.spec.vocab_size, 40)]
    full = model.logits(ids)
    cache = model._new_cache(len(ids))
    chunks = [(0, 17), (17, 18), (18, 19), (19, 30), (30, 31), (31, 32), (32, 40)]
    for start, end in chunks:
        assert np.abs(model._step(ids[start:end], cache) - full[end - 1]).max() < 1e-4


def test_greedy_generation_to_the_full_context_agrees_across_backends(tiny_checkpoint):
    """MLX decodes one token at a time in a compiled step over a preallocated cache: up to the last
    position it must choose what torch chooses."""
    models = [pnlm.load(tiny_checkpoint, backend=backend) for backend in ("torch", "mlx")]
    prompt = models[0].tokenizer.encode("It is a truth")
    budget = models[0].spec.context - len(prompt)
    texts = [list(model.generate_ids(prompt, budget, stop_at_eos=False)) for model in models]
    assert len(texts[0]) == budget and texts[0] == texts[1]


@pytest.mark.parametrize("variant", [{"tied_embeddings": False}, {"n_kv_heads": 4}, {"n_kv_heads": 1}])
def test_variants_agree_across_backends(tmp_path, tokenizer, tiny_spec, two_sequences, variant):
    spec = ModelSpec(**{**tiny_spec.to_dict(), **variant, "projection": None}).validate()
    path = save_checkpoint(tmp_path / "variant", spec, init_weights(spec, seed=3), tokenizer)
    a = pnlm.load(path, backend="torch").logits(two_sequences)
    b = pnlm.load(path, backend="mlx").logits(two_sequences)
    assert np.abs(a - b).max() < 1e-4


def test_sampling_same_seed_same_text_and_top_p(tiny_checkpoint):
    model = pnlm.load(tiny_checkpoint, backend="torch")
    runs = [model.generate("Mr. Darcy", 24, temperature=1.0, top_p=0.9, seed=7) for _ in range(2)]
    assert runs[0] == runs[1]
    greedy = model.generate("Mr. Darcy", 24)
    tiny_top_p = model.generate("Mr. Darcy", 24, temperature=1.0, top_p=1e-6, seed=3)
    assert tiny_top_p == greedy  # a nucleus of one token is the argmax
    mlx_model = pnlm.load(tiny_checkpoint, backend="mlx")
    assert mlx_model.generate("Mr. Darcy", 24, temperature=1.0, top_p=0.9, seed=7) == runs[0]


@pytest.mark.parametrize("backend", ["torch", "mlx"])
def test_bfloat16_runs_close_to_float32(tiny_checkpoint, two_sequences, backend):
    full = pnlm.load(tiny_checkpoint, backend=backend).logits(two_sequences)
    half = pnlm.load(tiny_checkpoint, backend=backend, dtype="bfloat16").logits(two_sequences)
    assert half.dtype == np.float32 and np.abs(full - half).max() < 0.1


def test_bad_calls_are_clear_errors(tiny_checkpoint):
    model = pnlm.load(tiny_checkpoint, backend="torch")
    with pytest.raises(PnlmError, match="context"):
        model.logits(np.zeros(model.spec.context + 1, dtype=np.int64))
    with pytest.raises(PnlmError, match="token ids"):
        model.logits([model.spec.vocab_size])
    with pytest.raises(PnlmError, match="exceeds the model's context"):
        list(model.generate_ids([1], model.spec.context))
    with pytest.raises(PnlmError, match="top_p"):
        model.generate("a", 4, temperature=1.0, top_p=0.0)
    with pytest.raises(BackendError, match="unknown backend"):
        pnlm.load(tiny_checkpoint, backend="jax")


def test_cuda_without_gpu_is_a_clear_error(tiny_checkpoint):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(BackendError, match="no GPU"):
        pnlm.load(tiny_checkpoint, backend="cuda")


def test_mlx_uses_an_optimized_blas_on_linux():
    import sys

    from pnlm.backends.mlx import BLAS

    if sys.platform.startswith("linux"):
        assert BLAS.library is not None, BLAS.reason
