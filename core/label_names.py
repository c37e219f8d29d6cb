"""Label ids and names as label files write them, held to one set of rules for every source.

Every source kind reads its label list (nnU-Net and Decathlon ``dataset.json``, an image folder's
``labels.json``, the ``labels.json`` next to DICOM mask PNGs, SA-Med2D-20M's class mapping)
through :func:`check_label_map`, so each refuses what nnU-Net refuses:

- Ids are whole numbers in 0..2**31-1 (the tables store them as int32) written one way only: a
  JSON integer (not ``true``, not ``1.0``) or, as a string key, plain decimal digits (``"1"``;
  never ``"01"``, ``"1_0"``, ``"+1"``, ``" 1"`` or ``"1.0"``, which Python's ``int`` would read
  as ids that collide with others). An id may be given once; 0 is the background and is never a
  label.
- Names are read in Unicode NFC with every run of whitespace made one space and the ends
  stripped. A name is refused when it is empty, longer than :data:`MAX_LABEL_NAME`, has no letter
  or digit (``"---"``, ``"+++"``), or holds a character that is invisible or could act as markup
  in the training text: control and format characters (a zero-width space, a bidi override),
  private-use and unpaired surrogate code points, characters that show nothing (a Hangul
  filler, a variation selector, the blank braille pattern), ``<`` and ``>`` (Qwen-VL's
  ``<ref>``/``<box>`` tags and chat-template special tokens such as ``<|im_start|>`` are made of
  them). Two labels whose names reach the text as the same words (``Kidney_L`` and
  ``left kidney``) are refused too: a question about one would be answered without the other.
- The same rules hold for the name of a dataset (:func:`dataset_name_problem`), minus the letter
  requirement, since folders are named freely.

Each refusal is one line that names the file and the entry; the caller raises it as a
:class:`~medgrit.core.cases.SourceError`.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import replace

from medgrit.core.cases import Case, Source, SourceError
from medgrit.core.fsnames import escape_name
from medgrit.core.text import laterality_of, readable_label_name

__all__ = [
    "MAX_LABEL_ID",
    "MAX_LABEL_NAME",
    "check_label_map",
    "checked_dataset_name",
    "checked_label_words",
    "dataset_name_problem",
    "label_id_of",
    "label_name_problem",
    "normalise_label_name",
    "renamed_sources",
]

# The tables store label ids as int32.
MAX_LABEL_ID = 2**31 - 1
MAX_LABEL_NAME = 200

_DIGITS = re.compile(r"0|[1-9][0-9]*")
# Unicode categories no label name may hold: control, format (zero-width, bidi), private use,
# unassigned, unpaired surrogates, and line and paragraph separators.
_HIDDEN_CATEGORIES = frozenset({"Cc", "Cf", "Co", "Cn", "Cs", "Zl", "Zp"})
# Characters of other categories that show nothing: Unicode's default-ignorable letters and
# marks (Hangul fillers, the combining grapheme joiner, Khmer invisible vowels, Mongolian and
# other variation selectors) and the blank braille pattern.
_INVISIBLE = re.compile(
    "[\u034f\u115f\u1160\u17b4\u17b5\u180b-\u180f\u2800\u3164\ufe00-\ufe0f\uffa0"
    "\U000e0100-\U000e01ef]"
)
_MARKUP = frozenset("<>")


def label_id_of(value: object) -> int | None:
    """The label id ``value`` writes, or None unless it is a canonical whole number in range.

    ``value`` is a JSON integer or a string key of plain decimal digits without leading zeros.
    """
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        number = value
    elif isinstance(value, str) and _DIGITS.fullmatch(value):
        number = int(value)
    else:
        return None
    return number if 0 <= number <= MAX_LABEL_ID else None


def normalise_label_name(raw: str) -> str:
    """``raw`` in NFC with whitespace runs made one space and the ends stripped."""
    return " ".join(unicodedata.normalize("NFC", raw).split())


def _character_problem(name: str) -> str | None:
    invisible = _INVISIBLE.search(name)
    if invisible:
        return f"holds the invisible character U+{ord(invisible.group()):04X}"
    for char in name:
        if char in _MARKUP:
            return f"holds {char!r}, which reads as markup in the training text"
        category = unicodedata.category(char)
        if category in _HIDDEN_CATEGORIES:
            return f"holds the invisible or control character U+{ord(char):04X}"
    return None


def label_name_problem(name: str) -> str | None:
    """Why a (normalised) label name cannot name a structure, or None when it can."""
    if not name:
        return "is empty"
    if len(name) > MAX_LABEL_NAME:
        return f"is longer than {MAX_LABEL_NAME} characters"
    problem = _character_problem(name)
    if problem:
        return problem
    if not any(unicodedata.category(c)[0] in "LN" for c in name):
        return "has no letter or digit"
    return None


def dataset_name_problem(name: str) -> str | None:
    """Why a dataset's name (from its metadata or folder) cannot be used, or None."""
    if not name.strip():
        return "is empty"
    return _character_problem(name)


def checked_dataset_name(name: str, where: str) -> str:
    """A dataset's name as tables show it (undecodable bytes escaped), once it is usable.

    Raises:
        SourceError: :func:`dataset_name_problem` refuses it; the message names ``where``.
    """
    shown = escape_name(name)
    problem = dataset_name_problem(shown)
    if problem:
        raise SourceError(f"the dataset name {shown!r} ({where}) {problem}; rename it")
    return shown


def check_label_map(entries: Iterable[tuple[object, object]], where: str) -> dict[int, str]:
    """Label id -> normalised name of a label list, the background (id 0) left out.

    Args:
        entries: (id as written, name as written) pairs, in file order.
        where: the file (and the key inside it) the list comes from, for messages.

    Raises:
        SourceError: one line naming ``where`` and the entry: an id that is not a canonical
            whole number in 0..2**31-1, an id given twice, a name that is not text or that
            :func:`label_name_problem` refuses, or no label besides the background.
    """
    names: dict[int, str] = {}
    read_as: dict[str, int] = {}  # the words each name reaches the text as
    background = False
    for raw_id, raw_name in entries:
        label_id = label_id_of(raw_id)
        if label_id is None:
            raise SourceError(
                f"{where}: label id {raw_id!r} is not a whole number 0..{MAX_LABEL_ID} written "
                'plainly (e.g. "3", not "03", "3.0" or "3_0")'
            )
        if not isinstance(raw_name, str):
            raise SourceError(f"{where}: label {raw_id!r} needs a name as text, not {raw_name!r}")
        if label_id == 0:
            if background:
                raise SourceError(f"{where}: the background (id 0) is given twice")
            background = True
            continue
        name = normalise_label_name(raw_name)
        problem = label_name_problem(name)
        if problem:
            raise SourceError(f"{where}: the name of label {raw_id!r} ({raw_name!r}) {problem}")
        if label_id in names:
            raise SourceError(
                f"{where}: label id {label_id} is given to both {names[label_id]!r} and {name!r}"
            )
        words = readable_label_name(name)
        if words in read_as:
            raise SourceError(
                f"{where}: labels {read_as[words]} and {label_id} both read as {words!r} in the "
                "text, so a question about one would be answered with the other's regions "
                "missing; merge them into one id or rename one"
            )
        names[label_id] = name
        read_as[words] = label_id
    if not names:
        raise SourceError(f"{where}: names no label besides the background (id 0)")
    return names


def checked_label_words(words: Mapping[str, str]) -> dict[str, str]:
    """A user's words for label names (name as a source writes it -> the words the text
    uses): the name normalised (:func:`normalise_label_name`), the words read as every label
    name is (``RIGHT_KIDNEY`` -> ``right kidney``: :func:`~medgrit.core.text.readable_label_name`),
    so that the side check and the test for labels that read alike see them as the text does.

    Raises:
        ValueError: a name or its words that :func:`label_name_problem` refuses, two names
            that normalise alike, or words that name the other side than the name does
            (``kidney_left`` as ``right kidney``).
    """
    out: dict[str, str] = {}
    for raw, raw_words in words.items():
        name, said = normalise_label_name(str(raw)), normalise_label_name(str(raw_words))
        problem = label_name_problem(name)
        if problem:
            raise ValueError(f"the label name {raw!r} {problem}")
        problem = label_name_problem(said)
        if problem:
            raise ValueError(f"the words for {raw!r} ({raw_words!r}) {problem}")
        if name in out:
            raise ValueError(f"the label name {name!r} is given twice")
        said = readable_label_name(said)
        sides = laterality_of(readable_label_name(name)), laterality_of(said)
        if None not in sides and sides[0] != sides[1]:
            raise ValueError(
                f"{raw!r} names the patient's {sides[0]} side, its words {raw_words!r} the "
                f"{sides[1]}"
            )
        out[name] = said
    return out


def renamed_sources(sources: list[Source], words: Mapping[str, str]) -> list[Source]:
    """The sources with each label whose written name ``words`` holds named by those words
    (in its cases' labels, their synonyms' targets and the source's label list).

    Raises:
        SourceError: a name in ``words`` that no label of the sources is written as, or two
            labels of one dataset that would read as the same words.
    """
    if not words:
        return sources
    used: set[str] = set()
    out = []
    for source in sources:
        cases = tuple(_renamed_case(case, words, used) for case in source.cases)
        labels = _renamed_labels(source.labels, _written_of(source.cases), words, set())
        out.append(replace(source, cases=cases, labels=labels))
    unused = sorted(set(words) - used)
    if unused:
        raise SourceError(
            f"label-names: {unused[0]!r} is the written name of no label of the sources; "
            "give names as the label files write them"
        )
    return out


def _written_of(cases: Iterable[Case]) -> dict[int, str]:
    written: dict[int, str] = {}
    for case in cases:
        if not case.labels_per_case:
            written.update(case.written_labels)
    return written


def _renamed_labels(
    labels: tuple[tuple[int, str], ...],
    written: Mapping[int, str],
    words: Mapping[str, str],
    used: set[str],
) -> tuple[tuple[int, str], ...]:
    out = []
    for label_id, name in labels:
        raw = written.get(label_id)
        if raw in words:
            used.add(raw)
            name = words[raw]
        out.append((label_id, name))
    return tuple(out)


def _renamed_case(case: Case, words: Mapping[str, str], used: set[str]) -> Case:
    written = dict(case.written_labels)
    if not any(name in words for name in written.values()):
        return case
    labels = _renamed_labels(case.labels, written, words, used)
    said = [name for _, name in labels]
    if len(set(said)) != len(said):
        twice = next(name for name in said if said.count(name) > 1)
        raise SourceError(
            f"label-names: two labels of dataset {case.dataset!r} would read as {twice!r}; "
            "give each label its own words"
        )
    before = dict(case.labels)
    new = dict(labels)
    renamed = {before[i]: new[i] for i in new if before[i] != new[i]}
    synonyms = tuple(sorted((w, renamed.get(label, label)) for w, label in case.synonyms))
    return replace(case, labels=labels, synonyms=synonyms)
