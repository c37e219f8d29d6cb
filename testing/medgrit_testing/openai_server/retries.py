"""Answers to a retry: a request that asks again for only some turns of an earlier answer.

The LLM generator's retry (``prompts/llm_user.j2`` rendered with ``failed``) is one user message
that says "Part of your previous answer was rejected", holds the image facts of the regions
concerned (:data:`medgrit.schemas.llm.FACTS_MARKER`) and names each turn it asks for on a line
``Turn N: task T, region_ids r1, r2``. The answer holds one honest turn per asked turn, in the
order asked, with that task and exactly those region ids; a turn naming a region the facts lack
is left out (no honest turn can be written about it), and a retry left with no turn is answered
as a whole ask. Content faults and lies then spoil these turns as they would any turn of a whole
answer (:mod:`.completions`).
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

from medgrit.core.text import format_box, format_ref
from medgrit.schemas.llm import ImagePromptFacts, PromptRegion

from .answers import _region_turn, content_text, mia_answer

RETRY_MARKER = "Part of your previous answer was rejected"
_ASKED = re.compile(r"^Turn (\d+): task (MIA|VG|ROC|RC), region_ids (\S.*)$", re.MULTILINE)


@dataclass(frozen=True)
class AskedTurn:
    """One turn a retry asks for: its number in the earlier answer, its task and region ids."""

    number: int
    task: str
    region_ids: tuple[str, ...]


def asked_turns(messages: list) -> list[AskedTurn]:
    """The turns the last user message asks for again, in order; empty when it is no retry."""
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            text = content_text(message.get("content"))
            break
    else:
        return []
    if RETRY_MARKER not in text:
        return []
    return [
        AskedTurn(int(m[1]), m[2], tuple(rid.strip() for rid in m[3].split(",") if rid.strip()))
        for m in _ASKED.finditer(text)
    ]


def replacement_turns(
    facts: ImagePromptFacts, asked: list[AskedTurn], rng: random.Random
) -> list[dict]:
    """An honest turn for each of ``asked`` whose regions the facts list, in order."""
    by_id = {r.id: r for r in facts.regions}
    out = []
    for turn in asked:
        regions = [by_id[rid] for rid in turn.region_ids if rid in by_id]
        if regions and len(regions) == len(turn.region_ids):
            out.append(honest_turn(turn.task, regions, facts, rng))
    return out


def honest_turn(
    task: str, regions: list[PromptRegion], facts: ImagePromptFacts, rng: random.Random
) -> dict:
    """A true turn of ``task`` about exactly ``regions`` (their ids in this order)."""
    ids = [r.id for r in regions]
    if task == "MIA":
        question = rng.choice(
            (f"What does this {facts.view} image show?", "Which structures does this image show?")
        )
        answer = mia_answer(facts.view, [(r.label, r.box) for r in regions])
        return {"task": "MIA", "question": question, "answer": answer, "region_ids": ids}
    if task == "VG":
        labels = list(dict.fromkeys(r.label for r in regions))
        answer = " ".join(
            format_ref(label) + "".join(format_box(r.box) for r in regions if r.label == label)
            for label in labels
        )
        question = f"Where {'is' if len(labels) == 1 else 'are'} the {' and the '.join(labels)}?"
        return {"task": "VG", "question": question, "answer": answer, "region_ids": ids}
    turn = _region_turn(task, regions[0], facts.regions, facts.view, rng)
    return {**turn, "region_ids": ids}
