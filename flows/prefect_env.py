"""Defaults for running Prefect locally with medical data.

Must run before ``prefect`` is imported: Prefect reads its settings at import. With no
``PREFECT_API_URL`` Prefect starts an ephemeral server whose first start migrates a fresh SQLite
database, which can take longer than its default 20 s timeout on small machines. Analytics are
off: this is medical data. Values a user set in the environment win.
"""

from __future__ import annotations

import os

DEFAULTS: dict[str, str] = {
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DO_NOT_TRACK": "1",
}


def apply_prefect_defaults() -> None:
    """Set medgrit's Prefect defaults where the environment does not set them."""
    for key, value in DEFAULTS.items():
        os.environ.setdefault(key, value)
