"""Reading the JSON files that name a source's labels, for every source kind alike.

nnU-Net and Decathlon ``dataset.json``, an image folder's ``labels.json``, the ``labels.json``
next to DICOM mask PNGs and SA-Med2D-20M's class mapping are read by :func:`read_label_file`:
strict JSON (no ``NaN``), UTF-8, and no object that gives a key twice (Python's ``json`` would
keep the last silently, so ``{"1": "polyp", "1": "tumour"}`` would name every polyp a tumour).
Their label lists then go through :func:`medgrit.core.label_names.check_label_map`. Every
problem is a :class:`SourceError` of one line that names the file.

A label file other than SA-Med2D-20M's (a release file, whose keys are dataset names) may give
synonyms: ``"synonyms": {"polyp": ["polypoid lesion", "adenoma"]}``, keyed by a label's name as
the file writes it or as the text words it (:func:`read_synonyms`). A synonym is read by the
rules of a label name and may name one label of its file only.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from medgrit.core.cases import SourceError
from medgrit.core.fsnames import escape_name
from medgrit.core.label_names import label_name_problem, normalise_label_name
from medgrit.core.text import readable_label_name

__all__ = ["SYNONYMS", "SYNONYMS_EXAMPLE", "read_label_file", "read_synonyms"]

SYNONYMS = "synonyms"
SYNONYMS_EXAMPLE = '{"polyp": ["polypoid lesion", "adenoma"]}'


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


def read_synonyms(
    raw: object, written: Iterable[tuple[int, str]], where: str
) -> tuple[tuple[str, str], ...]:
    """The ``"synonyms"`` entry of a label file as (synonym, readable label name) pairs, sorted.

    Args:
        raw: the entry (None: the file gives none): an object of label name -> list of
            synonyms, each key a label of the file as written (``kidney_left``) or as the text
            words it (``left kidney``), in any case.
        written: the file's labels, (id, name as written and normalised).
        where: the file, for messages.

    Raises:
        SourceError: one line naming ``where`` and the key: the entry is not an object of lists
            of text, a key is no label of the file, a synonym is refused by the rules of a label
            name, or a synonym is another label's name or a synonym of two labels.
    """
    if raw is None:
        return ()
    if not isinstance(raw, dict):
        raise SourceError(
            f'{where}: "{SYNONYMS}" must map a label name to a list of synonyms, '
            f"e.g. {SYNONYMS_EXAMPLE}"
        )
    readable = {name: readable_label_name(name) for _, name in written}
    label_of = {key.casefold(): words for name, words in readable.items() for key in (name, words)}
    found: dict[str, tuple[str, str]] = {}  # case-folded synonym -> (synonym, its label)
    for key, words in raw.items():
        label = label_of.get(normalise_label_name(key).casefold())
        if label is None:
            known = ", ".join(repr(name) for name in list(readable)[:5])
            known += ", ..." if len(readable) > 5 else ""
            raise SourceError(
                f'{where}: "{SYNONYMS}" names {escape_name(key)!r}, which is no label of the '
                f"file; key it by one of {known}"
            )
        if not isinstance(words, list) or not all(isinstance(w, str) for w in words):
            raise SourceError(
                f'{where}: "{SYNONYMS}" of {escape_name(key)!r} must be a list of text, '
                'e.g. ["polypoid lesion"]'
            )
        for word in words:
            synonym = _checked_synonym(word, key, where)
            folded = synonym.casefold()
            other = found.get(folded, ("", label_of.get(folded)))[1]
            if other not in (None, label):
                raise SourceError(
                    f'{where}: "{SYNONYMS}" of {escape_name(key)!r}: {synonym!r} names the '
                    f"label {other!r} too; a synonym may name one label only"
                )
            if folded not in label_of:  # a label's own name is no synonym
                found[folded] = (synonym, label)
    return tuple(sorted(found.values()))


def _checked_synonym(word: str, key: str, where: str) -> str:
    """A synonym normalised like a label name, in lower case as the text words labels.

    Raises:
        SourceError: :func:`medgrit.core.label_names.label_name_problem` refuses it.
    """
    synonym = normalise_label_name(word)
    problem = label_name_problem(synonym)
    if problem:
        raise SourceError(
            f'{where}: "{SYNONYMS}" of {escape_name(key)!r}: the synonym {escape_name(word)!r} '
            f"{problem}"
        )
    return synonym.lower()
