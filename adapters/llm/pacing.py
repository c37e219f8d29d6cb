"""The pacing of the chat client on the event loop: the pure rate limiter behind a FIFO lock
(:class:`AsyncRateLimiter`) and the window of requests in flight (:class:`InFlightWindow`).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from typing import Any

from medgrit.core.ratelimit import Grant, RateLimiter


class AsyncRateLimiter:
    """The pure :class:`RateLimiter` on the event loop: ``await acquire(tokens)``.

    Waiters queue on a FIFO lock; only the head sleeps (for the time the limiter names) and asks
    again, so a grant costs O(1) and nobody polls.

    Args:
        limiter: the pure limiter (shared state).
        clock: monotonic seconds (``time.monotonic``).
    """

    def __init__(self, limiter: RateLimiter, clock: Any = time.monotonic) -> None:
        self.limiter = limiter
        self.clock = clock
        self._lock = asyncio.Lock()

    async def acquire(self, tokens: int) -> Grant:
        """Wait until a request costing ``tokens`` may start, spend it, and return the grant."""
        limiter, clock = self.limiter, self.clock
        async with self._lock:
            wait = limiter.delay(tokens, clock())
            while wait > 0:
                await asyncio.sleep(wait)
                wait = limiter.delay(tokens, clock())
            return limiter.take(tokens, clock())


class InFlightWindow:
    """At most ``limit`` holders at once, FIFO, with a limit that may change (``resize``)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.in_flight = 0
        self._waiters: deque[asyncio.Future] = deque()

    async def acquire(self) -> None:
        """Wait for a slot (FIFO)."""
        if self.in_flight < self.limit and not self._waiters:
            self.in_flight += 1
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.release()  # granted, then cancelled before it could run: hand it on
            else:
                self._waiters.remove(waiter)
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
        while self._waiters and self.in_flight < self.limit:
            waiter = self._waiters.popleft()
            if not waiter.done():
                self.in_flight += 1
                waiter.set_result(None)
