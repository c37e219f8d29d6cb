"""The JSON an LLM must answer with, and the facts it is given (contract of ``--generator llm``).

The user prompt carries one line ``Image facts (JSON): {...}`` whose object follows
:class:`ImagePromptFacts`; the model answers with one JSON object following
:class:`LLMConversation`. Region ids in both are the short prompt ids (``r0``, ``r1``, ...).
"""

from __future__ import annotations

from typing import Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    model_serializer,
)

from medgrit.core.vocab import Task

FACTS_MARKER = "Image facts (JSON):"


class PromptRegion(BaseModel):
    """One region as the model sees it."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(description="Short prompt id, e.g. r0.")
    label: str
    box: tuple[int, int, int, int] = Field(description="Qwen-VL bbox_1000 (x1, y1, x2, y2).")
    position: str
    size: str
    side: Literal["left", "right"] | None = Field(
        default=None, description="The patient's side the label names, if any."
    )
    image_side: Literal["left", "right", "midline"] = Field(
        default="midline",
        description="The half of the image the box centre lies in (midline: within 2% of it).",
    )
    relations: list[str] = Field(
        default_factory=list,
        description="Verified relations to other regions, e.g. 'above the spleen (r2)'.",
    )


class ImagePromptFacts(BaseModel):
    """Everything the model may know about an image: text attributes only, no pixels."""

    model_config = ConfigDict(extra="forbid")

    modality: str
    view: str
    sequence: str | None = Field(
        default=None,
        description="The MR sequence as the text may name it (e.g. FLAIR); left out of the "
        "JSON when the image has none.",
    )
    regions: list[PromptRegion]

    @model_serializer(mode="wrap")
    def _without_no_sequence(self, handler: SerializerFunctionWrapHandler) -> dict:
        data = handler(self)
        if self.sequence is None:
            data.pop("sequence", None)
        return data


class LLMTurn(BaseModel):
    """One question-answer turn as the model writes it."""

    model_config = ConfigDict(extra="forbid")

    task: Task
    question: str = Field(min_length=1)
    answer: str = Field(min_length=1)
    region_ids: list[str] = Field(min_length=1)


class LLMConversation(BaseModel):
    """The model's whole answer: a multi-turn conversation about one image."""

    model_config = ConfigDict(extra="forbid")

    conversation: list[LLMTurn] = Field(min_length=1)


def response_json_schema() -> dict:
    """The JSON schema passed as ``response_format`` where the server supports it."""
    return {
        "type": "json_schema",
        "json_schema": {
            "name": "medgrit_conversation",
            "strict": True,
            "schema": LLMConversation.model_json_schema(),
        },
    }
