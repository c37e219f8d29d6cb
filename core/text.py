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


def readable_label_name(raw: str) -> str:
    """Turn a dataset label key into words: ``kidney_left`` -> ``left kidney``.

    Laterality tokens (``left``, ``right``, ``l``, ``r``, ``lt``, ``rt``) at either end move to
    the front;
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
    tokens = [t.lower() for t in tokens]
    side = None
    if len(tokens) > 1 and tokens[-1] in _SIDE_TOKENS:
        side = _SIDE_TOKENS[tokens.pop()]
    elif len(tokens) > 1 and tokens[0] in _SIDE_TOKENS:
        side = _SIDE_TOKENS[tokens.pop(0)]
    words = [_TISSUES.get(t) or (_QUALIFIERS.get(t, t) if i else t) for i, t in enumerate(tokens)]
    name = " ".join(words)
    return f"{side} {name}" if side else name


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
