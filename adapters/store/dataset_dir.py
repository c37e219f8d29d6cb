"""The dataset directory: who may write it, what in it is medgrit's, and how it is replaced.

- One writer at a time. :func:`hold_dataset` takes an exclusive ``flock`` on ``OUT/.medgrit.lock``
  for a whole build or resume. The OS drops it when the process dies, so a killed writer never
  blocks the next one; a second writer meets :class:`DatasetBusy` at once. Within one process
  the lock is re-entrant (the CLI takes it before Prefect starts, the flow again inside).
- Ownership. A directory is a medgrit dataset when its ``dataset.json`` carries medgrit's marker
  (``"format": "medgrit-dataset"``, or the ``medgrit_version`` of manifests written before the
  marker) and a schema version this code reads; never because a file has that name (every
  nnU-Net and MSD source has a ``dataset.json``). :func:`foreign_entries` lists what in a dataset
  directory medgrit did not write.
- Replacing (``build --overwrite``). The new dataset is built in a staging folder beside OUT
  (:func:`staging_dir`) and exchanged with OUT only once complete (:func:`swap_in`); the old one
  is deleted after the exchange. A killed overwrite leaves OUT as it was, and running the same
  command again resumes the staging folder.
- Temporary files carry their owner (``medgrit.adapters.runtime.atomic``, the one writer of
  every file: host, process id, random token), so cleanup
  (``medgrit.adapters.runtime.atomic.is_stale_temporary``) never
  removes the files of a live writer. The patterns below recognise them as medgrit's.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import fcntl
import json
import os
import re
import secrets
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from medgrit.core.fsnames import escape_name

MANIFEST = "dataset.json"
FORMAT_MARKER = "medgrit-dataset"
KNOWN_SCHEMA_VERSIONS: tuple[int, ...] = (1, 2, 3)
"""Schema versions this medgrit reads (``medgrit.schemas.tables``: 2 added region relations, 3
the images' sequence and the regions' source label)."""
LOCK_FILE = ".medgrit.lock"
STAGING_MARKER = ".medgrit-staging"
TABLE_DIRS: tuple[str, ...] = ("images", "regions", "conversations", "rejects")
RECORDS_DIR = "shards"
"""Folder of the shards' completion records (``shards/{id}.json``, see ``bookkeeping``)."""
# Everything medgrit writes at the top of a dataset directory.
_OWN_TOP = {
    MANIFEST,
    LOCK_FILE,
    STAGING_MARKER,
    f".{MANIFEST}.lock",
    "llm",
    RECORDS_DIR,
    *TABLE_DIRS,
}
_OWN_TOP_PATTERN = re.compile(rf"^\.{re.escape(MANIFEST)}\.tmp-.+$")
_OWN_PART_PATTERN = re.compile(
    r"^(part-[0-9A-Za-z_-]+\.parquet|\.part-[0-9A-Za-z_-]+\.parquet\.tmp-.+)$"
)
_OWN_RECORD_PATTERN = re.compile(r"^([0-9A-Za-z_-]+\.json|\.[0-9A-Za-z_-]+\.json\.tmp-.+)$")


class DatasetBusy(Exception):
    """Another process is writing the dataset directory."""


def manifest_is_medgrit(data: object) -> bool:
    """Whether a parsed ``dataset.json`` is one medgrit wrote (its marker, not its name)."""
    if not isinstance(data, dict):
        return False
    return data.get("format") == FORMAT_MARKER or (
        "medgrit_version" in data and "schema_version" in data and "shards" in data
    )


def is_medgrit_dataset(out: Path) -> bool:
    """Whether ``out`` holds a dataset medgrit wrote (a readable manifest with its marker)."""
    try:
        data = json.loads((out / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return manifest_is_medgrit(data)


def foreign_entries(out: Path) -> list[str]:
    """Entries of a dataset directory that medgrit did not write (escaped, sorted).

    Tables may hold only part files and their temporaries; ``llm/`` is medgrit's cache.
    """
    foreign: list[str] = []
    with os.scandir(out) as entries:
        for entry in entries:
            name = entry.name
            if name not in _OWN_TOP and not _OWN_TOP_PATTERN.match(name):
                foreign.append(escape_name(name))
            elif name == "llm":
                foreign += _foreign_in_cache(Path(entry.path))
            elif name in TABLE_DIRS or name == RECORDS_DIR:
                if not entry.is_dir(follow_symlinks=False):
                    foreign.append(escape_name(name))
                    continue
                pattern = _OWN_RECORD_PATTERN if name == RECORDS_DIR else _OWN_PART_PATTERN
                with os.scandir(entry.path) as parts:
                    for part in parts:
                        if not pattern.match(part.name) or not part.is_file(follow_symlinks=False):
                            foreign.append(escape_name(f"{name}/{part.name}"))
    return sorted(foreign)


_CACHE_DIR = re.compile(r"^[0-9a-f]{2}$")
# A record, its temporary (``.{key}.json.tmp-{owner}``), or one of the mkstemp temporaries
# (``.{key[:16]}.XXXXXXXX.tmp``) that earlier versions wrote.
_CACHE_FILE = re.compile(
    r"^([0-9a-f]{64}\.json|\.[0-9a-f]{64}\.json\.tmp-.+|\.[0-9a-f]{16}\..+\.tmp)$"
)


def _foreign_in_cache(llm: Path) -> list[str]:
    """What in ``llm/`` is not the response cache (``cache/{2 hex}/{sha256}.json``)."""
    if llm.is_symlink() or not llm.is_dir():
        return ["llm"]
    foreign = [f"llm/{escape_name(p.name)}" for p in llm.iterdir() if p.name != "cache"]
    cache = llm / "cache"
    if not cache.exists():
        return foreign
    if cache.is_symlink() or not cache.is_dir():
        return [*foreign, "llm/cache"]
    for folder in cache.iterdir():
        rel = f"llm/cache/{escape_name(folder.name)}"
        if not _CACHE_DIR.match(folder.name) or folder.is_symlink() or not folder.is_dir():
            foreign.append(rel)
            continue
        for item in folder.iterdir():
            if not _CACHE_FILE.match(item.name) or item.is_symlink() or not item.is_file():
                foreign.append(f"{rel}/{escape_name(item.name)}")
    return foreign


# --------------------------------------------------------------------------- the lock

_held: dict[str, tuple[int, int]] = {}  # real path of the lock file -> (fd, depth)
_held_guard = threading.Lock()


def _owner_text() -> str:
    return f"pid {os.getpid()} on {socket.gethostname()}"


@contextmanager
def hold_dataset(out: Path) -> Iterator[None]:
    """Hold the dataset's writer lock for the ``with`` block (re-entrant within a process).

    Raises:
        DatasetBusy: another process holds it.
        OSError: the lock file cannot be created (a read-only or missing folder).
    """
    path = Path(out) / LOCK_FILE
    key = os.path.realpath(path)
    with _held_guard:
        if key in _held:
            fd, depth = _held[key]
            _held[key] = (fd, depth + 1)
        else:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                _lock_briefly_contended(fd)
            except OSError as exc:
                holder = _read_owner(fd)
                os.close(fd)
                if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise DatasetBusy(
                        f"{escape_name(str(out))} is being written by another medgrit process"
                        f"{f' ({holder})' if holder else ''}; wait for it to finish"
                    ) from None
                raise
            os.ftruncate(fd, 0)
            os.write(fd, (_owner_text() + "\n").encode())
            _held[key] = (fd, 1)
    try:
        yield
    finally:
        with _held_guard:
            fd, depth = _held[key]
            if depth > 1:
                _held[key] = (fd, depth - 1)
            else:
                del _held[key]
                os.close(fd)  # closing the last descriptor releases the flock


_LOCK_TRIES = 20
_LOCK_PAUSE_S = 0.025


def _lock_briefly_contended(fd: int) -> None:
    """Take the writer lock, waiting out a holder that only looks (``current_writer`` holds a
    shared lock for an instant); a writer that stays is EWOULDBLOCK after half a second."""
    for attempt in range(_LOCK_TRIES):
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN) or attempt == _LOCK_TRIES - 1:
                raise
            time.sleep(_LOCK_PAUSE_S)


def current_writer(out: Path) -> str | None:
    """Who holds the dataset's writer lock now (``pid N on HOST``; "" when it does not say),
    or None when no build or resume is writing it. Takes no lock that lasts."""
    try:
        fd = os.open(Path(out) / LOCK_FILE, os.O_RDONLY)
    except OSError:
        return None  # never built here, or not readable: no writer this process can see
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return _read_owner(fd)
        return None
    finally:
        os.close(fd)  # closing also drops the shared lock just taken
    return None


def _read_owner(fd: int) -> str:
    try:
        return os.pread(fd, 200, 0).decode("utf-8", "replace").strip()
    except OSError:
        return ""


# --------------------------------------------------------------------------- replacing


def staging_dir(out: Path) -> Path:
    """Where ``build --overwrite`` builds the dataset that replaces ``out``."""
    return out.parent / f".{out.name}.medgrit-overwrite"


def prepare_staging(out: Path) -> Path:
    """The staging folder of an overwrite of ``out``, created (and marked) when missing.

    A staging folder left by a killed overwrite (marked, or holding a medgrit dataset: the old
    one, when the swap was cut short) is kept: the build resumes or rebuilds it. Old datasets
    that an interrupted swap left half-deleted beside ``out`` are removed.

    Raises:
        FileExistsError: the path exists and is not medgrit's staging folder.
    """
    for trash in out.parent.glob(f".{_glob_escape(out.name)}.medgrit-trash-*"):
        shutil.rmtree(trash, ignore_errors=True)
    staging = staging_dir(out)
    ours = (staging / STAGING_MARKER).is_file() or is_medgrit_dataset(staging)
    if staging.exists() and not ours:
        raise FileExistsError(
            f"{escape_name(str(staging))} exists and is not medgrit's; move it away"
        )
    staging.mkdir(exist_ok=True)
    (staging / STAGING_MARKER).write_text(f"replaces {escape_name(str(out))}\n", encoding="utf-8")
    return staging


def _glob_escape(text: str) -> str:
    return re.sub(r"([\[\]*?])", r"[\1]", text)


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux ``renameat2``); False where that is not supported."""
    libc_name = ctypes.util.find_library("c")
    if libc_name is None:
        return False
    libc = ctypes.CDLL(libc_name, use_errno=True)
    renameat2 = getattr(libc, "renameat2", None)
    if renameat2 is None:
        return False
    renameat2.argtypes = [
        ctypes.c_int,
        ctypes.c_char_p,
        ctypes.c_int,
        ctypes.c_char_p,
        ctypes.c_uint,
    ]
    result = renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    if result == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):
        return False
    raise OSError(code, os.strerror(code), str(a))


def swap_in(staging: Path, out: Path) -> None:
    """Put the complete dataset in ``staging`` at ``out`` and delete the one it replaces.

    The two folders are exchanged in one atomic step where the file system allows it, else by
    two renames; the old dataset is renamed aside before it is deleted, so an interruption
    leaves either dataset whole at ``out``.
    """
    trash = out.parent / f".{out.name}.medgrit-trash-{secrets.token_hex(4)}"
    if _exchange(staging, out):
        os.rename(staging, trash)
    else:
        os.rename(out, trash)
        os.rename(staging, out)
    (out / STAGING_MARKER).unlink(missing_ok=True)  # after the swap: a crash before keeps it
    shutil.rmtree(trash, ignore_errors=True)
