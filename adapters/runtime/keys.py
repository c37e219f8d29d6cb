"""The pseudonymisation key: a secret kept outside every dataset directory.

Case and patient ids in the tables are keyed hashes (HMAC-SHA256) of source identifiers. The key
lives in a file (``$MEDGRIT_KEY_FILE``, else ``~/.config/medgrit/pseudonym.key``), created with
32 random bytes and mode 0600 on first use. The same key gives the same ids, so rebuilds stay
reproducible on the machine that holds it; without it the ids cannot be linked back.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from medgrit.adapters.runtime.atomic import write_atomic


def default_key_file() -> Path:
    """Where the key lives unless configured."""
    configured = os.environ.get("MEDGRIT_KEY_FILE")
    if configured:
        return Path(configured).expanduser()
    base = Path(os.environ.get("XDG_CONFIG_HOME", Path.home() / ".config"))
    return base / "medgrit" / "pseudonym.key"


def load_or_create_key(path: Path | None = None) -> bytes:
    """Read the key file, creating it (atomically, mode 0600) when it does not exist."""
    path = (path or default_key_file()).expanduser()
    if path.is_file():
        key = path.read_bytes()
        if len(key) < 16:
            raise ValueError(f"pseudonymisation key {path} is shorter than 16 bytes")
        return key
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        write_atomic(path, secrets.token_bytes(32), permissions=0o600, exclusive=True)
    except FileExistsError:
        pass  # another process created it first: use theirs
    return path.read_bytes()


def is_inside(path: Path, folder: Path) -> bool:
    """Whether ``path`` lies inside ``folder`` (after resolving both)."""
    try:
        path.resolve().relative_to(folder.resolve())
    except ValueError:
        return False
    return True
