"""The pacing of the chat client on the event loop: the pure rate limiter behind one queue
(:class:`AsyncRateLimiter`), the window of requests in flight (:class:`InFlightWindow`) and the
HTTP request hook that takes a request's grant (:func:`admission_hook`).

Both queues serve their waiters in order, with one exception: an attempt that repeats a failed
one (a retry after a 429, a 5xx or a timeout) goes before every first attempt. A shard finishes
only when its last request is answered, and a retry that queued behind every request of the
shards in flight would hold its shard (and the shard's place in the build) for that whole queue,
while the shards behind it ran out of requests to send.

The grant is taken as late as it safely can be (:func:`admission_hook`): after the SDK has
built the request, and for a request that opens a new connection, once it is open. The provider
counts a request when it arrives, the limiter when it grants it. Building a request costs about
a millisecond of CPU and opening a connection more; a burst of grants taken before that work
would reach the provider spread over hundreds of milliseconds on a busy machine (measured: a
build's first second, or the first after an idle time, when every connection is new), while the
provider's bucket, full and idle, gained nothing, and the requests granted after the burst
would find it short (429s).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from medgrit.core.ratelimit import Grant, RateLimiter


class AsyncRateLimiter:
    """The pure :class:`RateLimiter` on the event loop: ``await acquire(tokens)``.

    Waiters queue (retries first, then in order of arrival); one pacing task serves the head:
    it sleeps for the time the limiter names, then grants every waiter the limiter admits, so
    a grant costs O(1) and nobody polls.

    Args:
        limiter: the pure limiter (shared state).
        clock: monotonic seconds (``time.monotonic``).
    """

    def __init__(self, limiter: RateLimiter, clock: Any = time.monotonic) -> None:
        self.limiter = limiter
        self.clock = clock
        self._retries: deque[tuple[int, asyncio.Future]] = deque()
        self._firsts: deque[tuple[int, asyncio.Future]] = deque()
        self._pacer: asyncio.Task | None = None

    @property
    def waiting(self) -> int:
        """Requests queued for the limiter (cancelled ones included until they are reached)."""
        return len(self._retries) + len(self._firsts)

    async def acquire(self, tokens: int, retry: bool = False) -> Grant:
        """Wait until a request costing ``tokens`` may start, spend it, and return the grant
        (``retry``: the request repeats a failed attempt and goes first)."""
        limiter = self.limiter
        if self._pacer is None:  # nobody waits: no queue to keep
            now = self.clock()
            if limiter.delay(tokens, now) == 0:
                return limiter.take(tokens, now)
        waiter = asyncio.get_running_loop().create_future()
        (self._retries if retry else self._firsts).append((tokens, waiter))
        if self._pacer is None:
            self._pacer = asyncio.get_running_loop().create_task(self._pace())
        return await waiter  # a cancelled waiter is skipped by the pacer

    async def _pace(self) -> None:
        limiter, clock = self.limiter, self.clock
        try:
            while True:
                queue = self._retries or self._firsts
                if not queue:
                    return
                tokens, waiter = queue[0]
                if waiter.done():  # cancelled while waiting
                    queue.popleft()
                    continue
                wait = limiter.delay(tokens, clock())
                if wait > 0:
                    await asyncio.sleep(wait)
                    continue
                queue.popleft()
                waiter.set_result(limiter.take(tokens, clock()))
        finally:
            self._pacer = None


class InFlightWindow:
    """At most ``limit`` holders at once, with a limit that may change (``resize``); waiters are
    served in order, those that ``acquire(retry=True)`` before the others."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.in_flight = 0
        self._retries: deque[asyncio.Future] = deque()
        self._firsts: deque[asyncio.Future] = deque()

    async def acquire(self, retry: bool = False) -> None:
        """Wait for a slot (``retry``: before every waiter that is not a retry)."""
        if self.in_flight < self.limit and not (self._retries or self._firsts):
            self.in_flight += 1
            return
        waiter = asyncio.get_running_loop().create_future()
        queue = self._retries if retry else self._firsts
        queue.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.release()  # granted, then cancelled before it could run: hand it on
            else:
                queue.remove(waiter)
            raise

    def release(self) -> None:
        """Give a slot back."""
        self.in_flight -= 1
        self._wake()

    def resize(self, limit: int) -> None:
        """A new limit (holders above it finish; no new one starts until below it)."""
        self.limit = limit
        self._wake()

    def _wake(self) -> None:
        while self.in_flight < self.limit:
            queue = self._retries or self._firsts
            if not queue:
                return
            waiter = queue.popleft()
            if not waiter.done():
                self.in_flight += 1
                waiter.set_result(None)


@dataclass
class Admission:
    """One attempt's passage through the limiter: what the caller asks (``tokens``, ``retry``)
    and what :func:`admission_hook` fills in (``grant``; ``sent``, the clock when the request
    went out; ``stopped``, the build was stopping and nothing was sent)."""

    tokens: int
    retry: bool
    grant: Grant | None = None
    sent: float = 0.0
    stopped: bool = False


ADMISSION: ContextVar[Admission | None] = ContextVar("medgrit_llm_admission", default=None)
"""The admission of the attempt the current task is sending (set around the SDK call)."""


class AdmissionStopped(Exception):
    """Raised by the request hook when the build stopped while the request waited: the
    request is not sent."""


REGRANT_MIN_BURST = 4
"""Requests the local bucket must hold for a request that opens a new connection to give its
grant back and wait for a new one once connected (below, a burst is too small to matter)."""


def admission_hook(
    limiter: AsyncRateLimiter, stopping: Callable[[], bool]
) -> Callable[[Any], Awaitable[None]]:
    """An HTTP client ``request`` event hook that makes the request wait for the limiter's
    grant of the current task's :data:`ADMISSION` (requests without one, and a redirect of
    one already admitted, pass as they are).

    The grant is taken before the request asks its pool for a connection, so a long wait (a
    429's pause) holds none. A request that then opens a new connection (TCP, TLS: on a busy
    machine, a burst of them after an idle time takes hundreds of milliseconds, while the
    provider's bucket, full, gains nothing) gives its grant back and waits for a new one, ahead
    of the first attempts, when its headers are about to be written: through the transport's
    ``trace`` extension, which httpcore calls around each step of a request.

    Args:
        limiter: the client's limiter.
        stopping: whether the build is stopping (checked after each wait).
    """

    async def grant(admission: Admission, first: bool) -> None:
        admission.grant = await limiter.acquire(admission.tokens, admission.retry or not first)
        if stopping():
            admission.stopped = True
            raise AdmissionStopped
        admission.sent = limiter.clock()

    async def admit(request: Any) -> None:
        admission = ADMISSION.get()
        if admission is None or admission.grant is not None:
            return
        await grant(admission, first=True)
        outer = request.extensions.get("trace")

        async def trace(event: str, info: dict) -> None:
            pure = limiter.limiter
            if event.endswith("connect_tcp.started") and admission.grant is not None:
                if pure.requests_capacity >= REGRANT_MIN_BURST:
                    pure.refund(admission.grant, limiter.clock())
                    admission.grant = None
            elif event.endswith("send_request_headers.started") and admission.grant is None:
                await grant(admission, first=False)
            if outer is not None:
                await outer(event, info)

        request.extensions["trace"] = trace

    return admit
