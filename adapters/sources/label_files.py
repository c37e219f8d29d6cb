"""Reading the JSON files that name a source's labels, for every source kind alike.

nnU-Net and Decathlon ``dataset.json``, an image folder's ``labels.json``, the ``labels.json``
next to DICOM mask PNGs and SA-Med2D-20M's class mapping are read by :func:`read_label_file`:
strict JSON (no ``NaN``), UTF-8, and no object that gives a key twice (Python's ``json`` would
keep the last silently, so ``{"1": "polyp", "1": "tumour"}`` would name every polyp a tumour).
Their label lists then go through :func:`medgrit.core.label_names.check_label_map`. Every
problem is a :class:`SourceError` of one line that names the file.
"""

from __future__ import annotations

import json
from pathlib import Path

from medgrit.core.cases import SourceError
from medgrit.core.fsnames import escape_name

__all__ = ["read_label_file"]


class _DuplicateKey(ValueError):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _unique_keys(pairs: list[tuple[str, object]]) -> dict[str, object]:
    out: dict[str, object] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(key)
        out[key] = value
    return out


def _no_constant(name: str) -> object:
    raise ValueError(f"{name} is not JSON")


def read_label_file(path: Path, example: str = "") -> object:
    """The JSON value of a label file.

    Args:
        path: the file.
        example: what the file should look like, for the message about malformed JSON.

    Raises:
        SourceError: the file is missing or unreadable, not UTF-8, not strict JSON, or an
            object in it gives one key twice.
    """
    where = escape_name(str(path))
    malformed = f"malformed {escape_name(path.name)} at {where}"
    hint = f"; expected JSON like {example}" if example else ""
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise SourceError(f"no such file: {where}") from None
    except OSError as exc:
        raise SourceError(f"cannot read {where}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise SourceError(f"{malformed}: not UTF-8 text ({exc.reason})") from None
    try:
        return json.loads(text, object_pairs_hook=_unique_keys, parse_constant=_no_constant)
    except _DuplicateKey as exc:
        raise SourceError(
            f"{malformed}: the key {escape_name(exc.key)!r} is given twice in one object; keep one"
        ) from None
    except json.JSONDecodeError as exc:
        raise SourceError(
            f"{malformed}: {exc.msg} (line {exc.lineno}, column {exc.colno}){hint}"
        ) from None
    except (RecursionError, ValueError) as exc:  # nested too deep, NaN, integers too long
        raise SourceError(f"{malformed}: {type(exc).__name__}: {str(exc)[:100]}{hint}") from None
