"""The client's pacing on the event loop: the order in which the limiter and the in-flight
window serve their waiters (retries first, then in order of arrival), on a clock the test moves.
"""

from __future__ import annotations

import asyncio

from medgrit.adapters.llm.pacing import AsyncRateLimiter, InFlightWindow
from medgrit.core.ratelimit import RateLimiter

BIG = 10**9


class Clock:
    """A monotonic clock that only the test moves."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_the_limiter_grants_retries_first_then_first_attempts_in_order():
    async def run() -> tuple[list[str], int]:
        clock = Clock()
        # 6,000 RPM and an empty bucket: nothing passes until the clock moves
        limiter = AsyncRateLimiter(RateLimiter(6000, BIG, 0.0, initial_fill=0.0), clock)
        order: list[str] = []

        async def ask(name: str, retry: bool = False) -> None:
            await limiter.acquire(1, retry)
            order.append(name)

        tasks = [asyncio.create_task(ask(n)) for n in ("a", "b", "c")]
        tasks.append(asyncio.create_task(ask("r1", retry=True)))
        cancelled = asyncio.create_task(ask("x"))
        tasks.append(asyncio.create_task(ask("r2", retry=True)))
        await asyncio.sleep(0)  # every one is queued now
        waiting = limiter.waiting
        cancelled.cancel()
        clock.now = 1.0  # 100 requests' worth later; the local bucket holds 50
        await asyncio.wait_for(asyncio.gather(*tasks), 10)
        return order, waiting

    order, waiting = asyncio.run(run())

    assert waiting == 6
    assert order == ["r1", "r2", "a", "b", "c"]  # the cancelled one got nothing


def test_the_limiter_spends_nothing_on_a_cancelled_waiter_and_paces_the_rest():
    async def run() -> float:
        clock = Clock()
        pure = RateLimiter(6000, BIG, 0.0, initial_fill=0.0)
        limiter = AsyncRateLimiter(pure, clock)
        gone = asyncio.create_task(limiter.acquire(1))
        kept = asyncio.create_task(limiter.acquire(1))
        await asyncio.sleep(0)
        gone.cancel()
        clock.now = 0.01  # exactly one request's worth
        await asyncio.wait_for(kept, 10)  # had the cancelled one been served, this would wait
        return pure.levels(clock.now)[0]

    assert asyncio.run(run()) == 0.0  # the one grant went to the waiter still there


def test_the_window_lets_retries_in_first_then_the_others_in_order():
    async def run() -> list[str]:
        window = InFlightWindow(1)
        await window.acquire()  # the one slot is taken
        order: list[str] = []

        async def enter(name: str, retry: bool = False) -> None:
            await window.acquire(retry)
            order.append(name)
            window.release()

        tasks = [asyncio.create_task(enter("a")), asyncio.create_task(enter("b"))]
        tasks.append(asyncio.create_task(enter("r", retry=True)))
        await asyncio.sleep(0)
        window.release()
        await asyncio.wait_for(asyncio.gather(*tasks), 10)
        return order

    assert asyncio.run(run()) == ["r", "a", "b"]
