"""Numbers behind ``medgrit report``: box measures, histogram bins, the gallery's sample choice,
and which reject rows the report shows as examples of their reason.

Boxes are Qwen-VL ``bbox_1000`` rows ``[x0, y0, x1, y1]`` of integers in [0, 1000), an (N, 4)
array; widths, heights and centres are in the same 0-999 units and areas are in thousandths
squared (a box over the whole image has area 1e6), so images of any size share one scale.

A rejected turn's detail is the text ``medgrit.core.conversations.turn_detail`` writes:
``turn N (TASK) 'words': answer`` (the words that broke the rule as a Python string literal, left
out when the rule names none; the answer cut to 200 characters); :func:`parse_turn_detail`
reads it back. Pure: numpy only, no I/O.
"""

from __future__ import annotations

import ast
import re
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

QWEN_SCALE = 1000


@dataclass(frozen=True)
class BoxMeasures:
    """Per-box width, height, area and centre (x, y), each a float array of length N."""

    widths: np.ndarray
    heights: np.ndarray
    areas: np.ndarray
    centre_x: np.ndarray
    centre_y: np.ndarray


def box_measures(bbox_1000: np.ndarray) -> BoxMeasures:
    """Width, height, area and centre of each ``bbox_1000`` box.

    Args:
        bbox_1000: (N, 4) integers ``[x0, y0, x1, y1]``; N may be 0.
    """
    boxes = np.asarray(bbox_1000, dtype=np.float64).reshape(-1, 4)
    widths = boxes[:, 2] - boxes[:, 0]
    heights = boxes[:, 3] - boxes[:, 1]
    return BoxMeasures(
        widths=widths,
        heights=heights,
        areas=widths * heights,
        centre_x=(boxes[:, 0] + boxes[:, 2]) / 2,
        centre_y=(boxes[:, 1] + boxes[:, 3]) / 2,
    )


def linear_bins(upper: float, count: int = 25) -> np.ndarray:
    """``count`` equal bins over [0, upper]: fixed edges make reports of two builds comparable."""
    return np.linspace(0.0, float(upper), count + 1)


def centre_histogram(measures: BoxMeasures, bins: int = 20) -> np.ndarray:
    """Box centres counted on a ``bins`` x ``bins`` grid over the image; rows are y (top first)."""
    counts, _, _ = np.histogram2d(
        measures.centre_y,
        measures.centre_x,
        bins=bins,
        range=[[0, QWEN_SCALE], [0, QWEN_SCALE]],
    )
    return counts.astype(np.int64)


def ranked(counts: Mapping[str, int]) -> dict[str, int]:
    """``counts`` most frequent first, ties by name: the same data always lists the same way."""
    return dict(sorted(counts.items(), key=lambda pair: (-pair[1], pair[0])))


def choose_samples(
    image_ids: Sequence[str], modalities: Sequence[str], n: int, seed: int
) -> list[int]:
    """Indices of ``n`` images for the gallery: one of each modality first, then any.

    The choice depends only on the set of (image id, modality) pairs and the seed, never on the
    order rows were read in (shard sizes and runners do not change it). When ``n`` is below
    the number of modalities, the first ``n`` modalities in name order are covered.

    Returns:
        Indices into ``image_ids``, ordered by modality and then image id.
    """
    if len(image_ids) != len(modalities):
        raise ValueError("image_ids and modalities differ in length")
    if n <= 0 or not image_ids:
        return []
    order = sorted(range(len(image_ids)), key=lambda i: image_ids[i])
    rng = np.random.default_rng(seed)
    shuffled = [order[i] for i in rng.permutation(len(order))]
    chosen: list[int] = []
    seen: set[str] = set()
    for i in shuffled:  # the first shuffled image of each modality
        if modalities[i] not in seen:
            seen.add(modalities[i])
            chosen.append(i)
    chosen.sort(key=lambda i: modalities[i])
    chosen = chosen[:n]
    taken = set(chosen)
    for i in shuffled:
        if len(chosen) >= n:
            break
        if i not in taken:
            chosen.append(i)
            taken.add(i)
    return sorted(chosen, key=lambda i: (modalities[i], image_ids[i]))


_TURN = re.compile(
    r"turn (\d+) \(([^()]*)\)(?: ('(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"))?: (.*)",
    re.DOTALL,
)


@dataclass(frozen=True)
class TurnDetail:
    """A rejected turn as its reject row records it.

    Attributes:
        number: the turn's place in the generated answer, from 1.
        task: its task as written (``VG``; anything for an ``unknown_task`` turn).
        words: the words that broke the rule, or None when the rule names none.
        answer: the answer as written, cut to 200 characters.
    """

    number: int
    task: str
    words: str | None
    answer: str


def parse_turn_detail(detail: str) -> TurnDetail | None:
    """The turn a ``verify`` reject row's detail records, or None for any other detail."""
    found = _TURN.fullmatch(detail)
    if found is None:
        return None
    words = None
    if found.group(3) is not None:
        try:
            words = ast.literal_eval(found.group(3))
        except (ValueError, SyntaxError):
            return None
    return TurnDetail(int(found.group(1)), found.group(2), words, found.group(4))


def find_words(text: str, words: str) -> list[tuple[int, int]]:
    """Where ``words`` occur in ``text``, as [start, end) spans: case and runs of white space
    do not matter ("Left  Kidney" is found for "left kidney"). Empty ``words`` occur nowhere."""
    parts = words.split()
    if not parts:
        return []
    pattern = re.compile(r"\s+".join(re.escape(p) for p in parts), re.IGNORECASE)
    return [m.span() for m in pattern.finditer(text)]


def hide_names(text: str, names: Mapping[str, str], shortest: int = 3) -> str:
    """``text`` with each of ``names`` (a name and what stands for it: ``{"case_007": "[case]"}``)
    replaced, longest name first; names under ``shortest`` characters are left, since they
    would hide ordinary words and numbers and cannot name a patient."""
    for name in sorted((n for n in names if len(n) >= shortest), key=lambda n: (-len(n), n)):
        text = text.replace(name, names[name])
    return text


@dataclass(frozen=True)
class RejectRow:
    """One reject row as the report considers it for an example.

    Attributes:
        reason: the row's reason.
        stage: where it was dropped (``load``, ``regions``, ``generate``, ``verify``).
        detail: what it records (the words of a turn, or a message).
        dataset: its dataset, or None.
        case_id: its case's pseudonym, or None.
        image_id: its image, or None for a record-level row.
        modality: its image's modality when the dataset holds the image, else None.
        source: the row's source reference; read only to hide file names in ``detail``.
    """

    reason: str
    stage: str
    detail: str
    dataset: str | None
    case_id: str | None
    image_id: str | None
    modality: str | None
    source: str = ""

    @property
    def pictured(self) -> bool:
        """Whether the dataset holds the row's image (so it can be shown)."""
        return self.modality is not None

    def unit(self) -> str:
        """What two examples of one reason should differ in: the image, else the case."""
        return self.image_id or self.case_id or ""


def _group(row: RejectRow) -> tuple[str, str]:
    return row.dataset or "", row.modality or ""


def _rank(row: RejectRow) -> tuple:
    """Pictured rows first, then a checksum of the image or case (a spread over cases, not the
    first case in name order); of one image's rows, the first detail in code point order (what
    a column's ``min`` gives); the rest makes the order total."""
    return (*_unit_rank(row.modality, row.unit()), row.detail, row.stage, row.source)


def _unit_rank(modality: str | None, unit: str) -> tuple[bool, int, str]:
    """The first part of :func:`_rank`: the same for every row of one image or case."""
    return modality is None, zlib.crc32(unit.encode("utf-8", "surrogatepass")), unit


def best_units(
    keys: Iterable[tuple[str, str | None, str | None, str]], per_group: int
) -> set[tuple[str, str | None, str | None, str]]:
    """Of distinct ``(reason, dataset, modality, unit)`` keys (``unit``: the image id, else the
    case id, else ""), those whose rows :func:`reject_candidates` can keep: the ``per_group``
    best-ranked units per reason and (dataset, modality). Rows of other units can be dropped
    before building :class:`RejectRow` objects: the kept rows are the same."""
    groups: dict[tuple[str, str, str], list[tuple[str, str | None, str | None, str]]] = {}
    for key in set(keys):
        groups.setdefault((key[0], key[1] or "", key[2] or ""), []).append(key)
    best: set[tuple[str, str | None, str | None, str]] = set()
    for members in groups.values():
        members.sort(key=lambda k: _unit_rank(k[2], k[3]))
        best.update(members[:per_group])
    return best


def reject_candidates(rows: Iterable[RejectRow], per_group: int) -> list[RejectRow]:
    """The rows that may become examples: per reason and (dataset, modality), the best-ranked
    row of each of the ``per_group`` best-ranked images (or cases), best first.

    What it keeps depends on the set of rows only, so it can run shard by shard on the kept
    rows plus the next shard's and keep what one run over all rows would.
    """
    units: dict[tuple[str, str, str], dict[str, list[RejectRow]]] = {}
    for row in rows:
        units.setdefault((row.reason, *_group(row)), {}).setdefault(row.unit(), []).append(row)
    kept: list[RejectRow] = []
    for group in sorted(units):
        members = units[group]
        best = sorted(members, key=lambda u: _unit_rank(members[u][0].modality, u))
        kept.extend(min(members[u], key=_rank) for u in best[:per_group])
    return kept


def choose_reject_examples(rows: Iterable[RejectRow], n: int) -> dict[str, list[RejectRow]]:
    """Up to ``n`` example rows per reason, spread over datasets and modalities: the best row of
    each (dataset, modality) in name order (rows without a shown image after the others), then
    the second of each, and so on.

    Args:
        rows: candidate rows (all of them, or what :func:`reject_candidates` kept).
        n: examples per reason at most.

    Returns:
        Example rows by reason (reasons in name order).
    """
    groups: dict[str, dict[tuple[str, str], list[RejectRow]]] = {}
    for row in reject_candidates(rows, n):
        groups.setdefault(row.reason, {}).setdefault(_group(row), []).append(row)
    chosen: dict[str, list[RejectRow]] = {}
    for reason in sorted(groups):
        # Rows whose image the dataset holds first: an image shows more than words alone.
        lists = [groups[reason][g] for g in sorted(groups[reason], key=lambda g: (not g[1], g))]
        picked: list[RejectRow] = []
        for level in range(n):
            picked.extend(group[level] for group in lists if level < len(group))
        chosen[reason] = picked[:n]
    return chosen
