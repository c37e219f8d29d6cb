"""Checks before a build writes anything: sources, the key file, the API key, the out folder.

Every check that fails prints one line and exits with code 2; nothing is written until all have
passed (the key file is created last, by :func:`create_key`).
"""

from __future__ import annotations

import os
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING

from medgrit.cli.messages import fail, reason_of, shown
from medgrit.cli.outputs import creation_problem, folder_problem, nearest_existing
from medgrit.schemas.config import BuildConfig

if TYPE_CHECKING:
    from medgrit.adapters.planning import SourceListing


def absolute_spec(spec: str) -> str:
    kind, sep, path = spec.partition(":")
    if not sep or not path:
        return spec  # ``demo``, or an error BuildConfig names
    return f"{kind}:{Path(path).expanduser().absolute()}"


def key_path_of(config: BuildConfig) -> Path:
    from medgrit.adapters.runtime.keys import default_key_file

    return Path(config.key_file).expanduser() if config.key_file else default_key_file()


def open_checked(config: BuildConfig, out: Path) -> SourceListing:
    """Open the sources and check them, the key and the API key; nothing is written.

    A key file that does not exist yet is created only once every check has passed (see
    :func:`create_key`); until then a throwaway key lists the cases. The listing goes to the
    build (``run_flow(..., listing=...)``), which takes it when it was made with the build's key.
    """
    import secrets

    from medgrit.adapters.planning import open_build_sources
    from medgrit.adapters.runtime.keys import is_inside, load_or_create_key
    from medgrit.adapters.sources import SourceError

    key_path = key_path_of(config)
    if is_inside(key_path, out):
        fail(f"the pseudonymisation key {shown(key_path)} must be kept outside --out {shown(out)}")
    try:
        key = load_or_create_key(key_path) if key_path.exists() else secrets.token_bytes(32)
    except (OSError, ValueError) as exc:
        fail(f"cannot use the pseudonymisation key {shown(key_path)}: {reason_of(exc)}")
    try:
        listing = open_build_sources(config, key)
    except SourceError as exc:
        fail(str(exc))
    except OSError as exc:
        fail(f"cannot read the sources: {reason_of(exc)}")
    except (RecursionError, ValueError) as exc:
        fail(f"cannot read the sources: {type(exc).__name__}: {str(exc)[:200]}")
    opened = listing.sources
    for source in opened:
        if is_inside(key_path, Path(source.root)):
            fail(
                f"the pseudonymisation key {shown(key_path)} lies inside the source folder "
                f"{shown(source.root)}; keep it elsewhere (sources are never written)"
            )
    if config.llm is not None and config.generator == "llm" and not config.llm.api_key_block:
        if not os.environ.get("OPENAI_API_KEY"):
            fail("--generator llm needs an API key: set OPENAI_API_KEY or --llm-api-key-block")
    if not any(s.cases for s in opened):
        fail("the sources hold no cases (no label files found)")
    return listing


def create_key(config: BuildConfig) -> None:
    from medgrit.adapters.runtime.keys import load_or_create_key

    key_path = key_path_of(config)
    try:
        load_or_create_key(key_path)
    except (OSError, ValueError) as exc:
        fail(f"cannot use the pseudonymisation key {shown(key_path)}: {reason_of(exc)}")


_LOCK_FILES = (".medgrit.lock", ".dataset.json.lock")


def holds_more_than_locks(folder: Path) -> bool:
    """Whether a folder holds anything besides medgrit's lock files (a build stopped before
    it wrote its manifest leaves only those)."""
    return any(entry.name not in _LOCK_FILES for entry in folder.iterdir())


def check_out(out: Path, source_roots: list[Path], overwrite: bool, flag: str = "--out") -> bool:
    """Check --out before anything is written; True when it holds a dataset to replace.

    ``flag`` names ``out`` in the messages (``config.out`` for a deployment of ``serve``).
    """
    from medgrit.adapters.runtime.keys import is_inside
    from medgrit.adapters.store.dataset_dir import foreign_entries, is_medgrit_dataset

    existing = nearest_existing(out)
    if existing.exists() and not existing.is_dir():
        if existing == out:
            fail(f"{flag} {shown(out)} is a file, not a folder")
        fail(f"{flag} {shown(out)} lies under {shown(existing)}, which is a file, not a folder")
    for root in source_roots:
        if is_inside(out, root) or is_inside(root, out):
            relation = (
                "is"
                if out.resolve() == root.resolve()
                else ("lies inside" if is_inside(out, root) else "contains")
            )
            fail(
                f"{flag} {shown(out)} {relation} the source folder {shown(root)}; "
                "write the dataset to another folder (sources are never written)"
            )
    for parent in out.resolve().parents:
        if is_medgrit_dataset(parent):
            fail(
                f"{flag} {shown(out)} lies inside the dataset {shown(parent)}; "
                "choose a folder outside it"
            )
    # A folder to be made must be makeable (root ignores permission bits; /proc takes nothing).
    problem = folder_problem(out) if existing == out else creation_problem(existing)
    if problem is not None:
        where = "" if existing == out else f" in {shown(existing)}"
        fail(f"{flag} {shown(out)} cannot be written{where}: {problem}; choose another folder")
    if not (out.is_dir() and holds_more_than_locks(out)):
        return False
    if not is_medgrit_dataset(out):
        fail(
            f"{flag} {shown(out)} is not empty and holds no medgrit dataset; choose another folder"
        )
    if not overwrite:
        # Built again with the same settings: finished shards are kept and the cases the
        # sources gained are added; other settings are refused by the build itself.
        return False
    foreign = foreign_entries(out)
    if foreign:
        listed = ", ".join(foreign[:3]) + (
            f" and {len(foreign) - 3} more" if len(foreign) > 3 else ""
        )
        fail(
            f"{flag} {shown(out)} holds files medgrit did not write ({listed}); "
            "move them out, or choose another folder"
        )
    return True


# The dataset being written and how, for the message of a stopped build.
writing: list[tuple[Path, str]] = []


def check_dataset_folders(out: Path) -> None:
    """Refuse, in one line naming it, a folder of the dataset ``out`` that a build or resume
    could not write into (read-only, a file or a broken link where a table folder must be), so
    that it fails here rather than shard by shard once the work has started."""
    from medgrit.adapters.store.dataset_dir import RECORDS_DIR, TABLE_DIRS

    for name in ("", *TABLE_DIRS, RECORDS_DIR, "llm", "llm/cache"):
        folder = out / name if name else out
        problem = folder_problem(folder)
        if problem is not None:
            where = f"{shown(folder)} in the dataset {shown(out)}" if name else shown(out)
            fail(
                f"cannot write to {where}: {problem}; "
                "make it a writable folder, then run the command again"
            )


def take_out(out: Path, stack: ExitStack, mode: str) -> None:
    """Create --out (when missing) and hold its writer lock until ``stack`` closes; first check
    that the folders of the dataset in it can be written."""
    from medgrit.adapters.store.dataset_dir import DatasetBusy, hold_dataset

    check_dataset_folders(out)
    if not writing:
        writing.append((out, mode))
    created = not out.exists()
    try:
        out.mkdir(parents=True, exist_ok=True)
        stack.enter_context(hold_dataset(out))
    except DatasetBusy as exc:
        fail(str(exc))
    except OSError as exc:
        if created:
            _remove_empty(out)
        fail(f"cannot write to --out {shown(out)}: {exc.strerror or exc}")


def _remove_empty(folder: Path) -> None:
    try:
        for name in _LOCK_FILES:
            (folder / name).unlink(missing_ok=True)
        folder.rmdir()
    except OSError:
        pass
