"""One GPU check, under 10 minutes on one GPU (bench/gpu_check.sh runs it): the CUDA tests, tokens/s and MFU
of slm-126m and pn-126m in bfloat16 (eager and compiled), torch CUDA against torch CPU logits on the same
weights, a 2-process torchrun on the one GPU, and windows/s of the clusters' embedding on the GPU. Writes one JSON file of figures; without a GPU it refuses
in one line (exit 2) and writes nothing.

    bash bench/gpu_check.sh [OUT.json]      (default: gpu_check.json)
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BATCH = 16  # windows of 1,024 tokens per step: 16k tokens, nanoGPT's order of magnitude for a 124M model
TIMED_STEPS = 20
LOSS_TOLERANCE = 2e-2  # two torchrun processes against one, bfloat16


def throughput(preset: str, compiled: bool) -> dict:
    """tokens/s and MFU of the train step alone (batches staged before the clock starts)."""
    import numpy as np
    import torch

    from pnlm.backends import make_train_step
    from pnlm.training.cost import peak_flops, train_flops_per_token
    from pnlm.model.spec import PRESETS, OptimizerSpec
    from pnlm.training.batches import Batch
    from pnlm.checkpoints.weights import init_weights

    spec = PRESETS[preset]
    step = make_train_step("cuda", spec, init_weights(spec, 0), OptimizerSpec(), precision="bfloat16",
                           compile=compiled)
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, spec.vocab_size, (BATCH, spec.context + 1))
    # A projected network's mixed batches: every row its own cluster's expert (pnlm pretrain --method pn).
    expert = rng.integers(0, spec.projection.k, BATCH) if spec.projection else None
    staged = step.stage(Batch(tokens[:, :-1], tokens[:, 1:], np.ones((BATCH, spec.context), np.float32), expert))
    started = time.perf_counter()
    for _ in range(3):  # warm-up (and compilation)
        step.step(staged)
    torch.cuda.synchronize()
    warmup_s = time.perf_counter() - started
    torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    losses = [step.step(staged) for _ in range(TIMED_STEPS)]
    final = step.to_floats(losses)[-1]  # waits for the device
    seconds = time.perf_counter() - started
    tokens_per_s = BATCH * spec.context * TIMED_STEPS / seconds
    peak = peak_flops(step.device_name, "bfloat16")
    flops = train_flops_per_token(spec, spec.context)
    return {"model": preset, "compiled": compiled, "batch": [BATCH, spec.context], "tokens_per_s": round(tokens_per_s),
            "step_ms": round(1000 * seconds / TIMED_STEPS, 2), "mfu": None if peak is None else tokens_per_s * flops / peak,
            "flops_per_token": flops, "warmup_s": round(warmup_s, 1), "final_loss": final,
            "peak_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2)}


def cuda_logit_difference(preset: str, rows: int, length: int) -> tuple[float, float]:
    """The largest logit difference between torch on the GPU and on the CPU for one set of weights, float32
    (TF32 off meanwhile), and the logits' largest magnitude. tests/test_cuda.py asserts on it too."""
    import numpy as np
    import torch

    from pnlm.backends.torch.model import Transformer
    from pnlm.model.spec import PRESETS
    from pnlm.checkpoints.weights import init_weights

    spec = PRESETS[preset]
    weights = init_weights(spec, 0)
    tokens = torch.from_numpy(np.random.default_rng(1).integers(0, spec.vocab_size, (rows, length)))
    tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        logits = {}
        for device in ("cpu", "cuda"):
            with torch.device(device):
                model = Transformer(spec)
            model.load_canonical(weights)
            with torch.no_grad():
                logits[device] = model(tokens.to(device)).float().cpu()
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
    return float((logits["cpu"] - logits["cuda"]).abs().max()), float(logits["cpu"].abs().max())


def cuda_against_cpu() -> dict:
    """CUDA against CPU logits of slm-126m on 2 x 256 tokens."""
    difference, scale = cuda_logit_difference("slm-126m", 2, 256)
    return {"model": "slm-126m", "tokens": [2, 256], "max_abs_logit_difference": difference,
            "logit_scale": scale, "within_1e-3": difference < 1e-3}


def run(command: list[str], timeout: float, keep_stdout: bool = False, **kwargs) -> dict:
    started = time.perf_counter()
    stdout = ""
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=ROOT, **kwargs)
        code, tail, stdout = done.returncode, (done.stdout + done.stderr).strip().splitlines()[-15:], done.stdout
    except subprocess.TimeoutExpired as exc:
        code, tail = "timeout", str(exc).splitlines()[-3:]
    result = {"command": " ".join(command), "exit": code, "seconds": round(time.perf_counter() - started, 1), "tail": tail}
    return {**result, "stdout": stdout} if keep_stdout else result


def torchrun_on_one_gpu(work: Path, backend: str = "cuda") -> dict:
    """Two processes on the one GPU against one process: the losses of 20 steps of the tiny model (bfloat16 on
    cuda: the two agree to bfloat16's rounding of a different summation order, not to float32's)."""
    import pnlm

    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or shutil.which("torchrun")
    sample = sorted((ROOT / "pnlm" / "sample_data").glob("*.jsonl.gz"))[:2]
    pnlm.train_tokenizer(sample, 512, work / "tokenizer")
    pnlm.prepare(sample, work / "tokenizer", 256, work / "store")
    common = ["pretrain", "--model", "tiny", "--data", str(work / "store"), "--backend", backend, "--steps", "20",
              "--batch-size", "8", "--lr", "1e-3", "--log-every", "1", "--json"]
    one = run([sys.executable, "-m", "pnlm.cli", *common, "--out", str(work / "one")], 240)
    # NCCL refuses two ranks on one GPU: gloo carries the CUDA tensors here (backends/torch/distributed.py).
    two = run([torchrun, "--standalone", "--nproc_per_node", "2", "-m", "pnlm.cli", *common,
               "--out", str(work / "two")], 240, env={**os.environ, "PNLM_DISTRIBUTED_BACKEND": "gloo"}) \
        if torchrun else {"exit": "no torchrun"}

    def losses(name: str) -> list[float]:
        path = work / name / "metrics.jsonl"
        return [json.loads(line)["loss"] for line in path.read_text().splitlines()] if path.is_file() else []

    a, b = losses("one"), losses("two")
    result = {"one_process": one, "two_processes": two, "max_loss_difference": None}
    if a and len(a) == len(b):
        result["max_loss_difference"] = max(abs(x - y) for x, y in zip(a, b))
    # bfloat16 compute, another summation order: agreement to bfloat16's rounding, not float32's.
    result["ok"] = one["exit"] == 0 and two.get("exit") == 0 and result["max_loss_difference"] is not None \
        and result["max_loss_difference"] < LOSS_TOLERANCE
    return result


def embedding_check(work: Path, backend: str = "cuda", repeats: int = 60, compare: int = 2048) -> dict:
    """Windows of 1,024 tokens embedded per second by `pnlm data cluster --backend cuda` (all-MiniLM-L6-v2,
    bfloat16, windows decoded ahead in worker processes) on the sample books repeated into ~25,000 windows;
    the first `compare` windows against the CPU's float32 embedding: the smallest cosine, and how many of
    them the run's centroids label alike."""
    import gzip

    import numpy as np

    import pnlm
    from pnlm.backend_loader import load_sentence_encoder
    from pnlm.clustering import load_clusters, nearest_centroid
    from pnlm.clustering.embed import _embed_chunks
    from pnlm.clustering.embedder import resolve_embedder
    from pnlm.clustering.window_features import WindowFeatures
    from pnlm.data import iter_documents

    sample = sorted((ROOT / "pnlm" / "sample_data").glob("*.jsonl.gz"))
    documents = list(iter_documents(sample))
    with gzip.open(work / "books.jsonl.gz", "wt") as f:
        for copy in range(repeats):
            for text in documents:
                f.write(json.dumps({"text": text}) + "\n")
    pnlm.train_tokenizer(sample, 2048, work / "embed-tok")
    pnlm.prepare([work / "books.jsonl.gz"], work / "embed-tok", 1024, work / "books", valid_fraction=0, test_fraction=0)
    done = run([sys.executable, "-m", "pnlm.cli", "data", "cluster", str(work / "books"), "--k", "16", "--backend",
                backend, "--json", "--out", str(work / "books-clusters")], 240, keep_stdout=True)
    report = json.loads(done.pop("stdout")) if done["exit"] == 0 else {}
    result = {"command": done, "backend": backend, "windows": report.get("embedded_windows"),
              "embed_seconds": report.get("embed_seconds"), "device": report.get("device")}
    if not report:
        return result
    result["windows_per_s"] = round(report["embedded_windows"] / report["embed_seconds"])
    clusters = load_clusters(work / "books-clusters")
    embedder = resolve_embedder(None, report["embedder"]["precision"], backend)
    cached = np.load(work / "books" / "embeddings" / embedder.id / "train.npy", mmap_mode="r")[:compare]
    encoder = load_sentence_encoder("torch", str(embedder.path), "float32")
    store = pnlm.data.store.TokenStore(work / "books")
    features = WindowFeatures(str(store.path), str(store.path / store.tokenizer_files[0]), str(embedder.path),
                              encoder.max_seq_length)
    reference = next(_embed_chunks(iter([(0, features("train", 0, compare))]), encoder, 64, encoder.dim))[1]
    a, b = np.asarray(cached, np.float32), np.asarray(reference, np.float32)
    cosine = (a * b).sum(axis=1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    same = nearest_centroid(a, clusters.centroids) == nearest_centroid(b, clusters.centroids)
    result.update(min_cosine_vs_cpu_float32=round(float(cosine.min()), 5), label_agreement=round(float(same.mean()), 4),
                  ok=bool(cosine.min() >= 0.995 and same.mean() >= 0.99))
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="gpu_check.json")
    out = Path(parser.parse_args().out)
    try:
        import torch
    except ImportError:
        print("gpu_check: no CUDA device: PyTorch is not installed; nothing was run", file=sys.stderr)
        return 2
    if not torch.cuda.is_available():
        print(f"gpu_check: no CUDA device (torch {torch.__version__} sees none); nothing was run", file=sys.stderr)
        return 2
    began = time.perf_counter()
    figures: dict = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                     "device": torch.cuda.get_device_name(0), "torch": torch.__version__, "cuda": torch.version.cuda,
                     "host": platform.node(), "command": "bash bench/gpu_check.sh " + str(out)}

    def section(name: str, work) -> None:
        started = time.perf_counter()
        try:
            figures[name] = work()
        except Exception as exc:  # one failed section is a figure too; the others still run
            figures[name] = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"}
        print(f"gpu_check: {name} done in {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)

    section("tests", lambda: run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_cuda.py",
                                  "tests/test_cuda_path.py"], 240))
    figures["throughput"] = []
    for preset in ("slm-126m", "pn-126m"):
        for compiled in (False, True):
            section("_last", lambda: throughput(preset, compiled))
            figures["throughput"].append({"model": preset, "compiled": compiled, **figures.pop("_last")})
    section("cuda_vs_cpu", cuda_against_cpu)
    with tempfile.TemporaryDirectory() as work:
        section("torchrun_2_processes_1_gpu", lambda: torchrun_on_one_gpu(Path(work)))
    with tempfile.TemporaryDirectory() as work:
        section("embedding", lambda: embedding_check(Path(work)))
    figures["seconds"] = round(time.perf_counter() - began)
    partial = out.with_name(out.name + ".partial")
    partial.write_text(json.dumps(figures, indent=2) + "\n")
    os.replace(partial, out)
    print(json.dumps({k: v for k, v in figures.items() if k != "tests"}, indent=2))
    failed = [name for name, ok in (
        ("tests", figures["tests"].get("exit") == 0),
        ("throughput", all("error" not in row for row in figures["throughput"])),
        ("cuda_vs_cpu", figures["cuda_vs_cpu"].get("within_1e-3") is True),
        ("torchrun_2_processes_1_gpu", figures["torchrun_2_processes_1_gpu"].get("ok") is True),
        ("embedding", figures["embedding"].get("ok") is True)) if not ok]
    print(f"gpu_check: figures in {out}" + (f"; failed: {', '.join(failed)}" if failed else ""), file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
