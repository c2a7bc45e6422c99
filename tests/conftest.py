import os

# One thread each: the suite runs on 2 shared cores, where MKL under MLX collapses if another
# process holds a core. Set before torch or MLX start their thread pools.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import pnlm.backends.mlx  # noqa: E402,F401  (loads the optimized BLAS before anything imports mlx.core)
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from pnlm.checkpoints.checkpoint import save_checkpoint  # noqa: E402
from pnlm.data import iter_documents  # noqa: E402
from pnlm.model.spec import PRESETS  # noqa: E402
from pnlm.tokenizer import train_tokenizer  # noqa: E402
from pnlm.checkpoints.weights import init_weights  # noqa: E402

torch.set_num_threads(1)

# Tests marked `long` keep the suite under 15 minutes on 2 cores by running with the benchmarks
# (`make bench` sets PNLM_LONG=1), not in `make test`.
LONG = os.environ.get("PNLM_LONG") == "1"

# The threads a test that runs one job at a time may give it: both cores when this is the only pytest process,
# one when pytest-xdist runs a test beside it on the other (`make test` runs two at a time).
FREE_THREADS = "1" if os.environ.get("PYTEST_XDIST_WORKER") else "2"


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "long" in item.keywords and not LONG:
            item.add_marker(pytest.mark.skip(reason="a long test: `make bench` runs it (PNLM_LONG=1)"))

SAMPLE_DIR = os.path.join(os.path.dirname(pnlm.__file__), "sample_data")
SAMPLE_DATA = sorted(os.path.join(SAMPLE_DIR, name) for name in os.listdir(SAMPLE_DIR) if name.endswith(".jsonl.gz"))

# An experiment plan small enough to run in seconds: three methods, one budget, one domain, one size; its windows
# embedded by the tiny random BERT (tests/embedders.py), MiniLM's fidelity being tested in test_cluster*.py.
MICRO_PLAN = f"""
name = "micro"
methods = ["slm", "nopt", "is"]
backend = "torch"
finetune_backend = "torch"
[data]
generic = ["{os.path.join(SAMPLE_DIR, 'austen_pride_and_prejudice.jsonl.gz')}"]
tokenizer_inputs = ["{os.path.join(SAMPLE_DIR, 'shakespeare_hamlet.jsonl.gz')}"]
vocab_size = 512
context = 64
clusters = 2
embedder = "{{embedder}}"
generic_max_documents = 20
domain_tokens = [3000]
valid_fraction = 0.15
test_fraction = 0.15
[data.domains]
hamlet = ["{os.path.join(SAMPLE_DIR, 'shakespeare_hamlet.jsonl.gz')}"]
[models]
slm = {{ preset = "tiny", d_model = 32, n_layers = 1, n_heads = 2, n_kv_heads = 1, d_ff = 96 }}
llm = {{ preset = "tiny", d_model = 64, n_layers = 1, n_heads = 2, n_kv_heads = 1, d_ff = 176 }}
[pretrain]
budgets = [12]
batch_size = 4
checkpoint_every = 4
[finetune]
steps = 8
batch_size = 4
eval_every = 4
"""


def micro_plan(embedder) -> str:
    return MICRO_PLAN.replace("{embedder}", str(embedder))


@pytest.fixture(scope="session")
def tiny_embedder(tmp_path_factory):
    from embedders import build_tiny_embedder

    return build_tiny_embedder(tmp_path_factory.mktemp("embedder") / "tiny-bert")


@pytest.fixture(scope="session")
def tokenizer(tmp_path_factory):
    return train_tokenizer(iter_documents(SAMPLE_DATA), 512, tmp_path_factory.mktemp("tok") / "tokenizer")


@pytest.fixture(scope="session")
def tiny_spec(tokenizer):
    return PRESETS["tiny"].with_vocab(tokenizer.vocab_size)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory, tokenizer, tiny_spec):
    path = tmp_path_factory.mktemp("ckpt") / "tiny"
    return save_checkpoint(path, tiny_spec, init_weights(tiny_spec, seed=0), tokenizer)


def assert_resume_after_kill_is_exact(common: list, folder) -> None:
    """`pnlm` with argv `common` (a pretraining checkpointing at step 8) run straight into folder/straight, and
    killed after its first checkpoint then resumed into folder/killed: the same loss at every step."""
    import json
    import subprocess
    import sys

    cli = [sys.executable, "-m", "pnlm.cli", *map(str, common)]
    assert subprocess.run([*cli, "--out", str(folder / "straight")], capture_output=True).returncode == 0
    run = folder / "killed"
    assert kill_after_first_checkpoint([*cli, "--out", str(run)], run) == 8
    assert subprocess.run([*cli, "--out", str(run), "--resume"], capture_output=True).returncode == 0

    def losses(path):
        return [json.loads(line)["loss"] for line in (path / "metrics.jsonl").read_text().splitlines()]

    assert losses(folder / "straight") == losses(run)


def kill_after_first_checkpoint(command: list, run) -> int:
    """Start a training command (argv) writing to run, SIGKILL its whole process group as soon as its
    first resumable checkpoint lands, and return the step that checkpoint holds."""
    import json
    import signal
    import subprocess
    import time

    child = subprocess.Popen([str(part) for part in command], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             start_new_session=True)
    trainer = run / "latest" / "trainer.json"
    while not trainer.exists():
        assert child.poll() is None, "the run ended before its first checkpoint"
        time.sleep(0.001)
    os.killpg(child.pid, signal.SIGKILL)
    child.wait()
    return json.loads(trainer.read_text())["step"]


# A model small enough that a run of a few steps takes a moment (in-process CLI tests of run state).
MICRO_MODEL = "[model]\npreset = 'tiny'\nd_model = 32\nn_layers = 1\nn_heads = 2\nn_kv_heads = 1\nd_ff = 64\n"


def cli_in_process(capsys, monkeypatch, *args) -> tuple[int, str]:
    """Run the pnlm CLI in this process, as `main` does for a user: (exit status, stderr)."""
    import sys

    from pnlm.cli.app import main

    monkeypatch.setattr(sys, "argv", ["pnlm", *map(str, args)])
    with pytest.raises(SystemExit) as exit_info:
        main()
    return exit_info.value.code, capsys.readouterr().err


def micro_run_inputs(root, capsys, monkeypatch, document=None) -> tuple:
    """A 512-piece tokenizer, a store of context 32 and MICRO_MODEL's spec file under root: (tok, store, model)."""
    document = document or SAMPLE_DATA[2]
    tok, store, model = root / "tok", root / "store", root / "micro.toml"
    assert cli_in_process(capsys, monkeypatch, "data", "tokenizer", document, "--vocab-size", 512, "--out", tok)[0] == 0
    assert cli_in_process(capsys, monkeypatch, "data", "prepare", document, "--tokenizer", tok, "--context", 32,
                          "--out", store)[0] == 0
    model.write_text(MICRO_MODEL)
    return tok, store, model


def numbers(n, seed):
    rng = np.random.default_rng(seed)
    return ["\n".join(" ".join(map(str, rng.integers(0, 10**6, 10))) for _ in range(8)) for _ in range(n)]


@pytest.fixture(scope="session")
def corpus(tmp_path_factory, tokenizer, tiny_embedder):
    """A generic store of prose and numbers in 2 clusters, and a domain of numbers labelled with them (the methods
    built on clusters: tests/test_cluster_methods.py, tests/test_soup.py). The tiny random BERT tells numbers from
    prose as MiniLM does, in a second rather than half a minute."""
    from pnlm.clustering import assign_clusters, fit_clusters
    from pnlm.data.prepare import prepare_store

    root = tmp_path_factory.mktemp("experts")
    prose = list(iter_documents(SAMPLE_DATA[:1]))[:20]
    generic = prepare_store(prose + numbers(20, seed=0), tokenizer, root / "generic", context=64,
                            valid_fraction=0.15, test_fraction=0.1, workers=1)[0]
    fit_clusters(generic, None, 2, root / "clusters", embedder=tiny_embedder)
    domain = prepare_store(numbers(12, seed=1), tokenizer, root / "domain", context=64, valid_fraction=0.25,
                           test_fraction=0.25, workers=1)[0]
    assign_clusters(domain, None, root / "clusters", all_splits=True)
    return generic, domain, root / "clusters"
