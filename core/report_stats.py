"""Numbers behind ``medgrit report``: box measures, histogram bins, the gallery's sample choice.

Boxes are Qwen-VL ``bbox_1000`` rows ``[x0, y0, x1, y1]`` of integers in [0, 1000), an (N, 4)
array; widths, heights and centres are in the same 0-999 units and areas are in thousandths
squared (a box over the whole image has area 1e6), so images of any size share one scale.
Pure: numpy only, no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
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
