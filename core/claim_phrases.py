"""The phrases :mod:`medgrit.core.claims` reads as claims (pure data): each word sequence and
the (kind, value) it states.

Kinds: ``position`` (a 3x3 grid cell), ``row``, ``column`` (a grid column), ``half`` (the half
of the image that holds the box centre, or the midline), ``size``, ``side`` (the patient's),
``side_word`` (a side with "side"/"half" but no owner: the image's in a clause that speaks of the
image's sides, else ambiguous), ``ambiguous_side``, ``modality``, ``plane``, ``sequence``,
``unsupported`` (appearance, diagnosis, measurement), ``relation`` (to the mention that follows)
and ``relation_soft`` (a relation only where a name follows: "in the liver", not "in the upper
left").
"""

from __future__ import annotations

from medgrit.core.lexicon import SIDES, words_of
from medgrit.core.terms import MODALITY_WORDS, SEQUENCE_WORDS, UNSUPPORTED_WORDS

# Claims about the image, not about a region.
IMAGE_KINDS = frozenset(
    {"modality", "plane", "sequence", "unsupported", "ambiguous_side", "adverb"}
)
# Claims that say the text speaks of the image's sides.
IMAGE_FRAME_KINDS = frozenset({"half"})
# Words that say a clause speaks of the image's sides ("lies in its left half of the image").
FRAME_WORDS = frozenset({"image", "images", "picture", "frame", "midline", "viewer"})
# Words before a name that start a new part of a clause ("... is large and the liver ...").
CONJUNCTIONS = frozenset({"and", "while", "whilst", "whereas", "but", "with"})
# Words that may stand between a relation phrase and the mention it relates to.
RELATION_FILLERS = frozenset(
    {"the", "a", "an", "level", "of", "that", "this", "its", "both", "main", "whole", "entire",
     "portion", "part", "piece", "section", "segment", "further", "other", "rest", "remainder",
     "each", "either", "one", "all", "two", "three", "four"}
)  # fmt: skip
# Words that negate the claim right after them ("not in the centre", "rather than", "neither").
NEGATIONS = frozenset({"not", "neither", "nor", "never", "rather", "instead", "no"})

_RELATIONS: dict[str, tuple[str, ...]] = {
    "above": ("above", "superior to", "higher than", "cranial to"),
    "below": ("below", "beneath", "underneath", "under", "inferior to", "lower than", "caudal to"),
    "inside": (
        "within", "inside", "enclosed by", "surrounded by", "embedded in", "enclosed within",
        "contained in", "contained within", "inside of",
    ),
    "contains": ("contains", "containing", "surrounds", "surrounding", "encloses", "enclosing",
                 "encircles", "encircling"),
    "adjacent": (
        "adjacent to", "abutting", "abuts", "borders", "bordering", "in contact with",
        "touching", "touches", "contiguous with", "directly adjacent to", "bordered by",
        "flanked by", "next to", "beside", "alongside", "against", "abutted by",
        "adjoining", "adjoins",
    ),
    "larger": ("larger than", "bigger than", "greater than"),
    "smaller": ("smaller than", "less than"),
    "left_of": ("left of", "to the left of", "to its left", "to their left"),
    "right_of": ("right of", "to the right of", "to its right", "to their right"),
    # Relations no fact records: always untrue where stated.
    "unverifiable": (
        "anterior to", "posterior to", "medial to", "lateral to", "in front of", "behind",
        "deep to", "superficial to", "proximal to", "distal to",
    ),
}  # fmt: skip


def _grid(out: dict[tuple[str, ...], tuple[str, str]]) -> None:
    rows = {"upper": "upper", "top": "upper", "middle": "middle", "lower": "lower"}
    rows["bottom"] = "lower"
    for word, row in rows.items():
        for col in ("left", "center", "right"):
            if row == "middle" and col == "center":
                value = "center"
            elif col == "center":
                value = f"{row} center"
            else:
                value = f"{row} {col}"
            out[(word, col)] = ("position", value)
        if row != "middle":
            out[(word, "middle")] = ("position", f"{row} center")  # "lower middle"
            for part in ("part", "half", "portion", "region", "area", "third", "aspect"):
                out[(word, part)] = ("row", row)
            out[(word, "of", "the", "image")] = ("row", row)
    out[("middle", "center")] = ("position", "center")
    out[("center",)] = ("column", "center")
    out[("central",)] = ("column", "center")
    out[("centrally",)] = ("column", "center")
    out[("middle",)] = ("row", "middle")


def _sides(out: dict[tuple[str, ...], tuple[str, str]]) -> None:
    for side in SIDES:
        out[("patient", side)] = ("side", side)
        out[("patient", side, "side")] = ("side", side)
        out[(side, "side", "of", "the", "patient")] = ("side", side)
        out[(side, "side", "of", "the", "body")] = ("side", side)
        for frame in (("image", side), ("viewer", side), (side, "of", "the", "image")):
            out[frame] = ("half", side)
        for part in ("side", "half", "part", "portion", "aspect"):
            out[(side, part, "of", "the", "image")] = ("half", side)
            out[(side, part, "of", "image")] = ("half", side)
            out[(side, part, "of", "the", "frame")] = ("half", side)
            out[(side, part)] = ("side_word", side)
        out[(side, "half")] = ("half", side)  # a half is the image's: the patient has sides
        for mid in (("of", "the", "midline"), ("of", "midline"), ("of", "center")):
            out[(side, *mid)] = ("half", side)
        out[(side, "of", "the", "image", "midline")] = ("half", side)
        out[(side,)] = ("ambiguous_side", side)
    for words in (("midline",), ("at", "the", "midline"), ("in", "the", "midline")):
        out[words] = ("half", "midline")


def _sizes(out: dict[tuple[str, ...], tuple[str, str]]) -> None:
    for word in ("tiny", "small", "medium", "large"):
        out[(word,)] = ("size", word)
    out[("big",)] = ("size", "large")
    out[("huge",)] = ("size", "large")
    for very in ("very", "extremely"):
        out[(very, "small")] = ("size", "tiny")
        out[(very, "large")] = ("size", "large")
        out[(very, "big")] = ("size", "large")
    for words in (
        ("medium", "sized"), ("moderate", "sized"), ("moderately", "sized"), ("moderate", "size"),
        ("mid", "sized"), ("intermediate", "size"), ("intermediate", "sized"),
    ):  # fmt: skip
        out[words] = ("size", "medium")


def _phrases() -> dict[tuple[str, ...], tuple[str, str]]:
    out: dict[tuple[str, ...], tuple[str, str]] = {}
    for word in UNSUPPORTED_WORDS:
        out[words_of(word)] = ("unsupported", word)
    for word in SEQUENCE_WORDS:
        out[words_of(word)] = ("sequence", word)
    for text, key in MODALITY_WORDS.items():
        out[words_of(text)] = ("modality", key)
    for text, plane in (("axial", "axial"), ("transverse", "axial"), ("transaxial", "axial")):
        out[(text,)] = ("plane", plane)
    for words in (("cross", "section"), ("cross", "sectional"), ("cross", "sections")):
        out[words] = ("plane", "axial")
    out[("coronal",)] = ("plane", "coronal")
    out[("sagittal",)] = ("plane", "sagittal")
    for words in (("frontal",), ("lateral", "view"), ("lateral", "projection")):
        out[words] = ("plane", "projection")
    for relation, texts in _RELATIONS.items():
        for text in texts:
            out[words_of(text)] = ("relation", relation)
    for words in (("in",), ("located", "in"), ("situated", "in"), ("lies", "in"), ("lying", "in")):
        out[words] = ("relation_soft", "in")
    for words in (("between",), ("in", "between"), ("sandwiched", "between")):
        out[words] = ("relation_soft", "between")  # "between the lungs"; not "between halves"
    for words in (("right", "at"), ("right", "on"), ("right", "in"), ("right", "by")):
        out[words] = ("adverb", "right")  # "right at the midline": no side
    for side in SIDES:  # "left-sided structures": a kind of structure, not a place
        out[(side, "sided")] = ("adverb", side)
    for words in (
        ("box", "center"), ("its", "center"), ("box", "centers"), ("center", "of", "its", "box"),
        ("center", "of", "the", "box"), ("center", "of", "its", "bounding", "box"),
        ("whose", "center"), ("centre", "point"), ("center", "point"),
    ):  # fmt: skip
        out[words] = ("adverb", "center")  # "its box centre falls ...": no position
    _grid(out)
    _sides(out)
    _sizes(out)
    return out


PHRASES: dict[tuple[str, ...], tuple[str, str]] = _phrases()
PHRASE_STARTS: dict[str, tuple[int, ...]] = {
    w: tuple(sorted({len(p) for p in PHRASES if p[0] == w}, reverse=True))
    for w in {p[0] for p in PHRASES}
}
