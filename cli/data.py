"""`pnlm data ...`: tokenizer now; prepare, cluster and assign come with the data issue."""

from __future__ import annotations

from pathlib import Path

import typer

from pnlm.cli.console import RateCounter, console, print_json, track
from pnlm.data import iter_documents
from pnlm.data.prepare import prepare_store
from pnlm.tokenizer import load_tokenizer, train_tokenizer

app = typer.Typer(no_args_is_help=True, help="Prepare corpora: tokenizer, token store, clusters.")


@app.command("tokenizer")
def tokenizer(
    inputs: list[Path] = typer.Argument(..., help="Corpus files: .jsonl[.gz] ({\"text\": ...} a line) or .txt[.gz] (one document a file)."),
    vocab_size: int = typer.Option(..., "--vocab-size", help="Number of pieces, e.g. 32000 for the paper's models."),
    out: Path = typer.Option(..., "--out", help="Folder to write tokenizer.model and tokenizer_info.json into."),
    max_sentences: int = typer.Option(2_000_000, help="Train on a random sample of at most this many lines."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object instead of text."),
) -> None:
    """Train a SentencePiece BPE tokenizer (byte fallback, BOS/EOS, Llama settings) on a corpus."""
    documents = track(iter_documents(inputs), "reading documents", unit="docs")
    tok = train_tokenizer(documents, vocab_size, out, max_sentences=max_sentences)
    result = {"out": str(out), "vocab_size": tok.vocab_size, "sha256": tok.sha256}
    if json_out:
        print_json(result)
    else:
        console.print(f"tokenizer: {tok.vocab_size} pieces, sha256 {tok.sha256[:12]}…, written to {out}")


@app.command("prepare")
def prepare(
    inputs: list[Path] = typer.Argument(..., help="Corpus files: .jsonl[.gz] ({\"text\": ...} a line) or .txt[.gz] (one document a file)."),
    tokenizer: Path = typer.Option(..., "--tokenizer", help="Tokenizer folder from `pnlm data tokenizer`."),
    context: int = typer.Option(..., "--context", help="Window length in tokens: the model's context."),
    out: Path = typer.Option(..., "--out", help="Token store folder to write."),
    valid_fraction: float = typer.Option(0.05, help="Share of documents in the valid split (by a stable hash of each document)."),
    test_fraction: float = typer.Option(0.05, help="Share of documents in the test split."),
    workers: int = typer.Option(0, help="Tokenizing processes (0: one per core)."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object instead of text."),
) -> None:
    """Tokenize a corpus in parallel into a memory-mapped token store with train/valid/test splits.

    Each document becomes [BOS] + tokens + [EOS], cut into non-overlapping windows of --context tokens
    (the last one of a document may be shorter). Empty documents are skipped and counted.
    """
    tok = load_tokenizer(tokenizer)
    documents = iter_documents(inputs)
    with RateCounter("tokenizing", "tokens") as counter:
        store, stats = prepare_store(documents, tok, out, context, valid_fraction, test_fraction,
                                     workers=workers or None, sources=[str(p) for p in inputs],
                                     on_progress=lambda docs, tokens: counter.update(tokens, f", {docs:,} documents"))
    result = {"out": str(out), "context": context, "splits": store.meta["splits"],
              "empty_documents_skipped": stats.empty_documents, "seconds": round(stats.seconds, 2),
              "tokens_per_s": round(stats.total_tokens / max(stats.seconds, 1e-9))}
    if json_out:
        print_json(result)
        return
    for split, counts in store.meta["splits"].items():
        console.print(f"{split:>5}: {counts['documents']:,} documents, {counts['tokens']:,} tokens, {counts['windows']:,} windows")
    console.print(f"{stats.total_tokens:,} tokens in {stats.seconds:.1f} s ({result['tokens_per_s']:,} tokens/s); "
                  f"{stats.empty_documents} empty documents skipped; written to {out}")
