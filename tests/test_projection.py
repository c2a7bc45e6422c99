"""Projected networks: both backends equal the numpy oracle (one expert, and a mixed batch whose rows each
go through their own expert), an instantiated expert is the PN for its cluster, the experts start as alike
as the spec says, and the hard-mixture special case (h = k, E = I, M = I) is k independent MLPs."""

import dataclasses

import numpy as np
import pytest

from pnlm.errors import PnlmError, SpecError
from pnlm.model.projection import EXPERT_EMBEDDING, coefficients, expert_vector, instantiate, projected_matrices, \
    projected_weight, routed_projection
from pnlm.model.spec import ModelSpec, OptimizerSpec, Projection
from pnlm.checkpoints.weights import init_weights


@pytest.fixture(scope="module")
def pn_spec(tiny_spec):
    return dataclasses.replace(tiny_spec, projection=Projection(h=3, k=5, m=4)).validate()


def build(backend, spec, weights):
    from pnlm.backends import make_train_step

    return make_train_step(backend, spec, weights, OptimizerSpec(lr=1e-3))


@pytest.mark.parametrize("backend", ["torch", "mlx"])
def test_projected_weights_equal_the_oracle_and_experts_instantiate_exactly(pn_spec, backend):
    weights = init_weights(pn_spec, seed=1)
    step = build(backend, pn_spec, weights)
    tokens = np.random.default_rng(0).integers(0, pn_spec.vocab_size, (2, 48))
    for expert in (0, 3):
        vector = expert_vector(weights, expert=expert)
        for prefix in list(projected_matrices(pn_spec))[:3]:
            oracle = projected_weight(coefficients(vector, weights[f"{prefix}.mix"]), weights[f"{prefix}.basis"])
            layer, name = int(prefix.split(".")[2]), prefix.rsplit(".", 1)[1]
            module = getattr(step.model.model.layers[layer].mlp, name)
            if backend == "mlx":
                import mlx.core as mx
                formed = np.array(module.weight(mx.array(vector.astype(np.float32))))
            else:
                import torch
                formed = module.weight(torch.from_numpy(vector.astype(np.float32))).detach().numpy()
            assert np.abs(formed - oracle).max() < 1e-6
        plain_spec = pn_spec.plain()
        plain = build(backend, plain_spec, instantiate(weights, pn_spec, vector))
        pn_nll, _ = step.nll(tokens[:, :-1], tokens[:, 1:], expert=expert)
        plain_nll, _ = plain.nll(tokens[:, :-1], tokens[:, 1:])
        assert abs(pn_nll - plain_nll) < 1e-5 * abs(plain_nll)
        assert sorted(instantiate(weights, pn_spec, vector)) == sorted(init_weights(plain_spec, 0))


ROWS = np.array([3, 0, 3, 1, 4, 0])  # a mixed batch: 4 of the 5 experts, expert 2 absent


def silu(x):
    return x / (1 + np.exp(-x))


@pytest.mark.parametrize("backend", ["torch", "mlx"])
def test_a_mixed_batch_goes_row_by_row_through_each_rows_expert(pn_spec, backend):
    weights = init_weights(pn_spec, seed=3)
    step = build(backend, pn_spec, weights)
    rng = np.random.default_rng(4)
    # The projected MLP on a mixed batch equals the numpy oracle, with one W per expert present.
    x = rng.standard_normal((len(ROWS), 7, pn_spec.d_model)).astype(np.float32)
    table, prefix = weights[EXPERT_EMBEDDING], "model.layers.1.mlp"

    def oracle(inputs, name):
        return routed_projection(inputs, ROWS, table, weights[f"{prefix}.{name}.mix"], weights[f"{prefix}.{name}.basis"])

    expected = oracle(silu(oracle(x, "gate_proj")) * oracle(x, "up_proj"), "down_proj")
    mlp = step.model.model.layers[1].mlp
    if backend == "mlx":
        import mlx.core as mx
        from pnlm.backends.mlx.model import Routing
        routing = Routing.of(step.model.model.expert_embedding, mx.array(ROWS))
        got = np.array(mlp(mx.array(x), routing))
    else:
        import torch
        from pnlm.backends.torch.model import Routing
        routing = Routing.of(step.model.model.expert_embedding, torch.from_numpy(ROWS))
        got = mlp(torch.from_numpy(x), routing).detach().numpy()
    assert routing.vectors.shape == (4, pn_spec.projection.m)
    assert np.abs(got - expected).max() < 1e-5 * max(1.0, np.abs(expected).max())
    # The whole network on a mixed batch: each row's NLL is that of its expert instantiated as a plain SLM.
    tokens = rng.integers(0, pn_spec.vocab_size, (len(ROWS), 33))
    mixed, count = step.nll(tokens[:, :-1], tokens[:, 1:], expert=ROWS)
    per_row = 0.0
    for row, expert in enumerate(ROWS):
        plain = build(backend, pn_spec.plain(), instantiate(weights, pn_spec, expert_vector(weights, expert=int(expert))))
        per_row += plain.nll(tokens[row:row + 1, :-1], tokens[row:row + 1, 1:])[0]
    assert count == tokens[:, 1:].size and abs(mixed - per_row) < 1e-5 * per_row


@pytest.mark.parametrize("backend", ["torch", "mlx"])
def test_a_train_step_refuses_expert_vectors_and_miscounted_rows(pn_spec, backend):
    # An expert vector (p @ E) is a model of its own, made by instantiate; a step given one used to read
    # it as per-row indices (reordered rows, or the wrong rows) instead of refusing it.
    weights = init_weights(pn_spec, seed=3)
    step = build(backend, pn_spec, weights)
    tokens = np.random.default_rng(5).integers(0, pn_spec.vocab_size, (pn_spec.projection.m, 9))
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    vector = expert_vector(weights, histogram=np.ones(pn_spec.projection.k)).astype(np.float32)
    with pytest.raises(PnlmError, match="expert indices"):
        step.nll(inputs, targets, expert=vector)
    with pytest.raises(PnlmError, match="expert indices"):
        step(inputs, targets, expert=vector)
    with pytest.raises(PnlmError, match="3 expert indices for a batch of 4 rows"):
        step.nll(inputs, targets, expert=np.array([0, 1, 2]))
    assert step.nll(inputs, targets, expert=np.int64(2))[0] == pytest.approx(step.nll(inputs, targets, expert=2)[0])


def test_torch_and_mlx_train_a_projected_network_alike(pn_spec):
    weights = init_weights(pn_spec, seed=2)
    rng = np.random.default_rng(1)
    batch = rng.integers(0, pn_spec.vocab_size, (6, 33))
    # Mixed batches (also in two micro-batches, whose experts differ), and one-cluster batches.
    routes = [dict(expert=ROWS), dict(expert=rng.integers(0, 5, 6)), dict(expert=ROWS, micro_batches=2),
              dict(expert=0), dict(expert=np.full(6, 2)), dict(expert=ROWS)]
    losses = {}
    for backend in ("torch", "mlx"):
        step = build(backend, pn_spec, weights)
        losses[backend] = [step(batch[:, :-1], batch[:, 1:], **route) for route in routes]
    assert np.abs(np.array(losses["torch"]) - np.array(losses["mlx"])).max() < 1e-5
    assert losses["torch"][-1] < losses["torch"][0]


@pytest.mark.parametrize("similarity", [0.0, 0.5, 0.9])
def test_experts_start_as_alike_as_the_spec_says(tiny_spec, similarity):
    spec = dataclasses.replace(tiny_spec, projection=Projection(h=4, k=32, m=16, expert_similarity=similarity))
    table = init_weights(spec.validate(), seed=0)[EXPERT_EMBEDDING]
    assert np.allclose(np.linalg.norm(table, axis=1), 1, atol=1e-5)
    cosines = (table @ table.T)[np.triu_indices(len(table), 1)]
    assert abs(cosines.mean() - similarity) < 0.05, cosines.mean()


def test_a_checkpoint_from_before_expert_similarity_reads_as_independent_experts(tmp_path, tokenizer, tiny_spec):
    import json

    from pnlm.checkpoints.checkpoint import read_spec, save_checkpoint

    spec = dataclasses.replace(tiny_spec, projection=Projection(h=2, k=3, m=2)).validate()
    save_checkpoint(tmp_path / "pn", spec, init_weights(spec, 0), tokenizer, "pn")
    config = json.loads((tmp_path / "pn" / "config.json").read_text())
    assert read_spec(tmp_path / "pn").projection.expert_similarity == 0.9
    del config["spec"]["projection"]["expert_similarity"]  # what an older pnlm wrote
    assert read_spec(tmp_path / "pn", config).projection == Projection(2, 3, 2, expert_similarity=0.0)


def test_expert_similarity_is_optional_and_checked(tiny_spec):
    settings = tiny_spec.to_dict()
    old = ModelSpec.from_dict({**settings, "projection": {"h": 2, "k": 3, "m": 2}})  # a config.json before the knob
    assert old.projection == Projection(2, 3, 2) and old.projection.expert_similarity == 0.9
    given = ModelSpec.from_dict({**settings, "projection": {"h": 2, "k": 3, "m": 2, "expert_similarity": 0}})
    assert ModelSpec.from_dict(given.to_dict()) == given and given.projection.expert_similarity == 0
    for bad in (1.0, -0.1, "0.5", True):
        with pytest.raises(SpecError, match="expert_similarity"):
            ModelSpec.from_dict({**settings, "projection": {"h": 2, "k": 3, "m": 2, "expert_similarity": bad}})
    with pytest.raises(SpecError, match="projection must be a table"):
        ModelSpec.from_dict({**settings, "projection": {"h": 2, "k": 3, "m": 2, "spread": 1}})


@pytest.mark.parametrize("backend", ["torch", "mlx"])
def test_identity_projection_is_k_independent_mlps(tiny_spec, backend):
    k = 3
    spec = dataclasses.replace(tiny_spec, projection=Projection(h=k, k=k, m=k)).validate()
    shared = init_weights(tiny_spec, seed=0)
    experts = [init_weights(tiny_spec, seed=10 + i) for i in range(k)]
    weights = {name: value for name, value in shared.items() if ".mlp." not in name}
    weights[EXPERT_EMBEDDING] = np.eye(k, dtype=np.float32)
    for prefix in projected_matrices(spec):
        weights[f"{prefix}.mix"] = np.eye(k, dtype=np.float32)
        weights[f"{prefix}.basis"] = np.stack([e[f"{prefix}.weight"] for e in experts])
    tokens = np.random.default_rng(3).integers(0, spec.vocab_size, (2, 33))
    step = build(backend, spec, weights)
    for i in range(k):
        alone = build(backend, tiny_spec, {**shared, **{n: v for n, v in experts[i].items() if ".mlp." in n}})
        a, _ = step.nll(tokens[:, :-1], tokens[:, 1:], expert=i)
        b, _ = alone.nll(tokens[:, :-1], tokens[:, 1:])
        assert abs(a - b) < 1e-5 * abs(b)
    # A step on expert 1's batch moves basis tensor 1 of every MLP matrix and leaves the others exactly
    # where they were: no gradient reaches them.
    before = step.canonical_weights()
    step(tokens[:, :-1], tokens[:, 1:], expert=1)
    after = step.canonical_weights()
    for prefix in projected_matrices(spec):
        moved = np.abs(after[f"{prefix}.basis"] - before[f"{prefix}.basis"]).max(axis=(1, 2))
        assert moved[1] > 0 and moved[0] == 0 and moved[2] == 0, (prefix, moved)


@pytest.mark.parametrize("similarity", [0.0, 0.9])
@pytest.mark.parametrize("init", ["matched", "unit-variance"])
def test_an_instantiated_expert_starts_at_the_scale_of_a_fresh_slm(tiny_spec, similarity, init):
    spec = dataclasses.replace(tiny_spec, projection=Projection(h=16, k=8, m=8, expert_similarity=similarity, init=init))
    weights, fresh = init_weights(spec.validate(), seed=0), init_weights(tiny_spec, seed=0)
    ratios = {prefix: [instantiate(weights, spec, expert_vector(weights, expert=i))[f"{prefix}.weight"].std()
                       / fresh[f"{prefix}.weight"].std() for i in range(spec.projection.k)]
              for prefix in projected_matrices(spec)}
    everything = [r for each in ratios.values() for r in each]
    assert 0.8 < np.mean(everything) < 1.25 and max(everything) < 2.5, ratios
    if init == "matched":  # each matrix's experts at the SLM's scale (rms over them), not only on average
        for prefix, each in ratios.items():
            assert abs(np.sqrt(np.mean(np.square(each))) - 1) < 0.02, (prefix, each)


def test_matched_experts_move_at_the_slms_pace_and_unit_variance_ones_at_a_random_one(tiny_spec):
    """AdamW's first step moves every trained entry by the learning rate: an SLM's MLP matrices by lr, an
    expert's W by |a|_1 lr through its basis tensors (and a little more through M and E). Matched, that is
    the SLM's pace for every matrix; unit-variance, each matrix has its own (h = 4: 0.8 to 2.8 seen)."""
    lr = 1e-3
    tokens = np.random.default_rng(5).integers(0, tiny_spec.vocab_size, (4, 33))
    paces = {}
    for init in ("matched", "unit-variance"):
        spec = dataclasses.replace(tiny_spec, projection=Projection(h=4, k=4, m=4, init=init)).validate()
        step = build("torch", spec, init_weights(spec, seed=1))
        before = step.canonical_weights()
        step(tokens[:, :-1], tokens[:, 1:], expert=2)
        after = step.canonical_weights()
        paces[init] = [np.abs(instantiate(after, spec, expert_vector(after, expert=2))[f"{prefix}.weight"]
                              - instantiate(before, spec, expert_vector(before, expert=2))[f"{prefix}.weight"]).mean() / lr
                       for prefix in projected_matrices(spec)]
    assert all(0.7 < pace < 1.4 for pace in paces["matched"]), paces["matched"]
    assert max(paces["unit-variance"]) / min(paces["unit-variance"]) > 1.5, paces["unit-variance"]


def test_projection_init_is_optional_checked_and_ignored_on_resume(tmp_path, tokenizer, tiny_spec):
    import json

    from pnlm.checkpoints.checkpoint import ModelWriter, read_spec, save_checkpoint
    from pnlm.checkpoints.run_identity import check_same_run

    settings = tiny_spec.to_dict()
    assert ModelSpec.from_dict({**settings, "projection": {"h": 2, "k": 3, "m": 2}}).projection.init == "unit-variance"
    with pytest.raises(SpecError, match="projection.init must be one of unit-variance, matched"):
        ModelSpec.from_dict({**settings, "projection": {"h": 2, "k": 3, "m": 2, "init": "xavier"}})
    with pytest.raises(SpecError, match="optionally expert_similarity, init"):
        ModelSpec.from_dict({**settings, "projection": {"h": 2, "k": 3, "m": 2, "spread": 1}})
    default = dataclasses.replace(tiny_spec, projection=Projection(h=2, k=3, m=2)).validate()
    matched = dataclasses.replace(default, projection=Projection(h=2, k=3, m=2, init="matched"))
    assert "init" not in default.to_dict()["projection"]  # what an earlier pnlm wrote, and reads
    assert ModelSpec.from_dict(matched.to_dict()) == matched
    save_checkpoint(tmp_path / "pn", matched, init_weights(matched, 0), tokenizer, "pn")
    assert read_spec(tmp_path / "pn").projection.init == "matched"
    config = json.loads((tmp_path / "pn" / "config.json").read_text())
    del config["spec"]["projection"]["init"]  # a checkpoint from before the setting: it started unit-variance
    assert read_spec(tmp_path / "pn", config).projection.init == "unit-variance"
    # A run started one way resumes the other (the setting acts once, at the start); another h is refused.
    step = build("torch", default, init_weights(default, 0))
    identity = {"method": "pn", "spec": default.to_dict(), "tokenizer_sha256": tokenizer.sha256,
                "store_sha256": "0" * 64, "clusters": None}
    trainer = {"step": 1, "tokens": 16, "best_val_loss": None, "evals_since_best": 0, "elapsed_s": 0.5,
               "config": {"batch_size": 2}, "sampler": "uniform", "started_with": identity}
    ModelWriter(default, tokenizer, "pn").save(tmp_path / "run" / "latest", step, trainer, with_state=True, write=True)
    check_same_run(tmp_path / "run" / "latest", {**identity, "spec": matched.to_dict()})
    wider = dataclasses.replace(default, projection=Projection(h=3, k=3, m=2, init="matched"))
    with pytest.raises(PnlmError, match="was started with model projection"):
        check_same_run(tmp_path / "run" / "latest", {**identity, "spec": wider.to_dict()})


def test_matched_is_the_unit_variance_draw_rescaled_per_matrix(tiny_spec):
    old = dataclasses.replace(tiny_spec, projection=Projection(h=4, k=4, m=4, init="unit-variance")).validate()
    new = dataclasses.replace(old, projection=Projection(h=4, k=4, m=4, init="matched"))
    a, b = init_weights(old, seed=3), init_weights(new, seed=3)
    mlp = {f"{prefix}.{part}" for prefix in projected_matrices(old) for part in ("basis", "mix")}
    for name in set(a) - mlp:  # E, attention, norms, embeddings: the same draws
        assert np.array_equal(a[name], b[name]), name
    for prefix in projected_matrices(old):
        experts = [[instantiate(w, spec, expert_vector(w, expert=i))[f"{prefix}.weight"] for i in range(4)]
                   for w, spec in ((a, old), (b, new))]
        factor = (experts[1][0] * experts[0][0]).sum() / (experts[0][0] ** 2).sum()  # one per matrix
        for was, now in zip(*experts):
            assert np.allclose(now, factor * was, rtol=1e-4, atol=1e-7), prefix
        assert abs(np.abs(b[EXPERT_EMBEDDING] @ b[f"{prefix}.mix"]).sum(axis=1).mean() - 1) < 1e-5


def test_a_projected_network_is_refused_where_a_plain_model_is_needed(tmp_path, tokenizer, tiny_spec):
    import subprocess
    import sys

    from pnlm.checkpoints.checkpoint import save_checkpoint

    spec = dataclasses.replace(tiny_spec, projection=Projection(h=2, k=3, m=2)).validate()
    save_checkpoint(tmp_path / "pn", spec, init_weights(spec, 0), tokenizer, "pn")
    for command in (["generate", tmp_path / "pn", "--prompt", "a", "--backend", "torch"],
                    ["finetune", tmp_path / "pn", "--data", tmp_path / "store", "--out", tmp_path / "ft"]):
        result = subprocess.run([sys.executable, "-m", "pnlm.cli", *map(str, command)], capture_output=True, text=True)
        assert result.returncode == 2 and "pnlm instantiate" in result.stderr, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
