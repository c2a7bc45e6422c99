"""Clustering at scale: embedding on any backend within a cosine of the CPU's float32, torchrun ranks that
write one process's files, an embedding killed and continued bit for bit, k-means that recovers planted
clusters (faiss, and scikit-learn without it), and one-line refusals that write nothing."""

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
from conftest import SAMPLE_DATA
from embedders import minilm_path

from pnlm.clustering import embed as cluster_embed
from pnlm.clustering.embedder import resolve_embedder
from pnlm.clustering.embedding_cache import SplitCache, chunk_windows
from pnlm.clustering.kmeans import kmeans, nearest_centroid
from pnlm.clustering.window_features import EmbedderTokenizer, WindowFeatures, window_texts
from pnlm.data import iter_documents
from pnlm.data.prepare import prepare_store
from pnlm.data.store import TokenStore
from pnlm.files.run_lock import lock_output, release_outputs

PNLM = [sys.executable, "-m", "pnlm.cli"]
TORCHRUN = shutil.which("torchrun", path=str(Path(sys.executable).parent))


def run(*args, env=None, timeout=600) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, env=env, timeout=timeout)


@pytest.fixture(scope="module")
def books(tmp_path_factory, tokenizer):
    """The sample books in windows of 32 tokens: over 5,000 train windows."""
    store, _ = prepare_store(iter_documents(SAMPLE_DATA), tokenizer, tmp_path_factory.mktemp("books") / "books",
                             context=32, valid_fraction=0.05, test_fraction=0.05, workers=1)
    assert store.num_windows("train") >= 5000
    return store


@pytest.fixture(scope="module")
def hamlet(tmp_path_factory, tokenizer):
    """Hamlet in windows of 32 tokens, every one in the train split: over 2,000 of them."""
    store, _ = prepare_store(iter_documents([p for p in SAMPLE_DATA if "hamlet" in p]), tokenizer,
                             tmp_path_factory.mktemp("hamlet") / "hamlet", context=32, valid_fraction=0,
                             test_fraction=0, workers=1)
    assert store.num_windows("train") >= 2000
    return store


def cache_files(store: Path) -> dict[str, bytes]:
    return {str(p.relative_to(store)): p.read_bytes() for p in sorted((store / "embeddings").rglob("*.npy"))}


def labels(store: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(store.glob("*.clusters.npy"))}


def clusters_files(folder: Path) -> dict[str, bytes]:
    return {name: (folder / name).read_bytes() for name in ("clusters.json", "centroids.npy")}


# --- the backends embed alike -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def minilm_windows(tmp_path_factory, tokenizer):
    store, _ = prepare_store(iter_documents(SAMPLE_DATA[:1]), tokenizer, tmp_path_factory.mktemp("w") / "w",
                             context=256, valid_fraction=0, test_fraction=0, workers=1)
    return store


def embeddings_of(store, tokenizer, backend, precision, embedder=None):
    from pnlm.backend_loader import load_sentence_encoder

    path = str(embedder or minilm_path())
    encoder = load_sentence_encoder(backend, path, precision)
    features = WindowFeatures(str(store.path), str(tokenizer.path), path, encoder.max_seq_length)
    ids = features("train", 0, 16)
    rows = list(cluster_embed._embed_chunks(iter([(0, ids)]), encoder, 16, encoder.dim))
    return rows[0][1].astype(np.float32)  # as cached: float16


def cosines(a, b):
    return (a * b).sum(axis=1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def test_the_embedders_tokenizer_gives_sentence_transformers_ids(minilm_windows, tokenizer):
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(minilm_path()), device="cpu")
    texts = window_texts(minilm_windows, tokenizer, "train", 0, 24) + ["", "  spaces  ", "x " * 600]
    ours = EmbedderTokenizer(minilm_path(), model.max_seq_length)(texts)
    theirs = model.preprocess(texts)
    for row, (ids, mask) in enumerate(zip(theirs["input_ids"].numpy(), theirs["attention_mask"].numpy())):
        assert ours[row].tolist() == ids[mask == 1].tolist()


@pytest.mark.parametrize("backend, precision, cosine", [
    ("mlx", "float32", 0.9999), ("torch", "bfloat16", 0.995), ("mlx", "bfloat16", 0.995)])
def test_every_backend_embeds_within_a_cosine_of_the_cpus_float32(minilm_windows, tokenizer, backend, precision,
                                                                  cosine):
    reference = embeddings_of(minilm_windows, tokenizer, "torch", "float32")
    other = embeddings_of(minilm_windows, tokenizer, backend, precision)
    assert np.allclose(np.linalg.norm(reference, axis=1), 1, atol=2e-3)
    assert cosines(reference, other).min() >= cosine  # float32 alike to the float16 the cache holds


def test_the_mlx_encoder_runs_a_folder_built_here_as_sentence_transformers_does(minilm_windows, tokenizer,
                                                                               tiny_embedder):
    reference = embeddings_of(minilm_windows, tokenizer, "torch", "float32", tiny_embedder)
    other = embeddings_of(minilm_windows, tokenizer, "mlx", "float32", tiny_embedder)
    assert cosines(reference, other).min() >= 0.9999


# --- torchrun ranks write one process's files --------------------------------------------------------

@pytest.mark.skipif(TORCHRUN is None, reason="torchrun is not installed beside this python")
def test_two_ranks_write_the_files_one_process_writes(books, tiny_embedder, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    common = ["data", "cluster", books.path, "--k", 8, "--embedder", tiny_embedder, "--backend", "torch", "--json"]
    one = run(*PNLM, *common, "--out", tmp_path / "one", env=env)
    assert one.returncode == 0, one.stderr[-2000:]
    reference = (cache_files(books.path), labels(books.path), clusters_files(tmp_path / "one"))
    shutil.rmtree(books.path / "embeddings")

    two = run(TORCHRUN, "--standalone", "--nproc_per_node", 2, "-m", "pnlm.cli", *common, "--out", tmp_path / "two",
              env=env)
    assert two.returncode == 0, two.stderr[-3000:]
    report = json.loads(two.stdout)
    assert (cache_files(books.path), labels(books.path), clusters_files(tmp_path / "two")) == reference
    windows = sum(books.num_windows(split) for split in books.splits)
    assert report["embedded_windows"] == windows and len(report["embedded_by_rank"]) == 2
    assert all(0.4 * windows <= n <= 0.6 * windows for n in report["embedded_by_rank"]), report["embedded_by_rank"]
    assert json.loads(one.stdout)["embedded_by_rank"] == [windows]
    # stderr is no terminal here: plain progress lines, with the rate and the time left
    progress = [line for line in one.stderr.splitlines() if line.startswith("embedding train: ")]
    assert progress and progress[-1].startswith(f"embedding train: {books.num_windows('train'):,}/")
    assert "windows/s" in progress[-1] and "eta" in progress[-1]


@pytest.mark.skipif(TORCHRUN is None, reason="torchrun is not installed beside this python")
def test_a_rank_that_dies_stops_the_other_with_one_line_and_a_rerun_finishes(hamlet, tiny_embedder, tmp_path):
    store = tmp_path / "hamlet"
    shutil.copytree(hamlet.path, store, ignore=shutil.ignore_patterns("embeddings", "*.clusters.npy", "clusters.json"))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    argv = [TORCHRUN, "--standalone", "--nproc_per_node", 2, "-m", "pnlm.cli", "data", "cluster", store, "--k", 8,
            "--embedder", tiny_embedder, "--backend", "torch", "--batch-size", 2, "--out", tmp_path / "clusters"]
    job = subprocess.Popen([str(a) for a in argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True)
    deadline = time.monotonic() + 120
    rank1 = None
    while rank1 is None and time.monotonic() < deadline:
        assert job.poll() is None, job.communicate()[1][-3000:]
        journals = list((store / "embeddings").rglob("train.partial.chunks/rank00001-*"))
        if journals and journals[0].read_text().count("\n") >= 2:
            rank1 = int(journals[0].name.split("-")[-2])
        time.sleep(0.02)
    assert rank1 is not None, "rank 1 never finished a chunk"
    os.kill(rank1, signal.SIGKILL)
    killed = time.monotonic()
    _, err = job.communicate(timeout=120)
    assert job.returncode != 0 and time.monotonic() - killed < 60
    ours = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(ours) == 1 and "rank 0" in ours[0], err[-3000:]
    assert not (tmp_path / "clusters").exists() and not list(store.glob("*.clusters.npy"))
    assert list((store / "embeddings").rglob("train.partial.npy"))  # kept, to continue from

    # The rest at the default batch size (the small one was to be killed in time): the cache's chunks are the same.
    again = run(*argv[:-4], "--out", tmp_path / "clusters", "--json", env=env)
    assert again.returncode == 0, again.stderr[-3000:]
    assert json.loads(again.stdout)["resumed_windows"]["train"] > 0
    assert not list((store / "embeddings").rglob("*partial*"))
    assert TokenStore(store).cluster_ids("train").shape == (hamlet.num_windows("train"),)


# --- a killed embedding continues ----------------------------------------------------------------------

def journal_chunks(store: Path) -> int:
    return sum(p.read_text().count("\n") for p in (store / "embeddings").rglob("train.partial.chunks/*"))


@pytest.mark.parametrize("at", [0.55, pytest.param(0.75, marks=pytest.mark.long),
                                pytest.param(0.95, marks=pytest.mark.long)])
def test_an_embedding_killed_past_half_continues_and_ends_with_the_same_file(hamlet, tiny_embedder, tmp_path, at):
    store = tmp_path / "hamlet"
    shutil.copytree(hamlet.path, store, ignore=shutil.ignore_patterns("embeddings", "*.clusters.npy", "clusters.json"))
    windows = TokenStore(store).num_windows("train")
    assert windows >= 2000
    chunks = -(-windows // chunk_windows(windows))
    argv = [*PNLM, "data", "cluster", store, "--k", 4, "--embedder", tiny_embedder, "--backend", "torch",
            "--batch-size", 2, "--json"]
    assert run(*argv, "--out", tmp_path / "reference").returncode == 0
    reference = cache_files(store)
    shutil.rmtree(store / "embeddings")

    child = subprocess.Popen([str(a) for a in argv + ["--out", tmp_path / "clusters"]], stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 300
    while journal_chunks(store) < at * chunks:
        assert child.poll() is None and time.monotonic() < deadline, "the embedding ended before it could be killed"
        time.sleep(0.005)
    os.killpg(child.pid, signal.SIGKILL)
    child.wait()
    assert not list((store / "embeddings").rglob("train.npy")) and not (tmp_path / "clusters").exists()

    again = run(*argv, "--out", tmp_path / "clusters")
    assert again.returncode == 0, again.stderr[-2000:]
    report = json.loads(again.stdout)
    assert report["embedded_windows"] < 0.6 * sum(TokenStore(store).num_windows(s) for s in TokenStore(store).splits)
    assert report["resumed_windows"]["train"] >= 0.4 * windows
    assert cache_files(store) == reference
    assert not list((store / "embeddings").rglob("*partial*"))


def children(pid: int) -> list[tuple[int, str]]:
    found = []
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            fields = dict(line.split(":\t", 1) for line in status.read_text().splitlines() if ":\t" in line)
            command = (status.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if int(fields.get("PPid", "0").strip()) == pid:
            found.append((int(status.parent.name), command))
    return found


def test_windows_decoded_by_worker_processes_embed_alike(hamlet, tiny_embedder, tmp_path):
    store = tmp_path / "hamlet"
    shutil.copytree(hamlet.path, store, ignore=shutil.ignore_patterns("embeddings", "*.clusters.npy", "clusters.json"))
    argv = [*PNLM, "data", "cluster", store, "--k", 4, "--embedder", tiny_embedder, "--backend", "torch", "--overwrite",
            "--out", tmp_path / "clusters"]
    assert run(*argv, "--workers", 0).returncode == 0
    inline = cache_files(store)
    shutil.rmtree(store / "embeddings")
    result = run(*argv, "--workers", 2)
    assert result.returncode == 0, result.stderr[-2000:]
    assert cache_files(store) == inline


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="finds the worker through /proc")
def test_a_worker_that_dies_stops_the_embedding_with_one_line(hamlet, tiny_embedder, tmp_path):
    store = tmp_path / "hamlet"
    shutil.copytree(hamlet.path, store, ignore=shutil.ignore_patterns("embeddings", "*.clusters.npy", "clusters.json"))
    child = subprocess.Popen([str(a) for a in [*PNLM, "data", "cluster", store, "--k", 4, "--embedder", tiny_embedder,
                                               "--backend", "torch", "--batch-size", 2, "--workers", 1,
                                               "--out", tmp_path / "clusters"]],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline, worker = time.monotonic() + 120, None
    while worker is None and time.monotonic() < deadline:
        assert child.poll() is None, child.communicate()[1][-2000:]
        if journal_chunks(store) >= 1:
            workers = [pid for pid, command in children(child.pid) if "spawn_main" in command]
            worker = workers[0] if workers else None
        time.sleep(0.02)
    assert worker is not None, "no worker process found"
    os.kill(worker, signal.SIGKILL)
    killed = time.monotonic()
    _, err = child.communicate(timeout=60)
    assert child.returncode == 2 and time.monotonic() - killed < 10, err[-3000:]
    assert "a worker decoding windows for the embedder died" in err and len(err.strip().splitlines()) <= 3, err
    assert [line for line in err.splitlines() if line.startswith("error:")] == [err.strip().splitlines()[-1]]
    assert not (tmp_path / "clusters").exists()


def test_a_partial_embedding_of_other_windows_is_not_resumed(tmp_path):
    folder = tmp_path / "cache"
    folder.mkdir()
    first = SplitCache(folder, "train", 1000, 8, "embedder-a")
    assert first.prepare() is False
    first.open_for_writing(0)
    first.write(0, np.ones((first.chunk, 8), dtype=np.float16))
    first.close()
    assert SplitCache(folder, "train", 1000, 8, "embedder-a").done() == {0}
    assert SplitCache(folder, "train", 1000, 8, "embedder-a").prepare() is True  # the same: kept
    other = SplitCache(folder, "train", 1200, 8, "embedder-a")
    assert other.prepare() is False and other.done() == set()  # other windows: started anew
    (other.journals / "rank00000-host-1-2.log").write_text("chunk 3\nchunk 4")  # a line cut short names nothing
    assert other.done() == {3}


# --- k-means ---------------------------------------------------------------------------------------------

def planted(k=64, per=60, dim=32, noise=0.04, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(k, dim))
    centers /= np.linalg.norm(centers, axis=1, keepdims=True)
    truth = np.repeat(np.arange(k), per)
    return (centers[truth] + noise * rng.normal(size=(len(truth), dim))).astype(np.float32), truth


@pytest.mark.parametrize("library", ["faiss", "scikit-learn"])
def test_kmeans_recovers_planted_clusters(library, monkeypatch):
    from sklearn.metrics import adjusted_rand_score

    if library == "scikit-learn":
        monkeypatch.setitem(sys.modules, "faiss", None)  # as where faiss cannot be imported
    x, truth = planted()
    centroids, used = kmeans(x, 64, seed=0)
    assert used == library
    assert adjusted_rand_score(truth, nearest_centroid(x, centroids)) >= 0.95


def test_labels_of_a_share_of_chunks_are_those_of_the_whole(monkeypatch):
    monkeypatch.setattr(sys.modules["pnlm.clustering.kmeans"], "LABEL_CHUNK", 100)
    x, _ = planted(k=8, per=130)
    centroids = x[::130].copy()
    whole = nearest_centroid(x, centroids)
    parts = [nearest_centroid(x, centroids, range(0, 4)), nearest_centroid(x, centroids, range(4, 11))]
    assert np.array_equal(np.concatenate(parts), whole)


# --- refusals --------------------------------------------------------------------------------------------

@pytest.fixture()
def fresh_store(books, tmp_path):
    store = tmp_path / "books"
    shutil.copytree(books.path, store, ignore=shutil.ignore_patterns("embeddings", "*.clusters.npy", "clusters.json"))
    return store


@pytest.mark.parametrize("case", ["being written", "not an embedder", "k above windows", "cuda without a gpu"])
def test_refusals_are_one_line_and_write_nothing(fresh_store, tiny_embedder, tmp_path, case):
    import torch

    if case == "cuda without a gpu" and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    (tmp_path / "empty").mkdir()
    args = {"being written": [], "not an embedder": ["--embedder", tmp_path / "empty"],
            "k above windows": ["--k", 10**7], "cuda without a gpu": ["--backend", "cuda"]}[case]
    expected = {"being written": "another pnlm process is writing it", "not an embedder": "not a sentence-transformers",
                "k above windows": "has only", "cuda without a gpu": "needs an NVIDIA GPU"}[case]
    if case == "being written":
        lock_output(fresh_store)  # as `pnlm data prepare --overwrite` holds it while it writes the store
    try:
        result = run(*PNLM, "data", "cluster", fresh_store, "--k", 4, "--embedder", tiny_embedder, "--backend", "torch",
                     *args, "--out", tmp_path / "clusters")
    finally:
        release_outputs()
    assert result.returncode == 2 and expected in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    assert not (tmp_path / "clusters").exists() and not (fresh_store / "embeddings").exists()
    assert not list(fresh_store.glob("*.clusters.npy"))


def test_the_auto_precision_follows_the_backend():
    from pnlm.backend_loader import native_bfloat16

    assert resolve_embedder(None, backend="cuda").precision == "bfloat16"
    assert resolve_embedder(None, backend="torch").precision == ("bfloat16" if native_bfloat16() else "float32")
    assert resolve_embedder(None, "float32", backend="cuda").precision == "float32"
