"""Writing a file so that it appears at its name whole or not at all: medgrit's one writer.

Every write goes to a temporary file in the final name's folder, named after its owner::

    .{name}.tmp-{host}~{pid}~{token}

(``host``: this machine's name with other characters than ``[A-Za-z0-9_.]`` as ``_``; ``pid``:
the writing process; ``token``: hex, the process's random token followed by the number of the
write, so two threads writing the same name never share a temporary). The file is flushed and
fsynced, renamed over the final name (``os.replace``, one atomic step within a file system), and
the folder is fsynced, so the new name survives a power cut. Any failure before the rename,
``KeyboardInterrupt`` included, removes the temporary; nothing half-written is ever at the final
name. A process killed outright (SIGKILL) cannot remove its temporary: cleanup recognises it by
the owner in its name (:func:`is_stale_temporary`, :func:`is_left_by_dead_process`) and never
takes the file of a writer that is alive.

Shapes: :func:`write_atomic` (bytes or text at hand), :func:`atomic_file` (a handle for writers
that stream, such as ``json.dump`` or pyarrow writing to a file object), :func:`atomic_path` (a
path for libraries that open the file themselves), :func:`atomic_folder` (a folder of files that
appears complete, such as an export).
"""

from __future__ import annotations

import errno
import itertools
import os
import re
import secrets
import shutil
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

_TOKEN = secrets.token_hex(4)
_WRITES = itertools.count()  # next() on a count is atomic under the GIL: one number per write
_TEMP_OWNER = re.compile(
    r"\.tmp-(?:(?P<host>[A-Za-z0-9_.]+)~)?(?P<pid>\d+)(?:~(?P<token>[0-9a-f]+))?$"
)
# Folders that cannot be fsynced (some network and FUSE file systems) say so with these.
_NO_FOLDER_SYNC = {errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP}


@dataclass(frozen=True)
class TempOwner:
    """The writer named in a temporary file's name (``host`` is None in names of old versions,
    which carried only the process id; ``token`` may be absent there too)."""

    host: str | None
    pid: int
    token: str | None


def _host_token() -> str:
    return re.sub(r"[^A-Za-z0-9_.]", "_", socket.gethostname()) or "host"


def temp_suffix() -> str:
    """Suffix naming this process as a temporary's owner: ``.tmp-{host}~{pid}~{token}``.

    The temporaries of :func:`temporary_path` carry it followed by the hex number of the write.
    """
    return f".tmp-{_host_token()}~{os.getpid()}~{_TOKEN}"


def temporary_path(path: Path) -> Path:
    """A new temporary name beside ``path`` owned by this process, unique to this write."""
    return path.with_name(f".{path.name}{temp_suffix()}{next(_WRITES):x}")


def temporary_owner(name: str) -> TempOwner | None:
    """The owner a temporary file's name carries, or None when it names none."""
    match = _TEMP_OWNER.search(name)
    if match is None:
        return None
    return TempOwner(match.group("host"), int(match.group("pid")), match.group("token"))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def is_stale_temporary(name: str) -> bool:
    """Whether a temporary file was left by a writer that is gone (never this process's own,
    never one whose process is alive on this host)."""
    owner = temporary_owner(name)
    if owner is None:
        return True
    if owner.host is not None and owner.host != _host_token():
        return True  # another machine's writer cannot hold this dataset's lock now
    if owner.pid == os.getpid():
        # This process's own, or an earlier process that had this pid (its token differs).
        own = owner.host is not None and (owner.token or "").startswith(_TOKEN)
        return not own
    return not _pid_alive(owner.pid)


def is_left_by_dead_process(name: str) -> bool:
    """Whether a temporary name of :func:`temp_suffix` was left by a process of this host that
    is gone. Stricter than :func:`is_stale_temporary`, for writers that hold no lock (exports):
    another machine's process may be writing beside us now, so only our host's dead are judged.
    """
    owner = temporary_owner(name)
    return owner is not None and owner.host == _host_token() and is_stale_temporary(name)


def fsync_folder(folder: Path) -> None:
    """Make the names in ``folder`` durable (a no-op where the file system cannot sync a
    folder)."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in _NO_FOLDER_SYNC:
            raise
    finally:
        os.close(fd)


def _publish(tmp: Path, path: Path, exclusive: bool) -> None:
    """Put the complete ``tmp`` at ``path`` and make the name durable."""
    if exclusive:
        os.link(tmp, path)  # FileExistsError when another writer was first
    else:
        os.replace(tmp, path)
    fsync_folder(path.parent)


def _create(tmp: Path, permissions: int | None) -> int:
    """Create ``tmp`` (never an existing file); ``permissions`` exactly, whatever the umask."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
    fd = os.open(tmp, flags, 0o666 if permissions is None else permissions)
    if permissions is not None:
        try:
            os.fchmod(fd, permissions)
        except BaseException:
            os.close(fd)
            tmp.unlink(missing_ok=True)
            raise
    return fd


@contextmanager
def atomic_file(
    path: str | Path,
    mode: str = "wb",
    *,
    encoding: str = "utf-8",
    permissions: int | None = None,
    exclusive: bool = False,
) -> Iterator[IO[Any]]:
    """A handle on a temporary file that is put at ``path`` when the ``with`` block ends.

    Args:
        path: the final name; its folder must exist.
        mode: ``"wb"`` (bytes) or ``"w"`` (text in ``encoding``).
        encoding: of text mode.
        permissions: the file's mode bits exactly (default: ``0o666`` less the umask).
        exclusive: never replace a file at ``path`` (it then raises ``FileExistsError``).

    An exception in the block (``KeyboardInterrupt`` included) removes the temporary and leaves
    ``path`` as it was.
    """
    if mode not in ("w", "wt", "wb"):
        raise ValueError(f"atomic files are written new: mode 'w' or 'wb', got {mode!r}")
    path = Path(path)
    tmp = temporary_path(path)
    fd = _create(tmp, permissions)
    try:
        try:
            handle = os.fdopen(fd, mode, encoding=None if "b" in mode else encoding)
        except BaseException:
            os.close(fd)
            raise
        with handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        _publish(tmp, path, exclusive)
    finally:
        tmp.unlink(missing_ok=True)


@contextmanager
def atomic_path(
    path: str | Path, *, permissions: int | None = None, exclusive: bool = False
) -> Iterator[Path]:
    """A temporary path (not yet created) for a library to write; put at ``path`` when the
    ``with`` block ends. Arguments and failures as :func:`atomic_file`."""
    path = Path(path)
    tmp = temporary_path(path)
    try:
        yield tmp
        fd = os.open(tmp, os.O_RDONLY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
            if permissions is not None:
                os.fchmod(fd, permissions)
        finally:
            os.close(fd)
        _publish(tmp, path, exclusive)
    finally:
        tmp.unlink(missing_ok=True)


def write_atomic(
    path: str | Path,
    data: bytes | str,
    *,
    encoding: str = "utf-8",
    permissions: int | None = None,
    exclusive: bool = False,
) -> None:
    """Write ``data`` (text in ``encoding``) at ``path`` whole or not at all; see
    :func:`atomic_file` for the arguments."""
    mode = "wb" if isinstance(data, bytes) else "w"
    with atomic_file(
        path, mode, encoding=encoding, permissions=permissions, exclusive=exclusive
    ) as handle:
        handle.write(data)


def _sync_tree(folder: Path) -> None:
    """Make everything written under ``folder`` durable: one ``sync`` of the file systems
    rather than an fsync per file (an export holds one PNG per image: hundreds of thousands
    of fsyncs would cost minutes), then the folder's own names."""
    os.sync()
    fsync_folder(folder)


@contextmanager
def atomic_folder(path: str | Path) -> Iterator[Path]:
    """A temporary folder (created) that is put at ``path`` when the ``with`` block ends.

    ``path`` may be absent or an empty folder, which the rename replaces; a folder with
    anything in it is never replaced (``OSError``). Everything inside is made durable before
    the rename. An exception in the block removes the temporary folder and leaves ``path`` as
    it was.
    """
    path = Path(path)
    tmp = temporary_path(path)
    tmp.mkdir()
    try:
        yield tmp
        _sync_tree(tmp)
        os.replace(tmp, path)
        fsync_folder(path.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
