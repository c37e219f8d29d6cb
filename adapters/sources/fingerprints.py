"""Fingerprints of a case's content: how a later build tells that a case changed since it was
built.

The fingerprint of a case (:func:`case_fingerprint`) is its file count and a sha256 of its
modality (with its segment names, for cases numbered per case: DICOM SEG and RTSTRUCT; a source-
wide label map is compared as such) and, for each of its
:attr:`~medgrit.core.cases.Case.content_files`, the path, size and modification time (ns): a
``stat`` and an ``access`` per file, about three microseconds, so a Med-GRIT-size source of
75,000 images and their masks (315,000 files) is fingerprinted in under a second
(``benchmarks/bench_fingerprints.py``). A mask relabelled in place, an image replaced, a mask
added to or removed from a case, or the modality changed changes it. A copy that keeps sizes and
modification times (``cp -p``, ``rsync -a``) does not, and neither does a file rewritten with
the same size within one clock tick; :func:`content_digest` (``--verify-sources``) hashes the
bytes of every file instead, which settles those and costs a full read of the source.

Both are ``{file count}:{sha256}``, prefixed with ``MISSING_PREFIX`` when a file cannot be read
now (``medgrit.core.changes.case_change`` refuses such a case rather than rebuild it).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from medgrit.core.cases import Case
from medgrit.core.changes import MISSING_PREFIX
from medgrit.core.fsnames import name_bytes

__all__ = ["MISSING_PREFIX", "case_fingerprint", "content_digest", "fingerprint_cases"]

_CHUNK = 1 << 20


def _labels_part(case: Case) -> bytes:
    """What the case's metadata says of it: its modality, and the label names it carries
    itself when its ids are numbered per case (a source-wide label map is compared as such:
    ``medgrit.core.changes``)."""
    labels = (case.written_labels or case.labels) if case.labels_per_case else ()
    named = [case.modality, [[i, n] for i, n in labels]]
    return json.dumps(named, ensure_ascii=True).encode("ascii")


def _stamped(files: tuple[str, ...], digest: str, missing: bool) -> str:
    """``{files}:{sha256}``, prefixed with ``MISSING_PREFIX`` when a file cannot be read now
    (``medgrit.core.changes.case_change`` reads both back)."""
    return f"{MISSING_PREFIX if missing else ''}{len(files)}:{digest}"


def case_fingerprint(case: Case) -> str:
    """The case's file count and a sha256 of its metadata and each file's path, size and
    modification time (see :func:`_stamped`)."""
    digest = hashlib.sha256(_labels_part(case))
    missing = False
    files = case.content_files
    for path in files:
        try:
            info = os.stat(path)
            stamp = f"{info.st_size}:{info.st_mtime_ns}"
            if not os.access(path, os.R_OK):
                stamp, missing = "unreadable", True
        except (OSError, ValueError):
            stamp, missing = "missing", True
        digest.update(b"\0" + name_bytes(path) + b"\0" + stamp.encode("ascii"))
    return _stamped(files, digest.hexdigest(), missing)


def content_digest(case: Case) -> str:
    """The case's file count and a sha256 of its metadata and the bytes of each of its files
    (a full read; see :func:`_stamped`)."""
    digest = hashlib.sha256(_labels_part(case))
    missing = False
    files = case.content_files
    for path in files:
        digest.update(b"\0" + name_bytes(path) + b"\0")
        file_digest = hashlib.sha256()
        try:
            with open(path, "rb") as handle:
                while chunk := handle.read(_CHUNK):
                    file_digest.update(chunk)
            digest.update(file_digest.digest())
        except (OSError, ValueError):
            digest.update(b"missing")
            missing = True
    return _stamped(files, digest.hexdigest(), missing)


def fingerprint_cases(
    cases: Sequence[Case], verify: bool = False, workers: int = 8
) -> list[tuple[str, str | None]]:
    """(fingerprint, content digest or None) of each case, in order.

    ``verify``: also hash every file's bytes, on ``workers`` threads (reads and sha256 release
    the GIL). Without it one thread is fastest: a ``stat`` is cheaper than a thread hand-off.
    """
    if not verify:
        return [(case_fingerprint(case), None) for case in cases]

    def one(case: Case) -> tuple[str, str | None]:
        return case_fingerprint(case), content_digest(case)

    with ThreadPoolExecutor(max(1, workers), thread_name_prefix="fingerprint") as pool:
        return list(pool.map(one, cases))
