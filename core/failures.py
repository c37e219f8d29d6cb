"""Which failures sink a shard and which are one record's problem.

A shard fails (and is retried, then left for ``medgrit resume``) only for infrastructure: the disk
(full, read-only, I/O errors), memory, the network or the LLM provider, or a stop request. Every
other exception raised while one record is loaded, mapped, cut into regions, encoded or written
about is that record's problem: it becomes a reject row and the shard goes on.
"""

from __future__ import annotations

import errno

# OSError numbers that say something about the machine, not about the file being read.
INFRASTRUCTURE_ERRNOS: frozenset[int] = frozenset(
    {
        errno.ENOSPC,
        errno.EDQUOT,
        errno.EIO,
        errno.EROFS,
        errno.ENOMEM,
        errno.ESTALE,
        errno.ETIMEDOUT,
        errno.ECONNRESET,
        errno.ECONNREFUSED,
        errno.ECONNABORTED,
        errno.ENETDOWN,
        errno.ENETUNREACH,
        errno.EHOSTUNREACH,
        errno.EMFILE,
        errno.ENFILE,
    }
)
DISK_FULL_ERRNOS: frozenset[int] = frozenset({errno.ENOSPC, errno.EDQUOT})
# What a write into a dataset folder meets when a folder of it cannot be written (no
# permission, a file where a folder must be).
FOLDER_ERRNOS: frozenset[int] = frozenset({errno.EACCES, errno.EPERM, errno.ENOTDIR, errno.EISDIR})


class InfrastructureError(Exception):
    """A failure of what the build runs on (provider, network), not of one record."""


class StopRequested(Exception):
    """The build was asked to stop; the shard ends at once, without reject rows."""


def fails_the_shard(exc: BaseException) -> bool:
    """Whether ``exc`` must end the shard rather than become a reject row."""
    if isinstance(exc, InfrastructureError | StopRequested | MemoryError):
        return True
    if not isinstance(exc, Exception):
        return True  # KeyboardInterrupt, SystemExit
    return isinstance(exc, OSError) and exc.errno in INFRASTRUCTURE_ERRNOS


def is_infrastructure(exc: BaseException | None) -> bool:
    """Whether ``exc`` is an OSError of the machine or of the dataset's folders (what a build
    reports in one line), not a bug whose traceback is wanted."""
    return isinstance(exc, OSError) and exc.errno in INFRASTRUCTURE_ERRNOS | FOLDER_ERRNOS


def is_disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` (or what it was raised from) is a full disk or an exceeded quota."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in DISK_FULL_ERRNOS:
            return True
        current = current.__cause__ or current.__context__
    return False
