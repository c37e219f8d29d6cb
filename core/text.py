"""Words used in the text: readable label names, laterality, position and size, Qwen-VL boxes.

Position words describe the image (a 3x3 grid over the box centre: rows upper / middle / lower,
columns left / center / right of the *image*). Laterality words name the *patient's* side and come
only from the label. Images follow the radiological convention, so a structure of the patient's
left lies on the image's right in axial and coronal slices: the two vocabularies never mix.
"""

from __future__ import annotations

import re

from medgrit.core.fsnames import escape_name
from medgrit.core.vocab import Modality

# How the text names each modality.
MODALITY_NAMES: dict[Modality, str] = {
    "ct": "CT",
    "mr": "MRI",
    "xray": "X-ray",
    "pet": "PET",
    "endoscopy": "endoscopy",
    "dermoscopy": "dermoscopy",
    "fundus": "fundus",
    "ultrasound": "ultrasound",
}

_SIDE_TOKENS = {
    "l": "left",
    "left": "left",
    "lt": "left",
    "r": "right",
    "right": "right",
    "rt": "right",
}
# Atlas abbreviations of a position or part (AAL's ``Frontal_Sup_Orb_L``): they qualify the word
# before them, so a name's first word is never one of them (``post-op``, ``Mid-brain``).
_QUALIFIERS = {
    "sup": "superior",
    "inf": "inferior",
    "mid": "middle",
    "ant": "anterior",
    "post": "posterior",
    "med": "medial",
    "lat": "lateral",
    "orb": "orbital",
    "oper": "opercular",
    "tri": "triangular",
}
# Abbreviations of a whole tissue, wherever they stand.
_TISSUES = {
    "gm": "grey matter",
    "wm": "white matter",
    "csf": "cerebrospinal fluid",
}
_CAMEL = re.compile(r"(?<=[a-z])(?=[A-Z])")
# A spinal level: cervical, thoracic, lumbar or sacral vertebra and its number (``L1``, ``T12``).
_LEVEL = re.compile(r"[ctls][0-9]{1,2}", re.IGNORECASE)
_VERTEBRA = frozenset({"vertebra", "vertebrae", "vertebral"})
# Short words a name written in capitals may hold that are words, not abbreviations.
_SHORT_WORDS = frozenset(
    {"arm", "ear", "eye", "fat", "gum", "gut", "hip", "jaw", "leg", "lip", "rib", "sac", "toe",
     "all", "and", "of", "the", "to", "in", "on", "bed", "cap", "air", "low", "top", "end"}
)  # fmt: skip
_VOWELS = frozenset("aeiou")


def _ordinal(number: int) -> str:
    """``1`` -> ``1st``, ``2`` -> ``2nd``, ``11`` -> ``11th``."""
    if 10 <= number % 100 <= 20:
        return f"{number}th"
    return f"{number}{ {1: 'st', 2: 'nd', 3: 'rd'}.get(number % 10, 'th') }"


def _is_abbreviation(token: str, all_capitals: bool) -> bool:
    """Whether a token as written is an abbreviation whose capitals a person keeps (``GTV``,
    ``GTVp``, ``IVC``, a spinal level ``L1``); ``all_capitals``: the whole name is written in
    capitals, where only short or vowel-less words read as abbreviations."""
    if _LEVEL.fullmatch(token):
        return True
    capitals = sum(c.isupper() for c in token)
    if capitals < 2 or capitals <= sum(c.islower() for c in token):  # not ``Right-Left``
        return False
    if not all_capitals:
        return True
    lower = token.lower()
    if not lower.isalpha() or lower in _SHORT_WORDS:
        return False
    return len(lower) <= 3 or not (_VOWELS & set(lower))


def _numbered(tokens: list[str], side: str | None) -> tuple[list[str], str | None] | None:
    """Words of a numbered bone, or None: ``vertebrae L1`` -> ``L1 vertebra``, ``rib left 3``
    -> ``left 3rd rib`` (with its side)."""
    lowered = [t.lower() for t in tokens]
    if len(tokens) == 2 and _VERTEBRA & set(lowered):
        level = tokens[1] if lowered[0] in _VERTEBRA else tokens[0]
        if _LEVEL.fullmatch(level):
            return [level.upper(), "vertebra"], side
    if lowered[:1] == ["rib"] and len(tokens) in (2, 3) and tokens[-1].isdigit():
        middle = lowered[1:-1]
        if middle and middle[0] not in _SIDE_TOKENS:
            return None
        side = _SIDE_TOKENS[middle[0]] if middle else side
        return [_ordinal(int(tokens[-1])), "rib"], side
    return None


def readable_label_name(raw: str) -> str:
    """Turn a dataset label key into words: ``kidney_left`` -> ``left kidney``.

    This is the one normaliser of label names every source uses (``readable_labels``); the name
    as written stays in the regions table (``source_label``) and the dataset's ``label_maps``.
    Laterality tokens (``left``, ``right``, ``l``, ``r``, ``lt``, ``rt``, any case) at either end
    move to the front; numbered bones read as a person writes them (``vertebrae_L1`` -> ``L1
    vertebra``, ``rib_left_3`` -> ``left 3rd rib``); words are lower case except abbreviations
    written in capitals (``GTVp``, ``IVC``, a spinal level ``T12``; in a name written all in
    capitals, ``LIVER``, only short or vowel-less words count as such);
    separators become spaces; common anatomical abbreviations are expanded: tissues anywhere
    (``GM_left``), positions after the first word (``Frontal_Sup_L``; a name's first word is its
    own: ``post-op cavity``, ``Mid-brain``).
    Hyphens separate words only in names written without spaces (``Left-Cerebral-White-Matter``);
    in a name of words they belong to the word (``Right-Left shunt`` names no side). Characters
    that are not UTF-8 (lone surrogates from file names or JSON) come out as ``\\xNN`` escapes.
    """
    raw = escape_name(raw).strip()
    separators = r"[\s_./]+" if re.search(r"\s", raw) else r"[\s_\-./]+"
    tokens = [t for t in re.split(separators, _CAMEL.sub(" ", raw)) if t]
    side = None
    if len(tokens) > 1 and tokens[-1].lower() in _SIDE_TOKENS:
        side = _SIDE_TOKENS[tokens.pop().lower()]
    elif len(tokens) > 1 and tokens[0].lower() in _SIDE_TOKENS:
        side = _SIDE_TOKENS[tokens.pop(0).lower()]
    numbered = _numbered(tokens, side)
    if numbered is not None:
        words, side = numbered
    else:
        capitals = not any(c.islower() for c in raw)
        words = [_word(t, i, capitals) for i, t in enumerate(tokens)]
    name = " ".join(words)
    return f"{side} {name}" if side else name


def _word(token: str, position: int, all_capitals: bool) -> str:
    """One token of a label name as a word: an abbreviation of a tissue, or (past the first
    word) of a position, spelt out; another abbreviation kept as written; else lower case."""
    lower = token.lower()
    if lower in _TISSUES:
        return _TISSUES[lower]
    if position and lower in _QUALIFIERS:
        return _QUALIFIERS[lower]
    return token if _is_abbreviation(token, all_capitals) else lower


def readable_labels(written: tuple[tuple[int, str], ...]) -> tuple[tuple[int, str], ...]:
    """(id, readable name) of each (id, name as written) pair, in the same order."""
    return tuple((label_id, readable_label_name(name)) for label_id, name in written)


def laterality_of(name: str) -> str | None:
    """Patient side named by a readable label name: ``left``, ``right`` or None."""
    first = name.split(" ", 1)[0]
    return first if first in ("left", "right") and " " in name else None


def strip_laterality(name: str) -> str:
    """The label name without its leading side word (``left kidney`` -> ``kidney``)."""
    return name.split(" ", 1)[1] if laterality_of(name) else name


_ROWS = ("upper", "middle", "lower")
_COLS = ("left", "center", "right")


def position_word(bbox: tuple[int, int, int, int], width: int, height: int) -> str:
    """Where the box centre falls on a 3x3 grid of the image (``upper left`` ... ``center``)."""
    x0, y0, x1, y1 = bbox
    col = min(int(3 * (x0 + x1) / (2 * width)), 2)
    row = min(int(3 * (y0 + y1) / (2 * height)), 2)
    if row == 1 and col == 1:
        return "center"
    if row == 1:
        return f"middle {_COLS[col]}"
    if col == 1:
        return f"{_ROWS[row]} center"
    return f"{_ROWS[row]} {_COLS[col]}"


# Upper bounds of the foreground share of the image for each size word.
SIZE_THRESHOLDS: tuple[tuple[float, str], ...] = ((0.005, "tiny"), (0.02, "small"), (0.1, "medium"))


def size_word(area: int, width: int, height: int) -> str:
    """Size of a region relative to the image: tiny, small, medium or large."""
    share = area / float(width * height)
    for bound, word in SIZE_THRESHOLDS:
        if share < bound:
            return word
    return "large"


def format_box(bbox_1000: tuple[int, int, int, int]) -> str:
    """Qwen-VL box text: ``<box>(x1,y1),(x2,y2)</box>``."""
    x0, y0, x1, y1 = (int(v) for v in bbox_1000)
    return f"<box>({x0},{y0}),({x1},{y1})</box>"


def format_ref(name: str) -> str:
    """Qwen-VL reference text: ``<ref>name</ref>``."""
    return f"<ref>{name}</ref>"


BOX_PATTERN = re.compile(r"<box>\((-?\d+),(-?\d+)\),\((-?\d+),(-?\d+)\)</box>")


def parse_boxes(text: str) -> tuple[list[tuple[int, int, int, int]], int]:
    """Boxes written in Qwen-VL syntax in ``text``, and how many ``<box>`` tags were malformed."""
    boxes = [tuple(int(v) for v in m.groups()) for m in BOX_PATTERN.finditer(text)]
    # Unclosed or stray tags count too (an answer cut off inside a box).
    malformed = max(text.count("<box>"), text.count("</box>")) - len(boxes)
    return boxes, malformed  # type: ignore[return-value]
