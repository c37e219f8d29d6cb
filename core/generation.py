"""What each image's conversation asks about, chosen deterministically from a seed.

This module plans conversations (which tasks, which regions, which phrasing); the text itself comes
from the Jinja templates in ``prompts/`` (see ``medgrit.adapters.text.templates``). Tasks:
VG (visual grounding: name -> box), ROC (referring object classification: box -> name),
RC (referring captioning: box -> description) and MIA (medical image analysis: whole image).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from medgrit.core.ids import derive_seed
from medgrit.core.vocab import REGION_TASKS, Task


@dataclass(frozen=True)
class ImageFacts:
    """What the text may say about an image (``sequence``: the MR sequence its source names,
    as written, ``FLAIR``; empty when none: ``medgrit.core.sequences``)."""

    image_id: str
    modality: str
    plane: str
    width: int
    height: int
    sequence: str = ""


@dataclass(frozen=True)
class RegionFacts:
    """What the text may say about a region (all boxes are Qwen-VL ``bbox_1000``).

    ``relations`` holds the region's relations to other regions of its image that its mask
    gives, as (relation, other region id): "inside", "contains" or "adjacent" (see
    ``medgrit.core.relations``, which also derives the relations its box and area give).
    """

    region_id: str
    label: str
    label_id: int
    instance: int
    bbox_1000: tuple[int, int, int, int]
    area: int
    position: str
    size: str
    relations: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class QA:
    """One question-answer turn of a conversation."""

    task: str
    question: str
    answer: str
    region_ids: tuple[str, ...]


@dataclass(frozen=True)
class Generated:
    """A generator's output for one image: candidate turns (verified again before writing),
    the hash of the prompt that produced them, tokens spent, and turns or requests it dropped
    as (reason, detail)."""

    turns: tuple[QA, ...]
    prompt_hash: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    rejects: tuple[tuple[str, str], ...] = field(default_factory=tuple)


class Generator(Protocol):
    """Writes conversations for many images at once (a shard's worth)."""

    name: str
    template_hash: str
    text_rules: object  # a medgrit.core.verify.TextRules, or None for no text rules

    def generate_all(
        self, items: list[tuple[ImageFacts, list[RegionFacts]]]
    ) -> list[Generated]: ...


@dataclass(frozen=True)
class TurnPlan:
    """A turn before rendering: the task, the regions it refers to and the phrasing variants."""

    task: Task
    region_ids: tuple[str, ...]
    question_variant: int
    answer_variant: int


def _shared_boxes(regions: list[RegionFacts]) -> set[tuple[int, int, int, int]]:
    """The boxes that regions of two or more labels have (nested regions can)."""
    labels: dict[tuple[int, int, int, int], set[int]] = {}
    for r in regions:
        labels.setdefault(r.bbox_1000, set()).add(r.label_id)
    return {box for box, ids in labels.items() if len(ids) > 1}


def plan_conversation(
    image: ImageFacts,
    regions: list[RegionFacts],
    seed: int,
    variants: dict[str, tuple[int, int]],
    max_region_turns: int = 3,
    max_mia_regions: int = 6,
) -> list[TurnPlan]:
    """Plan one multi-turn conversation for an image: an MIA turn, then region turns.

    Args:
        image: the image.
        regions: its regions (merged rows have ``instance == 0``).
        seed: build seed; combined with the image id so each image draws its own choices.
        variants: per task, the number of question and answer phrasings available.
        max_region_turns: at most this many region-level turns (one label each).
        max_mia_regions: the MIA turn lists at most this many labels, the largest first.

    Returns:
        The turns in order. Empty when the image has no regions.
    """
    merged = [r for r in regions if r.instance == 0]
    if not merged:
        return []
    rng = np.random.default_rng(derive_seed(seed, image.image_id))

    def pick(task: str) -> tuple[int, int]:
        nq, na = variants[task]
        return int(rng.integers(nq)), int(rng.integers(na))

    largest = sorted(merged, key=lambda r: (-r.area, r.label_id))[:max_mia_regions]
    largest.sort(key=lambda r: r.label_id)
    turns = [TurnPlan("MIA", tuple(r.region_id for r in largest), *pick("MIA"))]

    by_label: dict[int, list[RegionFacts]] = {}
    for r in regions:
        by_label.setdefault(r.label_id, []).append(r)
    label_order = [merged[i].label_id for i in rng.permutation(len(merged))]
    shared = _shared_boxes(regions)
    for label_id in label_order[:max_region_turns]:
        task = REGION_TASKS[int(rng.integers(len(REGION_TASKS)))]
        rows = by_label[label_id]
        instances = [r for r in rows if r.instance > 0]
        if task != "VG" and shared and any(r.bbox_1000 in shared for r in instances or rows):
            task = "VG"  # its box is another label's too (nested regions): ask for the box
        if task == "VG":
            chosen = instances or rows
            region_ids = tuple(r.region_id for r in chosen)
        else:
            pool = instances or rows
            region_ids = (pool[int(rng.integers(len(pool)))].region_id,)
        turns.append(TurnPlan(task, region_ids, *pick(task)))
    return turns
