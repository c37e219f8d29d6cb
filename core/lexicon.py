"""The structure names a text may use (pure): the build's labels and their synonyms (packaged in
:mod:`medgrit.core.terms` and given by users per label), broader words that name several
structures, common anatomy and finding words, the body parts an image shows, and the words of
the image's kind that never name a structure.

Names are matched whole-word, longest first, case-insensitive, with an optional left/right in
front, simple plurals, and British and American spellings as one. Every name has one canonical
form: synonyms share it ("urinary bladder" is the region labelled bladder), unless two labels of
the build are synonyms of each other (then each names only itself). A finding word names the
regions whose label holds it or one of its synonyms ("mass" is a region labelled liver tumour).
:mod:`medgrit.core.claims` reads a text's mentions with a :class:`Lexicon`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from functools import lru_cache

from medgrit.core.terms import (
    ANATOMY_WORDS,
    BODY_REGION_WORDS,
    BROADER_TERMS,
    FINDING_WORDS,
    GENERIC_FINDINGS,
    STRUCTURE_REGIONS,
    SYNONYM_GROUPS,
)

SIDES = ("left", "right")

# Words of the image's kind and of the text's own frame: never a structure name outside <ref>.
RESERVED_WORDS: frozenset[str] = frozenset(
    {
        "region", "regions", "image", "images", "structure", "structures", "object", "area",
        "part", "slice", "view", "plane", "scan", "photograph", "center", "middle", "left",
        "right", "upper", "lower", "top", "bottom", "tiny", "small", "medium", "large", "ct",
        "mri", "mr", "pet", "xray", "x", "ray", "radiograph", "endoscopy", "dermoscopy",
        "fundus", "ultrasound", "axial", "coronal", "sagittal", "transverse", "patient",
        "organ", "organs", "tissue", "tissues", "anatomy", "anatomical",
    }
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
        names: readable label names (``left kidney``); the packaged anatomy, finding, broader and
            synonym words are always added. A name's side is kept apart: every name is matched
            with or without a left/right in front.
        synonyms: (synonym, label name) pairs a user gave for the labels of a source.
    """

    def __init__(self, names: Iterable[str] = (), synonyms: Iterable[tuple[str, str]] = ()) -> None:
        self.names = frozenset(names)
        self.user_synonyms = frozenset(synonyms)
        groups = [tuple(words_of(m) for m in group) for group in SYNONYM_GROUPS]
        for synonym, label in sorted(self.user_synonyms):
            groups.append((split_side(words_of(label))[0], split_side(words_of(synonym))[0]))
        label_bases = {split_side(words_of(n))[0] for n in self.names} - {()}
        bases = set(label_bases)
        for name in (
            *ANATOMY_WORDS,
            *FINDING_WORDS,
            *GENERIC_FINDINGS,
            *BROADER_TERMS,
            *BODY_REGION_WORDS,
        ):
            bases.add(split_side(words_of(name))[0])
        bases.update(m for group in groups for m in group)
        bases.discard(())
        canonical = _with_plurals(bases)
        canonical = _joined(canonical, groups, {canonical[b] for b in label_bases})
        self.surfaces = canonical  # every name, for <ref> texts
        lengths: dict[str, set[int]] = {}
        for surface in canonical:
            if not all(w in RESERVED_WORDS for w in surface):  # "fundus", "ct": the image's kind
                lengths.setdefault(surface[0], set()).add(len(surface))
        # Lengths of the names that start with a word, longest first (a side word adds one).
        self.starts = {w: tuple(sorted(n, reverse=True)) for w, n in lengths.items()}
        self.labels = frozenset(canonical[b] for b in label_bases)
        self.findings = frozenset(canonical[split_side(words_of(w))[0]] for w in FINDING_WORDS)
        # The one-word findings: a region whose label holds one is a finding ("liver tumor").
        self.finding_words = frozenset(b[0] for b in self.findings if len(b) == 1)
        self.generic = frozenset(canonical[words_of(w)] for w in GENERIC_FINDINGS)
        self.broader = {
            canonical[words_of(term)]: frozenset(
                canonical.get(words_of(m), words_of(m)) for m in members
            )
            for term, members in BROADER_TERMS.items()
            if canonical[words_of(term)] not in self.labels
        }
        self.context = {
            canonical[words_of(word)]: region
            for word, region in BODY_REGION_WORDS.items()
            if words_of(word) in canonical
        }
        self.structure_regions = {
            canonical.get(words_of(name), words_of(name)): regions
            for name, regions in STRUCTURE_REGIONS.items()
        }

    def regions_implied(self, base: tuple[str, ...]) -> frozenset[str]:
        """The body regions a structure implies (``liver tumor``: abdomen), by its whole name
        and by each of its words."""
        found = set(self.structure_regions.get(base, ()))
        for word in base:
            found.update(self.structure_regions.get(self.surfaces.get((word,), (word,)), ()))
        return frozenset(found)

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
        return lexicon_for(self.names | extra, self.user_synonyms)


def _with_plurals(bases: set[tuple[str, ...]]) -> dict[tuple[str, ...], tuple[str, ...]]:
    """Every base and its plural spellings, each mapped to its singular base."""
    canonical: dict[tuple[str, ...], tuple[str, ...]] = {b: b for b in bases}
    # A plural that is a name of its own (label "lungs", anatomy "lung") is the same structure.
    for base in sorted(bases, key=lambda b: (len(b[-1]), b)):
        for plural in plural_forms(base[-1]):
            surface = (*base[:-1], plural)
            if surface in bases and canonical[surface] == surface and surface != base:
                canonical[surface] = canonical[base]
            canonical.setdefault(surface, canonical[base])
    return canonical


def _joined(
    canonical: dict[tuple[str, ...], tuple[str, ...]],
    groups: list[tuple[tuple[str, ...], ...]],
    labels: set[tuple[str, ...]],
) -> dict[tuple[str, ...], tuple[str, ...]]:
    """``canonical`` with each synonym group sharing one form: its label's when a label of the
    build is in it, else its first member's. A group that would join two labels is left out."""
    parent: dict[tuple[str, ...], tuple[str, ...]] = {}

    def root(x: tuple[str, ...]) -> tuple[str, ...]:
        while parent.get(x, x) != x:
            x = parent[x]
        return x

    for group in groups:
        roots = []
        for member in group:
            r = root(canonical.get(member, member))
            if r not in roots:
                roots.append(r)
        labelled = [r for r in roots if r in labels]
        if len(labelled) > 1:
            continue  # two labels of the build: each names itself only
        head = labelled[0] if labelled else roots[0]
        for r in roots:
            if r != head:
                parent[r] = head
    return {surface: root(base) for surface, base in canonical.items()}


VOCABULARY_VERSION = 3
"""The version of the packaged vocabulary (synonyms, broader terms, context anatomy, the words
read as claims; 3 read MR sequence words against the image's sequence); recorded in
``dataset.json``."""


@lru_cache(maxsize=64)
def lexicon_for(
    names: frozenset[str], synonyms: frozenset[tuple[str, str]] = frozenset()
) -> Lexicon:
    """The (cached) lexicon of a set of label names and user synonyms, (synonym, label) pairs."""
    return Lexicon(names, synonyms)
