"""Config files of the commands that take one (``serve``, ``finetune``): TOML or YAML by
suffix, read whole, every problem one line naming the field by its path
(``deployments[0].config.plane: ...``) and exit code 2."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, NoReturn

from pydantic import ValidationError

from medgrit.cli.messages import fail, reason_of, shown

SUFFIXES = {".toml": "TOML", ".yaml": "YAML", ".yml": "YAML"}


def field_path(loc: tuple[Any, ...]) -> str:
    """A pydantic error location as a reader finds it in the file: ``deployments[0].config``."""
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def invalid_config(where: str, exc: ValidationError) -> NoReturn:
    err = exc.errors()[0]
    msg = err.get("msg", "invalid value").removeprefix("Value error, ")
    path = field_path(tuple(err.get("loc", ())))
    fail(f"{where}: {path}: {msg}" if path else f"{where}: {msg}")


def parse_config_file(path: Path, what: str) -> Any:
    """The data of a TOML or YAML config file (by suffix); an unreadable or malformed file is
    one line, naming it as ``what`` ("service config")."""
    kind = SUFFIXES.get(path.suffix.lower())
    if kind is None:
        fail(f"{shown(path)}: the {what} must be a .toml, .yaml or .yml file")
    if not path.exists():
        fail(f"{shown(path)}: no such file")
    if path.is_dir():
        fail(f"{shown(path)} is a folder; give the {what} file")
    try:
        data = path.read_bytes()
    except OSError as exc:
        fail(f"cannot read {shown(path)}: {reason_of(exc)}")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        fail(f"{shown(path)} is not UTF-8 text")
    if kind == "TOML":
        try:
            return tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            fail(f"{shown(path)} is not valid TOML: {exc}")
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        what = getattr(exc, "problem", None) or type(exc).__name__
        at = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        fail(f"{shown(path)} is not valid YAML: {what}{at}")
