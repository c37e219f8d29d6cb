"""One chat answer: the completion for a request body, faults and lies included.

With ``deterministic`` (the default) the answer, content faults and lies included, is a function
of the messages and ``seed`` alone, so the same request gives the same answer online and in a
batch. A retry (:mod:`.retries`) is answered with replacements of just the turns it asks for.
Content faults (a truncated JSON string, an invented box, a wrong ROC label) are drawn first;
lies (:mod:`.lies`) are drawn after the true answer and content faults, so the turns left true
are exactly those of the same request without lies, and a turn spoiled by a content fault is
never also a lie. ``style`` picks the writer of the true answer (:mod:`.answers` or
:mod:`.paraphrase`), and lies are told in it. An answer longer than ``max_tokens`` is cut there with
``finish_reason: "length"``. Limits, latency and transport faults are the online endpoint's.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from medgrit.schemas.llm import ImagePromptFacts

from .answers import (
    apply_content_fault,
    build_conversation,
    canonical_json,
    find_facts,
    requested_object,
)
from .config import ServerConfig
from .lies import tell_lies
from .paraphrase import paraphrase_conversation
from .retries import asked_turns, replacement_turns


@dataclass
class Outcome:
    """A chat answer: the completion body, or an error status and message; the lies it tells
    (ledger entries) and how many of its turns are true."""

    status: int
    body: dict
    fault: str | None = None
    lies: list[dict] = field(default_factory=list)
    honest_turns: int = 0


def answer_chat(
    body: dict,
    prompt_tokens: int,
    config: ServerConfig,
    server_rng: random.Random,
    new_id: Callable[[str], str],
) -> Outcome:
    """The completion for a chat request body (no limits, latency or transport faults).

    Args:
        body: the request body (its ``messages`` a list).
        prompt_tokens: the request's prompt tokens, reported in ``usage``.
        config: the server's configuration (seed, content fault and lie rates).
        server_rng: the server's RNG, drawn from when ``config.deterministic`` is off.
        new_id: makes the completion's id from a prefix.
    """
    messages = body.get("messages")
    try:
        if not isinstance(messages, list):
            raise ValueError("'messages' must be a list")
        facts, turns = find_facts(messages)
    except ValueError as exc:
        echo = requested_object(messages) if isinstance(messages, list) else None
        if echo is not None:  # a probe: answered with the object it asks for
            content = json.dumps(echo)
            completion = completion_body(
                body, content, prompt_tokens, math.ceil(len(content) / 4), "stop", new_id
            )
            return Outcome(200, completion)
        return Outcome(
            400,
            {
                "error": {
                    "message": str(exc),
                    "type": "invalid_request_error",
                    "param": "messages",
                    "code": None,
                }
            },
        )
    if config.deterministic:
        digest = hashlib.sha256(config.seed.to_bytes(8, "little", signed=True))
        digest.update(canonical_json(messages))
        rng = random.Random(int.from_bytes(digest.digest()[:8], "little"))
    else:
        rng = random.Random(server_rng.getrandbits(64))
    fault = _draw_content_fault(config, rng)
    # A retry gets replacements of only the turns it names (a whole answer if it names none
    # that can be written).
    conversation = replacement_turns(facts, asked_turns(messages), rng)
    write = paraphrase_conversation if config.style == "paraphrase" else build_conversation
    conversation = conversation or write(facts, turns, rng)
    spoiled: frozenset[int] = frozenset()
    if fault in ("invented_box", "wrong_label"):
        before = [dict(turn) for turn in conversation]
        apply_content_fault(fault, conversation, facts, rng)
        spoiled = frozenset(i for i, t in enumerate(before) if t != conversation[i])
    told: list[tuple[int, str]] = []
    if config.lie_rate > 0:  # drawn after the true answer, which the mode leaves unchanged
        told = tell_lies(
            conversation, facts, config.lie_rate, config.lie_classes, rng, spoiled, config.style
        )
    content = json.dumps({"conversation": conversation}, ensure_ascii=False)
    if fault == "malformed_json":
        content = content[: max(1, len(content) // 2)]
    max_tokens = body.get("max_completion_tokens") or body.get("max_tokens")
    completion_tokens = math.ceil(len(content) / 4)
    finish = "stop"
    if isinstance(max_tokens, int) and completion_tokens > max_tokens:
        content, completion_tokens, finish = content[: max_tokens * 4], max_tokens, "length"
    lies: list[dict] = []
    honest = 0
    if fault != "malformed_json" and finish == "stop":  # only turns sent whole count
        lies = ledger_entries(conversation, told, facts)
        honest = len(conversation) - len(told) - len(spoiled)
    completion = completion_body(body, content, prompt_tokens, completion_tokens, finish, new_id)
    return Outcome(200, completion, fault, lies, honest)


def _draw_content_fault(config: ServerConfig, rng: random.Random) -> str | None:
    """The content fault of one answer (one draw against the cumulative rates), or None."""
    draw = rng.random()
    for name, rate in (
        ("malformed_json", config.malformed_json_rate),
        ("invented_box", config.invented_box_rate),
        ("wrong_label", config.wrong_label_rate),
    ):
        if draw < rate:
            return name
        draw -= rate
    return None


def ledger_entries(
    conversation: list[dict], told: list[tuple[int, str]], facts: ImagePromptFacts
) -> list[dict]:
    """The ``GET /lies`` entry of each lie told: its class, the turn, and the label and box of
    each region it names, so a turn can be told apart from an identical text about others."""
    by_id = {r.id: r for r in facts.regions}
    return [
        {
            "class": name,
            **conversation[i],
            "regions": [
                {"label": by_id[rid].label, "box": list(by_id[rid].box)}
                for rid in conversation[i]["region_ids"]
                if rid in by_id
            ],
        }
        for i, name in told
    ]


def completion_body(
    body: dict,
    content: str,
    prompt_tokens: int,
    completion_tokens: int,
    finish: str,
    new_id: Callable[[str], str],
) -> dict:
    """A ``chat.completion`` object answering ``body`` with ``content``."""
    return {
        "id": new_id("chatcmpl-"),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": str(body.get("model", "medgrit-test")),
        "system_fingerprint": "fp_medgrit_test",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content, "refusal": None},
                "logprobs": None,
                "finish_reason": finish,
            }
        ],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }
