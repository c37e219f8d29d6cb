"""Structured-output modes (``response_format``) and finding the one an endpoint accepts.

OpenAI-compatible servers differ in how they can be asked for JSON. A mode names one way:

- ``json_schema``: ``{"type": "json_schema", "json_schema": {"name", "strict", "schema"}}``,
  generation constrained to the answer's schema (OpenAI, Azure OpenAI, vLLM, Ollama, llama.cpp's
  ``llama-server``);
- ``json_object_schema``: ``{"type": "json_object", "schema": ...}``, the same constraint in
  the form llama-cpp-python's server (and ``llama-server``) reads;
- ``json_object``: ``{"type": "json_object"}``, any JSON object (the schema is in the prompt);
- ``none``: no ``response_format`` at all, JSON asked for by the prompt only.

:data:`MODE_ORDER` is that list, strongest constraint first. ``auto`` asks the endpoint: one
small chat request per mode, in that order (:func:`negotiate_response_format`), and takes the
first one answered with HTTP 200 and a JSON object. A mode is refused by a 400, 404 or 422, or
by a 500 whose body is a request validation error (llama-cpp-python's answer to a type it does
not know, see ``medgrit.adapters.llm.client.is_request_validation_error``). An outage
(connection error, timeout, 429, any other 5xx, still failing after ``PROBE_ATTEMPTS``
attempts with backoff) and a refused key are no refusal: they raise :class:`LLMEndpointError`
and nothing is chosen. An explicit mode is not negotiated; :func:`check_response_format` asks
once whether the endpoint refuses it, so a build fails before its first shard rather than in
every one. Results are kept per process, by (base URL, model).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import time

import openai

from medgrit.adapters.llm.chat import ChatRequest, LLMSettings, chat_body
from medgrit.adapters.llm.client import RequestFailure, classify_error, make_retrying, redact
from medgrit.core.failures import InfrastructureError
from medgrit.schemas.llm import LLMConversation, response_json_schema

log = logging.getLogger(__name__)

MODE_ORDER: tuple[str, ...] = ("json_schema", "json_object_schema", "json_object", "none")
"""The modes ``auto`` tries, in order."""
AUTO = "auto"

PROBE_ATTEMPTS = 3
"""Attempts of one probe when the endpoint fails (timeouts, 429, 5xx), with backoff."""
PROBE_MAX_TOKENS = 32
REFUSAL_STATUSES = frozenset({400, 404, 422})
PROBE_SCHEMA: dict = {
    "type": "object",
    "properties": {"ok": {"type": "boolean"}},
    "required": ["ok"],
    "additionalProperties": False,
}
PROBE_MESSAGES: tuple[dict[str, str], ...] = (
    {"role": "system", "content": "You answer with one JSON object and nothing else."},
    {"role": "user", "content": 'Reply with this JSON object: {"ok": true}'},
)

_NEGOTIATED: dict[tuple[str | None, str], str] = {}
_CHECKED: set[tuple[str | None, str, str]] = set()


class LLMEndpointError(InfrastructureError, RuntimeError):
    """The endpoint cannot serve the build as configured; the message is one line saying why
    and what to do. ``reason``: ``unreachable``, ``authentication_error``,
    ``response_format_refused``, ``no_json_answer`` or ``unexpected_answer``."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def response_format_for(mode: str) -> dict | None:
    """The ``response_format`` argument of a conversation request in ``mode`` (None: omit it).

    Raises:
        ValueError: for ``auto`` (resolved per endpoint first) or an unknown mode.
    """
    if mode == "json_schema":
        return response_json_schema()
    if mode == "json_object_schema":  # grammar-constrained JSON
        return {"type": "json_object", "schema": LLMConversation.model_json_schema()}
    if mode == "json_object":
        return {"type": "json_object"}
    if mode == "none":
        return None
    raise ValueError(
        f"response_format {mode!r} is not a mode of one request: use one of "
        f"{', '.join(MODE_ORDER)} ('auto' is resolved per endpoint before the build)"
    )


def probe_response_format(mode: str) -> dict | None:
    """``response_format_for(mode)`` with the probe's one-field schema instead of the answer's
    (a conversation does not fit in ``PROBE_MAX_TOKENS``)."""
    if mode == "json_schema":
        schema = {"name": "medgrit_probe", "strict": True, "schema": PROBE_SCHEMA}
        return {"type": "json_schema", "json_schema": schema}
    if mode == "json_object_schema":
        return {"type": "json_object", "schema": PROBE_SCHEMA}
    return response_format_for(mode)


def is_json_object(content: str | None) -> bool:
    """Whether ``content`` is one JSON object (surrounding white space allowed)."""
    if content is None:
        return False
    try:
        return isinstance(json.loads(content), dict)
    except ValueError:
        return False


@dataclasses.dataclass(frozen=True)
class ProbeAnswer:
    """How the endpoint answered one probe: ``status`` 200 with ``content``, or a refusal
    (``status`` and the server's ``detail``)."""

    mode: str
    status: int
    content: str | None = None
    detail: str = ""

    @property
    def refused(self) -> bool:
        return self.status != 200

    @property
    def accepted(self) -> bool:
        """Answered with a JSON object: the mode works."""
        return self.status == 200 and is_json_object(self.content)

    def describe(self) -> str:
        if self.refused:
            return f"{self.mode}: HTTP {self.status} {self.detail}".rstrip()
        return f"{self.mode}: answered without a JSON object ({(self.content or '')[:60]!r})"


def _endpoint(settings: LLMSettings, client: openai.AsyncOpenAI) -> str:
    return settings.base_url or str(client.base_url)


async def probe(
    client: openai.AsyncOpenAI, settings: LLMSettings, mode: str, api_key: str = ""
) -> ProbeAnswer:
    """Ask the endpoint one small request in ``mode`` (retrying outages, see the module
    docstring).

    Raises:
        LLMEndpointError: the endpoint is unreachable, refused the key, or answered in a way
            that is neither an answer nor a refusal.
    """
    small = dataclasses.replace(settings, max_tokens=PROBE_MAX_TOKENS, temperature=0.0)
    body = chat_body(small, ChatRequest("probe", PROBE_MESSAGES, probe_response_format(mode)))
    last: openai.APIStatusError | None = None

    async def once() -> str:
        nonlocal last
        last = None  # the status of this attempt only
        try:
            text = await client.post("/chat/completions", cast_to=str, body=body)
        except openai.APIStatusError as error:
            last = error
            raise classify_error(error, time.time()) from None
        except openai.OpenAIError as error:
            raise classify_error(error, time.time()) from None
        try:
            message = json.loads(text)["choices"][0]["message"]
        except (ValueError, TypeError, KeyError, IndexError):  # not a chat completion
            raise RequestFailure("malformed_response", True) from None
        content = message.get("content") if isinstance(message, dict) else None
        return content if isinstance(content, str) else ""

    where = _endpoint(settings, client)
    try:
        content = await make_retrying(PROBE_ATTEMPTS)(once)
    except RequestFailure as failure:
        status = last.status_code if last is not None else 0
        detail = redact(_detail(last), api_key) if last is not None else ""
        if failure.reason == "authentication_error":
            raise LLMEndpointError(
                "authentication_error",
                f"the LLM endpoint {where} refused the API key (HTTP {status}, "
                "authentication_error): set OPENAI_API_KEY or --llm-api-key-block to a key it "
                "accepts, then run the build again",
            ) from None
        if failure.reason == "unsupported_request" or status in REFUSAL_STATUSES:
            log.info("LLM endpoint %s refused response_format %s: %s", where, mode, detail)
            return ProbeAnswer(mode, status, detail=detail)
        if failure.retryable:
            raise LLMEndpointError(
                "unreachable",
                f"the LLM endpoint {where} is unreachable ({failure.reason} after "
                f"{PROBE_ATTEMPTS} attempts{f': {detail}' if detail else ''}); check "
                "--llm-base-url and that the server is up, then run the build again",
            ) from None
        raise LLMEndpointError(
            "unexpected_answer",
            f"the LLM endpoint {where} answered a chat request with HTTP {status} "
            f"({failure.reason}{f': {detail}' if detail else ''}); check --llm-base-url",
        ) from None
    return ProbeAnswer(mode, 200, content)


def _detail(error: openai.APIStatusError) -> str:
    """The server's error message, shortened to one line."""
    body = error.body
    message = body.get("message") if isinstance(body, dict) else None
    text = " ".join((message if isinstance(message, str) else error.response.text).split())
    return text if len(text) <= 200 else f"{text[:199]}…"


def _client(settings: LLMSettings, api_key: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(
        api_key=api_key, base_url=settings.base_url, max_retries=0, timeout=settings.timeout_s
    )


async def negotiate_response_format(settings: LLMSettings, api_key: str) -> str:
    """The first mode of :data:`MODE_ORDER` the endpoint answers with a JSON object.

    One probe per mode until one is accepted; the result is kept for the process, by
    ``(settings.base_url, settings.model)``.

    Raises:
        LLMEndpointError: unreachable, a refused key, or no mode answered with a JSON object.
    """
    key = (settings.base_url, settings.model)
    if key in _NEGOTIATED:
        return _NEGOTIATED[key]
    async with _client(settings, api_key) as client:
        where = _endpoint(settings, client)
        answers = []
        for mode in MODE_ORDER:
            answer = await probe(client, settings, mode, api_key)
            if answer.accepted:
                log.info("LLM endpoint %s: response_format %s", where, mode)
                _NEGOTIATED[key] = mode
                return mode
            answers.append(answer)
    tried = "; ".join(a.describe() for a in answers)
    raise LLMEndpointError(
        "no_json_answer",
        f"the LLM endpoint {where} answered no probe with a JSON object ({tried}); check "
        "--llm-model, or pass --llm-response-format with the mode to use",
    )


async def check_response_format(settings: LLMSettings, api_key: str, mode: str) -> None:
    """Fail now when the endpoint refuses ``mode`` (one probe, kept for the process).

    An answer that is not JSON is no refusal: the mode was chosen, and the answers are
    checked anyway.

    Raises:
        LLMEndpointError: the endpoint refuses ``mode``, is unreachable, or refused the key.
    """
    key = (settings.base_url, settings.model, mode)
    if key in _CHECKED:
        return
    async with _client(settings, api_key) as client:
        answer = await probe(client, settings, mode, api_key)
        where = _endpoint(settings, client)
    if answer.refused:
        raise LLMEndpointError("response_format_refused", refused_message(where, mode, answer))
    _CHECKED.add(key)


def refused_message(where: str, mode: str, answer: ProbeAnswer | None = None) -> str:
    """The one line of a build in ``mode`` that the endpoint refuses."""
    said = f" (HTTP {answer.status}: {answer.detail})" if answer is not None else ""
    if mode == "none":
        return (
            f"the LLM endpoint {where} refuses a plain chat request{said}; check --llm-model "
            "and --llm-base-url"
        )
    return (
        f"the LLM endpoint {where} refuses response_format {mode}{said}; build with "
        "--llm-response-format auto to use a mode it accepts"
    )


def resolve_response_format(settings: LLMSettings, api_key: str, requested: str) -> str:
    """The mode to build with: negotiated for ``auto``, else ``requested`` once checked.

    Blocking (it runs the probes on an event loop of its own).

    Raises:
        LLMEndpointError: see :func:`negotiate_response_format` and
            :func:`check_response_format`.
    """
    if requested == AUTO:
        return asyncio.run(negotiate_response_format(settings, api_key))
    asyncio.run(check_response_format(settings, api_key, requested))
    return requested
