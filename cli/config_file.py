"""`--config FILE.toml` for the training commands: every flag as a key (`batch-size = 8` or `batch_size = 8`,
`compile = false`), the command line overriding the file.

The file is read by an eager option's callback, before the other options: its values become the
command's defaults (click's default_map), so a flag given on the command line wins and a required
option the file gives is no longer missing.
"""

from __future__ import annotations

import types
import typing
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
    hints = typing.get_type_hints(command.callback)
    defaults: dict[str, Any] = {}
    given: dict[str, str] = {}
    for key, value in data.items():
        if key not in keys:
            flags = ", ".join(sorted(k for k in keys if "_" not in k))
            raise InputError(f"{path}: unknown key {key!r} for `pnlm {command.name}`; the keys are its flags: {flags}")
        if keys[key] in given:
            raise InputError(f"{path}: {given[keys[key]]!r} and {key!r} are the same setting; give it once")
        given[keys[key]] = key
        _check_type(path, key, value, hints.get(keys[key], str))
        defaults[keys[key]] = value
    return defaults


def _check_type(path: Path, key: str, value: Any, kind: Any) -> None:
    """A value of the flag's type (the command's annotation): `steps = true` is not 1 step, `lr = "fast"` not a
    rate; a list only where the flag is given several times."""
    if isinstance(value, dict):
        raise InputError(f"{path}: {key} must be a value (a number, a string, true or false, a list), not a table")
    kind = _unwrap(kind)
    if typing.get_origin(kind) is list:
        if not isinstance(value, list):
            value = [value]
        kind, values = _unwrap(typing.get_args(kind)[0]) if typing.get_args(kind) else str, value
    elif isinstance(value, list):
        raise InputError(f"{path}: {key} takes one value, got a list")
    else:
        values = [value]
    for one in values:
        if kind is bool:
            ok, expected = isinstance(one, bool), "true or false"
        elif kind is int:
            ok, expected = isinstance(one, int) and not isinstance(one, bool), "an integer"
        elif kind is float:
            ok, expected = isinstance(one, (int, float)) and not isinstance(one, bool), "a number"
        else:
            ok, expected = isinstance(one, str), "a string"
        if not ok:
            raise InputError(f"{path}: {key} must be {expected}, got {one!r}")


def _unwrap(kind: Any) -> Any:
    """X for X | None (and Optional[X])."""
    args = [a for a in typing.get_args(kind) if a is not type(None)]
    if typing.get_origin(kind) in (typing.Union, types.UnionType) and len(args) == 1:
        return args[0]
    return kind


def _apply(ctx: typer.Context, param: typer.CallbackParam, value: Path | None) -> Path | None:
    if value is not None:
        ctx.default_map = {**(ctx.default_map or {}), **read_config(Path(value), ctx.command)}
    return value


CONFIG = typer.Option(None, "--config", callback=_apply, is_eager=True, show_default=False,
                      help="A TOML file of this command's flags (batch-size = 16, ...); flags given here override it.")
