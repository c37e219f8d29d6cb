"""Client-side rate limiting for OpenAI-compatible APIs: requests and tokens per minute.

Pure logic: no clock, no sleeping, no I/O. Every method takes ``now``, a monotonic time in
seconds, from the caller (the async wrapper in :mod:`medgrit.adapters.llm.pacing` passes
``time.monotonic()``; tests pass a fake clock). Durations are seconds, limits are per minute as
providers state them, bucket levels are requests or tokens.

Algorithm. Two token buckets, one for requests and one for tokens, refill continuously at
``limit / 60`` per second. Providers enforce a per-minute limit as a bucket of about one
second's worth (``limit / 60``; a client that spends a whole minute's allowance at once gets
429s), so the local buckets model that: ``nominal = max(1, limit * burst_s / 60)``. A request
may start when both buckets hold its cost; the cost is then taken at once. Scheduling is O(1)
per request: :meth:`RateLimiter.delay` says how long the head of the queue must wait,
:meth:`RateLimiter.take` spends the cost.

Staying under the server's bucket while requests reach it late by a varying delay:

* the local bucket holds ``(1 - reserve)`` of the nominal capacity (half), so the server's
  bucket stays that far ahead of the local one, and requests that reach it late while it was
  full (and so gained nothing) still find room: half a second of delay variation tolerated at
  ``burst_s = 1``, at no cost in steady-state rate. Such delays are real: after an idle time a
  burst of requests opens new connections, and a busy client or provider takes each request
  some hundreds of milliseconds late (a build's image work shares the client's CPU). The other
  half is what the client catches up after its own stalls. A smaller burst is also what a
  provider that counts its minute as a sliding or fixed window of its own tolerates: a client
  paced at the limit exceeds any minute's count by at most the burst it started with;
* a request that costs more than the bucket holds (a low RPM, or ``max_tokens`` above a
  second's worth of TPM) starts when the bucket has been full for ``margin_s`` more (5 ms) and
  drives it negative, so the long-run rate still equals the limit;
* a new limiter starts half full: the first burst meets connection setup (tens to hundreds of
  milliseconds, during which a full server bucket gains nothing), and the server's bucket may
  not be full (an earlier shard, another client of the key, a lower limit than configured that
  only the first answers reveal). Half a second's worth is the price: once, per client.

Token cost: estimated before the call the way OpenAI's limiter does (``ceil(chars / 4)`` of the
messages plus ``max_tokens``, :func:`estimate_tokens`) and corrected after it from ``usage``
(:meth:`RateLimiter.settle`): an underestimate is charged at once; the unused part of the
estimate is refunded at once when the server sends no ``x-ratelimit-remaining-tokens`` header,
and otherwise only as far as those headers later confirm (OpenAI charges ``max_tokens`` at
admission and refunds nothing: refunding blindly would overshoot its limit).

The server's view wins whenever it is stricter (:meth:`RateLimiter.observe`; the headers are read
by :mod:`medgrit.core.ratelimit_headers`):

* ``x-ratelimit-limit-requests|tokens`` below the limit in force: adopted at once;
* ``x-ratelimit-remaining-requests|tokens``, the server's level right after admitting the
  request, below the local level right after the same admission (less the reserve): the local
  bucket is lowered by the difference, once per discrepancy (corrections since that admission
  are deducted);
* ``remaining == 0`` hides how deep the server is in debt; then ``x-ratelimit-reset-*`` (time
  until the bucket is back to its initial state, ``"1s"``, ``"6m0s"``, ``"120ms"``) gives it:
  ``level = nominal - reset * rate``. The limiter thus waits as long as the server needs, not
  for the whole reset: at the limit the bucket is empty after almost every request, and
  pausing until "full" each time would idle the client for up to a second per request;
* a 429 (:meth:`RateLimiter.pause`) stops every request for ``Retry-After`` (``retry-after-ms``
  when given) and restarts both buckets from empty less the reserve, so in-flight work does not
  hammer a server that has already said no, and the server is ahead again when it resumes
  (half a second without requests: the price of a 429, besides the request itself).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

from medgrit.core.ratelimit_headers import RateLimitHeaders

DEFAULT_BURST_S = 1.0
DEFAULT_RESERVE = 0.5
DEFAULT_MARGIN_S = 0.005
DEFAULT_INITIAL_FILL = 0.5
_EPSILON = 1e-9  # units of a bucket short that count as there (float rounding of refills)


def estimate_tokens(messages: Iterable[Mapping[str, str]], max_tokens: int) -> int:
    """Tokens a chat request is charged before the call: ``ceil(chars / 4)`` plus ``max_tokens``.

    ``chars`` counts the ``content`` of every message (the heuristic of OpenAI's rate limiter;
    exact tokenisation would cost more CPU than it saves).
    """
    chars = 0
    for message in messages:
        chars += len(message.get("content") or "")
    return -(-chars // 4) + max_tokens


class _Bucket:
    """One continuously refilling limit. ``level`` may go negative after an oversized request.

    ``nominal`` is the server's presumed capacity, ``capacity`` the local one (``nominal``
    less the reserve), ``top`` what the level may reach (``capacity`` plus ``margin_s`` of
    refill, the wait of an oversized request), ``shift`` the net downward corrections from
    headers and cuts (pauses, lowered limits), ``pool`` refunds waiting for the server's
    confirmation.
    """

    __slots__ = (
        "capacity",
        "level",
        "limit",
        "nominal",
        "pool",
        "rate",
        "reserve",
        "shift",
        "top",
        "updated",
    )

    def __init__(
        self,
        limit: float,
        now: float,
        burst_s: float,
        reserve: float,
        margin_s: float,
        initial_fill: float,
    ) -> None:
        self.limit = self.rate = self.nominal = self.capacity = self.reserve = self.top = 0.0
        self.level = math.inf
        self.shift = 0.0
        self.pool = 0.0
        self.set_limit(limit, burst_s, reserve, margin_s)
        self.level = self.top * initial_fill
        self.updated = now

    def set_limit(self, limit: float, burst_s: float, reserve: float, margin_s: float) -> None:
        self.limit = float(limit)
        self.rate = self.limit / 60.0
        self.nominal = max(self.limit * burst_s / 60.0, 1.0)
        self.capacity = max(self.nominal * (1.0 - reserve), 1.0)
        self.reserve = self.nominal - self.capacity
        self.top = self.capacity + self.rate * margin_s
        self.lower_to(self.top)

    def lower_to(self, level: float) -> None:
        """Clamp the level down to ``level``, recording the cut as a correction."""
        if self.level > level:
            if math.isfinite(self.level):
                self.shift += self.level - level
            self.level = level

    def refill(self, now: float) -> float:
        elapsed = now - self.updated
        if elapsed > 0:
            level = self.level + elapsed * self.rate
            self.level = level if level < self.top else self.top
            self.updated = now
        return self.level

    def give_back(self, amount: float, now: float) -> None:
        """Add ``amount`` back to the level (after refilling it to ``now``), up to the top."""
        level = self.refill(now) + amount
        self.level = level if level < self.top else self.top

    def delay(self, cost: float, now: float) -> float:
        need = (cost if cost < self.capacity else self.top) - self.refill(now)
        return need / self.rate if need > _EPSILON else 0.0

    def correct(self, expected: float, shift_at_grant: float, server: float, exact: bool) -> None:
        """Lower the level when the server holds less than ``expected`` (local, after the
        same admission) implies; release pooled refunds when it holds more (``exact``: the
        server's level is known, not just bounded above)."""
        # Tolerance: the server's integer counts, and the margin a full local bucket holds
        # beyond its capacity.
        tol = 1.0 + self.top - self.capacity
        excess = expected - (server - self.reserve) - (self.shift - shift_at_grant)
        if excess > tol:
            self.level -= excess
            self.shift += excess
        elif exact and excess < -tol and self.pool > 0:
            up = min(self.pool, -excess)
            self.pool -= up
            self.shift -= up
            level = self.level + up
            self.level = level if level < self.top else self.top


class Grant:
    """What one admitted request spent, kept by the caller for :meth:`RateLimiter.observe` and
    :meth:`RateLimiter.settle`.

    ``requests_level``/``tokens_level`` are the local levels right after admission and
    ``*_shift`` the header corrections made until then.
    """

    __slots__ = (
        "requests_level",
        "requests_shift",
        "time",
        "tokens",
        "tokens_level",
        "tokens_shift",
    )

    def __init__(
        self,
        tokens: int,
        time: float,
        requests_level: float,
        tokens_level: float,
        requests_shift: float,
        tokens_shift: float,
    ) -> None:
        self.tokens = tokens
        self.time = time
        self.requests_level = requests_level
        self.tokens_level = tokens_level
        self.requests_shift = requests_shift
        self.tokens_shift = tokens_shift


class RateLimiter:
    """Requests-per-minute and tokens-per-minute limiter for one API key and model.

    Use: ``wait = limiter.delay(cost, now)``; sleep ``wait`` and ask again until it is 0, then
    ``grant = limiter.take(cost, now)``; send; on the response call
    ``limiter.observe(grant, RateLimitHeaders.from_headers(h), now)`` and
    ``limiter.settle(grant, usage_total_tokens, now)``; on a 429 call
    ``limiter.pause(retry_after, now)``. One waiter at a time should ask (a FIFO lock in the
    async wrapper), so the queue is served in order and nobody polls.

    Args:
        requests_per_minute: configured request limit (> 0).
        tokens_per_minute: configured token limit (> 0).
        now: the current monotonic time.
        burst_s: seconds' worth of each limit the server's bucket is presumed to hold.
        reserve: share of that capacity the local bucket leaves unused, as jitter tolerance.
        margin_s: extra wait of a request that costs more than the bucket holds.
        initial_fill: share of the capacity available at ``now`` (see the module docstring).
    """

    def __init__(
        self,
        requests_per_minute: float,
        tokens_per_minute: float,
        now: float,
        *,
        burst_s: float = DEFAULT_BURST_S,
        reserve: float = DEFAULT_RESERVE,
        margin_s: float = DEFAULT_MARGIN_S,
        initial_fill: float = DEFAULT_INITIAL_FILL,
    ) -> None:
        if not (requests_per_minute > 0 and tokens_per_minute > 0):
            raise ValueError("requests_per_minute and tokens_per_minute must be positive")
        if not burst_s > 0:
            raise ValueError("burst_s must be positive")
        if not 0 <= reserve < 1:
            raise ValueError("reserve must be in [0, 1)")
        if not margin_s >= 0:
            raise ValueError("margin_s must be >= 0")
        if not 0 <= initial_fill <= 1:
            raise ValueError("initial_fill must be in [0, 1]")
        self._shape = (burst_s, reserve, margin_s)
        shape = (burst_s, reserve, margin_s, initial_fill)
        self._requests = _Bucket(requests_per_minute, now, *shape)
        self._tokens = _Bucket(tokens_per_minute, now, *shape)
        self.paused_until = now
        self.paused_at = -math.inf
        self.server_reports_tokens = False

    # -- introspection -------------------------------------------------------------------------

    @property
    def requests_per_minute(self) -> float:
        """The request limit in force (configured, or lower if the server said so)."""
        return self._requests.limit

    @property
    def tokens_per_minute(self) -> float:
        """The token limit in force (configured, or lower if the server said so)."""
        return self._tokens.limit

    @property
    def requests_capacity(self) -> float:
        """Requests the local bucket holds when full (a burst)."""
        return self._requests.capacity

    @property
    def tokens_capacity(self) -> float:
        """Tokens the local bucket holds when full (a burst)."""
        return self._tokens.capacity

    def levels(self, now: float) -> tuple[float, float]:
        """Requests and tokens available at ``now`` (after refill)."""
        return self._requests.refill(now), self._tokens.refill(now)

    # -- scheduling ----------------------------------------------------------------------------

    def delay(self, tokens: int, now: float) -> float:
        """Seconds until a request costing ``tokens`` may start (0.0: now). Spends nothing."""
        wait = self.paused_until - now
        d = self._requests.delay(1.0, now)
        if d > wait:
            wait = d
        d = self._tokens.delay(tokens, now)
        if d > wait:
            wait = d
        return wait if wait > 0 else 0.0

    def take(self, tokens: int, now: float) -> Grant:
        """Spend one request and ``tokens`` now (call when :meth:`delay` returned 0)."""
        r, t = self._requests, self._tokens
        # Spending starts from at most the capacity: the margin above it is only a timer, so an
        # oversized request, which waits for ``top``, waits ``margin_s`` longer every time.
        r.level = min(r.refill(now), r.capacity) - 1.0
        t.level = min(t.refill(now), t.capacity) - tokens
        return Grant(tokens, now, r.level, t.level, r.shift, t.shift)

    def try_take(self, tokens: int, now: float) -> tuple[Grant | None, str | None, float]:
        """Spend one request and ``tokens`` if the request may start now, else spend nothing:
        the admission check of a server, which refuses (429) instead of waiting.

        Returns:
            ``(grant, None, 0.0)`` when admitted; otherwise ``(None, limit, wait)``: the first
            limit that holds the request back (``"paused"``, ``"requests"``, then ``"tokens"``)
            and the seconds until that limit would let it pass.
        """
        wait = self.paused_until - now
        if wait > 0:
            return None, "paused", wait
        for name, bucket, cost in (
            ("requests", self._requests, 1.0),
            ("tokens", self._tokens, tokens),
        ):
            wait = bucket.delay(cost, now)
            if wait > 0:
                return None, name, wait
        return self.take(tokens, now), None, 0.0

    def refund(self, grant: Grant, now: float) -> None:
        """Give back what ``grant`` spent: its request was not sent, and will wait for a grant
        of its own again (the buckets do not exceed their top)."""
        self._requests.give_back(1.0, now)
        self._tokens.give_back(grant.tokens, now)

    # -- feedback ------------------------------------------------------------------------------

    def settle(self, grant: Grant, actual_tokens: int, now: float) -> None:
        """Correct the token bucket with the tokens the server reported (``usage``).

        An underestimate is charged at once. The unused part of the estimate is refunded at
        once when the server sends no remaining-tokens header; otherwise it waits in a pool
        that :meth:`observe` releases only as far as the server's headers show it refunded too.
        """
        t = self._tokens
        diff = grant.tokens - actual_tokens
        if diff <= 0:
            t.level += diff
        elif self.server_reports_tokens:
            t.pool += diff
        else:
            t.give_back(diff, now)

    def observe(self, grant: Grant | None, headers: RateLimitHeaders | None, now: float) -> None:
        """Adopt what a response's ``x-ratelimit-*`` headers say when it is stricter.

        Args:
            grant: the admission of the request this response answers; ``None`` for a 429
                (the server took nothing then, so only its limits are adopted).
            headers: the parsed headers (``None``: nothing to do).
            now: the current monotonic time.
        """
        if headers is None:
            return
        r, t = self._requests, self._tokens
        burst_s, reserve, margin_s = self._shape
        if headers.limit_requests is not None and 0 < headers.limit_requests < r.limit:
            r.refill(now)
            r.set_limit(headers.limit_requests, burst_s, reserve, margin_s)
        if headers.limit_tokens is not None and 0 < headers.limit_tokens < t.limit:
            t.refill(now)
            t.set_limit(headers.limit_tokens, burst_s, reserve, margin_s)
        if grant is None or grant.time < self.paused_at:
            return  # a 429 since this admission reset both buckets: its levels are stale
        if headers.remaining_requests is not None:
            r.refill(now)
            server, exact = _server_level(r, headers.remaining_requests, headers.reset_requests)
            r.correct(grant.requests_level, grant.requests_shift, server, exact)
        if headers.remaining_tokens is not None:
            self.server_reports_tokens = True
            t.refill(now)
            server, exact = _server_level(t, headers.remaining_tokens, headers.reset_tokens)
            t.correct(grant.tokens_level, grant.tokens_shift, server, exact)

    def pause(self, seconds: float, now: float) -> None:
        """A 429: nothing starts for ``seconds``, and both buckets restart from empty (less
        the reserve, so the server is ahead again when requests resume)."""
        until = now + max(seconds, 0.0)
        if until > self.paused_until:
            self.paused_until = until
        self.paused_at = now
        for bucket in (self._requests, self._tokens):
            bucket.refill(now)
            bucket.lower_to(-bucket.reserve)


def _server_level(bucket: _Bucket, remaining: int, reset: float | None) -> tuple[float, bool]:
    """The server's level after admission: ``remaining``, or from the reset time at 0."""
    if remaining > 0:
        return float(remaining), True
    if reset is None:
        return 0.0, False
    return min(0.0, bucket.nominal - reset * bucket.rate), False


# -- in-flight window --------------------------------------------------------------------------

WINDOW_MIN = 4
WINDOW_MAX = 1024
WINDOW_HEADROOM = 1.25


def littles_law_window(
    requests_per_minute: float,
    tokens_per_minute: float,
    tokens_per_request: float,
    latency_s: float,
    *,
    headroom: float = WINDOW_HEADROOM,
    lowest: int = WINDOW_MIN,
    highest: int = WINDOW_MAX,
) -> int:
    """Requests in flight needed to keep to the limit: L = rate x latency (Little's law).

    The rate is the binding one of the request limit and the token limit over the tokens a
    request costs; ``headroom`` covers latency jitter, so that the limiter, not the window, is
    the bottleneck. Bounded to [``lowest``, ``highest``].

    Args:
        requests_per_minute, tokens_per_minute: the limits in force.
        tokens_per_request: the mean token cost of a request (prompt plus completion).
        latency_s: the observed time from sending a request to its answer.
    """
    rate = requests_per_minute / 60.0
    if tokens_per_request > 0:
        rate = min(rate, tokens_per_minute / 60.0 / tokens_per_request)
    needed = math.ceil(rate * max(latency_s, 0.0) * headroom) + 2
    return max(lowest, min(highest, needed))
