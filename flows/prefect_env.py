"""Defaults for running Prefect locally with medical data.

Must run before ``prefect`` is imported: Prefect reads its settings at import. With no
``PREFECT_API_URL`` Prefect starts an ephemeral server whose first start migrates a fresh SQLite
database, which can take longer than its default 20 s timeout on small machines. Analytics are
off: this is medical data. Values a user set in the environment win.

:func:`quiet_prefect_when_stopped` (the command line installs it) keeps Prefect's logs out of a
build a signal stopped: its engines log each interrupted run and task as a crash, where the
command line says in one line how to continue. :func:`announce_prefect_server` says that the
ephemeral server is starting, which takes seconds.
"""

from __future__ import annotations

import logging
import os

from medgrit.adapters.runtime import progress
from medgrit.adapters.runtime.interrupt import signalled

DEFAULTS: dict[str, str] = {
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DO_NOT_TRACK": "1",
}

PREFECT_LOGGERS = (
    "prefect",
    "prefect.flow_runs",
    "prefect.task_runs",
    "prefect.engine",
    "prefect.flow_engine",
    "prefect.task_engine",
    "prefect.task_runner",
    "prefect.server",
    "prefect.client",
)
"""The loggers whose records are dropped once a signal stopped the build (a filter on a logger
sees only the records made there, so each is named)."""


def apply_prefect_defaults() -> None:
    """Set medgrit's Prefect defaults where the environment does not set them."""
    for key, value in DEFAULTS.items():
        os.environ.setdefault(key, value)


class _QuietWhenStopped(logging.Filter):
    """Drops every record once a signal asked the process to stop."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not signalled()


_QUIET = _QuietWhenStopped()


def quiet_prefect_when_stopped() -> None:
    """Drop Prefect's log records once a signal (Ctrl-C, SIGTERM) asked the process to stop:
    the "Crash detected!" of each interrupted flow and task run, and what follows. Prefect's
    own configuration keeps logger filters, so this may run before ``prefect`` is imported."""
    for name in PREFECT_LOGGERS:
        logger = logging.getLogger(name)
        if _QUIET not in logger.filters:
            logger.addFilter(_QUIET)


_announced: list[bool] = []


def announce_prefect_server() -> None:
    """Tell the progress display that Prefect's temporary server is starting: once, before
    this process first runs a flow without ``PREFECT_API_URL``."""
    if _announced or not progress.active() or os.environ.get("PREFECT_API_URL"):
        return
    from prefect.settings import PREFECT_API_URL

    _announced.append(True)
    if not PREFECT_API_URL.value():
        progress.phase("starting a temporary Prefect server")
