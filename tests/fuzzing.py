"""What the fuzz suites share (tests/test_fuzz.py: readers and config formats; tests/test_fuzz_state.py:
the state and model folders a user can hand back): the settings, the outcome record, and the mutations."""

from __future__ import annotations

import collections
import json
import os
import resource
import struct
import time
from pathlib import Path

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from pnlm.checkpoints.checkpoint import MANIFEST_FILE
from pnlm.errors import PnlmError
from pnlm.tokenizer import file_sha256

EXAMPLES = int(os.environ.get("PNLM_FUZZ_EXAMPLES", "150"))
RECORD = os.environ.get("PNLM_FUZZ_RECORD")
FUZZ = settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
                suppress_health_check=list(HealthCheck))
MAX_GROWTH_BYTES = 512 * 1024 * 1024  # what the whole fuzz of one target may add to the process's peak memory
MAX_SECONDS = 30.0  # what one input may take, accepted or refused

absurd_numbers = st.one_of(st.integers(-2**70, 2**70), st.sampled_from([0, 1, -1, 2**31, 2**63, 10**400]),
                           st.floats(allow_nan=True, allow_infinity=True), st.booleans())
json_values = st.recursive(st.one_of(st.none(), absurd_numbers.filter(lambda v: not isinstance(v, int) or
                                                                     abs(v) < 10**300), st.text(max_size=20)),
                           lambda children: st.one_of(st.lists(children, max_size=4),
                                                      st.dictionaries(st.text(max_size=8), children, max_size=4)),
                           max_leaves=12)


class Outcomes:
    """What a target did with its inputs: accepted, or refused with which error class."""

    def __init__(self, name: str) -> None:
        self.name, self.counts, self.slowest = name, collections.Counter(), 0.0
        self.peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    def check(self, call, names: str) -> None:
        """Run call(); it may pass, or raise a PnlmError of one line that contains `names` (a path); within
        MAX_SECONDS either way (an input that hangs a reader fails)."""
        started = time.monotonic()
        try:
            call()
        except PnlmError as exc:
            message = str(exc)
            assert "\n" not in message and names in message, f"unclear error: {message!r}"
            public = next(kind for kind in type(exc).__mro__ if not kind.__name__.startswith("_"))
            self.counts[public.__name__] += 1
        else:
            self.counts["accepted"] += 1
        finally:
            seconds = time.monotonic() - started
            self.slowest = max(self.slowest, seconds)
        assert seconds < MAX_SECONDS, f"{self.name}: one input took {seconds:.0f} s"

    def finish(self) -> None:
        growth = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - self.peak_before
        total = sum(self.counts.values())
        if RECORD:
            with open(RECORD, "a") as f:
                f.write(json.dumps({"target": self.name, "inputs": total, "outcomes": dict(self.counts),
                                    "peak_memory_growth_mb": round(growth / 2**20, 1),
                                    "slowest_input_s": round(self.slowest, 2)}) + "\n")
        assert total >= EXAMPLES, f"{self.name}: only {total} inputs ran"
        assert growth < MAX_GROWTH_BYTES, f"{self.name}: peak memory grew by {growth / 2**20:.0f} MB"


def mutate(data: bytes, edits: list[tuple[int, int, int]], cut: int | None) -> bytes:
    """Overwrite bytes (position modulo the length, value), xor some, then optionally cut the end."""
    out = bytearray(data)
    for position, value, kind in edits:
        if not out:
            break
        i = position % len(out)
        out[i] = value if kind == 0 else out[i] ^ (1 << (value % 8))
    return bytes(out[:cut % (len(out) + 1)] if cut is not None else out)


edits = st.lists(st.tuples(st.integers(0, 2**32), st.integers(0, 255), st.integers(0, 1)), max_size=8)
cuts = st.one_of(st.none(), st.integers(0, 2**32))


def resealed(folder: Path) -> None:
    """Rewrite the manifest to match the files, as someone crafting a hostile checkpoint would."""
    manifest = json.loads((folder / MANIFEST_FILE).read_text())
    manifest["sha256"] = {name: file_sha256(folder / name) for name in manifest["sha256"]}
    (folder / MANIFEST_FILE).write_text(json.dumps(manifest))


def safetensors_bytes(header: object, data: bytes, claimed_length: int | None = None) -> bytes:
    blob = json.dumps(header).encode() if not isinstance(header, bytes) else header
    length = len(blob) if claimed_length is None else claimed_length
    return struct.pack("<Q", length % 2**64) + blob + data


def hostile_json(kind: int, raw: bytes, valid: object, byte_edits: list, cut: int | None, edited: object) -> bytes:
    """The content of a JSON file under fuzzing: random bytes (kind 0), the valid file with bytes flipped,
    overwritten or cut (kind 1), or a well-formed edit of it (any other kind)."""
    if kind == 0:
        return raw
    if kind == 1:
        return mutate(json.dumps(valid).encode(), byte_edits, cut)
    return json.dumps(edited).encode()
