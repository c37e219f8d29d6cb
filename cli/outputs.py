"""Output paths, checked before the work: a command that could not write its result says so in
one line (exit code 2) before it reads, scores or builds anything.

Permission bits do not bind root, and some file systems (``/proc``) refuse new entries whatever
the bits say, so a folder that must take a new entry is tested by making one there: an empty
folder, removed at once. Inside a dataset nothing is made: a medgrit folder holds only medgrit's
files, so its folders are judged by their kind and ``os.access`` (which sees read-only mounts).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Literal

from medgrit.cli.messages import fail, shown


def nearest_existing(path: Path) -> Path:
    """``path`` itself, or its closest ancestor that exists (a link counts, dangling or not)."""
    current = path
    while not current.exists() and not current.is_symlink() and current != current.parent:
        current = current.parent
    return current


def folder_problem(folder: Path) -> str | None:
    """Why files cannot be written into ``folder`` as it is now (None: they can, or it does not
    exist yet and will be made). Writes nothing."""
    if folder.is_symlink() and not folder.exists():
        return "it is a symbolic link that cannot be followed"
    if not folder.exists():
        return None
    if not folder.is_dir():
        return "it is a file, not a folder"
    if not os.access(folder, os.W_OK | os.X_OK):
        try:
            read_only = bool(os.statvfs(folder).f_flag & os.ST_RDONLY)
        except OSError:
            read_only = False
        return "Read-only file system" if read_only else "Permission denied"
    return None


def creation_problem(folder: Path) -> str | None:
    """Why a new entry cannot be made in the existing folder ``folder`` (None: it can), found by
    making an empty folder there and removing it."""
    problem = folder_problem(folder)
    if problem is not None:
        return problem
    try:
        probe = tempfile.mkdtemp(prefix=".medgrit-probe-", dir=folder)
    except OSError as exc:
        return exc.strerror or str(exc)
    os.rmdir(probe)
    return None


def check_output(
    path: Path, flag: str, kind: Literal["file", "folder"], make_parents: bool = False
) -> None:
    """Check that ``path`` (a ``file`` or a ``folder``) can be written where it is named.

    ``make_parents``: the command creates missing folders above ``path``, so the nearest one
    that exists must take new entries; otherwise the parent must exist. An existing ``path``
    is the caller's to refuse or replace.
    """
    named = f"{flag} {shown(path)}"
    if kind == "file" and path.is_dir():
        fail(f"{named} is a folder; give a file name")
    if kind == "folder" and path.exists() and not path.is_dir():
        fail(f"{named} is a file; choose a new folder")
    parent = path.parent
    if not make_parents and not parent.exists() and not parent.is_symlink():
        fail(f"{named}: the folder {shown(parent)} does not exist; create it first")
    existing = nearest_existing(parent)
    if existing.exists() and not existing.is_dir():
        fail(f"{named} lies under {shown(existing)}, which is a file, not a folder")
    problem = creation_problem(existing)
    if problem is not None:
        fail(f"{named}: the folder {shown(existing)} is not writable ({problem}); choose another")
