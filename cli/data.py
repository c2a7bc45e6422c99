"""`pnlm data ...`: tokenizer now; prepare, cluster and assign come with the data issue."""

from __future__ import annotations

from pathlib import Path

import typer

from pnlm.cli.console import console, print_json, track
from pnlm.data import iter_documents
from pnlm.tokenizer import train_tokenizer

app = typer.Typer(no_args_is_help=True, help="Prepare corpora: tokenizer.")


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
