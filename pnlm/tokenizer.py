"""SentencePiece tokenizer: train from a corpus stream, load, hash.

Settings follow Llama's tokenizer (BPE, byte fallback, digits split, no text
normalization, unk=0 bos=1 eos=2) so the model exports to the Hugging Face Llama format.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import sentencepiece as spm

from pnlm.atomic import atomic_dir
from pnlm.errors import TokenizerError

TOKENIZER_FILE = "tokenizer.model"
INFO_FILE = "tokenizer_info.json"
MAX_TOKENIZER_BYTES = 64 * 1024 * 1024


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass
class Tokenizer:
    """A loaded SentencePiece model and the sha256 of its file."""

    processor: spm.SentencePieceProcessor
    sha256: str
    path: Path

    @property
    def vocab_size(self) -> int:
        return self.processor.get_piece_size()

    @property
    def bos_id(self) -> int:
        return self.processor.bos_id()

    @property
    def eos_id(self) -> int:
        return self.processor.eos_id()

    def encode(self, text: str, bos: bool = True, eos: bool = False) -> list[int]:
        ids = self.processor.encode(text)
        return ([self.bos_id] if bos else []) + ids + ([self.eos_id] if eos else [])

    def decode(self, ids: Iterable[int]) -> str:
        return self.processor.decode([int(i) for i in ids])


def load_tokenizer(path: str | Path) -> Tokenizer:
    """A tokenizer folder (holding tokenizer.model) or a tokenizer.model file."""
    path = Path(path)
    model_file = path / TOKENIZER_FILE if path.is_dir() else path
    if not model_file.is_file():
        raise TokenizerError(f"{model_file}: no such tokenizer file (make one with `pnlm data tokenizer`)")
    if model_file.stat().st_size > MAX_TOKENIZER_BYTES:
        raise TokenizerError(f"{model_file}: larger than {MAX_TOKENIZER_BYTES} bytes; not a tokenizer")
    processor = spm.SentencePieceProcessor()
    try:
        processor.load(str(model_file))
    except (OSError, RuntimeError) as exc:
        raise TokenizerError(f"{model_file}: not a SentencePiece model: {str(exc).splitlines()[0]}") from None
    return Tokenizer(processor, file_sha256(model_file), model_file)


def _sentences(documents: Iterable[str], max_chars: int) -> Iterator[str]:
    for document in documents:
        for line in document.split("\n"):
            if line.strip():
                yield line[:max_chars]


def train_tokenizer(documents: Iterable[str], vocab_size: int, out_dir: str | Path,
                    max_sentences: int = 2_000_000, threads: int | None = None, seed: int = 0) -> Tokenizer:
    """Train on the documents' lines (a random sample of at most max_sentences) and write out_dir atomically."""
    if not 16 <= vocab_size <= 1 << 21:
        raise TokenizerError(f"vocab size must be between 16 and {1 << 21}, got {vocab_size}")
    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        max_chars = 4096
        model = io.BytesIO()
        # The model file embeds its trainer settings: write it through model_writer so no temporary
        # path lands in it, and seed the sampler, so the same corpus gives the same bytes and hash.
        spm.set_random_generator_seed(seed)
        try:
            spm.SentencePieceTrainer.train(
                sentence_iterator=_sentences(documents, max_chars),
                model_writer=model,
                vocab_size=vocab_size,
                model_type="bpe",
                byte_fallback=True,
                split_digits=True,
                allow_whitespace_only_pieces=True,
                remove_extra_whitespaces=False,
                normalization_rule_name="identity",
                unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
                character_coverage=0.9995,
                input_sentence_size=max_sentences,
                shuffle_input_sentence=True,
                max_sentence_length=max_chars * 4,
                num_threads=threads or os.cpu_count() or 1,
                minloglevel=2,
            )
        except RuntimeError as exc:
            raise TokenizerError(f"tokenizer training failed: {str(exc).splitlines()[0]}") from None
        (tmp / TOKENIZER_FILE).write_bytes(model.getvalue())
        tokenizer = load_tokenizer(tmp / TOKENIZER_FILE)
        info = {"sha256": tokenizer.sha256, "vocab_size": tokenizer.vocab_size, "model_type": "bpe",
                "byte_fallback": True, "bos_id": tokenizer.bos_id, "eos_id": tokenizer.eos_id}
        (tmp / INFO_FILE).write_text(json.dumps(info, indent=2) + "\n")
    return load_tokenizer(out_dir)
