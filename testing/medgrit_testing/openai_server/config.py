"""The fake provider's configuration: limits, latency, faults, lies, style, batches, auth, formats.

:class:`ServerConfig` is the one typed configuration of a server; the command line
(:mod:`.cli`) and ``POST /admin/config`` both build one. The names of the faults, lie classes and
``response_format`` kinds it accepts are defined here too, since the configuration validates them.
"""

from __future__ import annotations

import json
from typing import Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

TRANSPORT_FAULTS: tuple[str, ...] = ("http_500", "http_503", "hang")
CONTENT_FAULTS: tuple[str, ...] = ("malformed_json", "invented_box", "wrong_label")
LIE_CLASSES: tuple[str, ...] = (
    "swapped_box",
    "invented_structure",
    "wrong_label",
    "wrong_position",
    "wrong_size",
    "wrong_side",
    "other_structure",
    "wrong_modality",
    "wrong_plane",
    "question_box",
    "wrong_region_ids",
    "invented_appearance",
    "wrong_body_region",
    "wrong_modality_word",
    "synonym_wrong_region",
    "wrong_relation",
)
# Lies told only when asked for by name (not drawn by default): an answer that carries
# chat-template special tokens, as text copied from a prompt log or a hostile label would.
MARKUP_LIES: tuple[str, ...] = ("injected_markup",)
# What a request's response_format asks for: its type, and json_object with a schema field
# (llama-cpp-python's grammar-constrained JSON) as a kind of its own.
RESPONSE_FORMAT_KINDS: tuple[str, ...] = (
    "text",
    "json_object",
    "json_object_schema",
    "json_schema",
)
RefusalStyle = Literal["http_400", "http_422", "http_500_validation", "ignore"]
# How answers are written: the fixed phrasing of plain templates, or fluent clinical prose with
# synonyms, body parts and relations (:mod:`.paraphrase`); both are true of the facts.
AnswerStyle = Literal["plain", "paraphrase"]
ANSWER_STYLES: tuple[str, ...] = get_args(AnswerStyle)


class ServerConfig(BaseModel):
    """Behaviour of the test server: limits, latency, faults, batches, auth."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    rpm: int | None = Field(None, ge=1, description="Requests per minute; None: no limit.")
    tpm: int | None = Field(None, ge=1, description="Tokens per minute; None: no limit.")
    default_max_tokens: int = Field(1024, ge=1, description="Token cost of a request's answer.")
    latency_ms: tuple[float, float] = Field((0.0, 0.0), description="Uniform latency range.")
    fail_500_rate: float = Field(0.0, ge=0.0, le=1.0)
    fail_503_rate: float = Field(0.0, ge=0.0, le=1.0)
    hang_rate: float = Field(0.0, ge=0.0, le=1.0)
    hang_s: float = Field(30.0, ge=0.0, description="How long a hung request sleeps (then 504).")
    malformed_json_rate: float = Field(0.0, ge=0.0, le=1.0)
    invented_box_rate: float = Field(0.0, ge=0.0, le=1.0)
    wrong_label_rate: float = Field(0.0, ge=0.0, le=1.0)
    lie_rate: float = Field(
        0.0, ge=0.0, le=1.0, description="Chance that each turn of an answer is a fluent lie."
    )
    lie_classes: tuple[str, ...] = Field(
        LIE_CLASSES, min_length=1, description="Kinds of lie to tell (see LIE_CLASSES)."
    )
    style: AnswerStyle = Field(
        "plain", description="How answers are written: plain templates or paraphrase (prose)."
    )
    seed: int = 0
    deterministic: bool = Field(
        True, description="The answer (content faults included) depends only on messages+seed."
    )
    api_key: SecretStr | None = Field(None, description="Required bearer key; None: no auth.")
    batch_delay_s: float = Field(0.0, ge=0.0, description="Time a batch spends in_progress.")
    batch_fail_rate: float = Field(0.0, ge=0.0, le=1.0, description="Share of lines failing.")
    batch_expire: bool = Field(False, description="Batches expire after half their lines.")
    response_formats: tuple[str, ...] | None = Field(
        None,
        description="response_format kinds answered (see RESPONSE_FORMAT_KINDS); None: all. "
        "A request without response_format is always answered.",
    )
    response_format_refusal: RefusalStyle = Field(
        "http_400",
        description="How another kind is refused: OpenAI's 400, FastAPI's 422, "
        "llama-cpp-python's 500 validation error, or not at all (answered as if absent).",
    )

    @model_validator(mode="after")
    def _check(self) -> ServerConfig:
        low, high = self.latency_ms
        if not 0 <= low <= high:
            raise ValueError("latency_ms must be (min, max) with 0 <= min <= max")
        unknown_kinds = [k for k in self.response_formats or () if k not in RESPONSE_FORMAT_KINDS]
        if unknown_kinds:
            raise ValueError(
                f"unknown response_format kind(s) {', '.join(unknown_kinds)}; "
                f"choose from {', '.join(RESPONSE_FORMAT_KINDS)}"
            )
        if self.fail_500_rate + self.fail_503_rate + self.hang_rate > 1.0 + 1e-9:
            raise ValueError("fail_500_rate + fail_503_rate + hang_rate must be at most 1")
        if self.malformed_json_rate + self.invented_box_rate + self.wrong_label_rate > 1.0 + 1e-9:
            raise ValueError(
                "malformed_json_rate + invented_box_rate + wrong_label_rate must be at most 1"
            )
        known = (*LIE_CLASSES, *MARKUP_LIES)
        unknown = [name for name in self.lie_classes if name not in known]
        if unknown:
            raise ValueError(
                f"unknown lie class(es) {', '.join(unknown)}; choose from {', '.join(known)}"
            )
        return self

    def to_json(self) -> str:
        """The configuration as JSON, key included (for the child process's stdin only)."""
        data = self.model_dump(mode="json")
        data["api_key"] = self.api_key.get_secret_value() if self.api_key else None
        return json.dumps(data)
