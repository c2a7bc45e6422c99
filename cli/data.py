"""`pnlm data tokenizer` and `pnlm data prepare` (cluster and assign are in cli/cluster.py)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape

import pnlm
from pnlm.api.data import ReadOptions
from pnlm.cli.console import RateCounter, console, print_json
from pnlm.cli.options import OVERWRITE
from pnlm.data import TXT_MODES, ReadStats

app = typer.Typer(no_args_is_help=True, help="Prepare corpora: tokenizer, token store, clusters.")

INPUTS_HELP = ("Corpus files, folders (read recursively) or glob patterns: .jsonl[.gz] (one JSON object a line with "
               "a text field), .txt/.md[.gz] (one document a file, or a document per blank-line-separated block with "
               "--txt-mode blank-line), .html/.htm[.gz] (the page's main text), .parquet (a text column).")
TEXT_FIELD = typer.Option("text", "--text-field", help="JSONL key or Parquet column holding the text.")
TXT_MODE = typer.Option("file", "--txt-mode", help=f"How .txt files split into documents: {' or '.join(TXT_MODES)}.")
SKIP_BAD = typer.Option(False, "--skip-bad", help="Skip malformed JSONL records and unreadable files (named in the "
                        "summary) instead of stopping at the first.")
MAX_DOCUMENTS = typer.Option(0, "--max-documents", help="Read only the first N documents of the inputs (0: all).")


def _report_read(stats: ReadStats) -> None:
    kinds = ", ".join(f"{count:,} {kind}" for kind, count in sorted(stats.by_type.items()))
    files = "file" if stats.other_files == 1 else "files"
    other = f"; {stats.other_files:,} {files} of other types ignored" if stats.other_files else ""
    console.print(f"read {stats.documents:,} documents ({kinds}){other}", highlight=False)
    if stats.bad:
        console.print(f"[yellow]skipped {stats.bad:,} bad records[/yellow]; the first: {escape(str(stats.first_bad))}",
                      highlight=False)
    for problem in stats.bad_files:
        console.print(f"[yellow]skipped a bad file[/yellow]: {escape(problem)}", highlight=False)


@app.command("tokenizer")
def tokenizer(
    inputs: list[Path] = typer.Argument(..., help=INPUTS_HELP),
    vocab_size: int = typer.Option(..., "--vocab-size", help="Number of pieces, e.g. 32000 for the paper's models."),
    out: Path = typer.Option(..., "--out", help="Folder to write tokenizer.model and tokenizer_info.json into."),
    max_sentences: int = typer.Option(2_000_000, help="Train on a random sample of at most this many lines."),
    text_field: str = TEXT_FIELD,
    txt_mode: str = TXT_MODE,
    skip_bad: bool = SKIP_BAD,
    max_documents: int = MAX_DOCUMENTS,
    overwrite: bool = OVERWRITE,
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object instead of text."),
) -> None:
    """Train a SentencePiece BPE tokenizer (byte fallback, BOS/EOS, Llama settings) on a corpus."""
    read = ReadOptions(text_field, txt_mode, skip_bad, max_documents)
    with RateCounter("reading documents", "docs") as counter:
        trained = pnlm.train_tokenizer(inputs, vocab_size, out, max_sentences=max_sentences, read=read,
                                       overwrite=overwrite, on_document=counter.update)
    _report_read(trained.read)
    tok, result = trained.tokenizer, trained.to_json()
    if json_out:
        print_json(result)
    else:
        console.print(f"tokenizer: {tok.vocab_size} pieces, sha256 {tok.sha256[:12]}…, written to {out}")


@app.command("prepare")
def prepare(
    inputs: list[Path] = typer.Argument(..., help=INPUTS_HELP),
    tokenizer: Path = typer.Option(..., "--tokenizer", help="Tokenizer folder from `pnlm data tokenizer`."),
    context: int = typer.Option(..., "--context", help="Window length in tokens: the model's context."),
    out: Path = typer.Option(..., "--out", help="Token store folder to write."),
    valid_fraction: float = typer.Option(0.05, help="Share of documents in the valid split (by a stable hash of each document)."),
    test_fraction: float = typer.Option(0.05, help="Share of documents in the test split."),
    workers: int = typer.Option(0, help="Tokenizing processes (0: one per core)."),
    text_field: str = TEXT_FIELD,
    txt_mode: str = TXT_MODE,
    skip_bad: bool = SKIP_BAD,
    max_documents: int = MAX_DOCUMENTS,
    overwrite: bool = OVERWRITE,
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object instead of text."),
) -> None:
    """Tokenize a corpus in parallel into a memory-mapped token store with train/valid/test splits.

    Each document becomes [BOS] + tokens + [EOS], cut into non-overlapping windows of --context tokens
    (the last one of a document may be shorter). Empty documents are skipped and counted.
    """
    read = ReadOptions(text_field, txt_mode, skip_bad, max_documents)
    with RateCounter("tokenizing", "tokens") as counter:
        prepared = pnlm.prepare(inputs, tokenizer, context, out, valid_fraction=valid_fraction,
                                test_fraction=test_fraction, workers=workers, read=read, overwrite=overwrite,
                                on_progress=lambda docs, tokens: counter.update(tokens, f", {docs:,} documents"))
    store, result = prepared.store, prepared.to_json()
    if json_out:
        print_json(result)
        return
    _report_read(prepared.read)
    for split, counts in store.meta["splits"].items():
        console.print(f"{split:>5}: {counts['documents']:,} documents, {counts['tokens']:,} tokens, {counts['windows']:,} windows")
    console.print(f"{prepared.tokens:,} tokens in {prepared.seconds:.1f} s ({result['tokens_per_s']:,} tokens/s); "
                  f"{prepared.empty_documents} empty documents skipped; written to {out}")


@app.command("subset")
def subset(
    store: Path = typer.Argument(..., help="Token store to take from."),
    train_tokens: int = typer.Option(..., "--train-tokens", help="Tokens to keep in the train split: its first "
                                     "documents' windows in store order (valid and test are kept whole)."),
    out: Path = typer.Option(..., "--out", help="Token store folder to write."),
    overwrite: bool = OVERWRITE,
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object instead of text."),
) -> None:
    """A copy of a store with a smaller train split: a domain's data at a given size, labels included."""
    result = pnlm.subset(store, train_tokens, out, overwrite=overwrite).store
    report = {"out": str(out), "splits": result.meta["splits"]}
    if json_out:
        print_json(report)
        return
    train = result.meta["splits"]["train"]
    console.print(f"{out}: train split of {train['tokens']:,} tokens ({train['windows']:,} windows); "
                  f"valid and test as in {store}")
