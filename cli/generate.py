"""`pnlm generate`: text from a checkpoint, streamed as it is produced."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

import pnlm
from pnlm.cli.console import console, print_json
from pnlm.cli.options import BACKEND_HELP


def generate(
    checkpoint: Path = typer.Argument(..., help="A checkpoint folder."),
    prompt: str = typer.Option(..., "--prompt", help="Text to continue."),
    max_tokens: int = typer.Option(64, "--max-tokens", help="Number of tokens to generate at most."),
    temperature: float = typer.Option(0.0, "--temperature", help="0 is greedy; higher is more random."),
    top_p: float = typer.Option(1.0, "--top-p", help="Sample from the smallest set of tokens with this much mass."),
    seed: int | None = typer.Option(None, "--seed", help="Random seed for sampling."),
    backend: str = typer.Option("auto", "--backend", help=BACKEND_HELP),
    dtype: str = typer.Option("float32", "--dtype", help="float32, bfloat16 or float16."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object instead of streaming text."),
) -> None:
    """Continue a prompt with a KV cache: greedy, or temperature and top-p sampling."""
    model = pnlm.load(checkpoint, backend=backend, dtype=dtype)
    prompt_ids = model.tokenizer.encode(prompt)
    new: list[int] = []
    printed = ""
    for token in model.generate_ids(prompt_ids, max_tokens, temperature, top_p, seed):
        new.append(token)
        if json_out:
            continue
        text = model.tokenizer.decode(new)
        # A byte-fallback piece can end mid-character: hold it back until the character is complete.
        if not text.endswith("\ufffd"):
            sys.stdout.write(text[len(printed):])
            sys.stdout.flush()
            printed = text
    text = model.tokenizer.decode(new)
    stats = model.last_stats
    if json_out:
        print_json({"text": text, "tokens": new, "prompt_tokens": stats.prompt_tokens,
                    "generated_tokens": stats.generated_tokens, "tokens_per_s": round(stats.tokens_per_s, 1),
                    "backend": model.backend})
        return
    sys.stdout.write(text[len(printed):] + "\n")
    console.print(f"[dim]{stats.generated_tokens} tokens, {stats.tokens_per_s:.1f} tokens/s ({model.backend})[/dim]")
