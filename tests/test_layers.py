"""The layers hold: the core imports no framework, backend or CLI (import-linter contracts, .importlinter),
the backends not each other, nothing imports in a circle; every CLI command is a call of the Python API;
no module grows past 400 lines."""

import ast
import inspect
import shutil
import subprocess
import sys
from configparser import ConfigParser
from pathlib import Path

import pytest
import typer

import pnlm
from pnlm.cli.app import app

ROOT = Path(__file__).resolve().parents[1]
LINT = Path(sys.executable).parent / "lint-imports"


def installed_layout(target: Path) -> Path:
    """The package as pip installs it (backends/ and cli/ inside pnlm/), which import-linter reads: the
    editable install maps them from elsewhere, where it would not look."""
    for source, dest in (("pnlm", "pnlm"), ("backends", "pnlm/backends"), ("cli", "pnlm/cli")):
        for file in (ROOT / source).rglob("*.py"):
            relative = file.relative_to(ROOT / source)
            if source == "pnlm" and relative.parts[0] in ("backends", "cli"):
                continue
            (target / dest / relative).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(file, target / dest / relative)
    return target


def lint(layout: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(LINT), str(ROOT / ".importlinter")], cwd=layout, capture_output=True, text=True,
                          env={"PYTHONPATH": str(layout), "PATH": "/usr/bin:/bin"}, timeout=300)


def test_the_import_contracts_hold(tmp_path):
    result = lint(installed_layout(tmp_path))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "0 broken" in result.stdout


def test_a_forbidden_import_breaks_them(tmp_path):
    layout = installed_layout(tmp_path)
    spec = layout / "pnlm" / "model" / "spec.py"
    spec.write_text(spec.read_text() + "\nimport torch  # a framework in the core\n")
    cli_in_backend = layout / "pnlm" / "backends" / "mlx" / "model.py"
    cli_in_backend.write_text(cli_in_backend.read_text() + "\nimport pnlm.backends.torch.model\n")
    result = lint(layout)
    assert result.returncode != 0
    assert "pnlm.model is not allowed to import torch" in result.stdout, result.stdout[-3000:]
    assert "pnlm.model.spec -> torch" in result.stdout
    assert "pnlm.backends.mlx is not allowed to import pnlm.backends.torch" in result.stdout


@pytest.mark.parametrize("planted, crossing", [
    # a file guard reaching up to training, the model maths reaching up to the checkpoints
    (("files", "atomic.py", "from pnlm.training.schedule import learning_rate"), "pnlm.files.atomic -> pnlm.training.schedule"),
    (("model", "lora.py", "from pnlm.checkpoints.weights import canonical_shapes"),
     "pnlm.model.lora -> pnlm.checkpoints.weights"),
    # a lower layer importing one above it, and two siblings of one layer importing each other
    (("data", "store.py", "import pnlm.methods.experts"), "pnlm.data.store -> pnlm.methods.experts"),
    (("clustering", "kmeans.py", "import pnlm.training.schedule"), "pnlm.clustering.kmeans -> pnlm.training.schedule"),
])
def test_an_import_across_a_layer_breaks_them(tmp_path, planted, crossing):
    layout = installed_layout(tmp_path)
    folder, name, line = planted
    module = layout / "pnlm" / folder / name
    module.write_text(module.read_text() + f"\n{line}  # planted: crosses a layer\n")
    result = lint(layout)
    assert result.returncode != 0
    assert crossing in result.stdout, result.stdout[-3000:]


def config_modules(section: str, key: str) -> set[str]:
    config = ConfigParser()
    config.read(ROOT / ".importlinter")
    return set(config[f"importlinter:contract:{section}"][key].replace("|", " ").split())


def core_units() -> set[str]:
    """The core's loose modules and subpackages, as the contracts name them."""
    present = {f"pnlm.{p.stem}" for p in (ROOT / "pnlm").glob("*.py") if p.stem != "__init__"}
    present |= {f"pnlm.{p.name}" for p in (ROOT / "pnlm").iterdir() if (p / "__init__.py").is_file()}
    return present - {"pnlm.sample_data"}


def test_every_core_module_is_under_the_contracts():
    assert core_units() == config_modules("core", "source_modules")
    assert core_units() == config_modules("layers", "layers")
    assert config_modules("foundations", "forbidden_modules") == core_units() - {
        "pnlm.files", "pnlm.model", "pnlm.errors", "pnlm.values"}


def test_the_core_has_few_loose_modules_and_every_subpackage_says_what_lives_there():
    loose = sorted(p.name for p in (ROOT / "pnlm").glob("*.py"))
    assert len(loose) <= 8, loose
    for init in (ROOT / "pnlm").glob("*/__init__.py"):
        if init.parent.name == "sample_data":
            continue
        docstring = ast.get_docstring(ast.parse(init.read_text()))
        assert docstring and len(docstring) > 40, f"{init.relative_to(ROOT)} says nothing of what lives there"


def commands(group: typer.Typer, prefix: str = "") -> dict[str, object]:
    found = {f"{prefix}{c.name or c.callback.__name__}": c.callback for c in group.registered_commands}
    for sub in group.registered_groups:
        found.update(commands(sub.typer_instance, f"{prefix}{sub.name} "))
    return found


def api_calls(function) -> set[str]:
    """The pnlm.NAME(...) and pnlm.experiment.NAME(...) calls in a function's body."""
    calls = set()
    for node in ast.walk(ast.parse(inspect.getsource(function))):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            owner = ast.unparse(node.func.value)
            if owner in ("pnlm", "pnlm.experiment"):
                calls.add(f"{owner}.{node.func.attr}")
    return calls


@pytest.mark.parametrize("name, callback", sorted(commands(app).items()))
def test_every_command_calls_the_python_api(name, callback):
    calls = api_calls(callback)
    assert calls, f"`pnlm {name}` calls no function of the Python API"
    for call in calls:
        owner, _, attr = call.rpartition(".")
        assert callable(getattr(pnlm if owner == "pnlm" else pnlm.experiment, attr)), call


def test_no_module_is_over_400_lines():
    long = {str(p.relative_to(ROOT)): n for folder in ("pnlm", "backends", "cli") for p in (ROOT / folder).rglob("*.py")
            if (n := len(p.read_text().splitlines())) > 400}
    assert not long, long


def test_every_package_is_in_the_wheel():
    """pyproject lists packages one by one: a new folder left out of it would be missing from every
    non-editable install (the suite's editable one would not notice)."""
    import tomllib

    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    present = set()
    for source, name in (("pnlm", "pnlm"), ("backends", "pnlm.backends"), ("cli", "pnlm.cli")):
        for init in (ROOT / source).rglob("__init__.py"):
            parts = init.parent.relative_to(ROOT / source).parts
            if source == "pnlm" and parts and parts[0] in ("backends", "cli"):
                continue
            present.add(".".join((name, *parts)))
    present.add("pnlm.sample_data")  # data only: a namespace of the sample books
    assert present == listed, (present - listed, listed - present)
