"""The pure RPM/TPM limiter, on a fake clock: rates, bursts, refunds, server headers, pauses.

The last tests replay a client against a model of the provider's limiter (OpenAI-style token
buckets holding one second's worth, as ``medgrit_testing.openai_server`` implements them) with
network jitter and latency, and count the 429s the client would get.
"""

from __future__ import annotations

import heapq
import itertools
import math
import random

import pytest

from medgrit.core.ratelimit import RateLimiter, estimate_tokens
from medgrit.core.ratelimit_headers import RateLimitHeaders, parse_duration, parse_retry_after

BIG = 10**9  # a limit that never binds


def drain(limiter: RateLimiter, tokens: int, now: float) -> int:
    """Requests admitted at ``now`` without waiting."""
    n = 0
    while limiter.delay(tokens, now) == 0:
        limiter.take(tokens, now)
        n += 1
    return n


def send_greedily(limiter: RateLimiter, n: int, tokens: int = 1, start: float = 0.0) -> list:
    """Admission times of ``n`` requests sent as soon as the limiter allows."""
    now, times = start, []
    for _ in range(n):
        wait = limiter.delay(tokens, now)
        while wait > 0:
            now += wait
            wait = limiter.delay(tokens, now)
        limiter.take(tokens, now)
        times.append(now)
    return times


# --- estimates and header parsing ------------------------------------------------------------


def test_token_estimate_is_a_quarter_of_the_characters_rounded_up_plus_max_tokens():
    messages = [{"role": "system", "content": "abcde"}, {"role": "user", "content": "fghi"}]

    assert estimate_tokens(messages, 100) == math.ceil(9 / 4) + 100
    assert estimate_tokens([{"role": "user", "content": ""}], 7) == 7


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("1s", 1.0),
        ("6m0s", 360.0),
        ("0.05s", 0.05),
        ("120ms", 0.12),
        ("1h2m3.5s", 3723.5),
        ("20us", 20e-6),
        ("1.5", 1.5),
        ("0s", 0.0),
    ],
)
def test_reset_durations_parse_to_seconds(text, seconds):
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "soon", "1x", "s", "-1", "1s2", "nan"])
def test_unreadable_durations_are_rejected(text):
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration(text)


def test_retry_after_prefers_milliseconds_then_seconds_then_http_dates():
    assert parse_retry_after({"retry-after-ms": "250", "retry-after": "3"}, 0.0) == 0.25
    assert parse_retry_after({"retry-after": "1.5"}, 0.0) == 1.5
    date = "Wed, 21 Oct 2015 07:28:00 GMT"  # 1445412480 in Unix time
    assert parse_retry_after({"retry-after": date}, 1445412470.0) == pytest.approx(10.0)
    assert parse_retry_after({"retry-after": date}, 1445412490.0) == 0.0  # in the past
    assert parse_retry_after({}, 0.0) is None
    assert parse_retry_after({"retry-after": "later"}, 0.0) is None
    assert parse_retry_after({"retry-after-ms": "x", "retry-after": "2"}, 0.0) == 2.0


def test_rate_limit_headers_parse_and_absence_is_none():
    headers = {
        "x-ratelimit-limit-requests": "1200",
        "x-ratelimit-limit-tokens": "200000",
        "x-ratelimit-remaining-requests": "19",
        "x-ratelimit-remaining-tokens": "3000",
        "x-ratelimit-reset-requests": "50ms",
        "x-ratelimit-reset-tokens": "6m0s",
    }

    parsed = RateLimitHeaders.from_headers(headers)

    assert parsed == RateLimitHeaders(1200, 200000, 19, 3000, 0.05, 360.0)
    assert RateLimitHeaders.from_headers({"content-type": "application/json"}) is None
    partial = {"x-ratelimit-remaining-requests": "oops", "x-ratelimit-limit-requests": "60"}
    assert RateLimitHeaders.from_headers(partial) == RateLimitHeaders(limit_requests=60)


# --- rates and bursts ------------------------------------------------------------------------


def test_burst_is_about_one_second_of_the_limit_not_a_minute():
    limiter = RateLimiter(1200, BIG, now=0.0, initial_fill=1.0)

    burst = drain(limiter, 1, 0.0)

    assert limiter.requests_capacity == pytest.approx(10.0)  # half of the server's 20/s
    assert burst == 10
    assert drain(limiter, 1, 10.0) == 10  # never more after a long idle time


def test_a_new_limiter_starts_half_full():
    limiter = RateLimiter(1200, BIG, now=0.0)

    assert drain(limiter, 1, 0.0) == 5
    assert drain(limiter, 1, 0.5) == 10


def test_requests_are_paced_at_the_limit():
    limiter = RateLimiter(1200, BIG, now=0.0, initial_fill=1.0)

    times = send_greedily(limiter, 2000)

    in_first_minute = sum(t < 60.0 for t in times)
    assert in_first_minute <= 1200 + 10
    steady = (len(times) - 11) / (times[-1] - times[10])
    assert steady == pytest.approx(20.0, rel=1e-3)
    assert all(b - a >= 0.05 - 1e-9 for a, b in itertools.pairwise(times[10:]))


def test_tokens_are_paced_at_the_limit_with_oversized_requests():
    # 60,000 TPM = 1,000 tokens/s; a 1,500-token request is more than the bucket holds
    limiter = RateLimiter(BIG, 60_000, now=0.0, initial_fill=1.0)

    times = send_greedily(limiter, 50, tokens=1500)

    rate = 1500 * (len(times) - 1) / (times[-1] - times[0])
    assert rate == pytest.approx(1000.0, rel=0.01)
    assert rate <= 1000.0


def test_an_oversized_request_waits_for_a_full_bucket_then_leaves_it_in_debt():
    limiter = RateLimiter(BIG, 6_000, now=0.0, initial_fill=1.0)  # 100 tokens/s, 50 held locally
    assert limiter.delay(500, 0.0) == 0.0

    limiter.take(500, 0.0)

    assert limiter.levels(0.0)[1] == pytest.approx(50 - 500)
    assert limiter.delay(500, 0.0) == pytest.approx(5.0 + 0.005)  # full again, plus the margin
    assert limiter.delay(40, 0.0) == pytest.approx((500 - 50 + 40) / 100)


def test_low_rpm_sends_one_request_per_interval():
    limiter = RateLimiter(30, BIG, now=0.0, initial_fill=1.0)  # one request every 2 s

    times = send_greedily(limiter, 5)

    assert times[0] == 0.0
    assert [b - a for a, b in itertools.pairwise(times)] == pytest.approx([2.005] * 4)


def test_invalid_limits_are_rejected():
    with pytest.raises(ValueError, match="positive"):
        RateLimiter(0, 100, now=0.0, initial_fill=1.0)
    with pytest.raises(ValueError, match="reserve"):
        RateLimiter(100, 100, now=0.0, reserve=1.0)


# --- usage corrections -----------------------------------------------------------------------


def test_try_take_admits_or_names_the_limit_that_refuses_and_spends_nothing_then():
    # A server's buckets: one second's worth, no reserve, no margin, starting full.
    limiter = RateLimiter(60, 6000, 0.0, reserve=0.0, margin_s=0.0, initial_fill=1.0)
    grant, refused, wait = limiter.try_take(60, 0.0)
    assert grant is not None and (refused, wait) == (None, 0.0)
    assert limiter.levels(0.0) == pytest.approx((0, 40))
    grant, refused, wait = limiter.try_take(1, 0.0)
    assert grant is None and refused == "requests" and wait == pytest.approx(1.0)
    assert limiter.levels(0.0) == pytest.approx((0, 40))  # a refusal spends nothing
    grant, refused, _ = limiter.try_take(250, 1.0)  # oversized: passes on a full bucket
    assert grant is not None and refused is None
    assert limiter.levels(1.0) == pytest.approx((0, -150))
    grant, refused, wait = limiter.try_take(10, 2.0)
    assert grant is None and refused == "tokens" and wait == pytest.approx(0.6)
    limiter.pause(3.0, 2.0)
    assert limiter.try_take(1, 2.0)[1:] == ("paused", pytest.approx(3.0))


def test_a_grant_given_back_is_spent_again_by_the_next_request():
    limiter = RateLimiter(1200, 60_000, now=0.0, initial_fill=1.0)  # 10 requests, 500 tokens
    drain(limiter, 1, 0.0)  # 10 granted: empty
    grant = limiter.take(100, 0.5)  # 10 more requests' worth came in: 9 left, 400 tokens

    limiter.refund(grant, 0.5)

    assert limiter.levels(0.5) == pytest.approx((10.0, 500.0))
    assert drain(limiter, 1, 0.5) == 10


def test_unused_tokens_are_refunded_when_the_server_reports_no_remaining_tokens():
    limiter = RateLimiter(BIG, 60_000, now=0.0, reserve=0.1, initial_fill=1.0)  # holds 900
    grant = limiter.take(800, 0.0)

    limiter.settle(grant, actual_tokens=300, now=0.0)

    assert limiter.levels(0.0)[1] == pytest.approx(900 - 300)


def test_an_underestimate_is_charged():
    limiter = RateLimiter(BIG, 60_000, now=0.0, reserve=0.1, initial_fill=1.0)
    grant = limiter.take(100, 0.0)

    limiter.settle(grant, actual_tokens=400, now=0.0)

    assert limiter.levels(0.0)[1] == pytest.approx(900 - 400)


def test_refunds_wait_for_the_servers_confirmation_when_it_reports_remaining_tokens():
    limiter = RateLimiter(
        BIG, 60_000, now=0.0, reserve=0.1, initial_fill=1.0
    )  # nominal 1000, local 900, reserve 100
    first = limiter.take(800, 0.0)  # local level 100
    limiter.observe(first, RateLimitHeaders(remaining_tokens=200), 0.0)  # agrees
    limiter.settle(first, actual_tokens=300, now=0.0)
    assert limiter.levels(0.0)[1] == pytest.approx(100)  # a server that charges max_tokens

    second = limiter.take(50, 0.0)  # local 50; a refunding server has 200 + 500 - 50 = 650
    limiter.observe(second, RateLimitHeaders(remaining_tokens=650), 0.0)

    assert limiter.levels(0.0)[1] == pytest.approx(50 + 500)  # the whole refund, confirmed


# --- what the server says --------------------------------------------------------------------


def test_a_lower_limit_in_the_headers_is_adopted_and_a_higher_one_ignored():
    limiter = RateLimiter(2400, 200_000, now=0.0, initial_fill=1.0)
    grant = limiter.take(10, 0.0)

    limiter.observe(grant, RateLimitHeaders(limit_requests=1200, limit_tokens=400_000), 0.0)

    assert limiter.requests_per_minute == 1200
    assert limiter.tokens_per_minute == 200_000
    assert limiter.requests_capacity == pytest.approx(10.0)
    assert drain(limiter, 1, 0.0) <= 10


def test_a_lower_remaining_count_lowers_the_local_bucket_once():
    # local 18, nominal 20, reserve 2
    limiter = RateLimiter(1200, BIG, now=0.0, reserve=0.1, initial_fill=1.0)
    grants = [limiter.take(1, 0.0) for _ in range(3)]  # local level 15
    assert limiter.levels(0.0)[0] == pytest.approx(15)

    # the server had spent 10 more (another client on the same key): 7 left after the first
    limiter.observe(grants[0], RateLimitHeaders(remaining_requests=7), 0.0)
    assert limiter.levels(0.0)[0] == pytest.approx(15 - 12)

    # later answers of the same era report the same gap: it is not subtracted again
    limiter.observe(grants[1], RateLimitHeaders(remaining_requests=6), 0.0)
    limiter.observe(grants[2], RateLimitHeaders(remaining_requests=5), 0.0)
    assert limiter.levels(0.0)[0] == pytest.approx(3)


def test_remaining_zero_uses_the_reset_time_to_find_the_servers_debt():
    # 1000 tokens/s, nominal 1000, local 900
    limiter = RateLimiter(BIG, 60_000, now=0.0, reserve=0.1, initial_fill=1.0)
    grant = limiter.take(100, 0.0)  # local 800

    # the server is 2,000 tokens short of full: 1,000 in debt
    limiter.observe(grant, RateLimitHeaders(remaining_tokens=0, reset_tokens=2.0), 0.0)

    assert limiter.levels(0.0)[1] == pytest.approx(-1000 - 100)  # less the reserve
    assert limiter.delay(100, 0.0) == pytest.approx(1.2)


def test_remaining_zero_at_the_limit_does_not_pause_until_the_bucket_is_full():
    limiter = RateLimiter(1200, BIG, now=0.0, reserve=0.1, initial_fill=1.0)  # 2 held back
    drain(limiter, 1, 0.0)
    grant = limiter.take(1, limiter.delay(1, 0.0))
    now = grant.time

    # OpenAI's reset means "until the bucket is full again": almost a second here
    limiter.observe(grant, RateLimitHeaders(remaining_requests=0, reset_requests=0.95), now)

    assert limiter.delay(1, now) < 0.2


def test_a_429_pauses_every_request_for_retry_after():
    limiter = RateLimiter(1200, BIG, now=0.0, initial_fill=1.0)

    limiter.pause(1.5, now=0.0)

    assert limiter.delay(1, 0.0) == pytest.approx(1.5)
    assert limiter.delay(1, 1.0) == pytest.approx(0.5)
    # the buckets restarted empty (less the reserve) at the 429 and refilled meanwhile
    assert drain(limiter, 1, 1.5) == 10


def test_a_short_429_pause_restarts_from_an_empty_bucket():
    limiter = RateLimiter(1200, BIG, now=0.0, initial_fill=1.0)

    limiter.pause(0.05, now=0.0)

    # 10 of reserve (the server is half a second ahead again) and 1 request, at 20/s
    assert limiter.delay(1, 0.05) == pytest.approx(0.5)


def test_answers_sent_before_a_429_do_not_correct_the_bucket_again():
    limiter = RateLimiter(1200, BIG, now=0.0, initial_fill=1.0)
    stale = limiter.take(1, 0.0)
    limiter.pause(0.1, 0.01)
    level = limiter.levels(0.01)[0]

    limiter.observe(stale, RateLimitHeaders(remaining_requests=0, reset_requests=5.0), 0.01)

    assert limiter.levels(0.01)[0] == level


# --- against a model of the provider ---------------------------------------------------------


class ProviderBucket:
    """The provider side: holds one second's worth, refilled continuously; 429s take nothing."""

    def __init__(self, limit: float, now: float = 0.0) -> None:
        self.limit, self.rate = limit, limit / 60.0
        self.capacity = max(1.0, self.rate)
        self.level, self.updated = self.capacity, now

    def admit(self, cost: float, now: float) -> float:
        """0.0 when admitted, else the Retry-After."""
        self.level = min(self.capacity, self.level + (now - self.updated) * self.rate)
        self.updated = now
        need = min(cost, self.capacity)
        if self.level >= need - 1e-9:
            self.level -= cost
            return 0.0
        return (need - self.level) / self.rate

    def headers(self) -> RateLimitHeaders:
        return RateLimitHeaders(
            limit_requests=int(self.limit),
            remaining_requests=max(0, int(self.level)),
            reset_requests=max(0.0, (self.capacity - self.level) / self.rate),
        )


class ProviderWindow:
    """A provider that counts a minute as a window: at most ``limit`` requests admitted in any
    60 s (``sliding``) or in each minute of its clock (fixed, the minute starting at
    ``offset``); it sends only ``x-ratelimit-limit-requests``."""

    def __init__(self, limit: float, sliding: bool, offset: float = 0.0) -> None:
        self.limit, self.sliding, self.offset = limit, sliding, offset
        self.admitted: list[float] = []

    def admit(self, cost: float, now: float) -> float:
        if self.sliding:
            start = now - 60.0
            while self.admitted and self.admitted[0] <= start:
                self.admitted.pop(0)
            count = len(self.admitted)
            wait = self.admitted[0] - start if self.admitted else 0.0
        else:
            minute = math.floor((now - self.offset) / 60.0)
            count = sum(1 for t in self.admitted if math.floor((t - self.offset) / 60.0) == minute)
            wait = (minute + 1) * 60.0 + self.offset - now
        if count + 1 <= self.limit:
            self.admitted.append(now)
            return 0.0
        return max(wait, 0.001)

    def headers(self) -> RateLimitHeaders:
        return RateLimitHeaders(limit_requests=int(self.limit))


def simulate(
    configured: float,
    true_limit: float,
    n: int,
    seed: int = 0,
    jitter_s: float = 0.02,
    server: ProviderBucket | ProviderWindow | None = None,
):
    """A client with 64 slots sends ``n`` requests; each reaches the provider (default: a
    :class:`ProviderBucket`) after 0 to ``jitter_s`` and is answered 50-300 ms later (a 429 at
    once). Returns (429s, duration)."""
    rng = random.Random(seed)
    limiter = RateLimiter(configured, BIG, now=0.0)
    server = server or ProviderBucket(true_limit)
    events: list = []
    seq = 0

    def push(when: float, kind: str, data: object = None) -> None:
        nonlocal seq
        seq += 1
        heapq.heappush(events, (when, seq, kind, data))

    queue = n  # requests not yet started
    slots = 64
    limited = done = 0
    now = 0.0
    head = False  # is a request waiting on the limiter?

    def try_start(now: float) -> None:
        nonlocal queue, slots, head
        while queue and slots and not head:
            wait = limiter.delay(1, now)
            if wait > 0:
                head = True
                push(now + wait, "wake")
                return
            grant = limiter.take(1, now)
            queue -= 1
            slots -= 1
            push(now + rng.uniform(0.0, jitter_s), "arrive", grant)

    try_start(0.0)
    while events:
        now, _, kind, data = heapq.heappop(events)
        if kind == "wake":
            head = False
        elif kind == "arrive":
            retry_after = server.admit(1, now)
            if retry_after:
                limited += 1
                push(now + 0.001, "limited", retry_after)
            else:
                push(now + rng.uniform(0.05, 0.3), "answer", (data, server.headers()))
        elif kind == "answer":
            grant, headers = data
            limiter.observe(grant, headers, now)
            slots += 1
            done += 1
        elif kind == "limited":
            limiter.observe(None, RateLimitHeaders(limit_requests=int(true_limit)), now)
            limiter.pause(data, now)
            slots += 1
            queue += 1  # asked again after Retry-After (the limiter is paused that long)
        try_start(now)
    assert done == n
    return limited, now


def test_pacing_at_the_true_limit_gets_no_429s_despite_jitter():
    limited, duration = simulate(configured=1200, true_limit=1200, n=2000)

    assert limited == 0
    assert 2000 / duration * 60 >= 0.99 * 1200


def test_a_client_configured_at_twice_the_limit_adopts_the_servers_limit():
    limited, duration = simulate(configured=2400, true_limit=1200, n=2000)

    assert limited <= 0.02 * 2000
    assert 2000 / duration * 60 >= 0.95 * 1200


def test_after_an_idle_time_a_provider_that_takes_requests_late_still_admits_them():
    # A busy provider takes what reached it in each 0.4 s at the end of it: its full bucket
    # gains nothing meanwhile. The client's burst after the idle time is half a second's worth,
    # so the provider's bucket (one second's worth) still holds everything it finds.
    limiter = RateLimiter(1200, BIG, now=0.0)
    server = ProviderBucket(1200)
    times = send_greedily(limiter, 60, start=10.0)  # idle for 10 s: both buckets full

    refused = sum(
        server.admit(1, 10.0 + 0.4 * (math.floor((t - 10.0) / 0.4) + 1)) > 0 for t in times
    )

    assert refused == 0
    assert times[-1] == pytest.approx(10.0 + (60 - 10) / 20, abs=0.01)  # 10 at once, then 20/s


@pytest.mark.parametrize(
    "provider",
    [
        ProviderWindow(1200, sliding=True),
        ProviderWindow(1200, sliding=False),
        ProviderWindow(1200, sliding=False, offset=17.3),
    ],
    ids=["sliding-minute", "fixed-minute", "fixed-minute-offset"],
)
def test_a_provider_counting_minutes_as_windows_gets_almost_no_429s(provider):
    # Three minutes at the limit: the pacing never exceeds a minute's count by more than the
    # small burst it starts with, and the first 429 restarts it below the limit.
    n = 3600
    limited, duration = simulate(configured=1200, true_limit=1200, n=n, server=provider)

    assert limited <= 0.005 * n
    assert n / duration * 60 >= 0.98 * 1200
