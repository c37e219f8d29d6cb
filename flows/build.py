"""The build flow: :func:`medgrit.adapters.build.run_build` with shards as Prefect tasks.

``build_dataset`` takes one :class:`BuildConfig`; each pending shard is one ``build_shard`` task
run on the flow's task runner, watched in the Prefect UI: the run is named after the dataset and
tagged with it and the generator, and its artifacts (``medgrit.flows.dashboard``) follow the
shards as they finish; the finished build's summary is a markdown artifact. How a build plans,
resumes and records its shards is ``run_build``'s: a loop, a thread pool or Dask worker processes
(``medgrit.flows.runners``) give the same tables. The task runner is chosen at call time:
``build_dataset.with_options(task_runner=...)``.
"""

from __future__ import annotations

from medgrit.flows.prefect_env import apply_prefect_defaults

apply_prefect_defaults()

from collections.abc import Iterator  # noqa: E402
from dataclasses import dataclass, replace  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

from prefect import flow, get_run_logger, tags  # noqa: E402
from prefect.artifacts import create_markdown_artifact  # noqa: E402
from prefect.context import FlowRunContext  # noqa: E402
from prefect.futures import PrefectFuture, as_completed  # noqa: E402
from prefect.states import Failed  # noqa: E402
from prefect.task_runners import ThreadPoolTaskRunner  # noqa: E402
from prefect.utilities.annotations import quote  # noqa: E402
from pydantic.json_schema import SkipJsonSchema  # noqa: E402

from medgrit.adapters.build import run_build  # noqa: E402
from medgrit.adapters.llm.formats import LLMEndpointError  # noqa: E402
from medgrit.adapters.planning import SourceListing, with_absolute_paths  # noqa: E402
from medgrit.adapters.runtime.interrupt import BuildInterrupted  # noqa: E402
from medgrit.adapters.runtime.mappers import RunnerFuture, in_completion_order  # noqa: E402
from medgrit.adapters.shard import ShardJob  # noqa: E402
from medgrit.adapters.store.bookkeeping import (  # noqa: E402
    BuildFailed,
    DatasetMismatch,
    DiskFull,
    shard_error,
)
from medgrit.adapters.store.dataset_dir import DatasetBusy  # noqa: E402
from medgrit.adapters.store.manifest import ManifestError  # noqa: E402
from medgrit.core.failures import is_infrastructure  # noqa: E402
from medgrit.core.fsnames import escape_name  # noqa: E402
from medgrit.core.markdown import escape_markdown  # noqa: E402
from medgrit.flows.dashboard import (  # noqa: E402
    BuildDashboard,
    build_run_name,
    quiet_task_engine,
    run_tags,
    shard_task_run_name,
    tag_flow_run,
)
from medgrit.flows.runners import worker_processes  # noqa: E402
from medgrit.schemas.config import BuildConfig  # noqa: E402
from medgrit.tasks.build import build_shard  # noqa: E402

__all__ = ["BuildFailed", "DatasetBusy", "DatasetMismatch", "DiskFull", "build_dataset"]


def _task_finished(future: PrefectFuture) -> bool:
    return future.state.is_completed()


class ShardFilesMissing(RuntimeError):
    """A shard finished on a worker whose files the flow's machine cannot see."""


class _SharedFuture(RunnerFuture):
    """A shard task's future whose result is kept only when its files are in OUT here (a Dask
    worker writes them on its own machine)."""

    def __init__(self, future: PrefectFuture, out: Path) -> None:
        super().__init__(future, _task_finished)
        self.out = out

    def result(self) -> dict:
        entry = super().result()
        if not all((self.out / rel).is_file() for rel in entry["files"]):
            raise ShardFilesMissing(
                "the worker wrote the shard's files where this machine cannot see them; OUT "
                "must be on a file system every worker shares, at the same path"
            )
        return entry


@dataclass
class PrefectMapper:
    """Shards as ``build_shard`` tasks on the running flow's task runner.

    ``llm_share``: the worker processes the shards run on; each takes 1/llm_share of the
    build's LLM rate limits, so together they keep to them. ``dataset``: the dataset's name in
    task run names; ``tags``: the task runs' tags (also on Dask workers, where the flow's tag
    context does not reach); ``quote_jobs``: pass each job quoted (on a thread pool task
    runner, see :meth:`submit`).
    """

    llm_share: int = 1
    dataset: str = "dataset"
    tags: tuple[str, ...] = ()
    quote_jobs: bool = False

    def submit(self, job: ShardJob) -> RunnerFuture:
        if self.llm_share != job.llm_share:
            job = replace(job, llm_share=self.llm_share)
        task = build_shard.with_options(
            task_run_name=shard_task_run_name(job.shard, self.dataset), tags=set(self.tags)
        )
        # Quoted, on this process's task runner: Prefect would otherwise walk every case of
        # the job, twice per task run (looking for futures among its parameters), seconds of
        # this process's CPU per thousand shards; its task engine hands the task the job
        # itself. (prefect-dask would hand it the quote: jobs to Dask go as they are.)
        parameter = quote(job) if self.quote_jobs else job
        return _SharedFuture(task.submit(parameter), Path(job.config.out))

    def as_completed(self, futures: list) -> Iterator[RunnerFuture]:
        return in_completion_order(futures, as_completed)

    def close(self) -> None:
        """The flow's task runner waits for its tasks."""


@flow(name="build_dataset", flow_run_name=build_run_name, log_prints=False)
def build_dataset(
    config: BuildConfig,
    rebuild_if_changed: bool = False,
    add_new_cases: bool = True,
    listing: SkipJsonSchema[SourceListing | None] = None,
) -> dict:
    """Build (or resume) a Med-GRIT-style dataset directory from segmentation sources.

    Args:
        config: the build config.
        rebuild_if_changed: when the directory holds a build whose config or plan differs,
            start afresh (for medgrit's own staging folders); by default that is
            :class:`DatasetMismatch`, so finished shards are never thrown away.
        add_new_cases: when the directory holds this build and its sources gained cases
            since, build them as new shards after the ones it has (a scheduled build of a
            growing source); False finishes only what was planned (``medgrit resume``).
        listing: the sources the CLI's checks opened (``open_build_sources``), taken when
            they were listed for this build; a scheduled run lists its own. Not in the
            deployment's parameter form, and stored with the flow run only as a placeholder.

    Returns:
        The final manifest (also written to ``OUT/dataset.json``).

    Raises:
        BuildFailed, DiskFull, DatasetBusy, DatasetMismatch: see ``run_build``.
    """
    config = with_absolute_paths(config)  # a deployment's relative paths, from its folder
    shown = escape_name(str(Path(config.out)))
    logger = get_run_logger()
    dashboard = BuildDashboard(config)
    labels = run_tags(config)

    def publish(summary: str) -> None:
        # Once per run, after the dashboard's final numbers: the last artifact created.
        try:
            dashboard.flush()
            create_markdown_artifact(
                key="medgrit-build-summary",
                markdown=summary_markdown(summary, dashboard, config.out),
                description=f"medgrit build of {escape_markdown(shown)}",
            )
        except Exception as exc:  # noqa: BLE001 - the dataset is written; only its card is missing
            logger.warning("summary not published: %s", escape_name(str(exc))[:200])

    mapper = _tagged_mapper(config, dashboard, labels, logger)
    try:
        with tags(*labels), quiet_task_engine():
            return run_build(
                config,
                mapper,
                rebuild_if_changed,
                logger,
                publish,
                dashboard,
                add_new_cases,
                listing,
            )
    except (
        BuildFailed,
        DiskFull,
        BuildInterrupted,
        DatasetBusy,
        DatasetMismatch,
        LLMEndpointError,
        ManifestError,
    ) as exc:
        # An expected end, not a crash: the run is Failed with this message and no
        # traceback; calling the flow still raises ``exc``.
        return Failed(message=escape_name(str(exc)), data=exc)  # type: ignore[return-value]
    except OSError as exc:
        if not is_infrastructure(exc):
            raise  # a bug: its traceback is wanted
        # The disk or a folder of the dataset: said in one line, without the path (a DICOM
        # file name may carry identifiers).
        return Failed(message=shard_error(exc), data=exc)  # type: ignore[return-value]
    finally:
        try:
            dashboard.flush()  # a stopped or broken build shows where it ended
        except Exception as exc:  # noqa: BLE001 - as run_build treats its hook
            logger.warning("progress not published: %s", escape_name(str(exc))[:200])


def _tagged_mapper(
    config: BuildConfig, dashboard: BuildDashboard, labels: list[str], logger: Any
) -> PrefectMapper:
    """Tag the flow run, and map shards on its task runner's worker processes."""
    try:
        tag_flow_run(labels)
    except Exception as exc:  # noqa: BLE001 - an API hiccup over tags never ends a build
        logger.warning("flow run not tagged: %s", escape_name(str(exc))[:200])
    context = FlowRunContext.get()
    processes = worker_processes(context.task_runner) if context else 1
    if processes > 1:
        split = "; each takes its share of the LLM rate limits" if config.generator == "llm" else ""
        logger.info("shards run on %d worker processes%s", processes, split)
    threads = context is not None and isinstance(context.task_runner, ThreadPoolTaskRunner)
    return PrefectMapper(processes, dashboard.name, tuple(labels), quote_jobs=threads)


def summary_markdown(summary: str, dashboard: BuildDashboard, out: str) -> str:
    """The build summary artifact: ``render_summary``'s Markdown with the dashboard's lines (a
    link to the dataset folder, this run's shards) after its shard count. Both escape what
    they show of the dataset's path."""
    return escape_name(_with_lines(summary, dashboard.summary_lines(out)))


def _with_lines(summary: str, lines: list[str]) -> str:
    """``summary`` with ``lines`` after its shard count (or at its end)."""
    rows = summary.splitlines()
    at = next((i + 1 for i, row in enumerate(rows) if row.startswith("- shards:")), len(rows))
    return "\n".join(rows[:at] + lines + rows[at:]) + "\n"
