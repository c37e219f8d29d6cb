"""What a response says of the server's rate limits (pure): its ``x-ratelimit-*`` headers
(:class:`RateLimitHeaders`), the reset durations they state (:func:`parse_duration`) and the
wait a 429 or 503 asks for (:func:`parse_retry_after`). Durations are seconds, limits per minute;
:class:`medgrit.core.ratelimit.RateLimiter` acts on them.
"""

from __future__ import annotations

import email.utils
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache

_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(h|ms|us|µs|ns|m|s)")
_UNIT_SECONDS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}


@lru_cache(maxsize=4096)
def parse_duration(text: str) -> float:
    """Seconds in a rate-limit reset duration: ``"1s"``, ``"6m0s"``, ``"0.05s"``, ``"120ms"``.

    Accepts Go-style concatenations of ``h``, ``m``, ``s``, ``ms``, ``us``/``µs``, ``ns`` parts
    and a bare number of seconds (``"1.5"``).

    Raises:
        ValueError: the text is not a duration.
    """
    value = text.strip()
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        if not math.isfinite(seconds) or seconds < 0:
            raise ValueError(f"not a duration: {text!r}")
        return seconds
    pos, total = 0, 0.0
    while pos < len(value):
        match = _DURATION_PART.match(value, pos)
        if match is None:
            raise ValueError(f"not a duration: {text!r}")
        total += float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
        pos = match.end()
    if pos == 0:
        raise ValueError(f"not a duration: {text!r}")
    return total


def parse_retry_after(headers: Mapping[str, str], wall_now: float) -> float | None:
    """Seconds to wait from a 429/503 response's ``retry-after-ms`` or ``Retry-After`` header.

    ``retry-after-ms`` (OpenAI, Azure) is preferred for its precision; ``Retry-After`` may be
    seconds or an HTTP date, compared against ``wall_now`` (Unix seconds). ``None`` when neither
    header is present or readable; negative waits become 0.

    Args:
        headers: response headers; lookups must be case-insensitive (httpx headers are) or the
            keys lower case.
        wall_now: the current wall-clock time, for HTTP dates.
    """
    raw_ms = headers.get("retry-after-ms")
    if raw_ms is not None:
        try:
            ms = float(raw_ms)
        except ValueError:
            ms = math.nan
        if math.isfinite(ms):
            return max(ms / 1000.0, 0.0)
    raw = headers.get("retry-after")
    if raw is None:
        return None
    try:
        seconds = float(raw)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(raw)
        except (TypeError, ValueError, IndexError):
            return None
        return max(when.timestamp() - wall_now, 0.0)
    return max(seconds, 0.0) if math.isfinite(seconds) else None


def _int_header(headers: Mapping[str, str], name: str) -> int | None:
    raw = headers.get(name)
    if raw is None:
        return None
    try:
        value = float(raw)
    except ValueError:
        return None
    return int(value) if math.isfinite(value) else None


def _duration_header(headers: Mapping[str, str], name: str) -> float | None:
    raw = headers.get(name)
    if raw is None:
        return None
    try:
        return parse_duration(raw)
    except ValueError:
        return None


@dataclass(frozen=True, slots=True)
class RateLimitHeaders:
    """The ``x-ratelimit-*`` headers of one response (``None``: absent or unreadable).

    Limits are per minute, remaining counts are what the server had left right after admitting
    the request, resets are seconds until its bucket is back to its initial (full) state.
    """

    limit_requests: int | None = None
    limit_tokens: int | None = None
    remaining_requests: int | None = None
    remaining_tokens: int | None = None
    reset_requests: float | None = None
    reset_tokens: float | None = None

    @classmethod
    def from_headers(cls, headers: Mapping[str, str]) -> RateLimitHeaders | None:
        """Parse the headers; ``None`` when the response carries none of them."""
        remaining_requests = _int_header(headers, "x-ratelimit-remaining-requests")
        remaining_tokens = _int_header(headers, "x-ratelimit-remaining-tokens")
        limit_requests = _int_header(headers, "x-ratelimit-limit-requests")
        limit_tokens = _int_header(headers, "x-ratelimit-limit-tokens")
        if (
            remaining_requests is None
            and remaining_tokens is None
            and limit_requests is None
            and limit_tokens is None
        ):
            return None
        return cls(
            limit_requests=limit_requests,
            limit_tokens=limit_tokens,
            remaining_requests=remaining_requests,
            remaining_tokens=remaining_tokens,
            reset_requests=_duration_header(headers, "x-ratelimit-reset-requests"),
            reset_tokens=_duration_header(headers, "x-ratelimit-reset-tokens"),
        )
