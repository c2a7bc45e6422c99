"""Tokenizers: pnlm's own SentencePiece model (trained here) and a Hugging Face tokenizer.json (imported).

pnlm trains SentencePiece with Llama's settings (BPE, byte fallback, digits split, no text
normalization, unk=0 bos=1 eos=2) so the model exports to the Hugging Face Llama format. An imported
model keeps the tokenizer it came with: SentencePiece's tokenizer.model, or a `tokenizers` tokenizer.json
(modern Llama-architecture models ship only that) with a tokenizer_config.json naming its BOS and EOS.
Both kinds encode text without special tokens; pnlm adds BOS (and EOS) itself, the same for both.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import sentencepiece as spm

from pnlm.files.atomic import atomic_dir
from pnlm.errors import TokenizerError
from pnlm.files.json_object import read_json_object

TOKENIZER_FILE = "tokenizer.model"  # SentencePiece: the file pnlm trains
HF_TOKENIZER_FILE = "tokenizer.json"
HF_TOKENIZER_CONFIG = "tokenizer_config.json"
TOKENIZER_FILE_SETS = ((TOKENIZER_FILE,), (HF_TOKENIZER_FILE, HF_TOKENIZER_CONFIG))
INFO_FILE = "tokenizer_info.json"
MAX_TOKENIZER_BYTES = 64 * 1024 * 1024


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def tokenizer_sha256(hashes: dict[str, str]) -> str:
    """A tokenizer's sha256 from its files' (name: sha256): a lone file's own hash (what pnlm has always
    recorded for tokenizer.model), else the hash of the sorted "name sha256" lines."""
    if len(hashes) == 1:
        return next(iter(hashes.values()))
    return hashlib.sha256("".join(f"{name} {hashes[name]}\n" for name in sorted(hashes)).encode()).hexdigest()


def tokenizer_file_names(names: Iterable[str]) -> tuple[str, ...] | None:
    """Which kind of tokenizer a set of file names holds (SentencePiece first), or None."""
    names = set(names)
    return next((files for files in TOKENIZER_FILE_SETS if set(files) <= names), None)


class Tokenizer(ABC):
    """A loaded tokenizer: its files (name: path), their sha256, its vocabulary and BOS/EOS ids."""

    files: dict[str, Path]
    sha256: str
    vocab_size: int
    bos_id: int
    eos_id: int

    @property
    def path(self) -> Path:
        """The main file (tokenizer.model or tokenizer.json): what messages name."""
        return next(iter(self.files.values()))

    @abstractmethod
    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """Each text's ids, no special token added."""

    @abstractmethod
    def decode_batch(self, rows: list[list[int]]) -> list[str]:
        """Each row's text; special tokens (BOS, EOS) decode to nothing."""

    def encode(self, text: str, bos: bool = True, eos: bool = False) -> list[int]:
        ids = self.encode_batch([text])[0]
        return ([self.bos_id] if bos else []) + ids + ([self.eos_id] if eos else [])

    def decode(self, ids: Iterable[int]) -> str:
        return self.decode_batch([[int(i) for i in ids]])[0]

    def copy_to(self, folder: Path) -> list[str]:
        """Write the tokenizer's files into folder; returns their names."""
        for name, path in self.files.items():
            shutil.copyfile(path, folder / name)
        return list(self.files)


class SentencePieceTokenizer(Tokenizer):
    def __init__(self, model_file: Path) -> None:
        self.processor = spm.SentencePieceProcessor()
        try:
            self.processor.load(str(model_file))
        except (OSError, RuntimeError) as exc:
            raise TokenizerError(f"{model_file}: not a SentencePiece model: {str(exc).splitlines()[0]}") from None
        self.files = {TOKENIZER_FILE: model_file}
        self.sha256 = file_sha256(model_file)
        self.vocab_size = self.processor.get_piece_size()
        self.bos_id, self.eos_id = self.processor.bos_id(), self.processor.eos_id()

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return self.processor.encode(texts)

    def decode_batch(self, rows: list[list[int]]) -> list[str]:
        return self.processor.decode(rows)


def _special_token(value: Any) -> str | None:
    """A tokenizer_config.json special token: a string, {"content": string}, or absent."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) and value else None


class HFTokenizer(Tokenizer):
    """A `tokenizers` tokenizer.json, with BOS and EOS named by the tokenizer_config.json beside it (or, for a
    model folder whose config names none, by config.json's bos_token_id and eos_token_id). pnlm keeps a
    tokenizer_config.json of its own: the two tokens, the chat template if there is one, and the class
    transformers loads tokenizer.json with as it is."""

    def __init__(self, json_file: Path) -> None:
        try:
            from tokenizers import Tokenizer as RustTokenizer
        except ImportError:
            raise TokenizerError(f"{json_file}: reading tokenizer.json needs the tokenizers library "
                                 f"(pip install tokenizers)") from None
        try:
            self.backend = RustTokenizer.from_file(str(json_file))
        except Exception as exc:  # the library raises a bare Exception for malformed files
            raise TokenizerError(f"{json_file}: not a tokenizers tokenizer.json: {str(exc).splitlines()[0]}"[:400]) from None
        # A file may carry padding or truncation settings (for batches of a fixed width): documents are whole here.
        self.backend.no_padding()
        self.backend.no_truncation()
        folder = json_file.parent
        settings = self._read_json(folder / HF_TOKENIZER_CONFIG)
        model_config = self._read_json(folder / "config.json")
        self.bos_id = self._special_id(settings, model_config, "bos", json_file)
        self.eos_id = self._special_id(settings, model_config, "eos", json_file)
        config = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": self.backend.id_to_token(self.bos_id),
                  "eos_token": self.backend.id_to_token(self.eos_id), "clean_up_tokenization_spaces": False}
        if isinstance(settings.get("chat_template"), str):
            config["chat_template"] = settings["chat_template"]
        self.config_bytes = (json.dumps(config, indent=2, ensure_ascii=False) + "\n").encode()
        self.files = {HF_TOKENIZER_FILE: json_file, HF_TOKENIZER_CONFIG: folder / HF_TOKENIZER_CONFIG}
        self.sha256 = tokenizer_sha256({HF_TOKENIZER_FILE: file_sha256(json_file),
                                        HF_TOKENIZER_CONFIG: hashlib.sha256(self.config_bytes).hexdigest()})
        # The largest id + 1: added tokens may leave gaps in the ids, and the model needs a row for each id.
        self.vocab_size = max(self.backend.get_vocab(with_added_tokens=True).values()) + 1

    @staticmethod
    def _read_json(path: Path) -> dict[str, Any]:
        """A settings file beside tokenizer.json, bounded and checked as every JSON file pnlm reads; {} if absent."""
        return read_json_object(path, MAX_TOKENIZER_BYTES, TokenizerError) if path.is_file() else {}

    def _special_id(self, settings: dict[str, Any], model_config: dict[str, Any], which: str, source: Path) -> int:
        token = _special_token(settings.get(f"{which}_token"))
        if token is not None:
            token_id = self.backend.token_to_id(token)
            if token_id is None:
                raise TokenizerError(f"{source.parent / HF_TOKENIZER_CONFIG}: {which}_token {token!r} is not in "
                                     f"{source.name}'s vocabulary"[:400])
            return token_id
        token_id = model_config.get(f"{which}_token_id")
        if isinstance(token_id, list) and token_id:
            token_id = token_id[0]  # several EOS ids (chat models): the first ends a document
        if isinstance(token_id, int) and not isinstance(token_id, bool) and self.backend.id_to_token(token_id):
            return token_id
        raise TokenizerError(f"{source.parent}: no {which.upper()} token: {HF_TOKENIZER_CONFIG} names no "
                             f"{which}_token and config.json no {which}_token_id; pnlm starts every document "
                             f"with BOS and ends it with EOS")

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [encoding.ids for encoding in self.backend.encode_batch(texts, add_special_tokens=False)]

    def decode_batch(self, rows: list[list[int]]) -> list[str]:
        return self.backend.decode_batch(rows, skip_special_tokens=True)

    def copy_to(self, folder: Path) -> list[str]:
        shutil.copyfile(self.files[HF_TOKENIZER_FILE], folder / HF_TOKENIZER_FILE)
        (folder / HF_TOKENIZER_CONFIG).write_bytes(self.config_bytes)
        return [HF_TOKENIZER_FILE, HF_TOKENIZER_CONFIG]


def load_tokenizer(path: str | Path) -> Tokenizer:
    """A folder holding tokenizer.model (SentencePiece) or tokenizer.json (Hugging Face tokenizers), or either file."""
    path = Path(path)
    if path.is_dir():
        main_file = next((path / f for f in (TOKENIZER_FILE, HF_TOKENIZER_FILE) if (path / f).is_file()),
                         path / TOKENIZER_FILE)
    else:
        main_file = path
    if not main_file.is_file():
        raise TokenizerError(f"{main_file}: no such tokenizer file (make one with `pnlm data tokenizer`)")
    if main_file.stat().st_size > MAX_TOKENIZER_BYTES:
        raise TokenizerError(f"{main_file}: larger than {MAX_TOKENIZER_BYTES} bytes; not a tokenizer")
    if main_file.name.endswith(".json"):
        return HFTokenizer(main_file)
    return SentencePieceTokenizer(main_file)


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
        tokenizer = SentencePieceTokenizer(tmp / TOKENIZER_FILE)
        info = {"sha256": tokenizer.sha256, "vocab_size": tokenizer.vocab_size, "model_type": "bpe",
                "byte_fallback": True, "bos_id": tokenizer.bos_id, "eos_id": tokenizer.eos_id}
        (tmp / INFO_FILE).write_text(json.dumps(info, indent=2) + "\n")
    return load_tokenizer(out_dir)
