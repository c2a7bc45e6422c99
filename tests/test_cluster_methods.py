"""The methods built on clusters, through the CLI: projected networks and hard mixtures (pretrain over
clusters, instantiate a domain's expert as a plain model, fine-tune it with MLX, evaluate; resume a PN
run exactly), and importance sampling (resample the generic set to the domain's histogram)."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import assert_resume_after_kill_is_exact
from pnlm.checkpoints.checkpoint import load_checkpoint
from pnlm.data.samplers import RoutedSampler, UniformSampler


def pnlm_cli(*args):
    return subprocess.run([sys.executable, "-m", "pnlm.cli", *map(str, args)], capture_output=True, text=True)


def test_pn_pretrain_instantiate_finetune_evaluate(tmp_path, corpus):
    generic, domain, clusters = corpus
    run = tmp_path / "pn"
    trained = pnlm_cli("pretrain", "--method", "pn", "--model", "pn-tiny", "--data", generic.path, "--clusters", clusters,
                       "--projection", "3,2,2", "--backend", "torch", "--steps", 20, "--batch-size", 4, "--lr", 3e-3,
                       "--eval-every", 10, "--out", run, "--json")
    assert trained.returncode == 0, trained.stderr
    assert json.loads(trained.stdout)["best_val_loss"] is not None
    made = pnlm_cli("instantiate", run, "--domain", domain.path, "--expert", "auto", "--out", tmp_path / "expert",
                    "--json")
    assert made.returncode == 0, made.stderr
    report = json.loads(made.stdout)
    assert report["top_share"] > 0.5 and report["expert"] == report["top_cluster"]
    expert = load_checkpoint(tmp_path / "expert")
    assert expert.spec.projection is None and expert.method == "slm-pn"
    assert report["params"] == expert.spec.params_inference() == sum(w.size for w in expert.weights.values())
    tuned = pnlm_cli("finetune", tmp_path / "expert", "--data", domain.path, "--backend", "mlx", "--steps", 6,
                     "--eval-every", 3, "--lr", 1e-3, "--out", tmp_path / "ft", "--json")
    assert tuned.returncode == 0, tuned.stderr
    before = json.loads(pnlm_cli("eval", tmp_path / "expert", "--data", domain.path, "--json").stdout)["macro_ppl"]
    after = json.loads(pnlm_cli("eval", tmp_path / "ft" / "best", "--data", domain.path, "--json").stdout)["macro_ppl"]
    assert after < before
    blended = pnlm_cli("instantiate", run, "--domain", domain.path, "--expert", "histogram", "--out", tmp_path / "mixed")
    assert blended.returncode == 0, blended.stderr
    bad = pnlm_cli("instantiate", run, "--expert", "7", "--out", tmp_path / "x")
    assert bad.returncode == 2 and "2 experts" in bad.stderr


def test_pn_resume_after_kill_gives_the_uninterrupted_losses(tmp_path, corpus):
    generic, _, clusters = corpus
    common = ["pretrain", "--method", "pn", "--model", "pn-tiny", "--data", generic.path, "--clusters", clusters,
              "--projection", "3,2,2", "--backend", "torch", "--steps", 16, "--batch-size", 4, "--lr", 3e-3,
              "--checkpoint-every", 8, "--seed", 2]
    assert_resume_after_kill_is_exact(common, tmp_path)


def test_pn_batches_are_the_slms_with_each_rows_cluster(tmp_path, corpus):
    generic, _, clusters = corpus
    labels = generic.cluster_ids("train")
    routed, uniform = RoutedSampler(generic, 6, 0, 2), UniformSampler(generic, 6, 0)
    mixed = 0
    for step in range(20):
        indices, experts = routed.train_batch(step)
        assert np.array_equal(indices, uniform.train_batch(step)[0]) and np.array_equal(experts, labels[indices])
        mixed += len(set(experts.tolist())) > 1
    assert mixed >= 10
    valid = generic.cluster_ids("valid")
    groups = list(routed.eval_groups("valid", 4))  # evaluation stays cluster by cluster, each by its expert
    assert sum(len(i) for i, _ in groups) == len(valid) and all(set(valid[i].tolist()) == {e} for i, e in groups)
    # One-cluster batches stay available (the ablation), and a run resumes only on the batches it began with.
    common = ["pretrain", "--method", "pn", "--model", "pn-tiny", "--data", generic.path, "--clusters", clusters,
              "--projection", "3,2,2", "--backend", "torch", "--batch-size", 4, "--out", tmp_path / "run"]
    assert pnlm_cli(*common, "--steps", 3, "--pn-batches", "one-cluster").returncode == 0
    other = pnlm_cli(*common, "--steps", 5, "--resume")
    assert other.returncode == 2 and "one-cluster batches" in other.stderr, other.stderr
    assert pnlm_cli(*common, "--steps", 5, "--resume", "--pn-batches", "one-cluster").returncode == 0
    assert json.loads((tmp_path / "run" / "latest" / "config.json").read_text())["batches"] == "one-cluster"


def test_mixture_trains_one_model_per_cluster_and_hands_out_the_domains(tmp_path, corpus):
    generic, domain, clusters = corpus
    common = ["pretrain", "--method", "mix", "--model", "tiny", "--data", generic.path, "--clusters", clusters,
              "--backend", "mlx", "--steps", 4, "--batch-size", 4, "--lr", 3e-3, "--out", tmp_path / "mix"]
    trained = pnlm_cli(*common)
    assert trained.returncode == 0, trained.stderr
    info = json.loads(pnlm_cli("info", tmp_path / "mix", "--json").stdout)
    assert info["params_pretrain"] == 2 * info["params_inference"]
    again = pnlm_cli(*common, "--resume")  # both experts are done: nothing to train
    assert again.returncode == 0, again.stderr
    made = pnlm_cli("instantiate", tmp_path / "mix", "--domain", domain.path, "--out", tmp_path / "expert", "--json")
    assert made.returncode == 0, made.stderr
    index = json.loads(made.stdout)["expert"]
    source = load_checkpoint(tmp_path / "mix" / f"expert-{index:02d}" / "latest").weights
    copied = load_checkpoint(tmp_path / "expert").weights
    assert all(np.array_equal(source[n], copied[n]) for n in source)
    refused = pnlm_cli("instantiate", tmp_path / "mix", "--domain", domain.path, "--expert", "histogram",
                       "--out", tmp_path / "y")
    assert refused.returncode == 2 and "hard mixture" in refused.stderr


@pytest.mark.skipif(shutil.which("torchrun", path=str(Path(sys.executable).parent)) is None,
                    reason="torchrun is not installed beside this python")
def test_mixture_experts_shared_out_over_torchrun_ranks(tmp_path, corpus):
    generic, _, clusters = corpus
    common = ["pretrain", "--method", "mix", "--model", "tiny", "--data", generic.path, "--clusters", clusters,
              "--backend", "torch", "--steps", 3, "--batch-size", 4, "--lr", 3e-3]
    alone = pnlm_cli(*common, "--out", tmp_path / "one")
    assert alone.returncode == 0, alone.stderr
    torchrun = str(Path(sys.executable).parent / "torchrun")
    shared = subprocess.run([torchrun, "--standalone", "--nproc_per_node", "2", "-m", "pnlm.cli",
                             *map(str, common), "--out", str(tmp_path / "two")], capture_output=True, text=True,
                            timeout=300)
    assert shared.returncode == 0, shared.stderr[-2000:]
    for expert in (0, 1):  # each rank trained one expert alone: the same losses as one process training both
        a = (tmp_path / "one" / f"expert-{expert:02d}" / "metrics.jsonl").read_text().splitlines()
        b = (tmp_path / "two" / f"expert-{expert:02d}" / "metrics.jsonl").read_text().splitlines()
        assert [json.loads(x)["loss"] for x in a] == [json.loads(x)["loss"] for x in b]


def test_importance_sampling_follows_the_domain_histogram(tmp_path, corpus):
    from pnlm.clustering.histogram import cluster_histogram
    from pnlm.methods.importance import ImportanceSampler

    generic, domain, clusters = corpus
    target = cluster_histogram(domain.cluster_ids("train"), 2)
    sampler = ImportanceSampler(generic, 8, 0, 2, target)
    assert 0.5 * np.abs(sampler.sampled_histogram(400) - target).sum() < 0.05
    assert np.array_equal(sampler.train_batch(17)[0], ImportanceSampler(generic, 8, 0, 2, target).train_batch(17)[0])
    # The effective sample size against a direct computation over the windows' weights.
    labels = generic.cluster_ids("train")
    w = sampler.weights[labels]
    assert sampler.effective_sample_size() == pytest.approx(w.sum() ** 2 / (w ** 2).sum())
    result = pnlm_cli("pretrain", "--method", "is", "--model", "tiny", "--data", generic.path, "--clusters", clusters,
                      "--domain", domain.path, "--backend", "torch", "--steps", 50, "--batch-size", 4, "--out",
                      tmp_path / "is", "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["total_variation"] < 0.05 and 0 < summary["effective_sample_size"] <= summary["generic_windows"]
    assert load_checkpoint(tmp_path / "is" / "latest").method == "slm-is"
    missing = pnlm_cli("pretrain", "--method", "is", "--model", "tiny", "--data", generic.path, "--clusters", clusters,
                       "--backend", "torch", "--steps", 2, "--out", tmp_path / "x")
    assert missing.returncode == 2 and "--domain" in missing.stderr


def test_mixture_json_is_one_object(tmp_path, corpus):
    generic, _, clusters = corpus
    result = pnlm_cli("pretrain", "--method", "mix", "--model", "tiny", "--data", generic.path, "--clusters", clusters,
                      "--backend", "torch", "--steps", 2, "--batch-size", 2, "--out", tmp_path / "mix", "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert sorted(summary["experts"]) == ["0", "1"] and all(e["steps"] == 2 for e in summary["experts"].values())
    before = (tmp_path / "mix" / "mix.json").read_bytes()
    (tmp_path / "other.toml").write_text("[model]\npreset = 'tiny'\nd_ff = 64\n")
    rerun = pnlm_cli("pretrain", "--method", "mix", "--model", tmp_path / "other.toml", "--data", generic.path,
                     "--clusters", clusters, "--backend", "torch", "--steps", 4, "--batch-size", 2,
                     "--out", tmp_path / "mix", "--resume")
    assert rerun.returncode == 2 and f"{tmp_path / 'mix' / 'mix.json'}: this mixture was started with" in rerun.stderr
    assert (tmp_path / "mix" / "mix.json").read_bytes() == before  # refused before it was touched
