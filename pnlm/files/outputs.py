"""What a command's --out may replace: nothing pnlm did not write, and pnlm's own output of the same kind
only when the user asks (--overwrite, or a run's own --resume). An output never lands on an input.

Each kind is recognized by the file pnlm writes first-class into it (its format tag, or the files only a
pnlm run has); a folder that is empty, or does not exist, is free.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from pnlm.files.atomic import is_temporary
from pnlm.errors import PnlmError
from pnlm.files.json_object import read_json_object
from pnlm.files.run_lock import is_lock_file, output_lock

CHECKPOINT = "checkpoint"
ADAPTER = "LoRA adapter"
TOKEN_STORE = "token store"
CLUSTERS = "clusters folder"
TOKENIZER = "tokenizer"
RUN = "training run"
EXPERIMENT = "experiment"

# (kind, file, its "format" tag, or None where the file's presence is the mark)
_MARKS = (
    (CHECKPOINT, "manifest.json", "pnlm-checkpoint"),
    (ADAPTER, "manifest.json", "pnlm-adapter"),
    (TOKEN_STORE, "meta.json", "pnlm-token-store"),
    (CLUSTERS, "clusters.json", "pnlm-clusters"),
    (TOKENIZER, "tokenizer_info.json", None),
    (EXPERIMENT, "plan.json", None),
)
_RUN_ENTRIES = {"latest", "best", "metrics.jsonl", "mix.json", "teacher-cache"}
RUN_STATE_FILE = "trainer.json"  # beside a run checkpoint's weights (pnlm.checkpoints.checkpoint.TRAINER_FILE)
# Hidden names pnlm leaves, beside a killed writer's temporaries (pnlm.files.atomic): locks (pnlm.files.run_lock); and Finder's litter.
_OWN_HIDDEN = {".DS_Store"}


def _format(path: Path) -> object:
    try:
        return read_json_object(path, 1 << 20, PnlmError).get("format")
    except (PnlmError, OSError):
        return None


def output_kind(folder: str | Path) -> str | None:
    """Which pnlm output the folder holds, or None when it is not one (or not a folder)."""
    folder = Path(folder)
    if not folder.is_dir():
        return None
    for kind, name, tag in _MARKS:
        if (folder / name).is_file() and (tag is None or _format(folder / name) == tag):
            return kind
    if any(entry.name in _RUN_ENTRIES or entry.name.startswith("expert-") for entry in folder.iterdir()):
        return RUN
    return None


def is_run_checkpoint(folder: Path) -> bool:
    """A training run's own checkpoint (its latest/ or best/, with the trainer state beside the weights)."""
    return (folder / RUN_STATE_FILE).is_file() or (folder.name in ("latest", "best")
                                                   and output_kind(folder.parent) == RUN)


def _entries(folder: Path) -> set[str]:
    """What is in a folder, but for what pnlm leaves there itself; a user's hidden files (.git) count."""
    return {entry.name for entry in folder.iterdir()
            if entry.name not in _OWN_HIDDEN and not is_lock_file(entry.name) and not is_temporary(entry.name)}


def _written_by_pnlm(folder: Path, kind: str) -> set[str]:
    """The names pnlm writes into a folder of this kind (replacing it replaces exactly these)."""
    if kind in (CHECKPOINT, ADAPTER):
        hashes = read_json_object(folder / "manifest.json", 1 << 20, PnlmError).get("sha256")
        return {"manifest.json", *(hashes if isinstance(hashes, dict) else {})}
    if kind == TOKEN_STORE:
        hashes = read_json_object(folder / "meta.json", 1 << 20, PnlmError).get("sha256")
        labels = {entry.name for entry in folder.iterdir() if entry.name.endswith(".clusters.npy")}
        return {"meta.json", "clusters.json", "embeddings", *labels, *(hashes if isinstance(hashes, dict) else {})}
    return {CLUSTERS: {"clusters.json", "centroids.npy"}, TOKENIZER: {"tokenizer.model", "tokenizer_info.json"}}[kind]


def _overlaps(a: Path, b: Path) -> bool:
    a, b = a.resolve(), b.resolve()
    # samefile as well: one folder under two paths that resolve() cannot tell apart (a bind mount)
    return a == b or a in b.parents or b in a.parents or (a.exists() and b.exists() and os.path.samefile(a, b))


def _input_paths(given: str | Path | None) -> list[Path]:
    """What an input names: itself, or for a glob pattern (not an existing path) its matches, and with `**` the
    folder it searches (a file written into it later would match)."""
    if given is None:
        return []
    if Path(given).exists() or not glob.has_magic(str(given)):
        return [Path(given)]
    paths = [Path(p) for p in glob.glob(str(given), recursive=True)]
    parts = Path(given).parts
    if "**" in parts:
        paths.append(Path(*parts[:parts.index("**")]) if parts.index("**") else Path("."))
    return paths


def check_output(out: str | Path, kind: str, replace: bool = False, inputs: Iterable[str | Path] = ()) -> None:
    """Refuse, with one line, an --out that would lose something: a folder that is (or holds, or lies
    inside) an input of the command; a file; a folder with files pnlm did not write; another kind of pnlm
    output; or this kind of output when replace (--overwrite, a run's --resume) was not asked for.
    The writer holds the output's lock while it checks and writes (`writing_output`)."""
    out = Path(out)
    for given in inputs:
        for path in _input_paths(given):
            if path.exists() and _overlaps(out, path):
                raise PnlmError(f"{out}: is also an input of this command ({given}); write the output elsewhere")
    if not out.exists() and not out.is_symlink():
        return
    if not out.is_dir():
        what = "a link to nothing" if out.is_symlink() and not out.exists() else "a file, not a folder"
        raise PnlmError(f"{out}: is {what}; pnlm will not replace it: choose another --out")
    entries = _entries(out)
    if not entries:
        return
    found = output_kind(out)
    if found is None and kind in (RUN, EXPERIMENT):
        return  # written into, never replaced: a job's log file beside the run is safe
    if found is None:
        raise PnlmError(f"{out}: holds files pnlm did not write, which it never deletes; choose another --out "
                        f"(or empty that folder yourself)")
    if found != kind:
        raise PnlmError(f"{out}: holds a pnlm {found}, not a {kind}; choose another --out")
    if kind == CHECKPOINT and is_run_checkpoint(out):
        raise PnlmError(f"{out}: is the checkpoint of the training run {out.parent} (what its --resume continues "
                        "from); pnlm will not replace it: choose another --out")
    if not replace:
        hint = "pass --resume to continue it" if kind == RUN else "pass --overwrite to replace it"
        raise PnlmError(f"{out}: holds a pnlm {kind} already; {hint}, or choose another --out")
    if kind not in (RUN, EXPERIMENT):
        foreign = sorted(entries - _written_by_pnlm(out, kind))
        if foreign:
            raise PnlmError(f"{out}: holds files pnlm did not write ({', '.join(foreign[:3])}), which --overwrite "
                            f"would delete with the {kind}; move them, or choose another --out")


@contextmanager
def writing_output(out: str | Path, kind: str, replace: bool = False, inputs: Iterable[str | Path] = ()) -> Iterator[None]:
    """One writer at a time on out (pnlm.files.run_lock), which check_output has found safe to write."""
    with output_lock(out):
        check_output(out, kind, replace, inputs)
        yield
