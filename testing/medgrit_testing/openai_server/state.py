"""The state of one running server: configuration, RNG, limits, ids, counters and the lie ledger.

``GET /stats`` reports the counters (:meth:`ProviderState.stats`); ``duplicate_requests`` counts
chat requests (online or batch lines) whose body, as canonical JSON, equals one the server
already accepted and answered (not counting 429s or transport faults): a resumed build that
re-sends a paid request shows up there. The API key, when set, is compared in constant time and
never logged.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import random
import time
from collections import deque
from collections.abc import Mapping

from .answers import canonical_json, has_feedback
from .completions import Outcome, answer_chat
from .config import CONTENT_FAULTS, LIE_CLASSES, TRANSPORT_FAULTS, ServerConfig
from .limits import ProviderLimits

RECEIVED_KEPT = 1000  # chat requests whose messages ``GET /requests`` returns, at most


class ProviderState:
    """Everything a server remembers between requests (one per process).

    Args:
        config: limits, latency, faults and batch behaviour.
    """

    def __init__(self, config: ServerConfig) -> None:
        self._prefix = os.urandom(4).hex()
        self._counter = 0
        self.in_flight = 0
        self.configure(config)
        self.reset_stats()

    def configure(self, config: ServerConfig) -> None:
        """Replace the configuration; rate limit buckets start full."""
        self.config = config
        self.rng = random.Random(config.seed)
        self.limits = ProviderLimits(config.rpm, config.tpm, time.monotonic())
        key = config.api_key.get_secret_value() if config.api_key else None
        self._auth = f"Bearer {key}".encode() if key else None

    def reset_stats(self) -> None:
        """Zero every counter, forget the bodies seen and empty the lie ledger and request log."""
        self.counters: dict[str, int] = {}
        self.requests_by_endpoint: dict[str, int] = {}
        self.faults = dict.fromkeys(TRANSPORT_FAULTS + CONTENT_FAULTS, 0)
        extra = [c for c in self.config.lie_classes if c not in LIE_CLASSES]
        self.lie_counts = dict.fromkeys((*LIE_CLASSES, *extra), 0)
        self.lie_ledger: list[dict] = []
        # The messages of the latest chat requests answered (online or batch), oldest first.
        self.received: deque[list] = deque(maxlen=RECEIVED_KEPT)
        self.seen_bodies: set[bytes] = set()
        self.max_in_flight = self.in_flight  # requests still open are not forgotten

    def stats(self) -> dict:
        """Counters since start or the last reset.

        ``requests`` by endpoint, ``status_<code>`` per HTTP status of chat requests,
        ``rate_limited_requests`` / ``rate_limited_tokens`` (429s by limit), ``faults`` by kind,
        ``batch_lines_*``, ``prompt_tokens`` / ``completion_tokens`` answered,
        ``feedback_requests`` (prompts that carry "previous answer was rejected"),
        ``duplicate_requests``, ``max_in_flight`` (most chat requests open at once), ``lies``
        (lie turns sent, by class) and ``honest_turns`` (turns sent that are neither lies nor
        spoiled by a content fault). Turns of an answer that was cut (``malformed_json``,
        ``max_tokens``) count in neither.
        """
        return {
            "requests": dict(self.requests_by_endpoint),
            **self.counters,
            "status_200": self.counters.get("status_200", 0),
            "status_429": self.counters.get("status_429", 0),
            "faults": dict(self.faults),
            "lies": dict(self.lie_counts),
            "honest_turns": self.counters.get("honest_turns", 0),
            "duplicate_requests": self.counters.get("duplicate_requests", 0),
            "in_flight": self.in_flight,
            "max_in_flight": self.max_in_flight,
        }

    def count(self, name: str, n: int = 1) -> None:
        """Add ``n`` to the counter ``name``."""
        self.counters[name] = self.counters.get(name, 0) + n

    def hit(self, endpoint: str) -> None:
        """Count one request to ``endpoint``."""
        self.requests_by_endpoint[endpoint] = self.requests_by_endpoint.get(endpoint, 0) + 1

    def new_id(self, prefix: str) -> str:
        """A new object id: ``prefix``, this process's random prefix and a counter."""
        self._counter += 1
        return f"{prefix}{self._prefix}{self._counter:010d}"

    def authorized(self, headers: Mapping[str, str]) -> bool:
        """Whether request ``headers`` carry the configured bearer key (or none is configured)."""
        if self._auth is None:
            return True
        given = headers.get("authorization", "").encode()
        return hmac.compare_digest(given, self._auth)

    def mark_answered(self, body: dict) -> None:
        """Remember an answered request body; count it when it was answered before."""
        digest = hashlib.sha256(canonical_json(body)).digest()
        if digest in self.seen_bodies:
            self.count("duplicate_requests")
        else:
            self.seen_bodies.add(digest)

    def answer(self, body: dict, prompt_tokens: int) -> Outcome:
        """The completion for a chat request body under the current configuration."""
        self.received.append(body.get("messages"))
        return answer_chat(body, prompt_tokens, self.config, self.rng, self.new_id)

    def record_answer(self, outcome: Outcome, body: dict) -> None:
        """Count an answer: its fault, and when it is a 200 its lies, true turns and tokens."""
        if outcome.fault:
            self.faults[outcome.fault] += 1
        if outcome.status == 200:
            self.mark_answered(body)
            for lie in outcome.lies:
                self.lie_counts[lie["class"]] += 1
            self.lie_ledger.extend(outcome.lies)
            self.count("honest_turns", outcome.honest_turns)
            usage = outcome.body["usage"]
            self.count("prompt_tokens", usage["prompt_tokens"])
            self.count("completion_tokens", usage["completion_tokens"])
            if has_feedback(body["messages"]):
                self.count("feedback_requests")
