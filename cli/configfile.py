"""Config files of the commands that take one (``serve``, ``finetune``, ``build
--label-names``): TOML, YAML or JSON by suffix, read whole, every problem one line naming the
field by its path (``deployments[0].config.plane: ...``) and exit code 2."""

from __future__ import annotations

import json
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


def parse_config_file(path: Path, what: str, suffixes: dict[str, str] = SUFFIXES) -> Any:
    """The data of a TOML, YAML (or, where ``suffixes`` names it, JSON) config file, by
    suffix; an unreadable or malformed file is one line, naming it as ``what`` ("service
    config")."""
    kind = suffixes.get(path.suffix.lower())
    if kind is None:
        fail(f"{shown(path)}: the {what} must be a {_listed(suffixes)} file")
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
    if kind == "JSON":
        try:
            return json.loads(text, object_pairs_hook=lambda pairs: _once(pairs, path))
        except json.JSONDecodeError as exc:
            fail(f"{shown(path)} is not valid JSON: {exc}")
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


def read_label_words(path: Path) -> dict[str, str]:
    """The words for labels in a ``--label-names`` file: a mapping of the name a source writes
    to the words the text uses (checked further by the build's config)."""
    data = parse_config_file(path, "label names", {**SUFFIXES, ".json": "JSON"})
    if not isinstance(data, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in data.items()
    ):
        fail(
            f"{shown(path)}: the label names file maps each name, as its source writes it, to "
            'its words: {"kidney_left": "left kidney"}'
        )
    return data


def _listed(suffixes: dict[str, str]) -> str:
    names = list(suffixes)
    return f"{', '.join(names[:-1])} or {names[-1]}"


def _once(pairs: list[tuple[str, Any]], path: Path) -> dict[str, Any]:
    """A JSON object whose every key is given once (JSON itself keeps the last silently)."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            fail(f"{shown(path)} gives {key!r} twice; give each key once")
        out[key] = value
    return out
