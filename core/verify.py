"""Checks every QA turn against the regions of its image before anything is written.

A turn passes when:
- every ``<box>`` in its question and answer is well formed and equals the ``bbox_1000`` of a
  region of the same image (``malformed_box``, ``unknown_box``);
- it refers only to region ids of that image, and to at least one (``unknown_region_id``,
  ``no_region``);
- an ROC answer names the label of the region asked about (``roc_label_missing``);
- no structure is named with the wrong patient side: wherever the text pairs a side word with the
  name of a referenced lateral structure, that sided name is the label of a referenced region
  (``laterality_mismatch``);
- its task is one of VG, ROC, RC, MIA (``unknown_task``) and both texts are non-empty
  (``empty_text``).
Each failure reason is a stable snake_case code stored in reject rows.
"""

from __future__ import annotations

import re

from medgrit.core.generation import QA, TASKS, RegionFacts
from medgrit.core.text import laterality_of, parse_boxes, strip_laterality


def verify_qa(qa: QA, regions: dict[str, RegionFacts]) -> str | None:
    """The reason ``qa`` fails, or None when it passes.

    Args:
        qa: the turn.
        regions: all regions of the turn's image, by region id.
    """
    if qa.task not in TASKS:
        return "unknown_task"
    if not qa.question.strip() or not qa.answer.strip():
        return "empty_text"
    if not qa.region_ids:
        return "no_region"
    if any(rid not in regions for rid in qa.region_ids):
        return "unknown_region_id"
    known_boxes = {tuple(r.bbox_1000) for r in regions.values()}
    for text in (qa.question, qa.answer):
        boxes, malformed = parse_boxes(text)
        if malformed:
            return "malformed_box"
        if any(box not in known_boxes for box in boxes):
            return "unknown_box"
    referenced = [regions[rid] for rid in qa.region_ids]
    if qa.task == "ROC" and not any(r.label.lower() in qa.answer.lower() for r in referenced):
        return "roc_label_missing"
    text = f"{qa.question}\n{qa.answer}".lower()
    named = {r.label.lower() for r in referenced}
    for base in {strip_laterality(r.label).lower() for r in referenced if laterality_of(r.label)}:
        for side in re.findall(rf"\b(left|right)\s+{re.escape(base)}\b", text):
            if f"{side} {base}" not in named:
                return "laterality_mismatch"
    return None
