"""Relations between the regions of one image: where one lies from another, and what the masks say.

Relations hold between two regions ``a`` and ``b`` of one image with different labels (merged
regions, instance regions, in any pairing); a region has none with a region of its own label.

Box relations come from ``RegionFacts.bbox_1000`` and ``area`` and are computed when asked
(nothing is stored for them). With centres ``cx = (x0 + x1) / 2`` and ``cy = (y0 + y1) / 2``:

- the directional relations hold only when neither box contains the other's centre (bounds
  inclusive);
- ``above(a, b)``: ``cy_a < cy_b`` and (``cy_a <= y0_b`` or ``cy_b >= y1_a``);
  ``below(a, b) = above(b, a)``;
- ``left_of(a, b)`` (the image's left, not the patient's): ``cx_a < cx_b`` and (``cx_a <= x0_b``
  or ``cx_b >= x1_a``); ``right_of(a, b) = left_of(b, a)``;
- ``larger(a, b)``: ``area_a >= 1.5 * area_b``; ``smaller(a, b) = larger(b, a)``.

Mask relations come from the label map, are computed once by :func:`mask_relations` when the
regions are extracted, and are stored with each region (``RegionFacts.relations``: pairs of
relation and the other region's id):

- ``inside(a, b)``: at least 90% of a's pixels lie in ``binary_fill_holes(mask_b)`` (a lesion
  inside the liver is a hole of the liver's mask), and ``area_a < area_b``;
  ``contains(a, b) = inside(b, a)``;
- ``adjacent(a, b)``: neither lies inside the other, they share no pixel, and a's mask grown by
  one pixel (a 3x3 square) meets b's mask.

A region's mask is, for a merged region (``instance == 0``), its label's pixels inside its box,
and for an instance region its own 8-connected component. A label's pixels are those of its
value, or of any of its values for region-based labels (``groups``: ``"tumor core": [2, 3]``).
Plain labels never overlap, so a region inside another lies in its holes; regions whose values
overlap may share pixels and nest (enhancing tumour within tumour core within whole tumour), and
two that overlap with neither inside the other have no mask relation. Masks are read from the
label map (H, W), [row, column] = [y, x], with the regions' half-open boxes [x0, y0, x1, y1).

The mask work stays small: only pairs whose boxes come within one pixel of each other are
looked at, always on crops of their boxes; each region's mask, holes and grown mask are made
once (components and holes numbered with cc3d, as ``medgrit.core.regions`` does), and the
bounds that boxes and areas give rule most pairs out of ``inside`` before any pixel is read.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence

import cc3d
import numpy as np
from scipy import ndimage

from medgrit.core.generation import RegionFacts

RELATIONS = (
    "above",
    "below",
    "left_of",
    "right_of",
    "inside",
    "contains",
    "adjacent",
    "larger",
    "smaller",
)
MASK_RELATIONS = ("inside", "contains", "adjacent")
"""The relations stored with the regions (the others follow from boxes and areas)."""
PRIORITY = (
    "inside",
    "contains",
    "adjacent",
    "above",
    "below",
    "left_of",
    "right_of",
    "larger",
    "smaller",
)
"""The order in which a region's relations are stated: the most telling first."""

INSIDE_SHARE = 0.9
LARGER_RATIO = 1.5
MIDLINE = (480, 520)
"""``bbox_1000`` centres between these (inclusive) lie on the image's midline."""

_PHRASES = {
    "above": "above the {}",
    "below": "below the {}",
    "left_of": "to the left of the {} in the image",
    "right_of": "to the right of the {} in the image",
    "inside": "within the {}",
    "contains": "contains the {}",
    "adjacent": "adjacent to the {}",
    "larger": "larger than the {}",
    "smaller": "smaller than the {}",
}
_GROW = np.array([-1, -1, 1, 1])
_SHRINK = -_GROW

Box = tuple[int, int, int, int]


# -- box relations ---------------------------------------------------------------------------


def _centre(box: Sequence[int]) -> tuple[float, float]:
    return (box[0] + box[2]) / 2, (box[1] + box[3]) / 2


def _holds_point(box: Sequence[int], x: float, y: float) -> bool:
    return box[0] <= x <= box[2] and box[1] <= y <= box[3]


def _before(centre_a: float, centre_b: float, start_b: int, end_a: int) -> bool:
    """Whether a comes first along one axis: its centre before b's, and before b's start or
    with b's centre past a's end."""
    return centre_a < centre_b and (centre_a <= start_b or centre_b >= end_a)


def box_relations(a: RegionFacts, b: RegionFacts) -> frozenset[str]:
    """The relations of ``a`` to ``b`` that their boxes and areas give (see the module
    docstring): above/below, left_of/right_of (of the image), larger/smaller."""
    found: set[str] = set()
    ba, bb = a.bbox_1000, b.bbox_1000
    (ax, ay), (bx, by) = _centre(ba), _centre(bb)
    if not (_holds_point(bb, ax, ay) or _holds_point(ba, bx, by)):
        if _before(ay, by, bb[1], ba[3]):
            found.add("above")
        if _before(by, ay, ba[1], bb[3]):
            found.add("below")
        if _before(ax, bx, bb[0], ba[2]):
            found.add("left_of")
        if _before(bx, ax, ba[0], bb[2]):
            found.add("right_of")
    if a.area >= LARGER_RATIO * b.area:
        found.add("larger")
    if b.area >= LARGER_RATIO * a.area:
        found.add("smaller")
    return frozenset(found)


def relations_between(a: RegionFacts, b: RegionFacts) -> frozenset[str]:
    """Every relation of ``a`` to ``b``: the box relations and a's stored mask relations with
    ``b``. Empty for two regions of one label (or a region and itself)."""
    if a.label_id == b.label_id:
        return frozenset()
    stored = {relation for relation, other in a.relations if other == b.region_id}
    return box_relations(a, b) | stored


def relation_holds(relation: str, a: RegionFacts, b: RegionFacts) -> bool:
    """Whether ``relation`` (one of :data:`RELATIONS`) holds of ``a`` to ``b``.

    Raises:
        ValueError: for a relation that is not one of :data:`RELATIONS`.
    """
    if relation not in _PHRASES:
        raise ValueError(f"unknown relation {relation!r}; expected one of {RELATIONS}")
    return relation in relations_between(a, b)


def image_side(region: RegionFacts) -> str:
    """The part of the image that holds the box centre: "left", "right" or "midline" (within
    2% of the middle). The image's side, not the patient's."""
    cx, _ = _centre(region.bbox_1000)
    if cx < MIDLINE[0]:
        return "left"
    if cx > MIDLINE[1]:
        return "right"
    return "midline"


def relation_phrase(relation: str, label: str) -> str:
    """How the text states ``relation`` to a region labelled ``label``: "above the liver",
    "within the liver", "to the left of the liver in the image", ...

    Raises:
        ValueError: for a relation that is not one of :data:`RELATIONS`.
    """
    try:
        return _PHRASES[relation].format(label)
    except KeyError:
        raise ValueError(f"unknown relation {relation!r}; expected one of {RELATIONS}") from None


def ranked_relations(
    region: RegionFacts, regions: Sequence[RegionFacts]
) -> Iterator[tuple[str, RegionFacts]]:
    """The relations of ``region`` to the others of ``regions`` as (relation, other region):
    by :data:`PRIORITY`, then in the order of ``regions``."""
    found = [(other, relations_between(region, other)) for other in regions]
    for relation in PRIORITY:
        for other, held in found:
            if relation in held:
                yield relation, other


def first_relation_phrase(region: RegionFacts, regions: Sequence[RegionFacts]) -> str | None:
    """The phrase of the region's first relation by :data:`PRIORITY` ("within the liver"), or
    None when it has none."""
    for relation, other in ranked_relations(region, regions):
        return relation_phrase(relation, other.label)
    return None


def prompt_relations(
    region: RegionFacts,
    regions: Sequence[RegionFacts],
    short_ids: Mapping[str, str],
    limit: int = 4,
) -> list[str]:
    """A region's relations as an LLM's facts state them, "<phrase> (<short id>)" ("above the
    spleen (r2)"): by :data:`PRIORITY`, then region order, at most ``limit``.

    Args:
        region: the region described.
        regions: the regions the prompt shows.
        short_ids: region id -> the prompt's short id; regions without one are left out.
        limit: the most relations given.
    """
    out: list[str] = []
    for relation, other in ranked_relations(region, regions):
        if len(out) >= limit:
            break
        if other.region_id in short_ids:
            out.append(f"{relation_phrase(relation, other.label)} ({short_ids[other.region_id]})")
    return out


# -- mask relations --------------------------------------------------------------------------


class _Masks:
    """The masks of the regions of one label map, each cut to its box, and what is derived from
    them (pixel count, holes, the mask grown by one pixel), each made once, when first asked."""

    def __init__(
        self,
        label_map: np.ndarray,
        regions: Sequence[RegionFacts],
        boxes: np.ndarray,
        groups: Mapping[int, Sequence[int]] | None = None,
    ) -> None:
        self.label_map, self.regions, self.boxes, self.groups = label_map, regions, boxes, groups
        self._mask: dict[int, np.ndarray] = {}
        self._count: dict[int, int] = {}
        self._holes: dict[int, tuple[np.ndarray, np.ndarray] | None] = {}
        self._grown: dict[int, np.ndarray] = {}
        self._parts: dict[int, tuple[np.ndarray, np.ndarray, dict[tuple, list[int]]]] = {}

    def mask(self, i: int) -> np.ndarray:
        """Region ``i``'s pixels within its box: its label's, or its own component's."""
        if i not in self._mask:
            x0, y0, x1, y1 = self.boxes[i]
            region = self.regions[i]
            if region.instance > 0:
                self._mask[i] = self._component(i)
            else:
                self._mask[i] = self._pixels(self.label_map[y0:y1, x0:x1], region.label_id)
        return self._mask[i]

    def _pixels(self, crop: np.ndarray, label_id: int) -> np.ndarray:
        """Where ``crop`` holds a pixel of the label: its value, or any of its group's."""
        if self.groups and label_id in self.groups:
            return np.isin(crop, self.groups[label_id])
        return crop == label_id

    def _component(self, i: int) -> np.ndarray:
        """Instance region ``i``'s own 8-connected component, cut to its box: the component of
        its label with its box (and its area, should two share a box)."""
        region = self.regions[i]
        numbered, corner, by_box = self._label_parts(region.label_id)
        x0, y0, x1, y1 = (int(v) for v in self.boxes[i])
        numbers = by_box.get((x0, y0, x1, y1), [])
        crop = numbered[y0 - corner[1] : y1 - corner[1], x0 - corner[0] : x1 - corner[0]]
        for number in numbers:
            mask = crop == number
            if len(numbers) == 1 or np.count_nonzero(mask) == region.area:
                return mask
        raise ValueError(
            f"no component of label {region.label_id} has the box of {region.region_id}"
        )

    def _label_parts(self, label_id: int) -> tuple[np.ndarray, np.ndarray, dict[tuple, list[int]]]:
        """The 8-connected components of a label within the box of its regions, numbered once
        per label: (numbered crop, its corner (x0, y0), component numbers by box)."""
        if label_id not in self._parts:
            own = self.boxes[[r.label_id == label_id for r in self.regions]]
            x0, y0 = own[:, :2].min(axis=0)
            x1, y1 = own[:, 2:].max(axis=0)
            crop = self._pixels(self.label_map[y0:y1, x0:x1], label_id)
            # As uint8: cc3d 4.1 numbers some background pixels of a 2D bool array.
            numbered = cc3d.connected_components(crop.view(np.uint8), connectivity=8)
            by_box: dict[tuple, list[int]] = {}
            for number, found in enumerate(ndimage.find_objects(numbered), 1):
                if found is None:  # a number no pixel carries
                    continue
                rows, cols = found
                box = (cols.start + x0, rows.start + y0, cols.stop + x0, rows.stop + y0)
                by_box.setdefault(tuple(int(v) for v in box), []).append(number)
            self._parts[label_id] = (numbered, np.array([x0, y0]), by_box)
        return self._parts[label_id]

    def count(self, i: int) -> int:
        """How many pixels region ``i``'s mask holds."""
        if i not in self._count:
            self._count[i] = int(np.count_nonzero(self.mask(i)))
        return self._count[i]

    def holes(self, i: int) -> tuple[np.ndarray, np.ndarray] | None:
        """The holes of region ``i``'s mask within its box (see :func:`_holes_of`)."""
        if i not in self._holes:
            self._holes[i] = _holes_of(self.mask(i))
        return self._holes[i]

    def grown(self, i: int) -> np.ndarray:
        """Region ``i``'s mask grown by one pixel (3x3 square), on its box grown by one pixel."""
        if i not in self._grown:
            self._grown[i] = _grow(self.mask(i))
        return self._grown[i]


def _holes_of(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """Where ``scipy.ndimage.binary_fill_holes`` adds pixels to ``mask``, the background not
    joined (4-connected) to the array's edge: the background's parts numbered, and which
    numbers are not holes; None when it has no holes. On a mask cut to its box this is exact,
    since everything outside the box is background that reaches the image's edge."""
    # As uint8: cc3d 4.1 numbers some background pixels of a 2D bool array.
    parts = cc3d.connected_components((~mask).view(np.uint8), connectivity=4)
    outside = np.zeros(int(parts.max(initial=0)) + 1, dtype=bool)
    outside[0] = True  # the mask itself
    outside[parts[0]] = outside[parts[-1]] = True
    outside[parts[:, 0]] = outside[parts[:, -1]] = True
    return None if outside.all() else (parts, outside)


def _grow(mask: np.ndarray) -> np.ndarray:
    """``mask`` dilated by a 3x3 square, on an array one pixel larger on every side."""
    padded = np.zeros((mask.shape[0] + 2, mask.shape[1] + 2), dtype=bool)
    padded[1:-1, 1:-1] = mask
    rows = padded.copy()
    rows[1:] |= padded[:-1]
    rows[:-1] |= padded[1:]
    grown = rows.copy()
    grown[:, 1:] |= rows[:, :-1]
    grown[:, :-1] |= rows[:, 1:]
    return grown


def _overlap(a: np.ndarray, b: np.ndarray) -> tuple[slice, slice, slice, slice] | None:
    """Where two half-open boxes overlap, as (rows, columns) slices into a's crop and into
    b's crop; None when they do not."""
    x0, y0 = max(a[0], b[0]), max(a[1], b[1])
    x1, y1 = min(a[2], b[2]), min(a[3], b[3])
    if x0 >= x1 or y0 >= y1:
        return None
    return (
        slice(y0 - a[1], y1 - a[1]),
        slice(x0 - a[0], x1 - a[0]),
        slice(y0 - b[1], y1 - b[1]),
        slice(x0 - b[0], x1 - b[0]),
    )


def _inside(masks: _Masks, a: int, b: int) -> bool:
    """inside(a, b) for a smaller than b: 90% of a's pixels in b's filled mask. Two labels of a
    label map never share a pixel, so those pixels lie in b's holes, which lie within b's box
    less its edge; the cheap bound (a's pixels there) comes first."""
    cut = _overlap(masks.boxes[a], masks.boxes[b] + _SHRINK)
    if cut is None:
        return False
    need = INSIDE_SHARE * masks.count(a)
    in_box = masks.mask(a)[cut[0], cut[1]]
    if np.count_nonzero(in_box) < need:
        return False
    holes = masks.holes(b)
    if holes is None:
        return False
    parts, outside = holes
    rows, cols = cut[2], cut[3]
    inner = parts[rows.start + 1 : rows.stop + 1, cols.start + 1 : cols.stop + 1]
    return np.count_nonzero(in_box & ~outside[inner]) >= need


def _inside_shared(masks: _Masks, a: int, b: int) -> bool:
    """inside(a, b) for a smaller than b where the two may share pixels (their groups share a
    value): 90% of a's pixels in b's mask or its holes, anywhere in b's box."""
    cut = _overlap(masks.boxes[a], masks.boxes[b])
    if cut is None:
        return False
    need = INSIDE_SHARE * masks.count(a)
    in_box = masks.mask(a)[cut[0], cut[1]]
    if np.count_nonzero(in_box) < need:
        return False
    filled = masks.mask(b)[cut[2], cut[3]]
    holes = masks.holes(b)
    if holes is not None:
        parts, outside = holes
        filled = filled | ~outside[parts[cut[2], cut[3]]]
    return np.count_nonzero(in_box & filled) >= need


def _share_pixels(masks: _Masks, a: int, b: int) -> bool:
    """Whether the masks of a and b hold a pixel in common."""
    cut = _overlap(masks.boxes[a], masks.boxes[b])
    return cut is not None and bool(np.any(masks.mask(a)[cut[:2]] & masks.mask(b)[cut[2:]]))


def _may_lie_inside(
    boxes: np.ndarray,
    areas: np.ndarray,
    a: np.ndarray,
    b: np.ndarray,
    shared: np.ndarray | None = None,
) -> np.ndarray:
    """For pairs (a, b): whether a may lie inside b by boxes and areas alone: a smaller, with
    90% of its area within b's box less its edge (a's mask holds at least its area), or within
    b's box where the two may share pixels (``shared``, per pair)."""
    inner = boxes[b] + _SHRINK
    if shared is not None:
        inner = np.where(shared[:, None], boxes[b], inner)
    width = np.minimum(boxes[a, 2], inner[:, 2]) - np.maximum(boxes[a, 0], inner[:, 0])
    height = np.minimum(boxes[a, 3], inner[:, 3]) - np.maximum(boxes[a, 1], inner[:, 1])
    room = np.clip(width, 0, None) * np.clip(height, 0, None)
    return (areas[a] < areas[b]) & (room >= INSIDE_SHARE * areas[a])


def _adjacent(masks: _Masks, a: int, b: int) -> bool:
    """Whether a's mask grown by one pixel (3x3) meets b's mask."""
    grown_box = masks.boxes[a] + _GROW
    cut = _overlap(grown_box, masks.boxes[b])
    if cut is None:
        return False
    return bool(np.any(masks.grown(a)[cut[0], cut[1]] & masks.mask(b)[cut[2], cut[3]]))


def mask_relations(
    label_map: np.ndarray,
    regions: Sequence[RegionFacts],
    bboxes: Sequence[Box],
    groups: Mapping[int, Sequence[int]] | None = None,
) -> tuple[tuple[tuple[str, str], ...], ...]:
    """The mask relations (inside, contains, adjacent) of the regions of one label map.

    Only pairs of different labels whose boxes come within one pixel of each other are looked
    at, on their boxes' crops; a region's mask, holes and grown mask are made once.

    Args:
        label_map: (H, W) integer label map the regions were extracted from.
        regions: the regions (their ``relations`` are not read).
        bboxes: each region's half-open pixel box [x0, y0, x1, y1), in the order of ``regions``.
        groups: region-based labels: label id -> its stored values (a label not in it: its id).

    Returns:
        Per region, in the order of ``regions``: (relation, other region id) pairs, the other
        regions in their order.
    """
    n = len(regions)
    boxes = np.asarray(bboxes, dtype=np.int64).reshape(n, 4)
    found: list[list[tuple[str, str]]] = [[] for _ in range(n)]
    if n < 2:
        return tuple(tuple(f) for f in found)
    labels = np.array([r.label_id for r in regions])
    first, second = np.triu_indices(n, 1)
    near = (
        (labels[first] != labels[second])
        & (boxes[first, 0] - 1 < boxes[second, 2])
        & (boxes[second, 0] < boxes[first, 2] + 1)
        & (boxes[first, 1] - 1 < boxes[second, 3])
        & (boxes[second, 1] < boxes[first, 3] + 1)
    )
    if not near.any():
        return tuple(tuple(f) for f in found)
    first, second = first[near], second[near]
    shared = _shared_values(labels, first, second, groups) if groups else None
    sharing = shared.tolist() if shared is not None else [False] * len(first)
    areas = np.array([r.area for r in regions])
    maybe_in = _may_lie_inside(boxes, areas, first, second, shared).tolist()
    maybe_around = _may_lie_inside(boxes, areas, second, first, shared).tolist()
    masks = _Masks(label_map, regions, boxes, groups)
    for k, (a, b) in enumerate(zip(first.tolist(), second.tolist(), strict=True)):
        id_a, id_b = regions[a].region_id, regions[b].region_id
        inside = _inside_shared if sharing[k] else _inside
        if maybe_in[k] and inside(masks, a, b):
            found[a].append(("inside", id_b))
            found[b].append(("contains", id_a))
        elif maybe_around[k] and inside(masks, b, a):
            found[a].append(("contains", id_b))
            found[b].append(("inside", id_a))
        elif not (sharing[k] and _share_pixels(masks, a, b)) and _adjacent(masks, a, b):
            found[a].append(("adjacent", id_b))
            found[b].append(("adjacent", id_a))
    return tuple(tuple(f) for f in found)


def _shared_values(
    labels: np.ndarray, first: np.ndarray, second: np.ndarray, groups: Mapping[int, Sequence[int]]
) -> np.ndarray:
    """Per pair of regions: whether their labels' values overlap (their masks may share pixels)."""
    values = {i: frozenset(groups.get(i, (i,))) for i in set(labels.tolist())}
    pairs = zip(labels[first].tolist(), labels[second].tolist(), strict=True)
    return np.array([not values[a].isdisjoint(values[b]) for a, b in pairs], dtype=bool)
