"""`--config FILE.toml` for the training commands: every flag as a key (`batch-size = 8` or `batch_size = 8`,
`compile = false`), the command line overriding the file.

The file is read by an eager option's callback, before the other options: its values become the
command's defaults (click's default_map), so a flag given on the command line wins and a required
option the file gives is no longer missing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from pnlm.errors import InputError
from pnlm.files.toml_file import read_toml

MAX_CONFIG_BYTES = 1 << 20


def _keys(command: Any) -> dict[str, str]:
    """Each key a file may use (a flag without its dashes, with - or _, or an argument's name) -> the parameter."""
    keys: dict[str, str] = {}
    for param in command.params:
        if param.name in ("config", "json_out"):
            continue
        names = [opt.lstrip("-") for opt in param.opts if opt.startswith("--")] \
            if param.param_type_name == "option" else [param.name]
        for name in names:
            keys[name] = keys[name.replace("-", "_")] = param.name
    return keys


def read_config(path: Path, command: Any) -> dict[str, Any]:
    """A TOML file's settings as the command's parameter defaults, or one InputError naming the file and the key."""
    data = read_toml(path, MAX_CONFIG_BYTES, InputError, "config file")
    keys = _keys(command)
    defaults: dict[str, Any] = {}
    for key, value in data.items():
        if key not in keys:
            flags = ", ".join(sorted(k for k in keys if "_" not in k))
            raise InputError(f"{path}: unknown key {key!r} for `pnlm {command.name}`; the keys are its flags: {flags}")
        if isinstance(value, dict):
            raise InputError(f"{path}: {key} must be a value (a number, a string, true or false, a list), not a table")
        defaults[keys[key]] = value
    return defaults


def _apply(ctx: typer.Context, param: typer.CallbackParam, value: Path | None) -> Path | None:
    if value is not None:
        ctx.default_map = {**(ctx.default_map or {}), **read_config(Path(value), ctx.command)}
    return value


CONFIG = typer.Option(None, "--config", callback=_apply, is_eager=True, show_default=False,
                      help="A TOML file of this command's flags (batch-size = 16, ...); flags given here override it.")
