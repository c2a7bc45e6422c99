"""An experiment plan: the paper's protocol (methods × pretraining budgets × domain sizes × domains) in a TOML file.

    name = "smoke"
    methods = ["slm", "llm", "nopt", "distill", "mix", "pn", "is", "soup"]
    backend = "torch"              # pretraining
    finetune_backend = "mlx"       # specialization: fine-tuning, distillation, evaluation
    seed = 0

    [data]                         # paths are relative to the plan file
    generic = ["corpora/generic.jsonl.gz"]
    vocab_size = 2048
    context = 128
    clusters = 4                   # k of the generic set's clustering (mix experts, PN experts, IS clusters)
    generic_max_documents = 0      # read only the first N documents (0: all); also domain_max_documents
    embedder = "minilm/"           # optional: a sentence-transformers folder (default: all-MiniLM-L6-v2)
    domain_tokens = [4000, 16000]  # domain train sizes, in tokens
    [data.domains]
    hamlet = ["hamlet.jsonl.gz"]

    [models]
    slm = "tiny"                                        # a preset, or a table of spec fields (with `preset`)
    llm = { preset = "tiny", d_model = 256, d_ff = 704, n_heads = 8, n_kv_heads = 4 }
    pn = { h = 4, m = 4 }                               # the SLM projected: h basis tensors, expert width m
    soup = { banks = 4 }                                # the SLM souped (docs/soup.md): banks, and optionally
                                                        # hidden, clusters_per_draw, concentration

    [pretrain]
    budgets = [100, 200]           # optimizer steps of every pretraining (mix: per expert)
    batch_size = 8
    lr = 2e-3

    [finetune]                     # also the distillation's settings
    steps = 200
    batch_size = 8
    lr = 1e-3
    eval_every = 20
    patience = 3

    [distill]
    alpha = 0.5
    temperature = 2.0
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pnlm.errors import PnlmError
from pnlm.methods import METHODS as REGISTRY
from pnlm.model.spec import PRESETS, ModelSpec, Soup, SpecError
from pnlm.files.toml_file import read_toml

METHODS = tuple(REGISTRY)  # the order the work depends on: pnlm/methods/__init__.py
BACKENDS = ("torch", "cuda", "mlx")
MAX_PLAN_BYTES = 1 << 20
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")  # whole names only: fullmatch


class PlanError(PnlmError):
    pass


# Every key a plan may have, by table (an empty set: a value, not a table).
KEYS: dict[str, set[str]] = {
    "name": set(), "methods": set(), "backend": set(), "finetune_backend": set(), "seed": set(),
    "data": {"generic", "tokenizer_inputs", "generic_max_documents", "domain_max_documents", "vocab_size", "context",
             "clusters", "embedder", "domain_tokens", "valid_fraction", "test_fraction", "domains"},
    "models": {"slm", "llm", "pn", "soup"},
    "pretrain": {"budgets", "batch_size", "lr", "checkpoint_every"},
    "finetune": {"steps", "batch_size", "lr", "eval_every", "patience"},
    "distill": {"alpha", "temperature"},
}


@dataclass(frozen=True)
class PretrainSettings:
    budgets: tuple[int, ...]
    batch_size: int = 8
    lr: float = 1e-4
    checkpoint_every: int = 0  # 0: a tenth of the steps (a killed pretraining resumes from there)


@dataclass(frozen=True)
class FinetuneSettings:
    steps: int = 1000
    batch_size: int = 8
    lr: float = 1e-4 / 3
    eval_every: int = 50
    patience: int = 3


@dataclass(frozen=True)
class DistillSettings:
    alpha: float = 0.5
    temperature: float = 2.0


@dataclass(frozen=True)
class Plan:
    name: str
    path: Path
    methods: tuple[str, ...]
    generic: tuple[Path, ...]
    domains: dict[str, tuple[Path, ...]]
    domain_tokens: tuple[int, ...]
    vocab_size: int
    context: int
    clusters: int
    slm: ModelSpec           # vocab_size and context are the plan's
    llm: ModelSpec
    projection: tuple[int, int]  # (h, m); k is `clusters`
    soup: Soup  # its k is `clusters`
    pretrain: PretrainSettings
    finetune: FinetuneSettings
    distill: DistillSettings = DistillSettings()
    backend: str = "torch"
    finetune_backend: str = "torch"
    seed: int = 0
    valid_fraction: float = 0.1
    test_fraction: float = 0.1
    tokenizer_inputs: tuple[Path, ...] = field(default=())
    generic_max_documents: int = 0  # 0: every document of the inputs
    domain_max_documents: int = 0
    embedder: Path | None = None  # None: the default embedder (all-MiniLM-L6-v2)
    embedder_fingerprint: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "methods": list(self.methods),
                "budgets": list(self.pretrain.budgets), "domains": list(self.domains),
                "domain_tokens": list(self.domain_tokens), "clusters": self.clusters,
                **({"embedder": self.embedder_fingerprint} if self.embedder is not None else {}),
                "models": {"slm": self.slm.to_dict(), "llm": self.llm.to_dict(),
                           "pn": {"h": self.projection[0], "k": self.clusters, "m": self.projection[1]},
                           **({"soup": dataclasses.asdict(self.soup)} if "soup" in self.methods else {})},
                "backend": self.backend, "finetune_backend": self.finetune_backend, "seed": self.seed,
                "pretrain": dataclasses.asdict(self.pretrain), "finetune": dataclasses.asdict(self.finetune),
                "distill": dataclasses.asdict(self.distill)}


# The settings only one method reads: a plan may gain or lose that method and keep every other result.
METHOD_SETTINGS = {"soup": ("models", "soup")}


def same_work(before: dict[str, Any], now: dict[str, Any]) -> bool:
    """Whether an experiment's plan.json and a plan differ at most by methods added or dropped (with the settings
    only those read): the data, the other methods' runs and their cells would be made alike."""
    before, now = copy.deepcopy(before), copy.deepcopy(now)
    methods = set(before.pop("methods", [])), set(now.pop("methods", []))
    for method in methods[0] ^ methods[1]:
        if method in METHOD_SETTINGS:
            table, key = METHOD_SETTINGS[method]
            for side in (before, now):
                side.get(table, {}).pop(key, None)
    return before == now


def load_plan(path: str | Path) -> Plan:
    path = Path(path)
    return _Reader(path, read_toml(path, MAX_PLAN_BYTES, PlanError, "plan file")).plan()


class _Reader:
    """Reads a plan's tables, naming the file and the key in every error."""

    def __init__(self, path: Path, data: dict[str, Any]) -> None:
        self.path, self.data = path, data

    def fail(self, key: str, expected: str, value: Any = None) -> PlanError:
        got = f", got {value!r}" if value is not None else ""
        return PlanError(f"{self.path}: {key}: expected {expected}{got}")

    def table(self, key: str, required: bool = True) -> dict[str, Any]:
        value = self.data.get(key)
        if value is None and not required:
            return {}
        if not isinstance(value, dict):
            raise self.fail(f"[{key}]", "a table")
        return value

    def get(self, table: dict[str, Any], key: str, kind: type, default: Any = ..., low: float | None = None,
            high: float | None = None) -> Any:
        if key not in table:
            if default is ...:
                raise self.fail(key, f"a {kind.__name__} (missing)")
            return default
        value = table[key]
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or isinstance(value, bool) != (kind is bool):
            raise self.fail(key, f"a {kind.__name__}", value)
        if kind is float and not math.isfinite(value):
            raise self.fail(key, "a finite number", value)
        if (low is not None and value < low) or (high is not None and value > high):
            raise self.fail(key, f"a value in [{low}, {high}]", value)
        return value

    def ints(self, table: dict[str, Any], key: str, low: int) -> tuple[int, ...]:
        value = table.get(key)
        if (not isinstance(value, list) or not value
                or not all(isinstance(v, int) and not isinstance(v, bool) and v >= low for v in value)):
            raise self.fail(key, f"a non-empty list of integers >= {low}", value)
        if len(set(value)) != len(value):
            raise self.fail(key, "distinct values", value)
        return tuple(sorted(value))

    def paths(self, value: Any, key: str) -> tuple[Path, ...]:
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
            raise self.fail(key, "a file path or a non-empty list of them", value)
        resolved = tuple((self.path.parent / v).resolve() for v in value)
        for original, p in zip(value, resolved):
            if not p.is_file():
                raise self.fail(key, f"an existing file ({original} is not one, looked at {p})")
        return resolved

    def embedder(self, value: Any, key: str) -> tuple[Path, str]:
        """The folder, and the fingerprint of its files: what plan.json records (not the path, which may move)."""
        from pnlm.clustering.embedder import resolve_embedder

        if not isinstance(value, str) or not value:
            raise self.fail(key, "a folder path", value)
        try:  # the same checks `pnlm data cluster --embedder` makes, said for this key of this file
            found = resolve_embedder((self.path.parent / value).resolve(), precision="float32")
        except PnlmError as exc:
            raise self.fail(key, f"a sentence-transformers model folder ({exc})") from None
        return found.path, found.fingerprint

    def spec(self, value: Any, key: str, vocab_size: int, context: int) -> ModelSpec:
        if isinstance(value, str):
            if value not in PRESETS:
                raise self.fail(key, f"a preset ({', '.join(PRESETS)}) or a table", value)
            table = dataclasses.asdict(PRESETS[value])
        elif isinstance(value, dict):
            table = dict(value)
            preset = table.pop("preset", None)
            if preset is not None:
                if preset not in PRESETS:
                    raise self.fail(f"{key}.preset", f"one of {', '.join(PRESETS)}", preset)
                table = {**dataclasses.asdict(PRESETS[preset]), **table}
        else:
            raise self.fail(key, "a preset name or a table of model fields", value)
        if table.get("projection") is not None:
            raise self.fail(key, "a plain model (the PN's projection is [models].pn)")
        table.update(vocab_size=vocab_size, context=context, projection=None)
        try:
            return ModelSpec.from_dict(table, source=f"{self.path}: {key}")
        except SpecError as exc:
            raise PlanError(str(exc)) from None

    def known(self, table: dict[str, Any], where: str, keys: set[str]) -> None:
        """Refuse a key the plan does not read (a typo would otherwise leave a default in its place)."""
        for key in table:
            if key not in keys:
                close = difflib.get_close_matches(key, sorted(keys), n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else f"; the keys are {', '.join(sorted(keys))}"
                raise PlanError(f"{self.path}: unknown key {where}{key!r}{hint}")

    def plan(self) -> Plan:
        self.known(self.data, "", set(KEYS))
        for table, keys in KEYS.items():
            if keys and isinstance(self.data.get(table), dict):
                self.known(self.data[table], f"[{table}] ", keys)
        name = self.get(self.data, "name", str)
        if not NAME.fullmatch(name):
            raise self.fail("name", "letters, digits, '.', '_' or '-' (at most 64)", name)
        methods = self.data.get("methods", list(METHODS))
        if not isinstance(methods, list) or not methods or not all(m in METHODS for m in methods):
            raise self.fail("methods", f"a non-empty list of {', '.join(METHODS)}", methods)
        methods = tuple(m for m in METHODS if m in methods)  # the order the work depends on
        data = self.table("data")
        domains_table = data.get("domains")
        if not isinstance(domains_table, dict) or not domains_table:
            raise self.fail("[data.domains]", "a table of domain name = file(s)")
        for domain in domains_table:
            if not NAME.fullmatch(domain):
                raise self.fail(f"data.domains.{domain}", "a name of letters, digits, '.', '_' or '-'")
        vocab_size = self.get(data, "vocab_size", int, low=64, high=1 << 20)
        context = self.get(data, "context", int, low=8, high=1 << 16)
        clusters = self.get(data, "clusters", int, low=1, high=1 << 12)
        models = self.table("models")
        pn = models.get("pn", {"h": 4, "m": 4})
        if not isinstance(pn, dict) or set(pn) - {"h", "m"}:
            raise self.fail("models.pn", "a table { h = INT, m = INT }", pn)
        projection = (self.get(pn, "h", int, 4, low=1, high=1 << 12), self.get(pn, "m", int, 4, low=1, high=1 << 12))
        soup = models.get("soup", {"banks": 4})
        soup_keys = {f.name for f in dataclasses.fields(Soup)} - {"k"}
        if not isinstance(soup, dict) or set(soup) - soup_keys:
            raise self.fail("models.soup", f"a table of {', '.join(sorted(soup_keys))} (k is data.clusters)", soup)
        try:
            souped = Soup(**{"banks": 4, "clusters_per_draw": min(2, clusters), **soup, "k": clusters})
            souped.validate()
        except SpecError as exc:
            raise PlanError(f"{self.path}: models.{exc}") from None
        pretrain = self.table("pretrain")
        finetune = self.table("finetune", required=False)
        distill = self.table("distill", required=False)
        backend = self.get(self.data, "backend", str, "torch")
        finetune_backend = self.get(self.data, "finetune_backend", str, backend)
        for key, value in (("backend", backend), ("finetune_backend", finetune_backend)):
            if value not in BACKENDS:
                raise self.fail(key, f"one of {', '.join(BACKENDS)}", value)
        embedder, embedder_fingerprint = (self.embedder(data["embedder"], "data.embedder") if "embedder" in data
                                          else (None, None))
        return Plan(
            name=name, path=self.path.resolve(), methods=methods,
            generic=self.paths(data.get("generic"), "data.generic"),
            domains={d: self.paths(v, f"data.domains.{d}") for d, v in domains_table.items()},
            domain_tokens=self.ints(data, "domain_tokens", 1),
            vocab_size=vocab_size, context=context, clusters=clusters,
            slm=self.spec(models.get("slm", "tiny"), "models.slm", vocab_size, context),
            llm=self.spec(models.get("llm", "tiny"), "models.llm", vocab_size, context),
            projection=projection, soup=souped,
            pretrain=PretrainSettings(
                budgets=self.ints(pretrain, "budgets", 1),
                batch_size=self.get(pretrain, "batch_size", int, 8, low=1, high=1 << 16),
                lr=self.get(pretrain, "lr", float, 1e-4, low=1e-8, high=1.0),
                checkpoint_every=self.get(pretrain, "checkpoint_every", int, 0, low=0)),
            finetune=FinetuneSettings(
                steps=self.get(finetune, "steps", int, 1000, low=1),
                batch_size=self.get(finetune, "batch_size", int, 8, low=1, high=1 << 16),
                lr=self.get(finetune, "lr", float, 1e-4 / 3, low=1e-8, high=1.0),
                eval_every=self.get(finetune, "eval_every", int, 50, low=1),
                patience=self.get(finetune, "patience", int, 3, low=0)),
            distill=DistillSettings(
                alpha=self.get(distill, "alpha", float, 0.5, low=0.0, high=1.0),
                temperature=self.get(distill, "temperature", float, 2.0, low=1e-3, high=1e3)),
            backend=backend, finetune_backend=finetune_backend,
            seed=self.get(self.data, "seed", int, 0, low=0),
            valid_fraction=self.get(data, "valid_fraction", float, 0.1, low=0.0, high=0.5),
            test_fraction=self.get(data, "test_fraction", float, 0.1, low=0.0, high=0.5),
            generic_max_documents=self.get(data, "generic_max_documents", int, 0, low=0),
            domain_max_documents=self.get(data, "domain_max_documents", int, 0, low=0),
            tokenizer_inputs=(self.paths(data["tokenizer_inputs"], "data.tokenizer_inputs")
                              if "tokenizer_inputs" in data else ()),
            embedder=embedder, embedder_fingerprint=embedder_fingerprint,
        )
