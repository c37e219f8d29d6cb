"""What is true of one image, as the verifier checks a text against it (pure): its regions by
id and by box, the body regions it shows, the sequence words true of it, and whether a region
attribute or "A in B" holds.
:mod:`medgrit.core.verify` reads a turn's claims and checks them with an :class:`ImageTruth`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from functools import cached_property

from medgrit.core.claims import Box, Mention
from medgrit.core.generation import ImageFacts, RegionFacts
from medgrit.core.lexicon import Lexicon, lexicon_for, split_side, words_of
from medgrit.core.relations import image_side, relations_between
from medgrit.core.sequences import known_sequence, sequence_true_words
from medgrit.core.terms import MODALITY_REGIONS


def row_and_column(position: str) -> tuple[str, str]:
    """(row, column) of a grid position word: ``upper left`` -> ``("upper", "left")``."""
    if position == "center":
        return "middle", "center"
    row, _, col = position.partition(" ")
    return row, col


@dataclass(frozen=True)
class Region:
    """A region with its label read as the lexicon knows it: canonical base, side and the
    canonical form of each of its words."""

    facts: RegionFacts
    base: tuple[str, ...]
    side: str | None
    words: frozenset[str]


class ImageTruth:
    """What is true of one image: its regions (by id and by box), modality, plane and sequence,
    the body regions it shows, and the lexicon its texts are read with.

    Args:
        regions: all regions of the image.
        image: the image's facts (modality and plane words are checked only when given; no
            sequence word holds without them).
        lexicon: structure names of the build; the image's own labels are added.
    """

    def __init__(
        self,
        regions: Iterable[RegionFacts],
        image: ImageFacts | None = None,
        lexicon: Lexicon | None = None,
    ) -> None:
        facts = list(regions)
        base_lexicon = lexicon if lexicon is not None else lexicon_for(frozenset())
        self.lexicon = base_lexicon.with_names(r.label for r in facts)
        self.image = image
        self.regions: dict[str, Region] = {}
        self.by_box: dict[Box, list[str]] = {}
        for r in facts:
            found = self.lexicon.canonical(words_of(r.label))
            base, side = found if found else split_side(words_of(r.label))
            words = frozenset(self.lexicon.surfaces.get((w,), (w,))[0] for w in base)
            self.regions[r.region_id] = Region(r, base, side, words)
            self.by_box.setdefault(tuple(r.bbox_1000), []).append(r.region_id)  # type: ignore[arg-type]
        self.masks_known = any(r.relations for r in facts)

    @cached_property
    def body_regions(self) -> frozenset[str]:
        """The body regions the image shows (see :func:`body_regions`)."""
        implied = [self.lexicon.regions_implied(r.base) for r in self.regions.values()]
        return body_regions(implied, self.image)

    @cached_property
    def sequence_words(self) -> frozenset[str] | None:
        """The sequence words true of the image (:mod:`medgrit.core.sequences`), or None when
        no known sequence is recorded: then no sequence word can be checked, either way."""
        name = self.image.sequence if self.image is not None else ""
        return sequence_true_words(name) if known_sequence(name) is not None else None

    def named(self, mention: Mention, exact: bool = False) -> set[str]:
        """Regions a name refers to: those whose label it is or is a synonym of (same structure
        and side); when it is no label of the image, those of the same structure on any side
        (it names none), those a broader word covers ("lesion", "brain tissue") and, for a
        finding word, those whose label holds it, and for a word for any finding ("lesion"),
        the image's findings (``Mention.generic``). ``exact``: only the label itself."""
        own = {
            rid
            for rid, r in self.regions.items()
            if r.base == mention.base and r.side == mention.side
        }
        if own or exact:
            return own
        lexicon = self.lexicon
        covered = lexicon.broader.get(mention.base, frozenset())
        finding = mention.base in lexicon.findings
        out = set()
        for rid, r in self.regions.items():
            if mention.side not in (None, r.side):
                continue
            if (
                r.base == mention.base
                or r.base in covered
                or (finding and set(mention.base) <= r.words)
                or (mention.generic and not r.words.isdisjoint(lexicon.finding_words))
            ):
                out.add(rid)
        return out

    def same_structure(self, mention: Mention) -> set[str]:
        """Regions of the named structure on any side (to tell a wrong side from an invention)."""
        return {rid for rid, r in self.regions.items() if r.base == mention.base}

    def labels_of(self, region_ids: Iterable[str]) -> frozenset[str]:
        """The labels of some regions."""
        return frozenset(self.regions[rid].facts.label for rid in region_ids)


def body_regions(implied: list[frozenset[str]], image: ImageFacts | None) -> frozenset[str]:
    """The body regions an image shows: those all its structures imply (lungs and spine: the
    chest), or any of them where they imply none in common (lungs and liver), the trunk when it
    shows the chest, abdomen or pelvis, its modality's ("fundus": the eye), and "any"."""
    known = [regions for regions in implied if regions]
    common = frozenset.intersection(*known) if known else frozenset()
    found = set(common or frozenset().union(*known))
    if found & {"chest", "abdomen", "pelvis"}:
        found.add("trunk")
    extra = MODALITY_REGIONS.get(image.modality, ()) if image is not None else ()
    return frozenset({*found, "any", *extra})


def holds(kind: str, value: str, region: Region) -> bool:
    """Whether a region attribute (position, row, column, half, size, side) holds of a region."""
    r = region.facts
    if kind == "position":
        return r.position == value
    row, col = row_and_column(r.position)
    if kind == "row":
        return row == value
    if kind == "column":
        return col == value
    if kind == "half":  # the half of the image (or the midline), else the grid column
        return image_side(r) == value or col == value
    if kind == "size":
        return r.size == value
    return region.side == value  # side


ENCLOSING = frozenset({"contains", "inside", "in"})


def lies_in(truth: ImageTruth, a: RegionFacts, b: RegionFacts) -> bool:
    """ "A in B": A lies inside B, or touches B with its box centre inside B's box (a tumour at
    the liver's edge); where the image records no mask relations (datasets written before
    them), the box centre alone."""
    x0, y0, x1, y1 = b.bbox_1000
    cx, cy = (a.bbox_1000[0] + a.bbox_1000[2]) / 2, (a.bbox_1000[1] + a.bbox_1000[3]) / 2
    if not (x0 <= cx <= x1 and y0 <= cy <= y1):
        return False
    held = relations_between(a, b)
    return "inside" in held or "adjacent" in held or not truth.masks_known


def lies_between(a: RegionFacts, others: list[RegionFacts]) -> bool:
    """ "A between B and C": A's box centre lies between the centres of two other regions' boxes,
    across or up and down."""
    boxes = {tuple(o.bbox_1000) for o in others if o.region_id != a.region_id}
    if len(boxes) < 2:
        return False
    cx, cy = (a.bbox_1000[0] + a.bbox_1000[2]) / 2, (a.bbox_1000[1] + a.bbox_1000[3]) / 2
    xs = [(b[0] + b[2]) / 2 for b in boxes]
    ys = [(b[1] + b[3]) / 2 for b in boxes]
    return min(xs) < cx < max(xs) or min(ys) < cy < max(ys)
