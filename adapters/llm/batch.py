"""OpenAI Batch API runner: upload JSONL, create, poll, download, map back, resubmit.

Batch mode trades latency (up to the 24 h completion window) for half the price and no online
rate limits. :meth:`BatchRunner.run` answers a list of :class:`ChatRequest` and returns one
:class:`ChatResult` per request, in input order, like the online client, and like it is transport
only (the generator answers known requests from its cache before any reach a batch):

1. ``known_batch_ids`` (recorded by an interrupted run) are retrieved first; a batch still
   running is polled to its end, and its answers are reused for the requests whose body equals
   the batch's input line (same ``custom_id`` and same model, parameters and messages), so
   nothing is paid twice;
2. the rest is written as JSONL lines ``{"custom_id", "method": "POST", "url":
   "/v1/chat/completions", "body": {model, messages, temperature, max_tokens,
   response_format?}}`` (split at ``MAX_BATCH_LINES`` lines / ``MAX_BATCH_BYTES``), uploaded
   with ``purpose="batch"`` and submitted with a ``24h`` window; ``on_batch(batch_id)`` is
   called right after each creation so the caller can record the id for a resume;
3. each batch is polled every ``poll_interval_s`` seconds until ``completed``, ``failed``,
   ``expired`` or ``cancelled``; its output and error files are mapped back by ``custom_id``;
4. lines that failed for a reason a new attempt can fix (429, 5xx, an unreadable answer,
   expired or missing, a failed or cancelled batch) are resubmitted in a new batch, at most
   ``max_resubmits`` times; final failures (other 4xx, an empty answer) are not.

Control calls (upload, create, retrieve, download) are retried with the online client's policy
(429, 5xx, timeouts and connection errors; backoff with jitter, ``Retry-After`` honoured). When
one still fails, :class:`BatchError` is raised: an infrastructure failure, and a rerun with the
recorded batch ids resumes without paying twice. Per-request failures are results with ``error``
set (``rate_limited``, ``server_error``, ``bad_request``, ``expired``, ``failed``, ...).

The API key is held by the SDK client only; it is never logged or put in a message.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import openai

from medgrit.adapters.llm.chat import (
    ChatRequest,
    ChatResult,
    LLMSettings,
    Usage,
    chat_body,
    request_hash,
)
from medgrit.adapters.llm.client import RequestFailure, classify_error, make_retrying, status_reason
from medgrit.adapters.runtime.interrupt import check_stop
from medgrit.core.failures import InfrastructureError

log = logging.getLogger(__name__)

ENDPOINT = "/v1/chat/completions"
COMPLETION_WINDOW = "24h"
MAX_BATCH_LINES = 50_000
"""OpenAI's limit of requests per batch."""
MAX_BATCH_BYTES = 190 * 1024 * 1024
"""Under OpenAI's 200 MB limit of a batch input file."""
TERMINAL = frozenset({"completed", "failed", "expired", "cancelled"})
RESUBMITTABLE = frozenset(
    {"rate_limited", "server_error", "malformed_response", "expired", "failed"}
)
"""Reasons a line is submitted again: a new attempt can fix them (as online retries)."""


class BatchError(InfrastructureError, RuntimeError):
    """A Batch API control call (upload, create, retrieve, download) failed after retries.

    Attributes:
        call: the SDK method that failed.
        reason: the stable snake_case reason (as in ``ChatResult.error``).
    """

    def __init__(self, call: str, reason: str) -> None:
        super().__init__(
            f"Batch API call {call} failed: {reason}; run again to resume "
            "(recorded batch ids are reused, nothing is paid twice)"
        )
        self.call = call
        self.reason = reason


@dataclass
class _Outcome:
    """What a batch said about one request: an answer, or why there is none."""

    content: str | None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    error: str | None = None


def _line_outcome(record: dict) -> _Outcome:
    """Map one output/error file line to an outcome."""
    response = record.get("response")
    if isinstance(response, dict):
        status = response.get("status_code")
        body = response.get("body")
        if status == 200 and isinstance(body, dict):
            try:
                message = body["choices"][0]["message"]
            except (KeyError, IndexError, TypeError):
                return _Outcome(None, error="malformed_response")
            usage = body.get("usage") or {}
            content = message.get("content") if isinstance(message, dict) else None
            if not isinstance(content, str):
                return _Outcome(None, error="empty_content")
            return _Outcome(
                content,
                int(usage.get("prompt_tokens") or 0),
                int(usage.get("completion_tokens") or 0),
            )
        if isinstance(status, int):
            return _Outcome(None, error=status_reason(status))
    error = record.get("error")
    if isinstance(error, dict) and error.get("code") == "batch_expired":
        return _Outcome(None, error="expired")
    return _Outcome(None, error="failed")


def _parse_jsonl(data: bytes) -> list[dict]:
    out = []
    for raw in data.splitlines():
        if not raw.strip():
            continue
        try:
            record = json.loads(raw)
        except ValueError:
            log.warning("skipping an unreadable line of a batch file")
            continue
        if isinstance(record, dict):
            out.append(record)
    return out


class BatchRunner:
    """Answers chat requests through the Batch API (see the module docstring).

    Args:
        settings: model and parameters (limits do not apply to batches).
        api_key: the endpoint's key; kept by the SDK client only, never logged.
        poll_interval_s: seconds between status checks of a running batch.
        max_resubmits: new batches for requests that failed or expired, after the first.
    """

    def __init__(
        self,
        settings: LLMSettings,
        api_key: str,
        poll_interval_s: float = 5.0,
        max_resubmits: int = 2,
    ) -> None:
        if poll_interval_s <= 0:
            raise ValueError(f"poll_interval_s must be positive, got {poll_interval_s}")
        if max_resubmits < 0:
            raise ValueError(f"max_resubmits must be >= 0, got {max_resubmits}")
        self.settings = settings
        self.poll_interval_s = poll_interval_s
        self.max_resubmits = max_resubmits
        self._secret = api_key
        self._client: openai.AsyncOpenAI | None = None
        self.batch_ids: list[str] = []
        self._lines_sent = 0
        self._resubmitted = 0
        self._prompt_tokens = 0
        self._completion_tokens = 0
        self._rate_limited = 0

    def __repr__(self) -> str:
        return f"BatchRunner(model={self.settings.model!r}, base_url={self.settings.base_url!r})"

    @property
    def usage(self) -> Usage:
        """Counts so far: ``requests_sent`` are batch lines submitted (resubmits included),
        ``retries`` the resubmitted ones, tokens those of the answers received."""
        return Usage(
            requests_sent=self._lines_sent,
            prompt_tokens=self._prompt_tokens,
            completion_tokens=self._completion_tokens,
            retries=self._resubmitted,
            rate_limited=self._rate_limited,
        )

    # -- the run -------------------------------------------------------------------------------

    async def run(
        self,
        requests: Sequence[ChatRequest],
        known_batch_ids: Sequence[str] = (),
        on_batch: Callable[[str], None] | None = None,
    ) -> list[ChatResult]:
        """Answer ``requests`` through batches; results in input order.

        Args:
            requests: the requests, with unique ``custom_id``s.
            known_batch_ids: batches an earlier run created (reused, not resubmitted).
            on_batch: called with each new batch id right after its creation.

        Raises:
            ValueError: two requests share a ``custom_id``.
            BatchError: a control call failed after retries (rerun with the recorded ids).
        """
        seen: set[str] = set()
        for request in requests:
            if request.custom_id in seen:
                raise ValueError(f"custom_id {request.custom_id!r} repeats; it must be unique")
            seen.add(request.custom_id)
        keys = [request_hash(self.settings, r) for r in requests]
        bodies = [chat_body(self.settings, r) for r in requests]
        results: list[ChatResult | None] = [None] * len(requests)
        pending = {r.custom_id: i for i, r in enumerate(requests) if results[i] is None}
        reasons: dict[str, str] = {}  # why a pending request's last submission failed

        def accept(outcomes: dict[str, _Outcome]) -> None:
            for custom_id, outcome in outcomes.items():
                i = pending.get(custom_id)
                if i is None:
                    continue
                if outcome.content is not None:
                    self._prompt_tokens += outcome.prompt_tokens
                    self._completion_tokens += outcome.completion_tokens
                    results[i] = ChatResult(
                        custom_id,
                        outcome.content,
                        outcome.prompt_tokens,
                        outcome.completion_tokens,
                        keys[i],
                    )
                    del pending[custom_id]
                elif outcome.error in RESUBMITTABLE:
                    self._rate_limited += outcome.error == "rate_limited"
                    reasons[custom_id] = outcome.error
                else:
                    results[i] = ChatResult(custom_id, None, 0, 0, keys[i], error=outcome.error)
                    del pending[custom_id]

        async with openai.AsyncOpenAI(
            api_key=self._secret,
            base_url=self.settings.base_url,
            max_retries=0,
            timeout=self.settings.timeout_s,
        ) as client:
            self._client = client
            try:
                rounds = 1 + self.max_resubmits
                if pending and known_batch_ids:
                    reused = await self._reuse(known_batch_ids, pending, bodies)
                    if reused:
                        accept(reused)
                        rounds -= 1  # the earlier batch was the first submission
                while pending and rounds > 0:
                    rounds -= 1
                    ids = list(pending)
                    self._resubmitted += sum(1 for c in ids if c in reasons)
                    lines = [(c, bodies[pending[c]]) for c in ids]
                    accept(await self._submit_and_collect(lines, on_batch))
            finally:
                self._client = None
        for custom_id, i in pending.items():
            error = reasons.get(custom_id, "failed")
            results[i] = ChatResult(custom_id, None, 0, 0, keys[i], error=error)
        return results  # type: ignore[return-value]

    # -- known batches -------------------------------------------------------------------------

    async def _reuse(
        self, batch_ids: Sequence[str], pending: dict[str, int], bodies: list[dict]
    ) -> dict[str, _Outcome]:
        """Outcomes from earlier batches for the pending requests whose input line is equal."""
        outcomes: dict[str, _Outcome] = {}
        for batch_id in dict.fromkeys(batch_ids):
            try:
                batch = await self._call(self._api.batches.retrieve, batch_id)
                data = await self._download(batch.input_file_id) if batch.input_file_id else b""
            except BatchError as error:
                if error.reason != "bad_request":
                    raise
                log.warning("batch %s or its input file is unknown to the server", batch_id)
                continue
            matching = []
            for line in _parse_jsonl(data):
                custom_id = line.get("custom_id")
                i = pending.get(custom_id) if isinstance(custom_id, str) else None
                if i is not None and line.get("body") == bodies[i]:
                    matching.append(custom_id)
            if not matching:
                continue
            log.info("reusing batch %s (%s) for %d requests", batch_id, batch.status, len(matching))
            found = await self._collect(await self._wait(batch), matching)
            for custom_id, outcome in found.items():
                if custom_id not in outcomes or outcomes[custom_id].content is None:
                    outcomes[custom_id] = outcome
        return outcomes

    # -- submit, poll, collect -----------------------------------------------------------------

    async def _submit_and_collect(
        self, lines: list[tuple[str, dict]], on_batch: Callable[[str], None] | None
    ) -> dict[str, _Outcome]:
        """Submit ``lines`` as one batch per chunk, wait for all, and collect their outcomes."""
        created = []
        for ids, data in _chunks(lines):
            batch = await self._create(data, len(ids))
            self.batch_ids.append(batch.id)
            self._lines_sent += len(ids)
            if on_batch is not None:
                on_batch(batch.id)
            created.append((batch, ids))
        finished = await asyncio.gather(*(self._wait(batch) for batch, _ in created))
        outcomes: dict[str, _Outcome] = {}
        for batch, (_, ids) in zip(finished, created, strict=True):
            outcomes.update(await self._collect(batch, ids))
        return outcomes

    async def _create(self, data: bytes, n_lines: int) -> Any:
        upload = await self._call(
            self._api.files.create,
            file=("medgrit-batch.jsonl", data, "application/jsonl"),
            purpose="batch",
        )
        batch = await self._call(
            self._api.batches.create,
            input_file_id=upload.id,
            endpoint=ENDPOINT,
            completion_window=COMPLETION_WINDOW,
        )
        log.info("created batch %s with %d requests", batch.id, n_lines)
        return batch

    async def _wait(self, batch: Any) -> Any:
        """Poll every ``poll_interval_s`` until the batch reaches a terminal status."""
        while batch.status not in TERMINAL:
            for _ in range(max(1, int(self.poll_interval_s / 0.25))):
                check_stop()  # the batch goes on at the provider; a resume polls it again
                await asyncio.sleep(min(0.25, self.poll_interval_s))
            batch = await self._call(self._api.batches.retrieve, batch.id)
        return batch

    async def _collect(self, batch: Any, custom_ids: Sequence[str]) -> dict[str, _Outcome]:
        """Outcomes of ``custom_ids`` from a finished batch's error and output files; a request
        in neither is ``expired`` (batch expired) or ``failed`` (failed, cancelled, lost)."""
        found: dict[str, _Outcome] = {}
        for file_id in (batch.error_file_id, batch.output_file_id):  # answers win over errors
            if file_id:
                for record in _parse_jsonl(await self._download(file_id)):
                    custom_id = record.get("custom_id")
                    if isinstance(custom_id, str):
                        found[custom_id] = _line_outcome(record)
        missing = _Outcome(None, error="expired" if batch.status == "expired" else "failed")
        outcomes = {c: found.get(c, missing) for c in custom_ids}
        answered = sum(o.content is not None for o in outcomes.values())
        log.info("batch %s %s: %d of %d answered", batch.id, batch.status, answered, len(outcomes))
        return outcomes

    async def _download(self, file_id: str) -> bytes:
        content = await self._call(self._api.files.content, file_id)
        return content.content

    # -- control calls -------------------------------------------------------------------------

    @property
    def _api(self) -> openai.AsyncOpenAI:
        if self._client is None:
            raise RuntimeError("the batch client is only open inside run()")
        return self._client

    async def _call(self, fn: Callable[..., Awaitable[Any]], *args: Any, **kwargs: Any) -> Any:
        """One control call under the retry policy; :class:`BatchError` when it fails for good."""

        async def once() -> Any:
            try:
                return await fn(*args, **kwargs)
            except openai.OpenAIError as error:
                raise classify_error(error, time.time()) from None

        try:
            return await make_retrying(self.settings.max_attempts)(once)
        except RequestFailure as failure:
            raise BatchError(getattr(fn, "__qualname__", "call"), failure.reason) from None


def _chunks(lines: list[tuple[str, dict]]) -> list[tuple[list[str], bytes]]:
    """JSONL batch input files of at most MAX_BATCH_LINES lines and MAX_BATCH_BYTES each."""
    chunks: list[tuple[list[str], bytes]] = []
    ids: list[str] = []
    current: list[bytes] = []
    size = 0
    for custom_id, body in lines:
        line = json.dumps(
            {"custom_id": custom_id, "method": "POST", "url": ENDPOINT, "body": body},
            ensure_ascii=False,
        ).encode("utf-8")
        if current and (len(current) >= MAX_BATCH_LINES or size + len(line) > MAX_BATCH_BYTES):
            chunks.append((ids, b"\n".join(current) + b"\n"))
            ids, current, size = [], [], 0
        ids.append(custom_id)
        current.append(line)
        size += len(line) + 1
    if current:
        chunks.append((ids, b"\n".join(current) + b"\n"))
    return chunks
