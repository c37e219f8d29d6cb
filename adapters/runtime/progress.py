"""Progress of long work as named counters, for whoever shows it (the terminal of ``medgrit``).

Library code says what it starts (:func:`phase`), how much it expects (:func:`expect`) and what it
did (:func:`advance`); nothing happens unless a listener is installed (:func:`listening`), so
flows, workers and tests pay one lock-free check. Counters are names such as ``images``,
``qa_pairs``, ``rejects``, ``llm_requests``, ``spend_usd``, ``files``, ``rows``.

A listener that fails (a closed stderr, a full disk under a redirected log) is dropped at its
first error: showing progress never fails the work it shows.

Work done in another process (a Dask worker) is not seen as it happens: the driver settles it
when the unit ends (:func:`settle`), adding what the unit did less what this process saw of it,
so a count is never taken twice whichever process did the work.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Protocol


class ProgressListener(Protocol):
    """What shows progress: told of phases, expected totals and advances (from any thread)."""

    def phase(self, text: str) -> None: ...

    def expect(self, counter: str, total: float | None, done: float = 0) -> None: ...

    def advance(self, counter: str, amount: float) -> None: ...


_listener: ProgressListener | None = None
_lock = threading.Lock()
_seen: dict[tuple[str, str], float] = {}
_log = logging.getLogger("medgrit.progress")


def _tell(method: str, *args: object) -> None:
    """Call the listener's ``method``; one that raises is dropped for the rest of the block."""
    global _listener
    listener = _listener
    if listener is None:
        return
    try:
        getattr(listener, method)(*args)
    except Exception as exc:  # noqa: BLE001 - progress never fails the work it shows
        if _listener is listener:
            _listener = None
        _log.debug("progress display stopped: %s", exc)


@contextmanager
def listening(listener: ProgressListener) -> Iterator[ProgressListener]:
    """Send this process's progress to ``listener`` for the length of the block."""
    global _listener
    previous = _listener
    _listener = listener
    try:
        yield listener
    finally:
        _listener = previous
        with _lock:
            _seen.clear()


def active() -> bool:
    """Whether anyone listens (to skip work done only to report progress)."""
    return _listener is not None


def phase(text: str) -> None:
    """Announce a slow step as it starts (``reading 4 sources``)."""
    _tell("phase", text)


def expect(counter: str, total: float | None, done: float = 0) -> None:
    """Set what ``counter`` will reach (None: unknown) and how much of it is done already."""
    _tell("expect", counter, total, done)


def advance(counter: str, amount: float = 1, unit: str | None = None) -> None:
    """Add ``amount`` to ``counter``; ``unit`` names the piece of work it belongs to (a shard),
    for :func:`settle`."""
    if _listener is None or not amount:
        return
    if unit is not None:
        with _lock:
            _seen[(counter, unit)] = _seen.get((counter, unit), 0) + amount
    _tell("advance", counter, amount)


def settle(counter: str, unit: str, total: float) -> None:
    """``unit`` ended having added ``total`` to ``counter``: add what this process did not see."""
    if _listener is None:
        return
    with _lock:
        seen = _seen.pop((counter, unit), 0)
    if total - seen:
        _tell("advance", counter, total - seen)


def forget(unit: str) -> None:
    """``unit`` failed or will run again: its advances are withdrawn from every counter."""
    if _listener is None:
        return
    with _lock:
        dropped = [(c, n) for (c, u), n in _seen.items() if u == unit]
        for counter, _ in dropped:
            _seen.pop((counter, unit), None)
    for counter, amount in dropped:
        _tell("advance", counter, -amount)
