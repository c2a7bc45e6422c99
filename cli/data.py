"""`pnlm data tokenizer` and `pnlm data prepare` (cluster and assign are in cli/cluster.py)."""

from __future__ import annotations

import itertools
from pathlib import Path

import typer

from pnlm.cli.console import RateCounter, console, print_json, track
from pnlm.cli.options import OVERWRITE
from pnlm.data import TXT_MODES, ReadStats, iter_documents
from pnlm.data.prepare import prepare_store
from pnlm.errors import InputError
from pnlm.outputs import TOKEN_STORE, TOKENIZER, check_output
from pnlm.tokenizer import load_tokenizer, train_tokenizer

app = typer.Typer(no_args_is_help=True, help="Prepare corpora: tokenizer, token store, clusters.")

INPUTS_HELP = ("Corpus files: .jsonl[.gz] (one JSON object a line with a text field), .txt[.gz] (one document a "
               "file, or a document per blank-line-separated block with --txt-mode blank-line), .parquet (a text column).")
TEXT_FIELD = typer.Option("text", "--text-field", help="JSONL key or Parquet column holding the text.")
TXT_MODE = typer.Option("file", "--txt-mode", help=f"How .txt files split into documents: {' or '.join(TXT_MODES)}.")
SKIP_BAD = typer.Option(False, "--skip-bad", help="Skip and count malformed JSONL records instead of stopping at the first.")
MAX_DOCUMENTS = typer.Option(0, "--max-documents", help="Read only the first N documents of the inputs (0: all).")


def _documents(inputs: list[Path], text_field: str, txt_mode: str, skip_bad: bool, stats: ReadStats,
               max_documents: int = 0):
    if txt_mode not in TXT_MODES:
        raise InputError(f"--txt-mode must be one of {', '.join(TXT_MODES)}, got {txt_mode!r}")
    if max_documents < 0:
        raise InputError(f"--max-documents must be >= 0, got {max_documents}")
    documents = iter_documents(inputs, text_field=text_field, txt_mode=txt_mode, skip_bad=skip_bad, stats=stats)
    return itertools.islice(documents, max_documents) if max_documents else documents


def _report_skipped(stats: ReadStats) -> None:
    if stats.bad:
        console.print(f"[yellow]skipped {stats.bad:,} bad records[/yellow]; the first: {stats.first_bad}", highlight=False)


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
    check_output(out, TOKENIZER, overwrite, inputs)
    stats = ReadStats()
    documents = track(_documents(inputs, text_field, txt_mode, skip_bad, stats, max_documents), "reading documents",
                      unit="docs")
    tok = train_tokenizer(documents, vocab_size, out, max_sentences=max_sentences)
    _report_skipped(stats)
    result = {"out": str(out), "vocab_size": tok.vocab_size, "sha256": tok.sha256}
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
    check_output(out, TOKEN_STORE, overwrite, [*inputs, tokenizer])
    tok = load_tokenizer(tokenizer)
    read_stats = ReadStats()
    documents = _documents(inputs, text_field, txt_mode, skip_bad, read_stats, max_documents)
    with RateCounter("tokenizing", "tokens") as counter:
        store, stats = prepare_store(documents, tok, out, context, valid_fraction, test_fraction,
                                     workers=workers or None, sources=[str(p) for p in inputs],
                                     read_stats=read_stats, on_progress=lambda docs, tokens: counter.update(tokens, f", {docs:,} documents"))
    result = {"out": str(out), "context": context, "splits": store.meta["splits"],
              "empty_documents_skipped": stats.empty_documents, "bad_records_skipped": read_stats.bad, "seconds": round(stats.seconds, 2),
              "tokens_per_s": round(stats.total_tokens / max(stats.seconds, 1e-9))}
    if json_out:
        print_json(result)
        return
    _report_skipped(read_stats)
    for split, counts in store.meta["splits"].items():
        console.print(f"{split:>5}: {counts['documents']:,} documents, {counts['tokens']:,} tokens, {counts['windows']:,} windows")
    console.print(f"{stats.total_tokens:,} tokens in {stats.seconds:.1f} s ({result['tokens_per_s']:,} tokens/s); "
                  f"{stats.empty_documents} empty documents skipped; written to {out}")


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
    from pnlm.data.subset import subset_store

    check_output(out, TOKEN_STORE, overwrite, [store])

    result = subset_store(store, out, train_tokens)
    report = {"out": str(out), "splits": result.meta["splits"]}
    if json_out:
        print_json(report)
        return
    train = result.meta["splits"]["train"]
    console.print(f"{out}: train split of {train['tokens']:,} tokens ({train['windows']:,} windows); "
                  f"valid and test as in {store}")
