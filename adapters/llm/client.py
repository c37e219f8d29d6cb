"""Async client for OpenAI-compatible chat endpoints, at the provider's rate limit.

One :class:`OpenAICompatibleClient` serves all requests of a shard: :meth:`complete_all` runs
them concurrently and returns one :class:`ChatResult` per request, in input order. It is
transport only: answers already known never reach it (``medgrit.adapters.llm.cache.AnswerCache``,
which the generator asks first). Each request:

1. a slot of the in-flight window: ``max_concurrency`` requests at most when set, else sized
   by Little's law from the limit in force and the observed latency
   (``medgrit.core.ratelimit.littles_law_window``), so that the limiter, not the window, binds;
2. the shared RPM/TPM limiter (:mod:`medgrit.core.ratelimit`), whose grant the request waits
   for once the SDK has built it (and a new connection is open), just before it is written
   (:mod:`medgrit.adapters.llm.pacing`): its token cost is estimated as
   ``ceil(chars / 4) + max_tokens`` and corrected from ``usage`` after the call; the
   ``x-ratelimit-*`` headers of every response (429s included) lower the limits and levels when
   the server is stricter than the settings. A retry goes before every first attempt that
   waits for a slot or a grant;
3. the call, through ``openai.AsyncOpenAI`` with the SDK's own retries off (``max_retries=0``,
   so retries are not multiplied and every 429 reaches the limiter) over HTTP connection pools
   of at most ``POOL_CONNECTIONS`` connections each (a request goes to the least busy pool; a
   pool is added when all are full): an httpx pool's cost of assigning a queued request to a
   connection grows with both counts, so one pool of hundreds of connections is slower than
   several small ones. The body is serialised once per request and sent with
   the SDK's generic ``post(..., cast_to=<http response>)``, which returns the raw response
   (headers included) with the SDK's auth, base URL, timeout and error classes: the typed
   ``chat.completions.with_raw_response.create`` walks its parameter annotations on every call
   and cost more client CPU than everything else per request (about 1 ms of 3).

Retries (tenacity, ``max_attempts`` attempts, exponential backoff with full jitter, capped at
``MAX_BACKOFF_S`` seconds) happen only for failures of the infrastructure, which a later attempt
can fix: 429 (rate limited), 5xx (server error), timeouts (``timeout_s`` seconds per attempt)
and connection errors, plus an HTTP body that is not a chat completion (a proxy's error page).
A 429 is retried no sooner than its ``retry-after-ms`` / ``Retry-After`` (seconds or HTTP
date), and pauses the shared limiter for as long, so the other requests wait too. Other 4xx
answers are final: the same request would fail again. A request that fails for good becomes a
``ChatResult`` with ``content=None`` and a stable snake_case ``error``: ``rate_limited``,
``server_error``, ``timeout``, ``connection_error``, ``malformed_response``, ``bad_request``
(400, 404, 409, 422, ...), ``authentication_error`` (401, 403: the key or its permissions;
every other request fails the same way) or ``api_error``.

The API key is held by the SDK client only: it is not part of :class:`LLMSettings`, not in any
``repr``, and the client's log messages and error reasons never contain it.

Units: times in seconds, limits per minute, prices in USD per million tokens.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import re
import time
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any

import httpx
import openai
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    wait_random_exponential,
)

from medgrit.adapters.llm.chat import (
    ChatRequest,
    ChatResult,
    LLMSettings,
    Usage,
    chat_body,
    estimate_cost,
    request_hash,
)
from medgrit.adapters.llm.pacing import (
    ADMISSION,
    Admission,
    AdmissionStopped,
    AsyncRateLimiter,
    InFlightWindow,
    admission_hook,
)
from medgrit.adapters.runtime.interrupt import stop_requested
from medgrit.core.ratelimit import RateLimiter, estimate_tokens, littles_law_window
from medgrit.core.ratelimit_headers import RateLimitHeaders, parse_retry_after

try:  # openai >= 3 runs on httpx2; older releases on httpx
    import httpx2 as _httpx2
except ImportError:  # pragma: no cover - depends on the installed SDK
    _httpx2 = None

log = logging.getLogger(__name__)

MAX_BACKOFF_S = 30.0
"""Cap of one exponential backoff wait (a Retry-After may ask for longer and is honoured)."""
BACKOFF_MULTIPLIER_S = 0.5
"""Scale of the backoff: after attempt n, wait uniform(0, min(cap, 0.5 * 2**(n-1))) seconds."""

POOL_CONNECTIONS = 32
"""Connections per HTTP pool (see the module docstring)."""
INITIAL_LATENCY_S = 1.0
"""The latency the window is sized for before any answer was timed."""
LATENCY_SMOOTHING = 0.1
"""Weight of the newest answer in the moving averages of latency and tokens per request."""


class RequestFailure(Exception):
    """One attempt failed; ``reason`` is the stable snake_case name of why.

    ``retryable``: a later attempt can succeed (429, 5xx, timeout, connection error, an
    unreadable body); ``retry_after``: seconds the server asked to wait, if it did.
    """

    def __init__(self, reason: str, retryable: bool, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retryable = retryable
        self.retry_after = retry_after


def _is_retryable(error: BaseException) -> bool:
    return isinstance(error, RequestFailure) and error.retryable


_VALIDATION_WORDS = re.compile(
    r"response_format|json_schema|validation error|input should be", re.IGNORECASE
)  # the parameter names, and pydantic's and FastAPI's wording of a refused body


def is_request_validation_error(body: str) -> bool:
    """Whether an error answer's body reads as the server refusing the request's shape.

    llama-cpp-python's server turns every exception, its request validation included, into
    HTTP 500: a ``response_format`` type other than ``text`` or ``json_object`` gets
    ``{"error": {"message": "1 validation error: {'type': 'literal_error', 'loc': ('body',
    'response_format', 'type'), 'msg': \"Input should be 'text' or 'json_object'\", 'input':
    'json_schema', ...}", "type": "internal_server_error", "param": null, "code": null}}``.
    The same request gets the same answer again, so it is not an outage.
    """
    return _VALIDATION_WORDS.search(body[:4096]) is not None


def status_reason(status: int, body: str = "") -> str:
    """The ``ChatResult.error`` reason of an HTTP error status (``body``: the answer's text).

    ``unsupported_request``: a 500 whose body is a request validation error
    (:func:`is_request_validation_error`): final, like a 400, not a server outage.
    """
    if status == 429:
        return "rate_limited"
    if status == 500 and is_request_validation_error(body):
        return "unsupported_request"
    if status >= 500:
        return "server_error"
    if status in (401, 403):
        return "authentication_error"
    return "bad_request"


_BACKOFF = wait_random_exponential(multiplier=BACKOFF_MULTIPLIER_S, max=MAX_BACKOFF_S)


def backoff_wait(retry_state: RetryCallState) -> float:
    """Seconds before the next attempt: full-jitter exponential, or at least ``Retry-After``.

    The jitter spreads retries of requests that failed together; a server-named wait is a
    floor (plus up to 10% jitter so the retries do not all arrive at once).
    """
    outcome = retry_state.outcome
    error = outcome.exception() if outcome is not None else None
    retry_after = error.retry_after if isinstance(error, RequestFailure) else None
    if retry_after is not None:
        return retry_after * (1.0 + 0.1 * random.random())
    return _BACKOFF(retry_state)


def make_retrying(max_attempts: int) -> AsyncRetrying:
    """The retry policy (see the module docstring) for one call; reraises the last failure."""
    return AsyncRetrying(
        stop=stop_after_attempt(max_attempts),
        wait=backoff_wait,
        retry=retry_if_exception(_is_retryable),
        reraise=True,
    )


def classify_error(error: openai.OpenAIError, wall_now: float) -> RequestFailure:
    """Map an SDK exception to a :class:`RequestFailure` (``wall_now``: for HTTP dates).

    Retryable: 429, 5xx, timeouts, connection errors and unreadable bodies; a 500 that is a
    request validation error is the final ``unsupported_request`` (see :func:`status_reason`).
    """
    if isinstance(error, openai.APITimeoutError):
        return RequestFailure("timeout", True)
    if isinstance(error, openai.APIConnectionError):
        return RequestFailure("connection_error", True)
    if isinstance(error, openai.APIStatusError):
        status = error.status_code
        reason = status_reason(status, error.response.text)  # read by the SDK already
        retryable = reason in ("rate_limited", "server_error")
        retry_after = parse_retry_after(error.response.headers, wall_now) if retryable else None
        return RequestFailure(reason, retryable, retry_after)
    if isinstance(error, openai.APIResponseValidationError):
        return RequestFailure("malformed_response", True)
    return RequestFailure("api_error", False)


def make_http_client(max_connections: int, event_hooks: dict | None = None) -> Any:
    """The SDK's default async HTTP client with a pool of ``max_connections`` connections (and
    the httpx ``event_hooks`` given)."""
    if _httpx2 is not None and issubclass(openai.DefaultAsyncHttpxClient, _httpx2.AsyncClient):
        limits: Any = _httpx2.Limits(
            max_connections=max_connections, max_keepalive_connections=max_connections
        )
    else:  # pragma: no cover - openai < 3
        limits = httpx.Limits(
            max_connections=max_connections, max_keepalive_connections=max_connections
        )
    return openai.DefaultAsyncHttpxClient(limits=limits, event_hooks=event_hooks)


def _response_class() -> type:
    """The HTTP response class of the SDK's transport (``cast_to`` it for the raw response)."""
    if _httpx2 is not None and issubclass(openai.DefaultAsyncHttpxClient, _httpx2.AsyncClient):
        return _httpx2.Response
    return httpx.Response  # pragma: no cover - openai < 3


def redact(text: str, secret: str) -> str:
    """``text`` with every occurrence of ``secret`` replaced (for log lines from server text)."""
    return text.replace(secret, "***") if secret else text


class OpenAICompatibleClient:
    """Rate-limited, retrying chat completions against any OpenAI-compatible endpoint.

    Use as ``async with OpenAICompatibleClient(settings, key) as client: results = await
    client.complete_all(requests)``. One instance per event loop.

    Args:
        settings: model, limits, retries and prices.
        api_key: the endpoint's key; kept by the SDK client only, never logged.
    """

    def __init__(self, settings: LLMSettings, api_key: str) -> None:
        self.settings = settings
        self._secret = api_key
        self.limiter = AsyncRateLimiter(
            RateLimiter(
                settings.requests_per_minute,
                settings.tokens_per_minute,
                time.monotonic(),
            )
        )
        self.adaptive = settings.max_concurrency is None
        self.latency_s = INITIAL_LATENCY_S
        self.tokens_per_request = 0.0
        self.window = InFlightWindow(settings.max_concurrency or self._sized_window())
        self._admit = admission_hook(self.limiter, stop_requested)
        self._pools: list[openai.AsyncOpenAI] = []
        self._loads: list[int] = []
        self._client = self._add_pool()
        self._post = self._pooled_post
        self._response_class = _response_class()
        self._requests_sent = 0
        self._prompt_tokens = 0
        self._completion_tokens = 0
        self._retries = 0
        self._rate_limited = 0

    def __repr__(self) -> str:
        return (
            f"OpenAICompatibleClient(model={self.settings.model!r}, "
            f"base_url={str(self._client.base_url)!r})"
        )

    async def __aenter__(self) -> OpenAICompatibleClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the HTTP connections."""
        for pool in self._pools:
            await pool.close()

    # -- window and pools ----------------------------------------------------------------------

    def _sized_window(self) -> int:
        limiter = self.limiter.limiter
        return littles_law_window(
            limiter.requests_per_minute,
            limiter.tokens_per_minute,
            self.tokens_per_request,
            self.latency_s,
        )

    def _observe_answer(self, latency_s: float, tokens: int) -> None:
        """Fold one answer's latency and token cost into the averages; resize the window."""
        if self.tokens_per_request == 0.0:
            self.tokens_per_request = float(tokens)
        a = LATENCY_SMOOTHING
        self.latency_s += a * (latency_s - self.latency_s)
        self.tokens_per_request += a * (tokens - self.tokens_per_request)
        if self.adaptive:
            self.window.resize(self._sized_window())

    @property
    def pools(self) -> int:
        """HTTP connection pools opened so far."""
        return len(self._pools)

    def _add_pool(self) -> openai.AsyncOpenAI:
        size = min(POOL_CONNECTIONS, self.settings.max_concurrency or POOL_CONNECTIONS)
        pool = openai.AsyncOpenAI(
            api_key=self._secret,
            base_url=self.settings.base_url,
            max_retries=0,
            timeout=self.settings.timeout_s,
            http_client=make_http_client(size, {"request": [self._admit]}),
        )
        self._pools.append(pool)
        self._loads.append(0)
        return pool

    async def _pooled_post(self, path: str, **kwargs: Any) -> Any:
        """The SDK's ``post`` on the least busy pool (a new pool when all are full)."""
        loads = self._loads
        index = min(range(len(loads)), key=loads.__getitem__)
        if loads[index] >= POOL_CONNECTIONS:
            self._add_pool()
            index = len(loads) - 1
        loads[index] += 1
        try:
            return await self._pools[index].post(path, **kwargs)
        finally:
            loads[index] -= 1

    # -- accounting ----------------------------------------------------------------------------

    @property
    def usage(self) -> Usage:
        """Counts so far (a snapshot)."""
        return Usage(
            requests_sent=self._requests_sent,
            prompt_tokens=self._prompt_tokens,
            completion_tokens=self._completion_tokens,
            retries=self._retries,
            rate_limited=self._rate_limited,
        )

    def cost(self, usage: Usage | None = None) -> float:
        """USD for ``usage`` (default: this client's) at the settings' prices."""
        return estimate_cost(self.settings, self.usage if usage is None else usage)

    # -- requests ------------------------------------------------------------------------------

    async def complete_all(
        self,
        requests: Sequence[ChatRequest],
        on_result: Callable[[ChatResult], None] | None = None,
    ) -> list[ChatResult]:
        """All ``requests`` concurrently (bounded by ``max_concurrency``), results in input order;
        ``on_result`` is called with each result as it arrives (on this client's loop).

        A request that fails for good gives a result with ``error`` set; nothing is raised for
        it. Unexpected exceptions (bugs) cancel the other requests and propagate.
        """

        async def one(request: ChatRequest) -> ChatResult:
            result = await self.complete(request)
            if on_result is not None:
                on_result(result)
            return result

        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(one(request)) for request in requests]
        return [task.result() for task in tasks]

    async def complete(self, request: ChatRequest) -> ChatResult:
        """One request: the limiter, then the call (with retries)."""
        key = request_hash(self.settings, request)
        settings = self.settings
        body = json.dumps(chat_body(settings, request), ensure_ascii=False).encode("utf-8")
        tokens = estimate_tokens(request.messages, settings.max_tokens)
        attempts = 0

        async def once() -> tuple[str, int, int]:
            nonlocal attempts
            attempts += 1
            if attempts > 1:
                self._retries += 1
            return await self._attempt(body, tokens, retry=attempts > 1)

        try:
            content, prompt, completion = await make_retrying(settings.max_attempts)(once)
        except RequestFailure as failure:
            log.warning("LLM request %s failed for good: %s", request.custom_id, failure.reason)
            return ChatResult(request.custom_id, None, 0, 0, key, error=failure.reason)
        return ChatResult(request.custom_id, content, prompt, completion, key)

    def _failure(self, error: openai.OpenAIError, admission: Admission) -> RequestFailure:
        """The RequestFailure of a failed call; a 429 pauses the limiter, every answer's
        ``x-ratelimit-*`` headers are observed."""
        if admission.stopped:  # a client that wraps the hook's exception
            return RequestFailure("stopped", False)
        limiter = self.limiter.limiter
        failure = classify_error(error, time.time())
        response = getattr(error, "response", None)
        now = self.limiter.clock()
        limited = failure.reason == "rate_limited"
        if response is not None:
            # A 429 took nothing at the server: adopt its limits, not its levels.
            headers = RateLimitHeaders.from_headers(response.headers)
            limiter.observe(None if limited else admission.grant, headers, now)
        if limited:
            self._rate_limited += 1
            limiter.pause(failure.retry_after or 0.0, now)
        log.info(
            "LLM attempt failed (%s): %s", failure.reason, redact(str(error), self._secret)[:200]
        )
        return failure

    async def _attempt(self, body: bytes, tokens: int, retry: bool) -> tuple[str, int, int]:
        """One HTTP call inside a slot of the window; raises RequestFailure.

        The limiter's grant is taken through the HTTP client's request hook, just before the
        request is written (``medgrit.adapters.llm.pacing``). A ``retry`` (an attempt after a
        failed one) goes before every first attempt waiting for a slot and for the limiter."""
        limiter = self.limiter.limiter
        clock = self.limiter.clock
        admission = Admission(tokens, retry)
        await self.window.acquire(retry)
        try:
            if stop_requested():  # the build is stopping: send nothing new
                raise RequestFailure("stopped", False)
            context = ADMISSION.set(admission)
            try:
                raw = await self._post(
                    "/chat/completions", cast_to=self._response_class, content=body
                )
            except openai.OpenAIError as error:
                raise self._failure(error, admission) from None
            except AdmissionStopped:  # the build stopped while it waited: nothing was sent
                raise RequestFailure("stopped", False) from None
            finally:
                ADMISSION.reset(context)
                if admission.sent:
                    self._requests_sent += 1
        finally:
            self.window.release()
        grant, sent = admission.grant, admission.sent
        if grant is None:  # the HTTP client skipped its request hooks: a bug, not an outage
            raise RuntimeError("an LLM request was sent without the rate limiter's grant")
        now = clock()
        self._observe_answer(now - sent, tokens)
        limiter.observe(grant, RateLimitHeaders.from_headers(raw.headers), now)
        try:
            data = json.loads(raw.content)
            message = data["choices"][0]["message"]
            usage = data.get("usage") or {}
            prompt = int(usage.get("prompt_tokens") or 0)
            completion = int(usage.get("completion_tokens") or 0)
        except (ValueError, TypeError, KeyError, IndexError, AttributeError):
            raise RequestFailure("malformed_response", True) from None
        if usage:
            limiter.settle(grant, prompt + completion, now)
        content = message.get("content") if isinstance(message, dict) else None
        if not isinstance(content, str):
            raise RequestFailure("empty_content", False)
        self._prompt_tokens += prompt
        self._completion_tokens += completion
        return content, prompt, completion
