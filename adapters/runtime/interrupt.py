"""Stopping a build cleanly on SIGTERM or SIGINT.

:func:`install_stop_handlers` (the CLI calls it) turns the first SIGTERM or SIGINT into a stop
request: shard workers see it at their next case or image (:func:`check_stop` raises
:class:`BuildInterrupted`, so no part file is left half-written: writers remove their temporaries
on the way out), and the main thread gets a ``KeyboardInterrupt``, so the flow unwinds, the
manifest keeps what finished, and ``atexit`` stops Prefect's ephemeral server. A second signal
while stopping is ignored. :func:`exit_code` is 128 + the signal number (130 for SIGINT, 143 for
SIGTERM). Prefect's flow engine puts its own SIGTERM handler in place while a flow runs;
:func:`stop_on_signals`, entered inside the flow, chains the stop request in front of it, so shard
workers learn of the stop at the first signal, not after the flow engine has unwound.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

from medgrit.core.failures import StopRequested

_stop = threading.Event()
_signal: list[int] = []
# In a worker process of the build (``medgrit.adapters.runtime.processes``): the build's stop
# event, shared with it, and the pid of the build's process.
_shared: list = []


class BuildInterrupted(StopRequested):
    """A stop was requested while a shard was being built."""


def stop_requested() -> bool:
    """Whether a stop has been requested."""
    return _stop.is_set()


def check_stop() -> None:
    """Raise :class:`BuildInterrupted` when a stop has been requested (in a worker process:
    also when the build's process asked for one, or is gone)."""
    if _stop.is_set():
        raise BuildInterrupted("the build was asked to stop")
    if _shared:
        event, parent = _shared
        if event.is_set() or os.getppid() != parent:
            _stop.set()
            raise BuildInterrupted("the build was asked to stop")


def share_stop(event: object, parent: int) -> None:
    """In a worker process: stop also when ``event`` (a ``multiprocessing.Event`` the build's
    process sets) is set, or when the process ``parent`` that started this one is gone."""
    _shared[:] = [event, parent]


def request_stop(signum: int | None = None) -> None:
    """Ask running shards to stop; ``signum`` is the signal that asked, if one did."""
    if signum is not None and not _signal:
        _signal.append(signum)
    _stop.set()


def clear_stop() -> None:
    """Forget an earlier stop request (a new build in the same process starts afresh)."""
    _stop.clear()
    _signal.clear()


def signalled() -> bool:
    """Whether a signal (SIGINT, SIGTERM) asked the process to stop."""
    return bool(_signal)


def exit_code() -> int:
    """The exit status of a stopped build: 128 + the signal number."""
    return 128 + (_signal[0] if _signal else signal.SIGINT)


def _on_signal(signum: int, frame: FrameType | None) -> None:
    if _stop.is_set():
        return  # already stopping
    request_stop(signum)
    raise KeyboardInterrupt


def install_stop_handlers() -> None:
    """Handle SIGTERM and SIGINT as stop requests (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        return
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)


@contextmanager
def stop_on_signals() -> Iterator[None]:
    """Within the block, SIGTERM and SIGINT first request a stop, then run the handler that
    was in place (Prefect's, the CLI's or Python's)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}

    def chained(signum: int, frame: FrameType | None) -> None:
        already = _stop.is_set()
        request_stop(signum)
        handler = previous[signum]
        if handler is _on_signal:  # the CLI's: interrupt the main thread once
            if already:
                return
            raise KeyboardInterrupt
        if callable(handler):
            handler(signum, frame)
        elif handler == signal.SIG_DFL:
            signal.signal(signum, signal.SIG_DFL)
            signal.raise_signal(signum)

    for sig in previous:
        signal.signal(sig, chained)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
