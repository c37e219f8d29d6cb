"""Running the build flow from the command line: its ends mapped to one line and an exit code,
the summary, and ``--overwrite`` (a build into a staging folder swapped in when complete).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import typer

from medgrit.adapters.runtime.processes import (
    close_shard_processes,
    local_processes,
    start_workers,
)
from medgrit.cli.messages import fail, reason_of, shown
from medgrit.cli.preflight import create_key, take_out
from medgrit.flows.temporary_server import temporary_server_settings
from medgrit.schemas.config import BuildConfig

if TYPE_CHECKING:
    from prefect.task_runners import TaskRunner

    from medgrit.adapters.planning import SourceListing


@contextmanager
def shard_runner(config: BuildConfig, source_roots: Sequence[str]) -> Iterator[TaskRunner | None]:
    """The task runner of ``--runner``: None for threads (``run_flow``'s pool), else a Dask
    runner whose cluster was checked first (``medgrit.flows.runners``); what a user must fix
    there is one line and exit code 2, before anything is written."""
    if config.runner != "dask":
        yield None
        return
    from medgrit.flows.runners import RunnerUnavailable, dask_runner

    try:
        with dask_runner(config, source_roots) as runner:
            yield runner
    except RunnerUnavailable as exc:
        fail(str(exc))


THREADS_PER_PROCESS = 2
"""Shard threads per worker process of a ``processes`` build (see :func:`run_flow`)."""


def run_flow(
    config: BuildConfig,
    fresh: bool = False,
    task_runner: TaskRunner | None = None,
    add_new_cases: bool = True,
    listing: SourceListing | None = None,
    prefect: bool = True,
) -> dict:
    """Run the build flow; the failures a user can act on end in one line.

    ``fresh``: the folder is medgrit's staging folder, rebuilt from scratch when it holds
    another build (else a changed plan is a user error). ``task_runner``: from
    :func:`shard_runner` (default: a thread pool). ``add_new_cases``: a build (True) adds the
    cases its sources gained to a dataset of the same settings; a resume (False) finishes only
    what was planned. ``listing``: the sources the checks opened, for the build to take.
    ``prefect``: False runs the build in this process without Prefect (``--no-prefect``: no
    server, no UI, the same tables; ``task_runner`` must be None).
    """
    out = Path(config.out)
    workers = config.workers
    if config.generator == "llm":  # (the LLM client's imports are slow: only then)
        from medgrit.adapters.llm.dispatch import shards_in_flight

        # LLM shards share one limiter and in-flight window (medgrit.adapters.llm.dispatch):
        # more shards run at once than there are cores, so enough requests fill it.
        workers = shards_in_flight(config)
    elif local_processes(config) > 1:
        # Each shard's thread waits while a worker process builds it. Twice as many threads
        # keep a shard queued for each worker while a thread records its task run and starts
        # the next (Prefect's API calls: seconds at times, while its server writes its own).
        workers = THREADS_PER_PROCESS * config.workers
    if prefect:
        from prefect.task_runners import ThreadPoolTaskRunner

        from medgrit.flows.build import build_dataset
        from medgrit.flows.prefect_env import announce_prefect_server

        if task_runner is not None:  # workers elsewhere: their working folder is not ours
            config = config.model_copy(update={"out": str(out.absolute())})
        task_runner = task_runner or ThreadPoolTaskRunner(max_workers=workers)
        flow = build_dataset.with_options(task_runner=task_runner)
        announce_prefect_server()  # a temporary server's start takes a while: say so
        run = partial(
            flow,
            config=config,
            rebuild_if_changed=fresh,
            add_new_cases=add_new_cases,
            listing=listing,
        )
    else:
        run = partial(_run_here, config, workers, fresh, add_new_cases, listing)
    try:
        if not prefect:
            return run()
        shards = _new_shards_at_least(config, listing)
        if shards > 1:
            # their imports run on the cores this process leaves idle while it waits
            start_workers(local_processes(config), shards)
        try:
            with temporary_server_settings():  # the server the command started, if any
                return run()
        except BaseException:
            if shards > 1:
                close_shard_processes()  # (the build closes them itself once it started)
            raise
    except build_ends() as exc:
        fail_build(out, exc)


def _new_shards_at_least(config: BuildConfig, listing: SourceListing | None) -> int:
    """How many shards a build on worker processes will run at least, as far as its listing
    tells (each case gives one image or more); 0 for more of an existing dataset (maybe little
    is left to build) and for builds on no worker processes."""
    if local_processes(config) < 2 or listing is None:
        return 0
    if (Path(config.out) / "dataset.json").exists():
        return 0
    cases = sum(len(source.cases) for source in listing.sources)
    images = min(cases, config.max_images if config.max_images is not None else cases)
    return -(-images // config.images_per_shard)


def _run_here(
    config: BuildConfig,
    workers: int,
    fresh: bool,
    add_new_cases: bool,
    listing: SourceListing | None,
) -> dict:
    """The build on this machine, shards on a pool of ``workers`` threads (each waiting for its
    shard on a worker process with ``runner: processes``), with no Prefect:
    what the build flow runs (``medgrit.adapters.build.run_build``), without its server, UI,
    artifacts and task retries. Its log goes to stderr unless logging is set up already."""
    import logging

    from medgrit.adapters.build import run_build
    from medgrit.adapters.planning import with_absolute_paths
    from medgrit.adapters.runtime.mappers import ThreadMapper

    logger = logging.getLogger("medgrit.build")
    if not logger.handlers and not logging.getLogger().handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
    return run_build(
        with_absolute_paths(config),  # as the flow takes it
        ThreadMapper(workers),
        rebuild_if_changed=fresh,
        logger=logger,
        append=add_new_cases,
        listing=listing,
    )


def build_ends() -> tuple[type[BaseException], ...]:
    """The ends of a build that :func:`fail_build` says in one line (imported when asked)."""
    from medgrit.adapters.llm.formats import LLMEndpointError
    from medgrit.adapters.store.bookkeeping import BuildFailed, DatasetMismatch
    from medgrit.adapters.store.dataset_dir import DatasetBusy
    from medgrit.adapters.store.manifest import ManifestError
    from medgrit.core.failures import StopRequested

    return (
        DatasetMismatch,
        LLMEndpointError,
        BuildFailed,
        DatasetBusy,
        ManifestError,
        StopRequested,
        OSError,
    )


def fail_build(out: Path, exc: BaseException) -> NoReturn:
    """End a build of ``out`` that raised ``exc`` (one of :func:`build_ends`) with one line and
    its exit code, whichever way it ran: 2 for what a user must fix first, 1 for a build that
    failed or stopped (``medgrit resume`` continues it); a signal's stop becomes
    KeyboardInterrupt (``main()`` says how to continue).

    Raises:
        typer.Exit: with the exit code, after the line.
        KeyboardInterrupt: for a build stopped by a signal.
    """
    from medgrit.adapters.llm.formats import LLMEndpointError
    from medgrit.adapters.runtime.interrupt import signalled
    from medgrit.adapters.store.bookkeeping import BuildFailed, DatasetMismatch
    from medgrit.adapters.store.dataset_dir import DatasetBusy
    from medgrit.adapters.store.manifest import ManifestError
    from medgrit.core.failures import StopRequested, is_disk_full

    if isinstance(exc, DatasetMismatch):
        fail(str(exc))
    if isinstance(exc, LLMEndpointError):
        fail(str(exc), code=1)
    if isinstance(exc, BuildFailed):
        typer.echo(summary_text(out))
        fail(str(exc), code=1)
    if isinstance(exc, StopRequested):
        if signalled():
            raise KeyboardInterrupt from None
        fail(f"the build stopped; run `medgrit resume {shown(out)}` to finish it", code=1)
    if isinstance(exc, DatasetBusy | ManifestError) or not isinstance(exc, OSError):
        fail(str(exc))
    if is_disk_full(exc):
        fail(
            f"no space left on {_mount_point(out)} (the disk holding {shown(out)}); "
            f"free some space, then run `medgrit resume {shown(out)}`",
            code=1,
        )
    where = f" ({shown(exc.filename)})" if exc.filename else ""
    fail(
        f"the build of {shown(out)} failed: {exc.strerror or exc}{where}; "
        f"fix it, then run `medgrit resume {shown(out)}`",
        code=1,
    )


def _mount_point(path: Path) -> str:
    """The mount point of the file system holding ``path`` (for messages about the disk)."""
    current = path.resolve()
    while not current.exists() and current != current.parent:
        current = current.parent
    device = current.stat().st_dev
    while current != current.parent and current.parent.stat().st_dev == device:
        current = current.parent
    return shown(current)


def report(out: Path, manifest: dict) -> None:
    """Print the summary of a finished build; exit 1 when it kept no image at all."""
    from medgrit.cli.terminal import end_progress

    end_progress()  # its last lines (or full bars) come before the summary
    typer.echo(summary_text(out))
    rows = (manifest.get("totals") or {}).get("rows", {})
    if not rows.get("images"):
        reasons = (manifest.get("totals") or {}).get("rejects_by_reason", {})
        why = ", ".join(f"{k}: {v}" for k, v in sorted(reasons.items(), key=lambda kv: -kv[1]))
        fail(
            f"the build kept no image from its sources ({why or 'no rejects'}); "
            f"see the rejects table in {shown(out)}",
            code=1,
        )
    typer.echo(f"dataset written to {shown(out.resolve())} ({manifest['status']})")


def summary_text(out: Path) -> str:
    """The summary of the build in ``out``, from its recorded totals, as stdout shows it: rich
    tables on a terminal, plain aligned text elsewhere (the Markdown is for the artifacts).
    The progress display is taken away first: the summary is printed next."""
    from medgrit.adapters.store.bookkeeping import load_dataset
    from medgrit.cli.tables import summary_for_stdout
    from medgrit.cli.terminal import stop_progress
    from medgrit.core.summary import summarise_build
    from medgrit.schemas.manifest import Totals

    stop_progress()
    manifest = load_dataset(out)
    totals = manifest.totals or Totals()
    done = sum(s.status == "done" for s in manifest.shards)
    failed = [s.id for s in manifest.shards if s.status == "failed"]
    generator = manifest.config.get("generator")
    llm = totals.llm.to_json() if totals.llm is not None and generator == "llm" else None
    summary = summarise_build(
        shown(out), totals.rows, totals.model_dump(), done, len(manifest.shards), failed, llm=llm
    )
    return summary_for_stdout(summary)


def build_replacing(
    config: BuildConfig,
    out: Path,
    task_runner: TaskRunner | None = None,
    listing: SourceListing | None = None,
    prefect: bool = True,
) -> None:
    """--overwrite: build beside ``out`` and swap the new dataset in once it is complete
    (``listing``: the sources the checks opened; ``prefect``: as :func:`run_flow`)."""
    from medgrit.adapters.runtime.interrupt import signalled
    from medgrit.adapters.store.dataset_dir import foreign_entries, prepare_staging, swap_in
    from medgrit.adapters.store.manifest import replace_manifest
    from medgrit.schemas.manifest import Manifest

    given = out
    out = out.resolve()  # replace the folder itself, not a link to it
    with ExitStack() as stack:
        take_out(out, stack, "overwrite")
        if foreign_entries(out):  # checked again now that no other writer can add any
            fail(f"--out {shown(given)} holds files medgrit did not write; choose another folder")
        try:
            staging = prepare_staging(out)
        except OSError as exc:
            fail(f"cannot prepare the replacement of {shown(out)}: {reason_of(exc)}")
        take_out(staging, stack, "overwrite")
        _share_llm_cache(out, staging)
        create_key(config)
        try:
            staged = config.model_copy(update={"out": str(staging)})
            manifest = run_flow(staged, True, task_runner, listing=listing, prefect=prefect)
        except typer.Exit as exc:
            if exc.exit_code == 1:
                typer.echo(
                    f"medgrit: {shown(out)} is unchanged; run the same command again to "
                    "finish the new dataset and replace it",
                    err=True,
                )
            raise
        if signalled() or manifest.get("status") != "complete":
            fail(
                f"the new dataset is not complete; {shown(given)} is unchanged: run the same "
                "command again to finish it and replace the old one",
                code=1,
            )
        if not (manifest.get("totals") or {}).get("rows", {}).get("images"):
            report(staging, manifest)  # exits 1: nothing to replace the dataset with
        swap_in(staging, out)

        def retarget(on_disk: Manifest | None) -> Manifest:
            assert on_disk is not None  # the swapped-in dataset's own
            out_json = config.model_dump(mode="json")["out"]
            return on_disk.evolve(config={**on_disk.config, "out": out_json})

        replace_manifest(out, retarget)
        report(out, manifest)


def _share_llm_cache(old: Path, new: Path) -> None:
    """Hard-link the old dataset's LLM answers into the new one (answers are keyed by content,
    so a rebuild asks again only what changed)."""
    import shutil

    cache = old / "llm" / "cache"
    if not cache.is_dir() or (new / "llm").exists():
        return
    try:
        shutil.copytree(cache, new / "llm" / "cache", copy_function=os.link)
    except OSError:
        shutil.rmtree(new / "llm", ignore_errors=True)  # a plain rebuild then
