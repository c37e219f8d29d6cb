"""The structure names a text may use (pure): the build's labels, a packaged list of common
anatomy and finding words, and the words of the image's kind that never name a structure.

Names are matched whole-word, longest first, case-insensitive, with an optional left/right in
front, simple plurals, and British and American spellings as one. Finding words name one
another's regions within a group of synonyms ("mass" is a region labelled tumour).
:mod:`medgrit.core.claims` reads a text's mentions with a :class:`Lexicon`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from functools import lru_cache

SIDES = ("left", "right")

# Findings a text may name; one refers to any region whose label holds the word ("tumor" is the
# region "liver tumor"), and is an invented structure on an image without such a region.
FINDING_WORDS: tuple[str, ...] = (
    "tumor", "lesion", "mass", "nodule", "fracture", "cyst", "hemorrhage", "effusion", "polyp",
    "metastasis", "calcification", "stone", "calculus", "abscess", "aneurysm", "edema",
    "hematoma", "thrombus", "infarct", "infarction", "ulcer", "melanoma", "nevus", "carcinoma",
    "cancer", "pneumothorax", "consolidation", "opacity", "stenosis", "exudate", "microaneurysm",
    "neoplasm", "malignancy",
)  # fmt: skip

# Finding words that name one another's regions: a "mass" of an image whose label is a tumour is
# that tumour. A broader word names no narrower region ("a lesion is also visible" beside a cyst
# may be another one), and a region labelled "lesion" need not be a mass.
_SAME_FINDINGS: tuple[frozenset[str], ...] = (
    frozenset({"tumor", "mass", "neoplasm", "malignancy", "cancer", "carcinoma"}),
    frozenset({"melanoma", "nevus"}),
    frozenset({"hemorrhage", "hematoma"}),
    frozenset({"stone", "calculus"}),
    frozenset({"infarct", "infarction"}),
)

# Words of the image's kind and of the text's own frame: never a structure name outside <ref>.
RESERVED_WORDS: frozenset[str] = frozenset(
    {
        "region", "regions", "image", "images", "structure", "structures", "object", "area",
        "part", "slice", "view", "plane", "scan", "photograph", "center", "middle", "left",
        "right", "upper", "lower", "top", "bottom", "tiny", "small", "medium", "large", "ct",
        "mri", "mr", "pet", "xray", "x", "ray", "radiograph", "endoscopy", "dermoscopy",
        "fundus", "ultrasound", "axial", "coronal", "sagittal", "transverse", "patient",
    }
)  # fmt: skip

# Structures a text may name although no label of the build has them: naming one the image does
# not show is an invented structure. Specific organs and structures only, not body regions.
ANATOMY_WORDS: tuple[str, ...] = (
    "liver", "spleen", "pancreas", "stomach", "gallbladder", "kidney", "adrenal gland",
    "urinary bladder", "bladder", "prostate", "uterus", "ovary", "esophagus", "duodenum",
    "small bowel", "small intestine", "large bowel", "large intestine", "colon", "rectum",
    "appendix", "aorta", "inferior vena cava", "vena cava", "portal vein", "heart", "lung",
    "trachea", "bronchus", "thyroid", "thyroid gland", "brain", "cerebellum", "brainstem",
    "hippocampus", "spinal cord", "vertebra", "rib", "femur", "humerus", "sternum", "clavicle",
    "scapula", "skull", "optic disc", "optic cup", "macula", "fovea", "retina", "lymph node",
    "breast", "pleura", "diaphragm", "testis", "pituitary gland", "thalamus", "caudate",
    "putamen", "amygdala", "transverse colon", "sigmoid colon", "ascending colon",
    "descending colon", "ureter", "spine", "psoas", "gallstone",
)  # fmt: skip

# British spellings (and a few variants) as the lexicon stores them.
SPELLINGS: tuple[tuple[str, str], ...] = (
    ("tumour", "tumor"),
    ("haemorrhag", "hemorrhag"),
    ("oedema", "edema"),
    ("oesophag", "esophag"),
    ("haemat", "hemat"),
    ("centre", "center"),
    ("foet", "fet"),
    ("gray", "grey"),
    ("naevus", "nevus"),
    ("naevi", "nevi"),
)

_REF_WORDS = re.compile(r"[^\W_]+")


@lru_cache(maxsize=1 << 16)
def normalize_word(word: str) -> str:
    """A lower-case word with British spellings made American (``tumours`` -> ``tumors``)."""
    word = word.lower()
    for british, american in SPELLINGS:
        if british in word:
            word = word.replace(british, american)
    return word


def words_of(text: str) -> tuple[str, ...]:
    """The normalised words of a name (``Left Kidney`` -> ``("left", "kidney")``)."""
    return tuple(normalize_word(w) for w in _REF_WORDS.findall(text))


def plural_forms(word: str) -> set[str]:
    """Plural spellings a text may use for ``word`` (regular and Latin/Greek endings)."""
    forms = {word + "s", word + "es"}
    if word.endswith("y"):
        forms.add(word[:-1] + "ies")
    if word.endswith("is"):
        forms.add(word[:-2] + "es")  # metastasis -> metastases
    if word.endswith("us"):
        forms.add(word[:-2] + "i")  # bronchus -> bronchi
    if word.endswith("a"):
        forms.add(word + "e")  # vertebra -> vertebrae
    if word.endswith("um"):
        forms.add(word[:-2] + "a")
    if word.endswith("x"):
        forms.add(word[:-1] + "ces")  # cortex -> cortices
    if word == "tooth":
        forms.add("teeth")
    return forms


def split_side(words: tuple[str, ...]) -> tuple[tuple[str, ...], str | None]:
    """(base words, side) of a name: ``("left", "kidney")`` -> ``(("kidney",), "left")``."""
    if len(words) > 1 and words[0] in SIDES:
        return words[1:], words[0]
    return words, None


class Lexicon:
    """The structure names a text may use, each with the one canonical form it stands for.

    Args:
        names: readable label names (``left kidney``); the packaged anatomy and finding words are
            always added. A name's side is kept apart: every name is matched with or without a
            left/right in front.
    """

    def __init__(self, names: Iterable[str] = ()) -> None:
        self.names = frozenset(names)
        bases: set[tuple[str, ...]] = set()
        for name in (*self.names, *ANATOMY_WORDS, *FINDING_WORDS):
            base, _ = split_side(words_of(name))
            if base:
                bases.add(base)
        canonical: dict[tuple[str, ...], tuple[str, ...]] = {b: b for b in bases}
        # A plural that is a name of its own (label "lungs", anatomy "lung") is the same structure.
        for base in sorted(bases, key=lambda b: (len(b[-1]), b)):
            for plural in plural_forms(base[-1]):
                surface = (*base[:-1], plural)
                if surface in bases and canonical[surface] == surface and surface != base:
                    canonical[surface] = canonical[base]
                canonical.setdefault(surface, canonical[base])
        self.surfaces = canonical  # every name, for <ref> texts
        lengths: dict[str, set[int]] = {}
        for surface in canonical:
            if not all(w in RESERVED_WORDS for w in surface):  # "fundus", "ct": the image's kind
                lengths.setdefault(surface[0], set()).add(len(surface))
        # Lengths of the names that start with a word, longest first (a side word adds one).
        self.starts = {w: tuple(sorted(n, reverse=True)) for w, n in lengths.items()}
        self.findings = frozenset(canonical[(w,)][0] for w in FINDING_WORDS)
        kin: dict[str, set[str]] = {}
        for group in _SAME_FINDINGS:
            for word in group:
                kin.setdefault(word, {word}).update(group)
        # The finding words whose regions a finding word names (itself and its kin).
        self.finding_kin = {w: frozenset(kin.get(w, {w})) for w in self.findings}

    def canonical(self, words: tuple[str, ...]) -> tuple[tuple[str, ...], str | None] | None:
        """(canonical base, side) of a whole name, or None when it is no structure name."""
        if not words:
            return None
        base = self.surfaces.get(words)
        if base is not None:
            return base, None
        rest, side = split_side(words)
        base = self.surfaces.get(rest) if side else None
        return (base, side) if base is not None else None

    def match(self, words: list[str], start: int) -> tuple[int, tuple[str, ...], str | None]:
        """The longest name at ``words[start:]``: (length, canonical base, side); length 0 when
        none starts there."""
        first = words[start]
        best: tuple[int, tuple[str, ...], str | None] = (0, (), None)
        for n in self.starts.get(first, ()):
            if start + n <= len(words):
                surface = tuple(words[start : start + n])
                base = self.surfaces.get(surface)
                if base is not None and not all(w in RESERVED_WORDS for w in surface):
                    best = (n, base, None)
                    break
        if first in SIDES and start + 1 < len(words):
            for n in self.starts.get(words[start + 1], ()):
                if n + 1 > best[0] and start + 1 + n <= len(words):
                    surface = tuple(words[start + 1 : start + 1 + n])
                    base = self.surfaces.get(surface)
                    if base is not None and not all(w in RESERVED_WORDS for w in surface):
                        return n + 1, base, first
        return best

    def with_names(self, names: Iterable[str]) -> Lexicon:
        """This lexicon with ``names`` added (itself when it has them all)."""
        extra = frozenset(names)
        if extra <= self.names:
            return self
        return lexicon_for(self.names | extra)


@lru_cache(maxsize=64)
def lexicon_for(names: frozenset[str]) -> Lexicon:
    """The (cached) lexicon of a set of label names."""
    return Lexicon(names)
