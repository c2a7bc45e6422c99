"""The paper's protocol, resumable, from corpora to report, on the Python API (pnlm.experiment.run).

The order: tokenizer, generic store, clusters, domain stores and their sizes; every shared pretraining
once per budget; then one cell per method × budget × domain × size (select or instantiate, evaluate,
fine-tune with early stopping, evaluate). A finished step leaves a record (DIR/work/*.json,
DIR/cells/*.json: the step's result as JSON) written atomically; a rerun skips what has a record, resumes
a killed pretraining from its last checkpoint, and redoes a killed cell from its start: a crash costs at
most the cell in flight.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import platform
import shutil
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pnlm
from pnlm import __version__
from pnlm.api.data import ReadOptions
from pnlm.files.atomic import atomic_file
from pnlm.clustering.histogram import histogram_report
from pnlm.training.cost import train_flops_per_token
from pnlm.data.store import TokenStore
from pnlm.errors import PnlmError
from pnlm.experiment.plan import Plan, load_plan, same_work
from pnlm.experiment.results import (COST_COLUMNS, DOMAIN_COLUMNS, RESULT_COLUMNS, RUN_COLUMNS,
                                     write_csv)
from pnlm.methods import METHODS
from pnlm.files.outputs import EXPERIMENT, check_output
from pnlm.files.run_lock import lock_run, run_locks_released
from pnlm.training.runs import TrainingProgress

SHARED_PRETRAINING = {"slm": ("slm",), "llm": ("llm",), "distill": ("llm", "slm"), "pn": ("pn",), "mix": ("mix",),
                      "soup": ("soup",)}
EXPERTS = ("pn", "mix", "soup")  # one generic run, a model instantiated for each domain


def write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path) as f:
        f.write((json.dumps(data, indent=2) + "\n").encode())


class DataProgress:
    """How the data steps report as they go: each method is a context giving the callback the step takes
    (documents read; documents and tokens; windows embedded). This one says nothing; the CLI's draws bars."""

    @contextlib.contextmanager
    def documents(self) -> Iterator[Callable[[int], None]]:
        yield lambda documents: None

    @contextlib.contextmanager
    def tokens(self) -> Iterator[Callable[[int, int], None]]:
        yield lambda documents, tokens: None

    @contextlib.contextmanager
    def windows(self) -> Iterator[Callable[[str, int, int], None]]:
        yield lambda what, done, total: None


class Runner:
    def __init__(self, plan: Plan, out: Path, say: Callable[[str], None] = print,
                 progress: TrainingProgress | None = None, data_progress: DataProgress | None = None) -> None:
        self.plan, self.out, self.work = plan, out, out / "work"
        self.cells_dir = out / "cells"
        self.say, self.progress, self.data = say, progress, data_progress or DataProgress()
        # Distillation's teacher is the fine-tuned LLM: its cells come along with distill's.
        wanted = set(plan.methods) | ({"llm"} if "distill" in plan.methods else set())
        self.cell_methods = tuple(m for m in METHODS if m in wanted)

    # Helpers
    def step(self, record: Path, work: Callable[[], Any], what: str) -> dict[str, Any]:
        """A piece of work whose output is a folder written atomically: do it unless its record exists (work
        killed between the two writes is done again, over its output: the work folder is the runner's own)."""
        if record.is_file():
            return json.loads(record.read_text())
        self.say(what)
        result = work().to_json()
        write_json(record, result)
        return result

    def store(self, domain: str, tokens: int | None = None) -> Path:
        return self.work / "domains" / domain / (str(tokens) if tokens else "full")

    # 1. Data
    def prepare(self) -> None:
        plan, w, data = self.plan, self.work, self.data
        limit = ReadOptions(max_documents=plan.generic_max_documents)

        def tokenizer() -> Any:
            with data.documents() as on_document:
                return pnlm.train_tokenizer(plan.generic + plan.tokenizer_inputs, plan.vocab_size, w / "tokenizer",
                                            read=limit, overwrite=True, on_document=on_document)

        def store(files: list[Path], out: Path, **options: Any) -> Callable[[], Any]:
            def work() -> Any:
                with data.tokens() as on_progress:
                    return pnlm.prepare(files, w / "tokenizer", plan.context, out, overwrite=True,
                                        on_progress=on_progress, **options)
            return work

        def clusters() -> Any:
            with data.windows() as on_progress:
                return pnlm.cluster(w / "generic", plan.clusters, w / "clusters", embedder=plan.embedder, seed=plan.seed,
                                    overwrite=True, on_progress=on_progress)

        def labels(full: Path) -> Callable[[], Any]:
            def work() -> Any:
                with data.windows() as on_progress:
                    return pnlm.assign(full, w / "clusters", all_splits=True, split="train", on_progress=on_progress)
            return work

        self.step(w / "tokenizer.json", tokenizer, "training the tokenizer")
        self.step(w / "generic.json", store(plan.generic, w / "generic", read=limit), "preparing the generic store")
        self.step(w / "clusters.json", clusters, f"clustering the generic windows (k={plan.clusters})")
        for domain, files in plan.domains.items():
            full = self.store(domain)
            self.step(w / "domains" / f"{domain}.json",
                      store(files, full, valid_fraction=plan.valid_fraction, test_fraction=plan.test_fraction,
                            read=ReadOptions(max_documents=plan.domain_max_documents)),
                      f"preparing domain {domain}")
            for split in ("train", "valid", "test"):
                if not TokenStore(full).num_windows(split):
                    raise PnlmError(f"{plan.path}: domain {domain} has no {split} windows; give it more "
                                    f"documents or change valid_fraction/test_fraction")
            self.step(w / "domains" / f"{domain}.assign.json", labels(full),
                      f"labelling domain {domain} with the generic clusters")
            for tokens in plan.domain_tokens:
                self.step(w / "domains" / f"{domain}.{tokens}.json",
                          lambda: pnlm.subset(full, tokens, self.store(domain, tokens), overwrite=True),
                          f"domain {domain}: a train split of {tokens:,} tokens")

    def domain_rows(self) -> list[dict[str, Any]]:
        rows = []
        for domain in self.plan.domains:
            for tokens in self.plan.domain_tokens:
                store = TokenStore(self.store(domain, tokens))
                report = histogram_report(store.cluster_ids("train"), self.plan.clusters)
                rows.append({"domain": domain, "domain_tokens": tokens, "train_windows": store.num_windows("train"),
                             "top_cluster": report["top_cluster"], "top_share": report["top_share"],
                             "entropy": report["entropy"]})
        return rows

    # 2. Pretraining
    def spec_text(self, name: str) -> str:
        """work/specs/NAME.toml of the slm, llm or soup model, as this plan makes it."""
        spec = {"llm": self.plan.llm, "soup": self.plan.slm.with_soup(self.plan.soup)}.get(name, self.plan.slm)
        fields = spec.to_dict()
        lines = ["[model]"] + [f"{key} = {json.dumps(value)}" for key, value in fields.items()
                               if value is not None and not isinstance(value, dict)]
        for key, table in fields.items():
            if isinstance(table, dict):
                lines += [f"[model.{key}]"] + [f"{k} = {json.dumps(v)}" for k, v in table.items()]
        return "\n".join(lines) + "\n"

    def spec_file(self, name: str) -> Path:
        path = self.work / "specs" / f"{name}.toml"
        if not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_file(path) as f:
                f.write(self.spec_text(name).encode())
        return path

    def check_specs(self) -> None:
        """The models this experiment's runs were made with (work/specs/*.toml) are the plan's: a method dropped,
        then added back with other settings, would otherwise report its old runs under the new settings."""
        parts = {part for m in self.cell_methods for part in SHARED_PRETRAINING.get(m, ())}
        in_use = {"slm"} | (parts & {"llm", "soup"})  # the specs this plan's methods read
        for path in sorted((self.work / "specs").glob("*.toml")):
            if path.stem in in_use and path.read_text() != self.spec_text(path.stem):
                raise PnlmError(f"{path}: this experiment's {path.stem} runs were made with another model than the "
                                f"plan's; use another --out")

    def pretrain(self, method: str, budget: int, domain: str | None = None) -> dict[str, Any]:
        """One pretraining run (shared, or for `is` one domain's); resumed if a previous run was killed."""
        plan, name = self.plan, f"{method}-{budget}" + (f"-{domain}" if domain else "")
        run, record = self.work / "pretrain" / name, self.work / "pretrain" / f"{name}.json"
        if record.is_file():
            return json.loads(record.read_text())
        p = plan.pretrain
        options: dict[str, Any] = {}
        if method in ("pn", "mix", "is", "soup"):
            options["clusters"] = self.work / "clusters"
        if method == "pn":
            h, m = plan.projection
            options["projection"] = f"{h},{plan.clusters},{m}"
        if method == "is":
            options["domain"] = self.store(domain, min(plan.domain_tokens))
        resumable = (run / "latest").is_dir() or (method == "mix" and run.is_dir())
        self.say(f"pretraining {name}" + (" (resumed)" if resumable else ""))
        summary = pnlm.pretrain(self.work / "generic", run, self.spec_file(method if method in ("llm", "soup") else "slm"),
                                "slm" if method == "llm" else method, backend=plan.backend, steps=budget,
                                batch_size=p.batch_size, lr=p.lr, seed=plan.seed,
                                checkpoint_every=p.checkpoint_every or max(1, budget // 4),
                                resume=True,  # also starts a run killed before its first checkpoint
                                progress=self.progress, **options).to_json()
        if method == "mix":
            experts = summary["experts"].values()
            summary = {"out": str(run), "steps": budget, "experts": len(summary["experts"]),
                       **{key: sum(e[key] for e in experts) for key in ("tokens", "flops", "seconds", "device_hours")},
                       "device": next(iter(experts))["device"]}
        summary["checkpoint"] = str(run / "latest") if method != "mix" else str(run)
        write_json(record, summary)
        return summary

    def shared_pretraining(self) -> dict[tuple[str, int], dict[str, Any]]:
        needed = {part for m in self.cell_methods for part in SHARED_PRETRAINING.get(m, ())}
        if "nopt" in self.cell_methods:
            self.step(self.work / "init-slm.json", lambda: pnlm.init(
                self.spec_file("slm"), self.work / "tokenizer", self.work / "init-slm", seed=self.plan.seed,
                overwrite=True), "the SLM's random initialization")
        return {(m, b): self.pretrain(m, b) for b in self.plan.pretrain.budgets
                for m in ("slm", "llm", "pn", "mix", "soup") if m in needed}

    # 3. Cells
    def cells(self) -> list[tuple[str, int, str, int]]:
        plan = self.plan
        return [(m, 0 if m == "nopt" else b, d, t) for d in plan.domains for t in plan.domain_tokens
                for m in self.cell_methods for b in (plan.pretrain.budgets[:1] if m == "nopt" else plan.pretrain.budgets)]

    def cell(self, method: str, budget: int, domain: str, tokens: int,
             shared: dict[tuple[str, int], dict[str, Any]]) -> dict[str, Any]:
        cell_id = f"{method}-{budget}-{domain}-{tokens}"
        record = self.cells_dir / f"{cell_id}.json"
        if record.is_file():
            return json.loads(record.read_text())
        plan, ft = self.plan, self.plan.finetune
        folder = self.work / "cells" / cell_id
        shutil.rmtree(folder, ignore_errors=True)  # a killed cell starts again from its beginning
        folder.mkdir(parents=True)
        store = self.store(domain, tokens)
        self.say(f"cell {cell_id}")
        runs, expert, generic_parts, special_flops, special_hours = [], "", [], 0.0, 0.0
        if method in ("slm", "llm", "distill"):
            base = shared[("slm" if method == "distill" else method, budget)]["checkpoint"]
        elif method == "nopt":
            base = str(self.work / "init-slm")
        elif method in EXPERTS:  # soup: the model for the domain's histogram, no one expert
            chosen = pnlm.instantiate(shared[(method, budget)]["checkpoint"], folder / "base", domain=store,
                                      expert="auto", overwrite=True)
            base, expert = str(folder / "base"), chosen.report.get("expert", "histogram")
        else:  # is: an SLM pretrained for this domain, its cost paid per domain
            summary = self.pretrain("is", budget, domain)
            base = summary["checkpoint"]
            special_flops += summary["flops"]
            special_hours += summary["device_hours"]
        generic_parts = [shared[(part, budget)] for part in SHARED_PRETRAINING.get(method, ())]
        before = self.evaluate(base, store)
        settings = dict(backend=plan.finetune_backend, steps=ft.steps, batch_size=ft.batch_size, lr=ft.lr,
                        eval_every=ft.eval_every, patience=ft.patience, seed=plan.seed, progress=self.progress)
        if method == "distill":
            teacher = self.cell("llm", budget, domain, tokens, shared)
            summary = pnlm.distill(teacher["finetuned_checkpoint"], base, store, folder / "ft", alpha=plan.distill.alpha,
                                   temperature=plan.distill.temperature, **settings).to_json()
            special_flops += sum(r["flops"] for r in teacher["runs"] if r["kind"] == "finetune")
            special_hours += sum(r["device_hours"] for r in teacher["runs"] if r["kind"] == "finetune")
            special_flops += summary["tokens"] * train_flops_per_token(plan.llm, plan.context) / 3  # teacher forwards
        else:
            summary = pnlm.finetune(base, store, folder / "ft", from_scratch=method == "nopt", **settings).to_json()
        special_flops += summary["flops"]
        special_hours += summary["device_hours"]
        runs.append({"kind": "distill" if method == "distill" else "finetune", "method": method,
                     "budget_steps": budget, "domain": domain, "domain_tokens": tokens,
                     **{k: summary[k] for k in ("steps", "tokens", "flops", "seconds", "device_hours", "device")},
                     "backend": plan.finetune_backend})
        finetuned = folder / "ft" / ("best" if (folder / "ft" / "best").is_dir() else "latest")
        after = self.evaluate(str(finetuned), store)
        spec = plan.slm if method != "llm" else plan.llm
        params_pretrain = {"mix": plan.clusters * spec.params_inference(), "distill": plan.llm.params_inference()
                           + spec.params_inference(), "pn": self.pn_params(),
                           "soup": plan.slm.with_soup(plan.soup).params_pretrain()}.get(method, spec.params_inference())
        result = {
            "method": method, "budget_steps": budget, "domain": domain, "domain_tokens": tokens,
            "train_tokens": TokenStore(store).num_tokens("train"), "params_pretrain": params_pretrain,
            "params_inference": spec.params_inference(), "expert": expert, "pretrained_ppl": before,
            "finetuned_ppl": after, "finetune_steps": summary["steps"],
            "generic_flops": float(sum(p["flops"] for p in generic_parts)), "specialization_flops": special_flops,
        }
        costs = {"method": method, "budget_steps": budget, "domain": domain, "domain_tokens": tokens,
                 "generic_device_hours": sum(p["device_hours"] for p in generic_parts),
                 "specialization_device_hours": special_hours, "device": summary["device"]}
        cell = {"result": result, "costs": costs, "runs": runs, "finetuned_checkpoint": str(finetuned)}
        write_json(record, cell)
        return cell

    def pn_params(self) -> int:
        from pnlm.model.spec import Projection

        h, m = self.plan.projection
        return self.plan.slm.with_projection(Projection(h=h, k=self.plan.clusters, m=m)).params_pretrain()

    def evaluate(self, checkpoint: str, store: Path) -> float:
        return pnlm.evaluate(checkpoint, store, split="test", backend=self.plan.finetune_backend,
                             batch_size=self.plan.finetune.batch_size).macro_ppl

    # 4. Outputs
    def write_outputs(self, cells: list[dict[str, Any]], shared: dict[tuple[str, int], dict[str, Any]]) -> None:
        write_csv(self.out / "results.csv", RESULT_COLUMNS, [c["result"] for c in cells])
        write_csv(self.out / "costs.csv", COST_COLUMNS, [c["costs"] for c in cells])
        runs = [{"kind": "pretrain", "method": m, "budget_steps": b, "domain": "", "domain_tokens": 0,
                 **{k: s[k] for k in ("steps", "tokens", "flops", "seconds", "device_hours", "device")},
                 "backend": self.plan.backend} for (m, b), s in shared.items()]
        for record in sorted((self.work / "pretrain").glob("is-*.json")) if "is" in self.cell_methods else ():
            s = json.loads(record.read_text())
            _, budget, domain = record.stem.split("-", 2)
            runs.append({"kind": "pretrain", "method": "is", "budget_steps": int(budget), "domain": domain,
                         "domain_tokens": min(self.plan.domain_tokens), "backend": self.plan.backend,
                         **{k: s[k] for k in ("steps", "tokens", "flops", "seconds", "device_hours", "device")}})
        runs += [r for c in cells for r in c["runs"]]
        write_csv(self.out / "runs.csv", RUN_COLUMNS, runs)
        write_csv(self.out / "domains.csv", DOMAIN_COLUMNS, self.domain_rows())

    def run(self) -> dict[str, Any]:
        info_path = self.out / "run.json"
        info = json.loads(info_path.read_text()) if info_path.is_file() else {
            "plan": self.plan.name, "started": _now(), "commit": _commit(), "machine": _machine(), "pnlm": __version__}
        info["finished"] = None
        self.check_specs()
        write_json(self.out / "plan.json", self.plan.to_json())  # first: it marks DIR as an experiment's
        write_json(info_path, info)
        self.prepare()
        shared = self.shared_pretraining()
        cells = []
        for method, budget, domain, tokens in self.cells():
            cells.append(self.cell(method, budget, domain, tokens, shared))
            self.write_outputs(cells, shared)
        from pnlm.experiment.report import write_report

        info["finished"] = _now()
        write_json(info_path, info)
        report = write_report(self.out)
        return {"out": str(self.out), "cells": len(cells), "report": str(report),
                "results": str(self.out / "results.csv")}


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _commit() -> str | None:
    """The checkout's commit, with "+changes" when its tracked files differ from it."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).parent, timeout=10)
        changed = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                                 text=True, cwd=Path(__file__).parent, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    commit = head.stdout.strip()
    return (commit + ("+changes" if changed.stdout.strip() else "")) or None


def _machine() -> str:
    import os

    return f"{platform.machine()}, {os.cpu_count()} cores, {platform.system()} {platform.release()}"


@dataclass
class ExperimentSummary:
    out: Path
    cells: int
    report: Path
    results: Path

    def to_json(self) -> dict[str, Any]:
        return {"out": str(self.out), "cells": self.cells, "report": str(self.report), "results": str(self.results)}


@run_locks_released()
def run(plan: str | Path, out: str | Path, *, say: Callable[[str], None] = print,
        progress: TrainingProgress | None = None, data_progress: DataProgress | None = None) -> ExperimentSummary:
    """Run every cell of a plan (finished cells are skipped on a rerun of the same plan into the same
    folder), then write the report. say(text) tells which step starts; progress follows each training run."""
    out = Path(out)
    check_output(out, EXPERIMENT, True, [plan])
    loaded = load_plan(plan)
    previous = out / "plan.json"
    if previous.is_file():
        before, now = json.loads(previous.read_text()), json.loads(json.dumps(loaded.to_json()))
        if not same_work(before, now):
            raise PnlmError(f"{out}: holds the results of another plan (plan.json differs); use another --out")
        added, dropped = set(now["methods"]) - set(before["methods"]), set(before["methods"]) - set(now["methods"])
        if added or dropped:
            say(f"{out}: the plan " + " and ".join(f"{verb} {', '.join(sorted(names))}" for verb, names in
                                                  (("adds", added), ("drops", dropped)) if names)
                + "; the other methods' results are kept")
    lock_run(out)  # one runner per experiment folder: a second would replace the first's stores under it
    summary = Runner(loaded, out, say, progress, data_progress).run()
    return ExperimentSummary(out, summary["cells"], Path(summary["report"]), Path(summary["results"]))
