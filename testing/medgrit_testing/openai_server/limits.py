"""The server's requests-per-minute and tokens-per-minute limits, OpenAI-style.

Each limit is a token bucket holding one second's worth (capacity ``max(1, limit / 60)``,
refilled at ``limit / 60`` per second, starting full): the buckets of
:class:`medgrit.core.ratelimit.RateLimiter` with ``burst_s=1`` and no reserve, margin or initial
deficit, admitted with its non-blocking :meth:`~medgrit.core.ratelimit.RateLimiter.try_take`. A
request costs one request and its tokens; a request bigger than the whole bucket passes when the
bucket is full and leaves it in debt, so the long-run rate still equals the limit. A refused
request takes nothing. Headers follow OpenAI's ``x-ratelimit-limit-*`` (the per-minute limit),
``x-ratelimit-remaining-*`` (what the bucket holds now, at most one second's worth) and
``x-ratelimit-reset-*`` (time until the bucket is full, :func:`format_duration`).
"""

from __future__ import annotations

from medgrit.core.ratelimit import RateLimiter

# The per-minute rate of an absent limit: a bucket of 1.7e10 that no request empties.
_NO_LIMIT = 1e12


def format_duration(seconds: float) -> str:
    """OpenAI's reset duration text: ``0s``, ``0.05s``, ``1s``, ``12.5s``, ``6m0s``, ``1h2m3s``."""
    seconds = max(0.0, seconds)
    if seconds < 60:
        text = f"{seconds:.3f}".rstrip("0").rstrip(".")
        return f"{text or '0'}s"
    whole = int(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    frac = f"{secs + (seconds - whole):.3f}".rstrip("0").rstrip(".")
    return (f"{hours}h" if hours else "") + f"{minutes}m{frac}s"


class ProviderLimits:
    """The requests and tokens limits of one server, checked together (``None``: no limit).

    Args:
        rpm: requests per minute, or None.
        tpm: tokens per minute, or None.
        now: the current monotonic time; both buckets start full.
    """

    def __init__(self, rpm: int | None, tpm: int | None, now: float) -> None:
        self.rpm = rpm
        self.tpm = tpm
        self.limiter = RateLimiter(
            rpm or _NO_LIMIT,
            tpm or _NO_LIMIT,
            now,
            burst_s=1.0,
            reserve=0.0,
            margin_s=0.0,
            initial_fill=1.0,
        )

    def acquire(self, tokens: int, now: float) -> tuple[str | None, float]:
        """Take one request and ``tokens``; or the limit that refused (``requests``, checked
        first, or ``tokens``) and the seconds until it would pass. A refused request takes
        nothing."""
        _, refused, wait = self.limiter.try_take(tokens, now)
        return refused, wait

    def headers(self, now: float) -> dict[str, str]:
        """The ``x-ratelimit-*`` headers of each configured limit at ``now``."""
        requests, tokens = self.limiter.levels(now)
        out: dict[str, str] = {}
        for kind, limit, level, capacity in (
            ("requests", self.rpm, requests, self.limiter.requests_capacity),
            ("tokens", self.tpm, tokens, self.limiter.tokens_capacity),
        ):
            if limit:
                out[f"x-ratelimit-limit-{kind}"] = str(limit)
                out[f"x-ratelimit-remaining-{kind}"] = str(max(0, int(level)))
                out[f"x-ratelimit-reset-{kind}"] = format_duration(
                    max(0.0, (capacity - level) / (limit / 60.0))
                )
        return out
