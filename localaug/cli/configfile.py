"""Where a command's settings come from, besides its flags: a ``--config`` TOML file, the settings a
finished run recorded (``--replay``), and ``LOCALAUG_*`` environment defaults.

Precedence, highest first: a flag given on the command line, the config file, the replayed run's
settings, the environment (Typer's ``envvar=``, shown in --help), the default. Click reads flags and
environment variables itself; this module lays the files over what it did not get from the
command line (``ParameterSource``).

A file's keys are the options' names as on the command line without dashes (``max_tokens = 256``,
``format = "alpaca"``, ``ctx`` or ``n_ctx``); tables (``[sampling]``) only group them. Values are
checked against the option's type before anything runs: an unknown key or a value of the wrong
type is one line naming it, exit 2 (docs/configuration.md).
"""

from __future__ import annotations

import enum
import os
import tomllib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

try:  # Typer carries its own copy of Click in recent releases
    from typer import _click as click
except ImportError:  # pragma: no cover - older Typer on Click
    import click  # type: ignore[no-redef]

from localaug.core.errors import UsageError
from localaug.core.files import read_bounded, read_json

MAX_CONFIG_BYTES = 1 << 20  # a settings file larger than this is not one
NOT_FROM_FILES = ("config", "replay", "as_json")  # what a file never sets (itself, and how this run prints)

ParameterSource = click.core.ParameterSource


def key_of(name: str) -> str:
    """A file key from a flag: ``--max-tokens`` -> ``max_tokens``, ``-n`` -> ``n``."""
    return name.lstrip("-").replace("-", "_")


def file_keys(command: click.Command) -> dict[str, click.Parameter]:
    """Every key a file may hold for ``command``: each long flag (and a one-letter one with no long
    form, ``-n``) without dashes, and the arguments by name; their parameter."""
    keys: dict[str, click.Parameter] = {}
    for param in command.params:
        if param.name in NOT_FROM_FILES or param.name is None:
            continue
        if param.param_type_name == "argument":
            keys[param.name] = param
            continue
        names = [o for o in param.opts if o.startswith("--")] or list(param.opts)
        for name in names:
            keys[key_of(name)] = param
    return keys


def read_config(path: Path) -> dict[str, Any]:
    """The settings in a TOML file, flat: top-level keys, and the keys of its tables one level down."""
    try:
        text = read_bounded(path, MAX_CONFIG_BYTES)
    except FileNotFoundError:
        raise UsageError(f"config file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"config file {path} cannot be read ({getattr(e, 'strerror', None) or e})") from None
    except ValueError:
        raise UsageError(f"config file {path} is over {MAX_CONFIG_BYTES} bytes: a settings file is a few lines") from None
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise UsageError(f"config file {path} is not valid TOML ({e})") from None
    flat: dict[str, Any] = {}
    for key, value in doc.items():
        items = value.items() if isinstance(value, dict) else [(key, value)]
        for k, v in items:
            if isinstance(v, dict):
                raise UsageError(f"config file {path}: [{key}.{k}] is nested too deep: sections hold settings only")
            if k in flat:
                raise UsageError(f"config file {path}: {k} is set twice")
            flat[k] = v
    return flat


def check_keys(settings: Mapping[str, Any], keys: Mapping[str, click.Parameter], where: str) -> None:
    unknown = [k for k in settings if k not in keys]
    if unknown:
        raise UsageError(f"{where}: unknown setting {unknown[0]!r}; known: {', '.join(sorted(keys))}")


def convert(param: click.Parameter, key: str, value: Any, where: str) -> Any:
    """A file's value for ``param`` as the command line would give it, or a one-line error."""
    descriptor = getattr(param, "type_descriptor", None)  # Typer's: the option's Python type
    kind = getattr(descriptor, "annotation", str)
    if isinstance(kind, type) and issubclass(kind, enum.Enum):
        names = [str(c.value) for c in kind]
        ok, what = isinstance(value, str) and value in names, f"one of {', '.join(names)}"
        value = kind(value) if ok else value
    elif kind is bool or getattr(param, "is_flag", False):
        ok, what = isinstance(value, bool), "true or false"
    elif kind is int:
        ok, what = isinstance(value, int) and not isinstance(value, bool), "a whole number"
    elif kind is float:
        ok, what = isinstance(value, (int, float)) and not isinstance(value, bool), "a number"
        value = float(value) if ok else value
    elif key == "gpu_layers":  # a number or "all", kept as the flag's text
        ok = (isinstance(value, int) and not isinstance(value, bool) and value >= 0) or value == "all"
        what, value = 'a whole number or "all"', str(value) if ok else value
    else:
        ok, what = isinstance(value, str), "a string"
        value = Path(value) if ok and kind is Path else value
    if not ok:
        raise UsageError(f"{where}: {key} must be {what}, not {value!r}")
    return value


def layered(ctx: click.Context, files: Iterable[tuple[Mapping[str, Any], str]]) -> dict[str, Any]:
    """The command's parameters with the files laid over whatever the command line did not give
    (``files``: lowest first, each with how to name it in an error)."""
    keys = file_keys(ctx.command)
    params = {name: plain(v) for name, v in ctx.params.items()}
    for settings, where in files:
        check_keys(settings, keys, where)
        for key, value in settings.items():
            param = keys[key]
            if ctx.get_parameter_source(param.name) == ParameterSource.COMMANDLINE:  # type: ignore[arg-type]
                continue
            params[param.name] = plain(convert(param, key, value, where))  # type: ignore[index]
    return params


def plain(value: Any) -> Any:
    """An option's value without Typer's wrappers: an enum's string, a path's text kept a Path."""
    return value.value if isinstance(value, enum.Enum) else value


def recordable(params: Mapping[str, Any], command: click.Command) -> dict[str, Any]:
    """The settings a run records for ``--replay``, as file keys (the longest flag of each option):
    paths made absolute, so the run replays from any folder; unset ones left out."""
    out: dict[str, Any] = {}
    for param in command.params:
        if param.name in NOT_FROM_FILES or param.name is None:
            continue
        value = plain(params.get(param.name))
        if value is None:
            continue
        if isinstance(value, Path) or (param.name in ("input", "model", "examples", "respond_with", "judge")
                                       and isinstance(value, str) and os.path.exists(value)):
            value = str(Path(value).resolve())
        key = param.name if param.param_type_name == "argument" else key_of(max(param.opts, key=len))
        out[key] = value
    return out


def replayed(path: Path, candidates: list[Path]) -> tuple[dict[str, Any], Path]:
    """The settings a run recorded in its manifest (the first of ``candidates`` that exists), and
    that manifest's path."""
    for manifest_path in candidates:
        if not manifest_path.is_file():
            continue
        manifest = read_json(manifest_path)
        if manifest is None:
            raise UsageError(f"{manifest_path} is not a readable run manifest")
        settings = manifest.get("settings")
        if not isinstance(settings, dict):
            raise UsageError(f"{manifest_path} records no settings (written by an older localaug, the API or Ray's "
                             "augment): run the same command again with its flags")
        return settings, manifest_path
    raise UsageError(f"no run manifest for {path}: give a localaug run output (or its .manifest.json)")
