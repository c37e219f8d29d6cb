"""Reading a chat request and writing its true answer, or one spoiled by a content fault.

A request's last user message holds one line ``Image facts (JSON): {...}``
(:class:`medgrit.schemas.llm.ImagePromptFacts`) and may ask for ``conversation of N turns``
(default 4). The answer is a valid :class:`medgrit.schemas.llm.LLMConversation`: an MIA turn
that lists the regions, then VG / ROC / RC turns that use each region's exact box and label.
A message without facts but with a JSON object (a client's probe) asks to be answered with that
object. Content faults (an invented box, a wrong ROC label) spoil a true answer in place.
Token counts are ``ceil(characters / 4)``.
"""

from __future__ import annotations

import json
import math
import random
import re
from typing import Any

from pydantic import ValidationError

from medgrit.core.text import format_box, format_ref, laterality_of, strip_laterality
from medgrit.schemas.llm import FACTS_MARKER, ImagePromptFacts, PromptRegion

MAX_MIA_REGIONS = 8
_TURNS_PATTERN = re.compile(r"conversation of (\d+) turns")
_DECOY_LABELS = ("liver", "spleen", "pancreas", "stomach", "aorta", "tumor", "polyp", "optic disc")


def content_text(content: Any) -> str:
    """A message's text: the string, or the text parts of a content-part list joined."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts: count the text ones
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


def estimate_prompt_tokens(messages: list[dict]) -> int:
    """ceil(total characters of all message contents / 4)."""
    chars = sum(len(content_text(m.get("content"))) for m in messages if isinstance(m, dict))
    return math.ceil(chars / 4)


def find_facts(messages: list[dict]) -> tuple[ImagePromptFacts, int]:
    """The image facts and asked number of turns in the last user message.

    Raises:
        ValueError: no user message, no ``Image facts (JSON):`` line, or facts that do not follow
            :class:`ImagePromptFacts`.
    """
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            text = content_text(message.get("content"))
            break
    else:
        raise ValueError("no user message")
    start = text.find(FACTS_MARKER)
    if start < 0:
        raise ValueError(f"the last user message has no '{FACTS_MARKER}' line")
    end = text.find("\n", start)
    line = text[start + len(FACTS_MARKER) : end if end >= 0 else len(text)]
    try:
        facts = ImagePromptFacts.model_validate_json(line)
    except ValidationError as exc:
        raise ValueError(f"image facts do not follow ImagePromptFacts: {exc}") from exc
    if not facts.regions:
        raise ValueError("image facts list no regions")
    match = _TURNS_PATTERN.search(text)
    turns = min(max(int(match.group(1)), 1), 16) if match else 4
    return facts, turns


def requested_object(messages: list) -> dict | None:
    """The JSON object a last user message without image facts asks to be answered with
    (``Reply with this JSON object: {"ok": true}``, a client's probe); None when it has none."""
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            text = content_text(message.get("content"))
            break
    else:
        return None
    start = text.find("{")
    if FACTS_MARKER in text or start < 0:
        return None
    try:
        value, _ = json.JSONDecoder().raw_decode(text, start)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def build_conversation(facts: ImagePromptFacts, turns: int, rng: random.Random) -> list[dict]:
    """A valid conversation about ``facts``: one MIA turn, then ``turns - 1`` region turns.

    Every box is a region's own box, ROC answers name the label, RC answers give position, size
    and the patient's side, and no side word is put before a lateral label other than its own.
    The text names no structure but the image's labels, no modality or plane but the image's,
    writes positions only as grid phrases and sides only as "the patient's left/right".
    """
    regions = facts.regions
    view = facts.view
    listed = regions[:MAX_MIA_REGIONS]
    out = [
        {
            "task": "MIA",
            "question": rng.choice(
                (
                    f"What does this {view} image show?",
                    "Describe this image and list the structures you can see.",
                    f"Which structures are visible in this {view} image?",
                )
            ),
            "answer": mia_answer(view, [(r.label, r.box) for r in listed]),
            "region_ids": [r.id for r in listed],
        }
    ]
    order = list(regions)
    rng.shuffle(order)
    start = rng.randrange(3)
    for i in range(turns - 1):
        task = ("VG", "ROC", "RC")[(start + i) % 3]
        out.append(_region_turn(task, order[i % len(order)], regions, view, rng))
    return out


def mia_answer(view: str, items: list[tuple[str, tuple[int, ...]]]) -> str:
    """An MIA answer listing ``items`` (label, box) in this order."""
    listing = ", ".join(f"{format_ref(label)}{format_box(box)}" for label, box in items)
    count = f"{len(items)} labelled structure{'s' if len(items) > 1 else ''}"
    return f"This {view} image shows {count}: {listing}."


def vg_question(label: str, rng: random.Random) -> str:
    """A VG question asking where ``label`` is."""
    return rng.choice(
        (
            f"Where is the {label} in this image?",
            f"Locate the {label}.",
            f"Can you find the {label}? Give its box.",
        )
    )


def rc_answer(
    region: PromptRegion,
    view: str,
    *,
    position: str | None = None,
    size: str | None = None,
    side: str | None = None,
    extra: str = "",
) -> str:
    """An RC answer about ``region``; the keywords replace its own words (lies only)."""
    side = side or region.side
    side_text = f", on the patient's {side} side" if side else ""
    return (
        f"The region {format_box(region.box)} is the {region.label}, a {size or region.size} "
        f"structure in the {position or region.position} part of this {view} image"
        f"{side_text}{extra}."
    )


def _region_turn(
    task: str, region: PromptRegion, regions: list[PromptRegion], view: str, rng: random.Random
) -> dict:
    box = format_box(region.box)
    label = region.label
    if task == "VG":
        same = [r for r in regions if r.label == label]
        question = vg_question(label, rng)
        answer = format_ref(label) + "".join(format_box(r.box) for r in same)
        return {
            "task": "VG",
            "question": question,
            "answer": answer,
            "region_ids": [r.id for r in same],
        }
    if task == "ROC":
        question = rng.choice(
            (
                f"What is the structure in {box}?",
                f"Which structure does the region {box} contain?",
                f"Name the region at {box}.",
            )
        )
        answer = rng.choice((f"This is the {label}.", f"The region shows the {label}."))
        return {"task": "ROC", "question": question, "answer": answer, "region_ids": [region.id]}
    question = rng.choice(
        (f"Describe the region {box}.", f"What can you tell me about the region {box}?")
    )
    answer = rc_answer(region, view)
    return {"task": "RC", "question": question, "answer": answer, "region_ids": [region.id]}


def invent_box(known: set[tuple[int, ...]], near: tuple[int, ...], rng: random.Random) -> tuple:
    """A plausible box in [0, 1000) near ``near`` that is none of the ``known`` boxes."""
    x0, y0, x1, y1 = near
    for _ in range(64):
        dx, dy = rng.randint(-60, 60), rng.randint(-60, 60)
        box = (
            min(max(x0 + dx, 0), 998),
            min(max(y0 + dy, 0), 998),
            min(max(x1 + dx, 1), 999),
            min(max(y1 + dy, 1), 999),
        )
        if box[0] < box[2] and box[1] < box[3] and box not in known:
            return box
    while True:
        a, b = sorted(rng.sample(range(1000), 2))
        c, d = sorted(rng.sample(range(1000), 2))
        if (a, c, b, d) not in known:
            return (a, c, b, d)


def wrong_label_for(region: PromptRegion, regions: list[PromptRegion], rng: random.Random) -> str:
    """A label that an ROC answer about ``region`` must not give: the other side, or another."""
    side = laterality_of(region.label)
    if side:
        return f"{'right' if side == 'left' else 'left'} {strip_laterality(region.label)}"
    own = region.label.lower()
    others = sorted({r.label for r in regions if own not in r.label.lower()})
    return rng.choice(others or [d for d in _DECOY_LABELS if own not in d] or ["unknown mass"])


def apply_content_fault(
    fault: str, turns: list[dict], facts: ImagePromptFacts, rng: random.Random
) -> None:
    """Spoil ``turns`` in place with an invented box or a wrong ROC label."""
    regions = facts.regions
    if fault == "invented_box":
        known = {tuple(r.box) for r in regions}
        with_box = [t for t in turns if "<box>" in t["answer"]]
        if not with_box:  # e.g. a retry of one ROC turn: no box to invent
            return
        turn = rng.choice(with_box)
        region = next(r for r in regions if r.id in turn["region_ids"])
        fake = format_box(invent_box(known, tuple(region.box), rng))
        turn["answer"] = turn["answer"].replace(format_box(region.box), fake, 1)
    elif fault == "wrong_label":
        roc = [t for t in turns if t["task"] == "ROC"]
        if not roc:
            region = rng.choice(regions)
            turns[-1] = _region_turn("ROC", region, regions, facts.view, rng)
            roc = [turns[-1]]
        turn = rng.choice(roc)
        region = next(r for r in regions if r.id == turn["region_ids"][0])
        turn["answer"] = f"This is the {wrong_label_for(region, regions, rng)}."


def has_feedback(messages: list) -> bool:
    """Whether the last message feeds back why a previous answer, or part of it, was rejected."""
    last = messages[-1] if messages else None
    text = content_text(last.get("content")) if isinstance(last, dict) else ""
    return "previous answer was rejected" in text


def canonical_json(obj: Any) -> bytes:
    """``obj`` as canonical JSON (sorted keys, no spaces): equal requests give equal bytes."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
