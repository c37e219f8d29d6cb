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
  (``empty_text``);
- with :class:`TextRules`: question and answer lengths are within bounds (``question_too_long``,
  ``answer_too_short``, ``answer_too_long``) and no run of ``copy_words`` words is copied from the
  generator's instructions (``copied_instructions``).
Each failure reason is a stable snake_case code stored in reject rows.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from medgrit.core.generation import QA, TASKS, RegionFacts
from medgrit.core.text import laterality_of, parse_boxes, strip_laterality

_WORD = re.compile(r"[a-z0-9]+")


def word_shingles(text: str, size: int) -> frozenset[tuple[str, ...]]:
    """All runs of ``size`` consecutive lower-case words of ``text``."""
    words = _WORD.findall(text.lower())
    return frozenset(tuple(words[i : i + size]) for i in range(len(words) - size + 1))


@dataclass(frozen=True)
class TextRules:
    """Bounds for generated text (an LLM's answers; templates need none).

    Attributes:
        max_question_chars: longest question allowed.
        min_answer_chars: shortest answer allowed.
        max_answer_chars: longest answer allowed.
        copy_words: a run of this many words shared with the instructions counts as copied.
        instruction_shingles: word runs of the instructions (see :func:`word_shingles`).
    """

    max_question_chars: int = 600
    min_answer_chars: int = 2
    max_answer_chars: int = 2000
    copy_words: int = 8
    instruction_shingles: frozenset[tuple[str, ...]] = field(default_factory=frozenset)

    @classmethod
    def for_instructions(cls, instructions: str, copy_words: int = 8) -> TextRules:
        """Rules that flag answers copying ``copy_words`` words in a row from ``instructions``."""
        return cls(
            copy_words=copy_words, instruction_shingles=word_shingles(instructions, copy_words)
        )


def check_text(qa: QA, rules: TextRules) -> str | None:
    """The reason a turn's text breaks ``rules``, or None."""
    if len(qa.question) > rules.max_question_chars:
        return "question_too_long"
    if len(qa.answer.strip()) < rules.min_answer_chars:
        return "answer_too_short"
    if len(qa.answer) > rules.max_answer_chars:
        return "answer_too_long"
    if rules.instruction_shingles and not rules.instruction_shingles.isdisjoint(
        word_shingles(f"{qa.question} {qa.answer}", rules.copy_words)
    ):
        return "copied_instructions"
    return None


def verify_qa(
    qa: QA, regions: dict[str, RegionFacts], rules: TextRules | None = None
) -> str | None:
    """The reason ``qa`` fails, or None when it passes.

    Args:
        qa: the turn.
        regions: all regions of the turn's image, by region id.
        rules: length and copying rules for generated text (none for templates).
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
    if rules is not None:
        return check_text(qa, rules)
    return None
