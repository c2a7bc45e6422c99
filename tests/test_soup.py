"""The soup of experts: both backends form the numpy oracle's model for domain weights h and train alike, the
instantiated SLM is the soup's model for its domain's histogram, the batches follow each step's h, a killed
run resumes to the uninterrupted losses, and a soup is refused where a plain model is needed."""

import dataclasses
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import assert_resume_after_kill_is_exact

from pnlm.checkpoints.checkpoint import load_checkpoint, save_checkpoint
from pnlm.checkpoints.weights import init_weights
from pnlm.errors import PnlmError, SpecError
from pnlm.methods.soup import SoupSampler
from pnlm.model import soup as oracle
from pnlm.model.spec import ModelSpec, OptimizerSpec, Projection, Soup

os.environ.setdefault("HF_HUB_OFFLINE", "1")

SOUP_TOML = """[model]
preset = "tiny"
[model.soup]
banks = 3
k = 2
hidden = 8
"""


def pnlm_cli(*args):
    return subprocess.run([sys.executable, "-m", "pnlm.cli", *map(str, args)], capture_output=True, text=True)


@pytest.fixture(scope="module")
def soup_spec(tiny_spec):
    return dataclasses.replace(tiny_spec, soup=Soup(banks=3, k=5, hidden=8, clusters_per_draw=3)).validate()


def trained_looking(spec, seed=1):
    """init_weights with the coefficient network's output layer moved off zero, so that the banks count."""
    weights = init_weights(spec, seed)
    rng = np.random.default_rng(seed)
    for name in (f"{oracle.OUT_PROJ}.weight", f"{oracle.OUT_PROJ}.bias"):
        weights[name] = (rng.standard_normal(weights[name].shape) * 0.5).astype(np.float32)
    return weights


def build(backend, spec, weights):
    from pnlm.backends import make_train_step

    return make_train_step(backend, spec, weights, OptimizerSpec(lr=1e-3))


@pytest.mark.parametrize("backend", ["torch", "mlx"])
def test_both_backends_form_the_oracles_model_and_instantiate_it_exactly(soup_spec, backend):
    weights = trained_looking(soup_spec)
    step = build(backend, soup_spec, weights)
    tokens = np.random.default_rng(0).integers(0, soup_spec.vocab_size, (3, 40))
    for h in (oracle.draw_domain_weights(soup_spec.soup, 0, 7), np.eye(5)[2], np.full(5, 0.2)):
        alpha = oracle.coefficients(weights, h)
        if backend == "mlx":
            import mlx.core as mx
            formed_alpha = np.array(step.model.model.soup(mx.array(h.astype(np.float32))))
        else:
            import torch
            formed_alpha = step.model.model.soup(torch.from_numpy(h.astype(np.float32))).detach().numpy()
        assert np.abs(formed_alpha - alpha).max() < 1e-6
        for prefix in list(oracle.souped_matrices(soup_spec))[:3]:
            layer, name = int(prefix.split(".")[2]), prefix.rsplit(".", 1)[1]
            module = getattr(step.model.model.layers[layer].mlp, name)
            if backend == "mlx":
                formed = np.array(module.formed(mx.array(alpha.astype(np.float32))))
            else:
                formed = module.formed(torch.from_numpy(alpha.astype(np.float32))).detach().numpy()
            expected = oracle.souped_weight(weights[f"{prefix}.weight"], weights[f"{prefix}.bank"], alpha)
            assert np.abs(formed - expected).max() < 1e-6
        plain = build(backend, soup_spec.plain(), oracle.instantiate(weights, soup_spec, h))
        soup_nll, _ = step.nll(tokens[:, :-1], tokens[:, 1:], expert=h)
        plain_nll, _ = plain.nll(tokens[:, :-1], tokens[:, 1:])
        assert abs(soup_nll - plain_nll) < 1e-5 * abs(plain_nll)


def test_torch_and_mlx_train_a_soup_alike(soup_spec):
    weights = trained_looking(soup_spec, seed=2)
    rng = np.random.default_rng(1)
    steps = {backend: build(backend, soup_spec, weights) for backend in ("torch", "mlx")}
    losses = {b: [] for b in steps}
    tokens = rng.integers(0, soup_spec.vocab_size, (4, 33))
    for n in range(6):  # a new h each step, and in two micro-batches too (one h for both)
        h = oracle.draw_domain_weights(soup_spec.soup, 0, n)
        for backend, step in steps.items():
            losses[backend].append(step(tokens[:, :-1], tokens[:, 1:], expert=h, micro_batches=1 + n % 2))
    assert np.abs(np.array(losses["torch"]) - np.array(losses["mlx"])).max() < 1e-5, losses
    assert losses["torch"][-1] < losses["torch"][0]


def test_a_soup_starts_as_one_fresh_slm_for_every_h(soup_spec):
    weights = init_weights(soup_spec, 0)
    models = [oracle.instantiate(weights, soup_spec, h) for h in (np.eye(5)[0], np.eye(5)[4], np.full(5, 0.2))]
    assert all(np.array_equal(models[0][name], other[name]) for other in models[1:] for name in models[0])
    assert sorted(models[0]) == sorted(init_weights(soup_spec.plain(), 0))


def test_the_batches_follow_each_steps_domain_weights(corpus):
    generic, _, _ = corpus
    soup = Soup(banks=2, k=2, clusters_per_draw=2, concentration=1.0)
    sampler = SoupSampler(generic, 64, 3, soup)
    labels = generic.cluster_ids("train")
    for step in (0, 5, 11):
        rows, h = sampler.train_batch(step)
        again_rows, again_h = sampler.train_batch(step)
        assert np.array_equal(rows, again_rows) and np.array_equal(h, again_h)  # a function of the step
        assert abs(h.sum() - 1) < 1e-12 and (h >= 0).all()
        share = np.mean(labels[rows] == 0)
        assert abs(share - h[0]) < 0.25  # 64 rows drawn from the clusters in proportions h
    generic_h = np.bincount(labels, minlength=2) / len(labels)
    groups = list(sampler.eval_groups("valid", 4))
    assert sum(len(i) for i, _ in groups) == generic.num_windows("valid")
    assert all(np.allclose(h, generic_h) for _, h in groups)  # validation: the model for the generic histogram


def test_soup_pretrain_instantiate_finetune_evaluate(tmp_path, corpus):
    generic, domain, clusters = corpus
    (tmp_path / "soup.toml").write_text(SOUP_TOML)
    run = tmp_path / "soup"
    trained = pnlm_cli("pretrain", "--method", "soup", "--model", tmp_path / "soup.toml", "--data", generic.path,
                       "--clusters", clusters, "--backend", "torch", "--steps", 20, "--batch-size", 4, "--lr", 3e-3,
                       "--eval-every", 10, "--out", run, "--json")
    assert trained.returncode == 0, trained.stderr
    info = json.loads(pnlm_cli("info", run / "latest", "--json").stdout)
    assert info["method"] == "soup" and info["params_pretrain"] > info["params_inference"]
    made = pnlm_cli("instantiate", run, "--domain", domain.path, "--out", tmp_path / "model", "--json")
    assert made.returncode == 0, made.stderr
    report = json.loads(made.stdout)
    model = load_checkpoint(tmp_path / "model")
    assert model.spec.soup is None and model.method == "slm-soup"
    assert report["params"] == model.spec.params_inference() == sum(w.size for w in model.weights.values())
    # The instantiated SLM is the soup's model for the domain's histogram: the same test NLL.
    soup = load_checkpoint(run / "best")
    step = build("torch", soup.spec, soup.weights)
    from pnlm.data.samplers import ordered_groups
    from pnlm.training.batches import shifted
    nll = count = 0.0
    for indices, _ in ordered_groups(domain, "test", 8):
        part, tokens = step.nll(*shifted(*domain.batch("test", indices)), expert=np.array(report["histogram"]))
        nll, count = nll + part, count + tokens
    evaluated = json.loads(pnlm_cli("eval", tmp_path / "model", "--data", domain.path, "--backend", "torch",
                                    "--json").stdout)
    assert abs(evaluated["domains"][domain.name]["nll"] - nll / count) < 1e-5 * nll / count
    tuned = pnlm_cli("finetune", tmp_path / "model", "--data", domain.path, "--backend", "mlx", "--steps", 6,
                     "--eval-every", 3, "--lr", 1e-3, "--out", tmp_path / "ft", "--json")
    assert tuned.returncode == 0, tuned.stderr
    after = json.loads(pnlm_cli("eval", tmp_path / "ft" / "best", "--data", domain.path, "--json").stdout)["macro_ppl"]
    assert after < evaluated["macro_ppl"]
    exported = pnlm_cli("export", tmp_path / "model", "--format", "hf", "--out", tmp_path / "hf")
    assert exported.returncode == 0, exported.stderr
    assert_loads_as_any_expert(tmp_path / "model", tmp_path / "hf")
    one_cluster = pnlm_cli("instantiate", run, "--expert", "1", "--out", tmp_path / "cluster1", "--json")
    assert one_cluster.returncode == 0, one_cluster.stderr
    bad = pnlm_cli("instantiate", run, "--expert", "7", "--out", tmp_path / "x")
    assert bad.returncode == 2 and "clusters are 0 to 1" in bad.stderr


def assert_loads_as_any_expert(checkpoint, hf_folder):
    """transformers and mlx-lm load the exported model of a domain with pnlm's logits."""
    import mlx.core as mx
    import torch
    from mlx_lm import load as mlx_lm_load
    from transformers import AutoModelForCausalLM

    import pnlm

    ours = pnlm.load(checkpoint, backend="torch")
    tokens = np.random.default_rng(0).integers(0, ours.spec.vocab_size, (2, 32))
    expected = ours.logits(tokens)
    with torch.no_grad():
        hf = AutoModelForCausalLM.from_pretrained(hf_folder, dtype=torch.float32)(torch.from_numpy(tokens)).logits
    assert np.abs(hf.numpy() - expected).max() < 1e-4
    model, _ = mlx_lm_load(str(hf_folder))
    assert np.abs(np.array(model(mx.array(tokens))) - expected).max() < 1e-4


def test_soup_resume_after_kill_gives_the_uninterrupted_losses(tmp_path, corpus):
    generic, _, clusters = corpus
    (tmp_path / "soup.toml").write_text(SOUP_TOML)
    common = ["pretrain", "--method", "soup", "--model", tmp_path / "soup.toml", "--data", generic.path,
              "--clusters", clusters, "--backend", "torch", "--steps", 16, "--batch-size", 4, "--lr", 3e-3,
              "--checkpoint-every", 8, "--seed", 2]
    assert_resume_after_kill_is_exact(common, tmp_path)


def test_a_soup_is_checked_and_refused_where_a_plain_model_is_needed(tmp_path, tokenizer, soup_spec):
    with pytest.raises(SpecError, match="not both"):
        dataclasses.replace(soup_spec, projection=Projection(h=2, k=5, m=2)).validate()
    with pytest.raises(SpecError, match="soup.clusters_per_draw must be between 1 and 5"):
        dataclasses.replace(soup_spec, soup=Soup(banks=2, k=5, clusters_per_draw=6)).validate()
    assert ModelSpec.from_dict(soup_spec.to_dict()) == soup_spec
    with pytest.raises(PnlmError, match="non-negative"):
        oracle.domain_weights(np.zeros(5), 5)
    tokens = np.random.default_rng(0).integers(0, soup_spec.vocab_size, (3, 9))
    for backend in ("torch", "mlx"):  # a step takes one h (k floats) for the batch: no indices, no other length
        step = build(backend, soup_spec, init_weights(soup_spec, 0))
        for wrong in (np.array([0, 1, 2]), np.ones(4) / 4, None):
            with pytest.raises(PnlmError, match="takes domain weights h \\(5 floats\\)"):
                step.nll(tokens[:, :-1], tokens[:, 1:], expert=wrong)
    path = save_checkpoint(tmp_path / "soup", soup_spec, init_weights(soup_spec, 0), tokenizer, "soup")
    for args in (["generate", path, "--prompt", "x", "--backend", "torch"],
                 ["export", path, "--format", "hf", "--out", tmp_path / "hf"]):
        result = pnlm_cli(*args)
        assert result.returncode == 2 and "soup of experts" in result.stderr, result.stderr
