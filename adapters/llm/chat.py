"""The shapes of one chat completion: the settings of a model (:class:`LLMSettings`), a request
(:class:`ChatRequest`), its answer (:class:`ChatResult`) and the counts of a client
(:class:`Usage`), what a generator sent and spent (:class:`Spend`, :func:`count_answer`); a
request's cache key (:func:`request_hash`) and HTTP body (:func:`chat_body`).

The API key is no part of them. Units: times in seconds, limits per minute, prices in USD per
million tokens. :mod:`medgrit.adapters.llm.client` sends the requests.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from medgrit.adapters.runtime import progress

RESPONSE_FORMATS = ("json_schema", "json_object", "json_object_schema", "none")


@dataclass(frozen=True)
class LLMSettings:
    """Endpoint, sampling and limit settings of one model (never the API key).

    Attributes:
        model: model name sent with every request.
        base_url: endpoint; ``None`` uses ``OPENAI_BASE_URL`` or the SDK default (OpenAI).
        temperature, max_tokens: sampling parameters (part of the cache key).
        requests_per_minute, tokens_per_minute: the account's limits; the client paces at them
            and adopts lower ones from the server's ``x-ratelimit-*`` headers.
        max_concurrency: requests in flight at most; ``None`` sizes the window by Little's
            law (limit x observed latency).
        timeout_s: seconds one attempt may take before it counts as a timeout.
        max_attempts: attempts per request for infrastructure failures (1 = no retry).
        price_input_per_million, price_output_per_million: USD per 1M prompt/completion tokens.
        response_format: the structured-output mode the caller builds ``ChatRequest.
            response_format`` for: ``json_schema``, ``json_object``, ``json_object_schema`` or
            ``none``.
    """

    model: str
    base_url: str | None = None
    temperature: float = 0.2
    max_tokens: int = 1024
    requests_per_minute: int = 500
    tokens_per_minute: int = 200_000
    max_concurrency: int | None = None
    timeout_s: float = 60.0
    max_attempts: int = 6
    price_input_per_million: float = 0.0
    price_output_per_million: float = 0.0
    response_format: str = "json_schema"

    def __post_init__(self) -> None:
        if not self.model:
            raise ValueError("LLM model is empty: pass a model name such as gpt-4o-mini")
        for name in ("max_tokens", "requests_per_minute", "tokens_per_minute", "max_concurrency"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"LLM {name} must be >= 1, got {getattr(self, name)}")
        if self.max_attempts < 1:
            raise ValueError(f"LLM max_attempts must be >= 1, got {self.max_attempts}")
        if self.timeout_s <= 0:
            raise ValueError(f"LLM timeout_s must be positive, got {self.timeout_s}")
        if self.response_format not in RESPONSE_FORMATS:
            raise ValueError(
                f"LLM response_format must be one of {', '.join(RESPONSE_FORMATS)}, "
                f"got {self.response_format!r}"
            )


@dataclass(frozen=True)
class ChatRequest:
    """One chat completion to ask for.

    Attributes:
        custom_id: the caller's id, returned with the result (unique within one call).
        messages: ``({"role": "system", "content": ...}, {"role": "user", "content": ...})``.
        response_format: passed through as the ``response_format`` argument (``None``: omitted).
    """

    custom_id: str
    messages: tuple[dict[str, str], ...]
    response_format: dict | None = None


@dataclass(frozen=True)
class ChatResult:
    """The answer to one :class:`ChatRequest`.

    ``content`` is ``None`` when the request failed for good; ``error`` then says why (see the
    module docstring). Token counts are the server's ``usage`` (the cached ones on a hit).
    """

    custom_id: str
    content: str | None
    prompt_tokens: int
    completion_tokens: int
    request_hash: str
    from_cache: bool = False
    error: str | None = None


@dataclass(frozen=True)
class Usage:
    """What a client sent and received so far.

    Attributes:
        requests_sent: HTTP requests sent (every attempt counts).
        prompt_tokens, completion_tokens: tokens of the answered requests (server ``usage``).
        retries: attempts after the first one.
        rate_limited: 429 answers received.
    """

    requests_sent: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    retries: int = 0
    rate_limited: int = 0


def estimate_cost(settings: LLMSettings, usage: Usage) -> float:
    """USD for ``usage`` at the settings' prices per million tokens."""
    return (
        usage.prompt_tokens * settings.price_input_per_million
        + usage.completion_tokens * settings.price_output_per_million
    ) / 1e6


@dataclass
class Spend:
    """What a run sent and spent (cache hits cost nothing)."""

    requests: int = 0
    cache_hits: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    batches: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        """JSON-ready counts for the manifest."""
        return {
            "requests": self.requests,
            "cache_hits": self.cache_hits,
            "prompt": self.prompt_tokens,
            "completion": self.completion_tokens,
            "cost_usd": round(self.cost_usd, 6),
        }


def count_answer(settings: LLMSettings, result: ChatResult, unit: str | None = None) -> None:
    """Advance the ``llm_requests`` and ``spend_usd`` progress counters
    (``medgrit.adapters.runtime.progress``) by an answer sent for (one request and its cost;
    failures and cache hits count nothing); ``unit``: the shard it belongs to."""
    if result.content is None or result.from_cache:
        return
    tokens = Usage(prompt_tokens=result.prompt_tokens, completion_tokens=result.completion_tokens)
    progress.advance("llm_requests", 1, unit=unit)
    progress.advance("spend_usd", estimate_cost(settings, tokens), unit=unit)


def request_hash(settings: LLMSettings, request: ChatRequest) -> str:
    """sha256 hex of the canonical JSON of (model, temperature, max_tokens, response_format,
    messages): the response cache key. ``custom_id`` is not part of it."""
    canonical = json.dumps(
        {
            "model": settings.model,
            "temperature": settings.temperature,
            "max_tokens": settings.max_tokens,
            "response_format": request.response_format,
            "messages": request.messages,
        },
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    )
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def chat_body(settings: LLMSettings, request: ChatRequest) -> dict[str, Any]:
    """The JSON body of ``POST /v1/chat/completions`` for ``request`` (also a batch line's)."""
    body: dict[str, Any] = {
        "model": settings.model,
        "messages": list(request.messages),
        "temperature": settings.temperature,
        "max_tokens": settings.max_tokens,
    }
    if request.response_format is not None:
        body["response_format"] = request.response_format
    return body
