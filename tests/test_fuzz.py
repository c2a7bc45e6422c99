"""Hostile input: property-based fuzzing (hypothesis) of every reader and every config format.

Each input must either be accepted or be refused with one clear line (a PnlmError, no newline,
naming the file); anything else (a traceback, another exception) fails. Inputs are random bytes,
mutations of a valid file (flipped, overwritten, cut), and well-formed structures with absurd
values (sizes, shapes, offsets, types). CI runs PNLM_FUZZ_EXAMPLES inputs per target (default 150);
the recorded run of docs/reliability.md sets it to 10000 and PNLM_FUZZ_RECORD to a file that
gets one JSON line per target with the count and the outcomes.
"""

from __future__ import annotations

import gzip
import io
import json
import shutil
import struct
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from fuzzing import FUZZ, Outcomes, absurd_numbers, cuts, edits, json_values, mutate, resealed, safetensors_bytes
from pnlm.checkpoints.checkpoint import load_checkpoint, save_checkpoint
from pnlm.data import iter_documents
from pnlm.data.store import TokenStore
from pnlm.experiment.plan import load_plan
from pnlm.model.spec import ModelSpec, load_spec
from pnlm.tokenizer import file_sha256
from pnlm.checkpoints.weights import init_weights

ROOT = Path(__file__).resolve().parents[1]
SPEC_KEYS = ("vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "d_ff", "context", "rope_theta",
             "norm_eps", "tied_embeddings", "projection")


@pytest.fixture(scope="module")
def scratch():
    folder = Path(tempfile.mkdtemp(prefix="pnlm-fuzz-"))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def read_all(path: Path, **options) -> None:
    for _ in iter_documents([path], **options):
        pass


# --- readers -------------------------------------------------------------------------------------------

JSONL_SEED = (b'{"text": "To be, or not to be"}\n{"text": "that is the question"}\n'
              b'{"text": "", "id": 3}\n{"other": 1}\n')


@st.composite
def jsonl_files(draw):
    kind = draw(st.integers(0, 3))
    if kind == 0:
        return draw(st.binary(max_size=400))
    if kind == 1:
        return mutate(JSONL_SEED, draw(edits), draw(cuts))
    if kind == 2:
        lines = draw(st.lists(json_values.map(lambda v: json.dumps(v).encode()), max_size=6))
        return b"\n".join(lines)
    depth = draw(st.integers(1, 200_000))  # nesting deep enough to exhaust a recursive parser
    return b'{"text": ' + b"[" * depth + b"]" * draw(st.integers(0, depth)) + b"}\n"


def test_fuzz_jsonl_reader(scratch):
    outcomes = Outcomes("JSONL reader (.jsonl, .jsonl.gz)")

    @FUZZ
    @given(data=jsonl_files(), gz=st.booleans(), skip_bad=st.booleans())
    def run(data, gz, skip_bad):
        path = scratch / ("input.jsonl.gz" if gz else "input.jsonl")
        path.write_bytes(gzip.compress(data, mtime=0) if gz else data)
        if gz and data:  # and a damaged gzip stream as well
            path.write_bytes(mutate(path.read_bytes(), [(len(data) * 7, len(data) % 256, 1)], None))
        outcomes.check(lambda: read_all(path, skip_bad=skip_bad), str(path))

    run()
    outcomes.finish()


def test_fuzz_txt_reader(scratch):
    outcomes = Outcomes("text reader (.txt, .txt.gz, both modes)")
    seed = "Who's there?\n\nNay, answer me: stand, and unfold yourself.\r\n\r\nLong live the king!\n".encode()

    @FUZZ
    @given(data=st.one_of(st.binary(max_size=400), st.builds(mutate, st.just(seed), edits, cuts)),
           gz=st.booleans(), mode=st.sampled_from(["file", "blank-line"]), flip=st.integers(0, 2**16))
    def run(data, gz, mode, flip):
        path = scratch / ("input.txt.gz" if gz else "input.txt")
        raw = gzip.compress(data, mtime=0) if gz else data
        path.write_bytes(mutate(raw, [(flip, flip % 256, 1)], None) if gz and flip % 3 == 0 else raw)
        outcomes.check(lambda: read_all(path, txt_mode=mode), str(path))

    run()
    outcomes.finish()


@st.composite
def web_pages(draw):
    """Pages as a hostile site serves them: broken markup, deep nesting, very long flat pages, odd encodings."""
    kind = draw(st.integers(0, 4))
    if kind == 0:
        return draw(st.binary(max_size=400))
    if kind == 1:
        depth = draw(st.integers(1, 3000))
        return ("<html><body>" + "<div>" * depth + "deep " * draw(st.integers(0, 50)) + "</div>" * depth).encode()
    if kind == 2:  # flat and long, and past the cap (refused before it is parsed)
        paragraphs = draw(st.sampled_from([0, 10, 1_000, 20_000, 200_000]))
        return ("<html><body><article>" + "<p>A paragraph of words.</p>" * paragraphs + "</article></body></html>").encode()
    if kind == 3:
        text = draw(st.text(max_size=200))
        encoding = draw(st.sampled_from(["utf-8", "latin-1", "utf-16", "cp1252"]))
        return (f'<html><head><meta charset="{encoding}"></head><body><p>{text}</p></body></html>'
                ).encode(encoding, errors="replace")
    return mutate(b"<html><body><article><p>Marsh herons wade at dawn.</p></article></body></html>" * 20,
                  draw(edits), draw(cuts))


@st.composite
def gzip_bombs(draw):
    """A small file that expands far past the 16 MiB a document may take: zeros, or one repeated line."""
    size = draw(st.one_of(st.sampled_from([0, 1, 1 << 20, 17 << 20, 40 << 20]), st.integers(0, 24 << 20)))
    unit = draw(st.one_of(st.sampled_from([b"\0", b"a", b"word ", b"\n\n", b'{"text": "' + b"x" * 100 + b'"}\n']),
                          st.binary(min_size=1, max_size=12)))
    return size, unit


def test_fuzz_html_pages(scratch):
    outcomes = Outcomes("HTML reader (.html, .html.gz)")

    @FUZZ
    @given(page=web_pages(), gz=st.booleans(), skip_bad=st.booleans())
    def run(page, gz, skip_bad):
        path = scratch / ("page.html.gz" if gz else "page.html")
        path.write_bytes(gzip.compress(page, compresslevel=1, mtime=0) if gz else page)
        outcomes.check(lambda: read_all(path, skip_bad=skip_bad), str(path))

    run()
    outcomes.finish()


def test_fuzz_gzip_bombs(scratch):
    outcomes = Outcomes("compressed inputs that expand far (.txt.gz, .jsonl.gz, .md.gz)")

    @FUZZ
    @given(bomb=gzip_bombs(), suffix=st.sampled_from([".txt.gz", ".jsonl.gz", ".md.gz"]),
           mode=st.sampled_from(["file", "blank-line"]), skip_bad=st.booleans())
    def run(bomb, suffix, mode, skip_bad):
        size, unit = bomb
        path = scratch / f"bomb{suffix}"
        with gzip.open(path, "wb", compresslevel=1) as f:
            block = unit * ((1 << 20) // len(unit))
            written = 0
            while written < size:
                f.write(block[:size - written])
                written += len(block)
        outcomes.check(lambda: read_all(path, txt_mode=mode, skip_bad=skip_bad), str(path))

    run()
    outcomes.finish()


@pytest.fixture(scope="module")
def parquet_seed():
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    table = pa.table({"text": ["To be, or not to be", None, "that is the question"] * 4, "n": list(range(12))})
    buffer = io.BytesIO()
    pq.write_table(table, buffer, row_group_size=4)
    return buffer.getvalue()


def test_fuzz_parquet_reader(scratch, parquet_seed):
    outcomes = Outcomes("Parquet reader")

    @FUZZ
    @given(data=st.one_of(st.binary(max_size=300), st.builds(mutate, st.just(parquet_seed), edits, cuts)),
           field=st.sampled_from(["text", "n", "missing"]))
    def run(data, field):
        path = scratch / "input.parquet"
        path.write_bytes(data)
        outcomes.check(lambda: read_all(path, text_field=field), str(path))

    run()
    outcomes.finish()


# --- config formats ----------------------------------------------------------------------------------

def toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return "nan" if value != value else ("inf" if value == float("inf") else
                                             "-inf" if value == float("-inf") else repr(value))
    if isinstance(value, (int, str)):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{json.dumps(k)} = {toml_value(v)}" for k, v in value.items()) + " }"
    return '""'


toml_values = st.recursive(st.one_of(absurd_numbers.filter(lambda v: not isinstance(v, int) or abs(v) < 2**63),
                                     st.text(max_size=12)),
                           lambda children: st.one_of(st.lists(children, max_size=3),
                                                      st.dictionaries(st.sampled_from(["h", "k", "m", "x"]), children,
                                                                      max_size=3)), max_leaves=6)


def test_fuzz_spec_toml(scratch):
    outcomes = Outcomes("model spec (TOML)")
    base = load_spec("tiny").to_dict()

    @FUZZ
    @given(kind=st.integers(0, 2), raw=st.binary(max_size=300),
           changes=st.dictionaries(st.sampled_from([*SPEC_KEYS, "preset", "other"]), toml_values, max_size=4),
           top=st.booleans())
    def run(kind, raw, changes, top):
        path = scratch / "spec.toml"
        if kind == 0:
            path.write_bytes(raw)
        else:
            table = {**({k: v for k, v in base.items() if v is not None} if kind == 1 else {}), **changes}
            lines = [f"{key} = {toml_value(value)}" for key, value in table.items()]
            path.write_text(("" if top else "[model]\n") + "\n".join(lines) + "\n")
        outcomes.check(lambda: load_spec(path).validate(), str(path))

    run()
    outcomes.finish()


def test_fuzz_plan_toml(scratch):
    outcomes = Outcomes("experiment plan (TOML)")
    smoke = (ROOT / "plans" / "smoke.toml").read_text().replace("../pnlm", str(ROOT / "pnlm"))
    lines = smoke.splitlines()
    assignments = [i for i, line in enumerate(lines) if " = " in line and not line.startswith("#")]

    @FUZZ
    @given(kind=st.integers(0, 2), raw=st.binary(max_size=300),
           changes=st.lists(st.tuples(st.sampled_from(assignments), toml_values), max_size=4),
           dropped=st.lists(st.sampled_from(assignments), max_size=2))
    def run(kind, raw, changes, dropped):
        path = scratch / "plan.toml"
        if kind == 0:
            path.write_bytes(raw)
        else:
            edited = list(lines)
            for i, value in changes:
                edited[i] = edited[i].split(" = ")[0] + " = " + toml_value(value)
            for i in dropped if kind == 2 else []:
                edited[i] = ""
            path.write_text("\n".join(edited) + "\n")
        outcomes.check(lambda: load_plan(path), str(path))

    run()
    outcomes.finish()


PLAN_TABLES = ["", "[data]", "[models]", "[pretrain]", "[finetune]", "[distill]"]
CONFIG_KEYS = ["steps", "step", "batch-size", "batch_size", "lr", "seed", "warmup", "eval-every", "patience",
               "tokens", "grad-accum", "log-every", "checkpoint-every", "backend", "model", "compile", "log-to", "x"]


def test_fuzz_plan_keys(scratch):
    """Keys a plan does not read (typos, other tables), with any value: refused by name, never ignored."""
    outcomes = Outcomes("experiment plan keys (TOML)")
    smoke = (ROOT / "plans" / "smoke.toml").read_text().replace("../pnlm", str(ROOT / "pnlm"))

    @FUZZ
    @given(extra=st.lists(st.tuples(st.sampled_from(PLAN_TABLES), st.text("abcdefghijklmnopqrstuvwxyz_-", min_size=1,
                                                                           max_size=12), toml_values), max_size=3))
    def run(extra):
        path = scratch / "plan.toml"
        lines = smoke.splitlines()
        for table, key, value in extra:
            at = lines.index(table) + 1 if table in lines else 0
            lines.insert(at, f"{json.dumps(key)} = {toml_value(value)}")
        path.write_text("\n".join(lines) + "\n")
        outcomes.check(lambda: load_plan(path), str(path))

    run()
    outcomes.finish()


def test_fuzz_command_config_files(scratch):
    """--config files of pretrain and finetune: any key, any value; a value of the wrong type is refused by name
    before anything runs, a key given twice too."""
    import typer.main

    from pnlm.cli.app import app
    from pnlm.cli.config_file import read_config

    commands = typer.main.get_command(app).commands
    outcomes = Outcomes("command --config files (TOML)")

    @FUZZ
    @given(command=st.sampled_from(["pretrain", "finetune", "distill"]), raw=st.binary(max_size=200),
           raw_kind=st.booleans(), pairs=st.lists(st.tuples(st.sampled_from(CONFIG_KEYS), toml_values), max_size=5))
    def run(command, raw, raw_kind, pairs):
        path = scratch / "config.toml"
        if raw_kind:
            path.write_bytes(raw)
        else:
            path.write_text("".join(f"{json.dumps(key)} = {toml_value(value)}\n" for key, value in dict(pairs).items()))
        outcomes.check(lambda: read_config(path, commands[command]), str(path))

    run()
    outcomes.finish()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, tokenizer):
    spec = ModelSpec.from_dict({**load_spec("tiny").to_dict(), "d_model": 32, "n_layers": 1, "n_heads": 2,
                                "n_kv_heads": 1, "d_ff": 64, "vocab_size": tokenizer.vocab_size})
    return save_checkpoint(tmp_path_factory.mktemp("fuzz-ckpt") / "tiny", spec, init_weights(spec), tokenizer)


def test_fuzz_checkpoint_config_json(scratch, checkpoint):
    outcomes = Outcomes("checkpoint config.json")
    config = json.loads((checkpoint / "config.json").read_text())
    folder = scratch / "ckpt-config"

    @FUZZ
    @given(kind=st.integers(0, 2), raw=st.binary(max_size=300),
           spec_changes=st.dictionaries(st.sampled_from([*SPEC_KEYS, "other"]), json_values, max_size=4),
           top_changes=st.dictionaries(st.sampled_from(["format", "version", "spec", "method", "tokenizer"]),
                                       json_values, max_size=2))
    def run(kind, raw, spec_changes, top_changes):
        shutil.rmtree(folder, ignore_errors=True)
        shutil.copytree(checkpoint, folder)
        if kind == 0:
            (folder / "config.json").write_bytes(raw)
        else:
            edited = {**config, "spec": {**config["spec"], **spec_changes}, **(top_changes if kind == 2 else {})}
            (folder / "config.json").write_text(json.dumps(edited))
        resealed(folder)
        outcomes.check(lambda: load_checkpoint(folder), str(folder))

    run()
    outcomes.finish()


def test_fuzz_safetensors_headers(scratch, checkpoint):
    outcomes = Outcomes("checkpoint model.safetensors header")
    weights = (checkpoint / "model.safetensors").read_bytes()
    (length,) = struct.unpack("<Q", weights[:8])
    header = json.loads(weights[8:8 + length])
    data = weights[8 + length:]
    names = [name for name in header if name != "__metadata__"]
    folder = scratch / "ckpt-weights"
    shape = st.lists(st.one_of(st.integers(-3, 2**40), st.sampled_from([0, 1, 32, 2**31, 2**62])), max_size=4)
    entry = st.fixed_dictionaries({}, optional={
        "dtype": st.sampled_from(["F32", "F16", "BF16", "I64", "F64", "U8", ""]),
        "shape": st.one_of(shape, json_values), "data_offsets": st.one_of(
            st.lists(st.integers(-2**40, 2**64), min_size=2, max_size=2), json_values)})

    @FUZZ
    @given(kind=st.integers(0, 3), raw=st.binary(max_size=200),
           changes=st.dictionaries(st.sampled_from([*names, "extra.weight"]), entry, max_size=3),
           claimed=st.one_of(st.none(), st.integers(0, 2**64 - 1)), byte_edits=edits, cut=cuts)
    def run(kind, raw, changes, claimed, byte_edits, cut):
        shutil.rmtree(folder, ignore_errors=True)
        shutil.copytree(checkpoint, folder)
        if kind == 0:
            content = raw
        elif kind == 1:
            content = safetensors_bytes({**header, **changes}, data)
        elif kind == 2:
            content = safetensors_bytes({**header, **changes}, data, claimed)
        else:
            content = mutate(weights, byte_edits, cut)
        (folder / "model.safetensors").write_bytes(content)
        resealed(folder)
        outcomes.check(lambda: load_checkpoint(folder), str(folder))

    run()
    outcomes.finish()


@pytest.fixture(scope="module")
def store(tmp_path_factory, tokenizer):
    from pnlm.data.prepare import prepare_store

    hamlet = ROOT / "pnlm" / "sample_data" / "shakespeare_hamlet.jsonl.gz"
    prepared, _ = prepare_store(iter_documents([hamlet]), tokenizer, tmp_path_factory.mktemp("fuzz-store") / "s",
                                context=64, valid_fraction=0.1, test_fraction=0.1, workers=1)
    return prepared.path


def test_fuzz_store_meta_and_index(scratch, store):
    outcomes = Outcomes("token store meta.json and window index")
    meta = json.loads((store / "meta.json").read_text())
    folder = scratch / "store"

    @FUZZ
    @given(kind=st.integers(0, 2), raw=st.binary(max_size=200),
           changes=st.dictionaries(st.sampled_from(["format", "version", "dtype", "vocab_size", "context", "splits",
                                                    "sha256", "tokenizer_sha256"]), json_values, max_size=2),
           windows=st.lists(st.tuples(st.integers(-2**40, 2**40), st.integers(-2**40, 2**40)), min_size=1,
                            max_size=4))
    def run(kind, raw, changes, windows):
        shutil.rmtree(folder, ignore_errors=True)
        shutil.copytree(store, folder)
        if kind == 0:
            (folder / "meta.json").write_bytes(raw)
        elif kind == 1:
            (folder / "meta.json").write_text(json.dumps({**meta, **changes}))
        else:  # a window index that points outside the tokens, resealed in meta.json
            index = np.load(folder / "valid.windows.npy")
            index[:len(windows)] = np.array(windows[:len(index)], dtype=np.int64)
            np.save(folder / "valid.windows.npy", index)
            hashes = {**meta["sha256"], "valid.windows.npy": file_sha256(folder / "valid.windows.npy")}
            (folder / "meta.json").write_text(json.dumps({**meta, "sha256": hashes}))
        outcomes.check(lambda: TokenStore(folder).batch("valid", np.arange(TokenStore(folder).num_windows("valid"))),
                       str(folder))

    run()
    outcomes.finish()
