"""Stable identifiers and seeds derived from content, never from run order or wall clock."""

from __future__ import annotations

import hashlib
import hmac

from medgrit.core.fsnames import name_bytes


def derive_seed(*parts: object) -> int:
    """A 64-bit seed from any printable parts (stable across runs, machines and Python versions)."""
    digest = hashlib.sha256(name_bytes("\x1f".join(str(p) for p in parts))).digest()
    return int.from_bytes(digest[:8], "big")


def unit_hash(*parts: object) -> float:
    """A deterministic number in [0, 1) from the parts."""
    return derive_seed(*parts) / float(1 << 64)


def pseudonymise_case(dataset: str, case: str, key: bytes = b"") -> str:
    """Pseudonymous case id: a keyed hash (HMAC-SHA256) of the dataset and source case name.

    With an empty key this is a plain hash, which is stable but guessable from the source names;
    a secret key kept outside the dataset directory makes it unlinkable.
    """
    mac = hmac.new(key, name_bytes(f"{dataset}\x1f{case}"), hashlib.sha256)
    return mac.hexdigest()[:16]


def image_id_for(case_id: str, plane: str, slice_index: int) -> str:
    """Image id: pseudonymous case id, plane initial and slice index (``3f2a...-a0042``)."""
    return f"{case_id}-{plane[0]}{slice_index:04d}"


def region_id_for(image_id: str, row: int) -> str:
    """Region id: the image id and the region's row within the image."""
    return f"{image_id}-r{row:03d}"
