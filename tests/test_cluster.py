"""Clusters: histogram math by hand; embed, k-means and assign two kinds of text through the API and the CLI."""

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import SAMPLE_DATA

from pnlm.clustering import (
    assign_clusters,
    cluster_histogram,
    entropy,
    fit_clusters,
    histogram_report,
    importance_weights,
    load_clusters,
    top_share,
    window_texts,
)
from pnlm.clustering import embed as cluster_embed
from pnlm.clustering.embedder import default_embedder_path
from pnlm.data import iter_documents
from pnlm.data.prepare import prepare_store
from pnlm.data.store import TokenStore
from pnlm.errors import InputError
from pnlm.tokenizer import file_sha256, train_tokenizer

REPORT_KEYS = {"split", "windows", "counts", "histogram", "top_cluster", "top_share", "entropy"}


# --- histogram math ---------------------------------------------------------------------------------

def test_uniform_histogram():
    hist = cluster_histogram(np.array([0, 1, 2, 3, 3, 2, 1, 0]), 4)
    assert hist.tolist() == [0.25] * 4
    assert top_share(hist) == 0.25
    assert entropy(hist) == pytest.approx(math.log(4))


def test_one_hot_histogram_has_zero_entropy():
    hist = cluster_histogram(np.array([2, 2, 2]), 4)
    assert hist.tolist() == [0, 0, 1, 0]
    assert top_share(hist) == 1.0
    assert entropy(hist) == 0.0 and math.copysign(1, entropy(hist)) == 1  # 0 log 0 = 0, and no -0.0


def test_histogram_with_empty_clusters():
    hist = cluster_histogram(np.array([0, 0, 1, 3]), 4)
    assert hist.tolist() == [0.5, 0.25, 0.0, 0.25]
    assert entropy(hist) == pytest.approx(1.5 * math.log(2))  # -(.5 ln .5 + 2 * .25 ln .25)
    report = histogram_report(np.array([0, 0, 1, 3]), 4)
    assert report == {"windows": 4, "counts": [2, 1, 0, 1], "histogram": [0.5, 0.25, 0.0, 0.25],
                      "top_cluster": 0, "top_share": 0.5, "entropy": pytest.approx(1.5 * math.log(2))}


def test_histogram_errors():
    with pytest.raises(InputError, match="no windows"):
        cluster_histogram(np.array([], dtype=np.int32), 3)
    with pytest.raises(InputError, match=r"\[0, 3\)"):
        cluster_histogram(np.array([0, 3]), 3)


def test_importance_weights():
    assert importance_weights([0.5, 0.5, 0.0], [0.25, 0.25, 0.5]).tolist() == [2.0, 2.0, 0.0]
    # a cluster neither set uses weighs 0, not nan
    assert importance_weights([1.0, 0.0], [1.0, 0.0]).tolist() == [1.0, 0.0]
    with pytest.raises(InputError, match=r"cluster\(s\) 1 hold domain windows but no generic"):
        importance_weights([0.5, 0.5], [1.0, 0.0])
    with pytest.raises(InputError, match="different shapes"):
        importance_weights([1.0], [0.5, 0.5])


# --- two kinds of text --------------------------------------------------------------------------------

def prose(n, size=1500):
    text = next(iter(iter_documents(SAMPLE_DATA[:1])))
    return [text[i:i + size] for i in range(0, n * size, size)]


def numbers(n, seed):
    rng = np.random.default_rng(seed)
    return ["\n".join(" ".join(map(str, rng.integers(0, 10**6, 10))) for _ in range(8)) for _ in range(n)]


def is_numeric(text):
    return sum(c.isdigit() for c in text) > 0.5 * max(1, len(text.strip()))


@pytest.fixture(scope="module")
def generic(tmp_path_factory, tokenizer):
    store, _ = prepare_store(prose(16) + numbers(16, seed=0), tokenizer, tmp_path_factory.mktemp("g") / "generic",
                             context=64, valid_fraction=0.2, test_fraction=0.2, workers=1)
    assert all(store.num_windows(split) for split in store.splits)
    return store


@pytest.fixture(scope="module")
def domain(tmp_path_factory, tokenizer):
    store, _ = prepare_store(numbers(8, seed=1), tokenizer, tmp_path_factory.mktemp("d") / "domain",
                             context=64, valid_fraction=0.2, test_fraction=0.3, workers=1)
    assert store.num_windows("test") and not store.num_windows("valid")  # an empty split must be labelled too
    return store


@pytest.fixture(scope="module")
def fitted(generic, tokenizer, tmp_path_factory):
    return fit_clusters(generic, tokenizer, 2, tmp_path_factory.mktemp("c") / "clusters2")


@pytest.fixture(scope="module")
def numeric_cluster(fitted, generic, tokenizer):
    """The cluster of the numbers windows; checks on the way that k=2 tells numbers from prose."""
    texts = window_texts(generic, tokenizer, "train", 0, generic.num_windows("train"))
    numeric = np.array([is_numeric(text) for text in texts])
    labels = generic.cluster_ids("train")
    assert 0 < numeric.mean() < 1
    majority = np.bincount(labels[numeric], minlength=2).argmax()
    assert (labels[numeric] == majority).mean() > 0.9 and (labels[~numeric] != majority).mean() > 0.9
    return int(majority)


def test_fit_writes_clusters_and_labels_every_split(fitted, generic, numeric_cluster):
    clusters = load_clusters(fitted.clusters.path)
    assert clusters.centroids.shape == (2, 384) and clusters.centroids.dtype == np.float32
    assert clusters.info["tokenizer_sha256"] == generic.tokenizer_sha256 and clusters.info["seed"] == 0
    assert sum(clusters.info["train_histogram"]) == pytest.approx(1.0)
    labelled = generic.clusters_info()
    assert set(labelled.pop("labels_sha256")) == set(generic.splits) and labelled == clusters.store_info()
    for split in generic.splits:
        ids = generic.cluster_ids(split)
        assert ids.shape == (generic.num_windows(split),) and set(ids.tolist()) <= {0, 1}
    assert fitted.windows == {split: generic.num_windows(split) for split in generic.splits}
    assert fitted.cached_splits == []


def test_a_new_k_reuses_the_embedding_cache(fitted, generic, tokenizer, tmp_path, monkeypatch):
    store_copy = tmp_path / "generic"
    shutil.copytree(generic.path, store_copy)  # a copy, so the labels of the shared store stay those of k=2
    cache = sorted((store_copy / cluster_embed.EMBEDDINGS_DIR).rglob("*.npy"))
    assert [p.stem for p in cache] == sorted(generic.splits)
    mtimes = [p.stat().st_mtime_ns for p in cache]

    def no_embedding(*args, **kwargs):
        raise AssertionError("re-embedded windows that were in the cache")

    monkeypatch.setattr(cluster_embed, "load_sentence_encoder", no_embedding)
    result = fit_clusters(store_copy, tokenizer, 3, tmp_path / "clusters3", max_fit_windows=50)
    assert result.cached_splits == generic.splits and result.clusters.k == 3
    assert result.clusters.info["kmeans"]["fit_windows"] == 50  # k-means on a sample, labels for all
    assert result.windows == fitted.windows
    assert [p.stat().st_mtime_ns for p in cache] == mtimes
    assert set(np.load(store_copy / "train.clusters.npy").tolist()) <= {0, 1, 2}


def test_assign_reports_the_domain_histogram(fitted, generic, domain, tokenizer, numeric_cluster):
    report = assign_clusters(domain, tokenizer, fitted.clusters.path)
    assert set(report) == REPORT_KEYS and report["split"] == "test"
    hist = np.array(report["histogram"])
    assert hist.sum() == pytest.approx(1.0) and report["windows"] == domain.num_windows("test")
    assert report["top_share"] == hist.max() and report["top_cluster"] == hist.argmax()
    assert report["entropy"] == pytest.approx(entropy(hist))
    assert report["top_cluster"] == numeric_cluster and report["top_share"] > 0.9
    assert domain.cluster_ids("test").shape == (domain.num_windows("test"),)
    assert domain.cluster_ids("train") is None  # only the split asked for is labelled
    assert {k: v for k, v in domain.clusters_info().items() if k != "labels_sha256"} == fitted.clusters.store_info()
    # labelling more splits with the same clusters keeps the test labels
    assert assign_clusters(domain, tokenizer, fitted.clusters.path, split="train")["split"] == "train"
    assert domain.cluster_ids("test").shape == (domain.num_windows("test"),)
    assign_clusters(domain, tokenizer, fitted.clusters.path, all_splits=True)
    for split in domain.splits:
        assert domain.cluster_ids(split).shape == (domain.num_windows(split),)
    weights = importance_weights(cluster_histogram(domain.cluster_ids("train"), 2), fitted.train["histogram"])
    assert weights[numeric_cluster] > 1
    with pytest.raises(InputError, match="valid split has no windows"):
        assign_clusters(domain, tokenizer, fitted.clusters.path, split="valid")
    # without a tokenizer: the one the clusters were fit with
    assert assign_clusters(domain, None, fitted.clusters.path) == report


# --- bad inputs ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def other_tokenizer(tmp_path_factory):
    return train_tokenizer(numbers(4, seed=2), 270, tmp_path_factory.mktemp("t") / "other")


def test_bad_fit_inputs(generic, tokenizer, other_tokenizer, tmp_path):
    with pytest.raises(InputError, match=f"has only {generic.num_windows('train')} windows"):
        fit_clusters(generic, tokenizer, 10_000, tmp_path / "c")
    with pytest.raises(InputError, match="positive"):
        fit_clusters(generic, tokenizer, 0, tmp_path / "c")
    with pytest.raises(InputError, match="is not the tokenizer of"):
        fit_clusters(generic, other_tokenizer, 2, tmp_path / "c")
    with pytest.raises(InputError, match="cannot be the store"):
        fit_clusters(generic, tokenizer, 2, generic.path)
    (tmp_path / "precious").mkdir()
    (tmp_path / "precious" / "notes.txt").write_text("keep me")
    with pytest.raises(InputError, match="not a clusters folder; refusing"):
        fit_clusters(generic, tokenizer, 2, tmp_path / "precious")
    with pytest.raises(InputError, match="not a sentence-transformers model folder"):
        fit_clusters(generic, tokenizer, 2, tmp_path / "c", embedder=tmp_path)
    assert not (tmp_path / "c").exists()


def broken_copy(fitted, tmp_path, centroids=None, info_text=None, resha=True):
    folder = tmp_path / "broken"
    shutil.copytree(fitted.clusters.path, folder)
    if centroids is not None:
        np.save(folder / "centroids.npy", centroids)
        if resha:
            info = json.loads((folder / "clusters.json").read_text())
            info["centroids_sha256"] = file_sha256(folder / "centroids.npy")
            (folder / "clusters.json").write_text(json.dumps(info))
    if info_text is not None:
        (folder / "clusters.json").write_text(info_text)
    return folder


@pytest.mark.parametrize("damage, fragment", [
    (dict(info_text="{not json"), "not valid JSON"),
    (dict(info_text='{"format": "something else"}'), "not a clusters folder"),
    (dict(centroids=np.zeros((2, 384), np.float32), resha=False), "sha256 does not match"),
    (dict(centroids=np.full((2, 384), np.nan, np.float32)), "not finite"),
    (dict(centroids=np.zeros((3, 384), np.float32)), "expected float32 (2, 384)"),
])
def test_broken_clusters_folder(fitted, domain, tokenizer, tmp_path, damage, fragment):
    with pytest.raises(InputError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        assign_clusters(domain, tokenizer, broken_copy(fitted, tmp_path, **damage))


def test_bad_assign_inputs(fitted, generic, domain, tokenizer, other_tokenizer, tmp_path):
    with pytest.raises(InputError, match="no such clusters folder"):
        assign_clusters(domain, tokenizer, tmp_path / "missing")
    with pytest.raises(InputError, match="not a clusters folder"):
        assign_clusters(domain, tokenizer, generic.path)  # a store has a clusters.json too, of another kind
    with pytest.raises(InputError, match="is not the tokenizer of"):
        assign_clusters(domain, other_tokenizer, fitted.clusters.path)
    with pytest.raises(InputError, match="no split 'dev'"):
        assign_clusters(domain, tokenizer, fitted.clusters.path, split="dev")
    moved = broken_copy(fitted, tmp_path)
    info = json.loads((moved / "clusters.json").read_text())
    info["tokenizer"]["path"] = str(tmp_path / "gone" / "tokenizer.model")
    (moved / "clusters.json").write_text(json.dumps(info))
    with pytest.raises(InputError, match="pass --tokenizer"):
        assign_clusters(domain, None, moved)


def test_the_embedder_is_known_by_its_files(fitted, tmp_path):
    clusters = load_clusters(fitted.clusters.path)
    copy = shutil.copytree(default_embedder_path(), tmp_path / "minilm-copy")
    assert clusters.embedder(copy).id == clusters.info["embedder"]["id"]  # so the cache is shared
    other = tmp_path / "other-model"
    other.mkdir()
    (other / "config.json").write_text("{}")
    with pytest.raises(InputError, match="must be embedded by the same model"):
        clusters.embedder(other)


# --- the command line ---------------------------------------------------------------------------------

def pnlm_cli(*args):
    return subprocess.run([sys.executable, "-m", "pnlm.cli", *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})


def test_cli_cluster_and_assign(fitted, generic, domain, tokenizer, tmp_path):
    store_copy = tmp_path / "generic"
    shutil.copytree(generic.path, store_copy)
    result = pnlm_cli("data", "cluster", store_copy, "--k", 2, "--out", tmp_path / "clusters", "--tokenizer",
                      tokenizer.path.parent, "--json")
    assert result.returncode == 0, result.stderr
    fit = json.loads(result.stdout)
    assert fit["k"] == 2 and fit["cached_splits"] == generic.splits and fit["train"] == fitted.train
    # the same cached embeddings and seed give the same centroids
    assert load_clusters(tmp_path / "clusters").centroids_sha256 == fitted.clusters.centroids_sha256

    expected = assign_clusters(domain, tokenizer, fitted.clusters.path)
    fresh = tmp_path / "domain"
    shutil.copytree(domain.path, fresh, ignore=shutil.ignore_patterns(cluster_embed.EMBEDDINGS_DIR))
    result = pnlm_cli("data", "assign", fresh, "--clusters", tmp_path / "clusters", "--tokenizer",
                      tokenizer.path.parent, "--json")  # embeds the windows in this process
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == expected

    result = pnlm_cli("data", "assign", fresh, "--clusters", tmp_path / "clusters")  # the tokenizer clusters recorded
    assert result.returncode == 0 and f"share {expected['top_share']:.3f}" in result.stderr


@pytest.mark.parametrize("args, fragment", [
    (["data", "assign", "STORE", "--clusters", "/nonexistent", "--tokenizer", "TOK"], "no such clusters folder"),
    (["data", "cluster", "STORE", "--k", "100000", "--out", "/tmp/never", "--tokenizer", "TOK"], "has only"),
    (["data", "cluster", "/nonexistent", "--k", "2", "--out", "/tmp/never", "--tokenizer", "TOK"], "not a token store"),
])
def test_cli_bad_input_is_one_line(generic, tokenizer, args, fragment):
    args = [{"STORE": generic.path, "TOK": tokenizer.path.parent}.get(a, a) for a in args]
    result = pnlm_cli(*args)
    assert result.returncode == 2 and fragment in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_cli_help():
    for command in ("cluster", "assign"):
        result = pnlm_cli("data", command, "--help")
        assert result.returncode == 0 and "--tokenizer" in result.stdout


def test_cluster_killed_midway_leaves_no_clusters_and_a_rerun_completes(tokenizer, tiny_embedder, tmp_path):
    docs = prose(60) + numbers(60, seed=5)
    store, _ = prepare_store(iter(docs), tokenizer, tmp_path / "store", context=32, valid_fraction=0, test_fraction=0)
    args = ["data", "cluster", store.path, "--k", 2, "--embedder", tiny_embedder, "--batch-size", 4,  # to be killed
            "--out", tmp_path / "clusters", "--tokenizer", tokenizer.path.parent]
    child = subprocess.Popen([sys.executable, "-m", "pnlm.cli", *map(str, args)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while not list((store.path / "embeddings").rglob("train.partial.chunks/*")) and time.monotonic() < deadline:
        assert child.poll() is None, "cluster ended before it could be killed"
        time.sleep(0.05)
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert not (tmp_path / "clusters").exists()
    assert TokenStore(store.path).cluster_ids("train") is None
    result = pnlm_cli(*args[:-2], "--json")  # without --tokenizer: the copy the store keeps
    assert result.returncode == 0, result.stderr
    assert TokenStore(store.path).cluster_ids("train").shape == (store.num_windows("train"),)
    assert load_clusters(tmp_path / "clusters").k == 2
    assert not list((store.path / "embeddings").rglob(".*.tmp-*"))
    assert not list((store.path / "embeddings").rglob("*partial*")), "the killed run's partial embedding was left"
