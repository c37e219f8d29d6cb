"""The online chat endpoint: ``POST /v1/chat/completions`` (non-streaming).

In order: the key (401), the body (400), the ``response_format`` (:mod:`.response_formats`), the
rate limits (429 with ``Retry-After`` in seconds as a float string, ``retry-after-ms`` and an
``{"error": {"type": "requests"|"tokens", "code": "rate_limit_exceeded"}}`` body; 429s consume
nothing), then latency (uniform in ``latency_ms``, ``asyncio.sleep``, so requests overlap as they
do at a provider), transport faults and the answer (:mod:`.completions`). A request costs one
request and ``prompt_tokens + max_tokens`` tokens (max_tokens from ``max_completion_tokens`` or
``max_tokens``, else ``default_max_tokens``). Transport faults (HTTP 500, HTTP 503, a hang of
``hang_s`` seconds that ends in 504) come from one RNG seeded with ``seed``, so a retried request
can succeed. Every answer carries the ``x-ratelimit-*`` headers of :mod:`.limits`.
"""

from __future__ import annotations

import asyncio
import json
import math
import time

from starlette.requests import Request
from starlette.responses import Response

from .answers import estimate_prompt_tokens
from .limits import format_duration
from .response_formats import refused_format
from .responses import error_response, json_response, unauthorized
from .state import ProviderState


class ChatEndpoint:
    """``POST /v1/chat/completions`` of a server.

    Args:
        state: the server's state (configuration, limits, counters, answers).
    """

    def __init__(self, state: ProviderState) -> None:
        self.state = state

    async def chat_completions(self, request: Request) -> Response:
        """``POST /v1/chat/completions``."""
        state = self.state
        state.hit("chat_completions")
        if not state.authorized(request.headers):
            return unauthorized(state, state.limits.headers(time.monotonic()))
        try:
            body = json.loads(await request.body())
        except ValueError:
            body = None
        if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
            state.count("status_400")
            return error_response(
                400,
                "The body must be JSON with a 'messages' list.",
                "invalid_request_error",
                None,
                state.limits.headers(time.monotonic()),
            )
        config = state.config
        refusal = refused_format(
            body.get("response_format"), config.response_formats, config.response_format_refusal
        )
        if refusal is not None:
            status, refusal_body = refusal
            state.count(f"status_{status}")
            return json_response(refusal_body, status, state.limits.headers(time.monotonic()))
        prompt_tokens = estimate_prompt_tokens(body["messages"])
        max_tokens = body.get("max_completion_tokens") or body.get("max_tokens")
        if not isinstance(max_tokens, int):
            max_tokens = config.default_max_tokens
        limits = state.limits
        now = time.monotonic()
        refused, wait = limits.acquire(prompt_tokens + max_tokens, now)
        headers = limits.headers(now)
        if refused:
            return self._rate_limited(refused, wait, headers)
        state.in_flight += 1
        state.max_in_flight = max(state.max_in_flight, state.in_flight)
        try:
            return await self._answer_online(body, prompt_tokens, headers)
        finally:
            state.in_flight -= 1

    def _rate_limited(self, refused: str, wait: float, headers: dict) -> Response:
        """The 429 of a request the ``refused`` limit holds back for ``wait`` seconds."""
        self.state.count("status_429")
        self.state.count(f"rate_limited_{refused}")
        headers["retry-after"] = f"{wait:.3f}"
        headers["retry-after-ms"] = str(math.ceil(wait * 1000))
        limit = headers[f"x-ratelimit-limit-{refused}"]
        return error_response(
            429,
            f"Rate limit reached for {refused} per min (limit {limit}). "
            f"Please try again in {format_duration(wait)}.",
            refused,
            "rate_limit_exceeded",
            headers,
        )

    async def _answer_online(self, body: dict, prompt_tokens: int, headers: dict) -> Response:
        state = self.state
        config = state.config
        low, high = config.latency_ms
        if high > 0:
            await asyncio.sleep(state.rng.uniform(low, high) / 1000.0)
        draw = state.rng.random()
        for name, rate in (
            ("http_500", config.fail_500_rate),
            ("http_503", config.fail_503_rate),
            ("hang", config.hang_rate),
        ):
            if draw < rate:
                state.faults[name] += 1
                return await self._transport_fault(name, headers)
            draw -= rate
        outcome = state.answer(body, prompt_tokens)
        state.count(f"status_{outcome.status}")
        state.record_answer(outcome, body)
        headers["x-request-id"] = state.new_id("req_")
        return json_response(outcome.body, outcome.status, headers)

    async def _transport_fault(self, name: str, headers: dict) -> Response:
        if name == "hang":
            await asyncio.sleep(self.state.config.hang_s)
            self.state.count("status_504")
            return error_response(
                504, "The request hung (injected fault).", "server_error", "timeout", headers
            )
        status = 500 if name == "http_500" else 503
        self.state.count(f"status_{status}")
        message = (
            "The server had an error while processing your request (injected fault)."
            if status == 500
            else "The engine is currently overloaded, please try again later (injected fault)."
        )
        return error_response(status, message, "server_error", None, headers)
