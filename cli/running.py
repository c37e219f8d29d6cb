"""Running the build flow from the command line: its ends mapped to one line and an exit code,
the summary, and ``--overwrite`` (a build into a staging folder swapped in when complete).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from medgrit.cli.messages import fail, reason_of, shown
from medgrit.cli.preflight import create_key, take_out
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


def run_flow(
    config: BuildConfig,
    fresh: bool = False,
    task_runner: TaskRunner | None = None,
    add_new_cases: bool = True,
    listing: SourceListing | None = None,
) -> dict:
    """Run the build flow; the failures a user can act on end in one line.

    ``fresh``: the folder is medgrit's staging folder, rebuilt from scratch when it holds
    another build (else a changed plan is a user error). ``task_runner``: from
    :func:`shard_runner` (default: a thread pool). ``add_new_cases``: a build (True) adds the
    cases its sources gained to a dataset of the same settings; a resume (False) finishes only
    what was planned. ``listing``: the sources the checks opened, for the build to take.
    """
    from prefect.task_runners import ThreadPoolTaskRunner

    from medgrit.adapters.llm.dispatch import shards_in_flight
    from medgrit.adapters.llm.formats import LLMEndpointError
    from medgrit.adapters.runtime.interrupt import signalled
    from medgrit.adapters.store.dataset_dir import DatasetBusy
    from medgrit.adapters.store.manifest import ManifestError
    from medgrit.core.failures import StopRequested, is_disk_full
    from medgrit.flows.build import BuildFailed, DatasetMismatch, build_dataset

    out = Path(config.out)
    # LLM shards share one limiter and in-flight window (medgrit.adapters.llm.dispatch): more
    # shards run at once than there are cores, so enough requests are pending to fill it.
    workers = shards_in_flight(config)
    if task_runner is not None:  # workers elsewhere: their working folder is not ours
        config = config.model_copy(update={"out": str(out.absolute())})
    task_runner = task_runner or ThreadPoolTaskRunner(max_workers=workers)
    flow = build_dataset.with_options(task_runner=task_runner)
    try:
        return flow(
            config=config,
            rebuild_if_changed=fresh,
            add_new_cases=add_new_cases,
            listing=listing,
        )
    except DatasetMismatch as exc:
        fail(str(exc))
    except LLMEndpointError as exc:
        fail(str(exc), code=1)
    except BuildFailed as exc:
        typer.echo(summary_text(out))
        fail(str(exc), code=1)
    except (DatasetBusy, ManifestError) as exc:
        fail(str(exc))
    except StopRequested:
        if signalled():
            raise KeyboardInterrupt from None  # main() says how to continue
        fail(f"the build stopped; run `medgrit resume {shown(out)}` to finish it", code=1)
    except OSError as exc:
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
    """The markdown summary of the build in ``out``, from its recorded totals."""
    from medgrit.adapters.store.bookkeeping import load_dataset
    from medgrit.core.summary import render_summary
    from medgrit.schemas.manifest import Totals

    manifest = load_dataset(out)
    totals = manifest.totals or Totals()
    done = sum(s.status == "done" for s in manifest.shards)
    failed = [s.id for s in manifest.shards if s.status == "failed"]
    generator = manifest.config.get("generator")
    llm = totals.llm.to_json() if totals.llm is not None and generator == "llm" else None
    return render_summary(
        shown(out), totals.rows, totals.model_dump(), done, len(manifest.shards), failed, llm=llm
    )


def build_replacing(
    config: BuildConfig,
    out: Path,
    task_runner: TaskRunner | None = None,
    listing: SourceListing | None = None,
) -> None:
    """--overwrite: build beside ``out`` and swap the new dataset in once it is complete
    (``listing``: the sources the checks opened)."""
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
            manifest = run_flow(staged, True, task_runner, listing=listing)
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
