"""The Dask task runner of a build (``runner: dask``): a local cluster or an existing one.

``--runner dask`` runs each shard's ``build_shard`` task on prefect-dask's ``DaskTaskRunner``:
by default a ``distributed.LocalCluster`` of ``workers`` processes with one thread each, or the
existing cluster at ``dask_address``. The runner decides how shards run, never what they hold.

A worker reads its shard's sources and writes the shard's Parquet files into OUT itself, so on a
cluster of several machines OUT and the sources must lie on a file system that every worker
shares, at the same path. The pseudonymisation key stays on the machine that runs the flow:
cases are listed and pseudonymised there before any shard runs, and no worker reads it.

Workers report their task runs to the flow's Prefect API: prefect-dask sends the flow's Prefect
settings with every task. With no ``PREFECT_API_URL`` those settings name no server, and each
worker process would start an ephemeral server of its own (on another machine, with another
database). The build therefore runs on one temporary server, started before the cluster (by
the command line, ``medgrit.flows.temporary_server``, else by :func:`dask_runner`), and
``PREFECT_API_URL`` names it for the build. That server listens on 127.0.0.1 only: workers on other
machines need a Prefect server they can reach (``prefect server start --host 0.0.0.0``).
"""

from __future__ import annotations

from medgrit.flows.prefect_env import apply_prefect_defaults
from medgrit.flows.temporary_server import temporary_server_settings

apply_prefect_defaults()

import asyncio  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
from collections.abc import Iterator, Sequence  # noqa: E402
from contextlib import ExitStack, contextmanager  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402
from urllib.parse import urlsplit  # noqa: E402

from prefect.task_runners import TaskRunner  # noqa: E402

from medgrit.core.fsnames import escape_name  # noqa: E402
from medgrit.schemas.config import BuildConfig  # noqa: E402

CONNECT_TIMEOUT_S = 10
_PROBE_TIMEOUT_S = 5
_FLUSH_TIMEOUT_S = 10


class RunnerUnavailable(RuntimeError):
    """The Dask cluster cannot run the build; the message says what to fix."""


def worker_processes(task_runner: TaskRunner) -> int:
    """The processes ``task_runner`` spreads shards over: the Dask cluster's worker processes
    as the build starts (a cluster that grows or shrinks later keeps this count), else 1."""
    dask = sys.modules.get("prefect_dask.task_runners")
    if dask is None or not isinstance(task_runner, dask.DaskTaskRunner):
        return 1
    return max(1, len(task_runner.client.nthreads()))


@contextmanager
def dask_runner(config: BuildConfig, source_roots: Sequence[str] = ()) -> Iterator[TaskRunner]:
    """The ``DaskTaskRunner`` of a build, with a Prefect API its workers can report to.

    An existing cluster is checked first: it must have workers, and each must import medgrit
    (the same version), see OUT (or its nearest existing folder) and ``source_roots`` at their
    paths, reach the Prefect API and, for an LLM build, hold ``OPENAI_API_KEY`` unless the key
    comes from a Prefect Secret block. After the build, the workers send the logs they still
    hold before the ephemeral server stops.

    Raises:
        RunnerUnavailable: the cluster cannot be reached or cannot run the build.
    """
    os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "warning")  # before distributed loads
    from prefect_dask import DaskTaskRunner

    with ExitStack() as stack:
        if config.dask_address is None:
            _shared_api(stack)
            yield DaskTaskRunner(
                cluster_kwargs={
                    "n_workers": config.workers,
                    "threads_per_worker": 1,
                    "processes": True,
                }
            )
            return
        client = stack.enter_context(_connected(config.dask_address))
        if not client.nthreads():
            raise RunnerUnavailable(
                f"the Dask cluster at {config.dask_address} has no workers; start some with "
                f"`dask worker {config.dask_address}`"
            )
        api_url, ephemeral = _shared_api(stack)
        paths = [str(_nearest_existing(Path(config.out))), *source_roots]
        _check_workers(client, config, api_url, ephemeral, paths)
        try:
            yield DaskTaskRunner(address=config.dask_address)
        finally:
            _flush_worker_logs(client)


def _shared_api(stack: ExitStack) -> tuple[str, bool]:
    """The Prefect API URL of the build, and whether it is an ephemeral server started here."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    started = stack.enter_context(temporary_server_settings())  # the command started it
    if started is not None:
        return started, True
    url = PREFECT_API_URL.value()
    if url:
        return str(url), False
    from prefect.server.api.server import SubprocessASGIServer

    server = SubprocessASGIServer()  # the one Prefect itself would start; it stops at exit
    server.start()
    stack.enter_context(temporary_settings(updates={PREFECT_API_URL: server.api_url}))
    return server.api_url, True


@contextmanager
def _connected(address: str) -> Iterator[Any]:
    import distributed

    try:
        client = distributed.Client(address, timeout=CONNECT_TIMEOUT_S, set_as_default=False)
    except (OSError, TimeoutError):
        raise RunnerUnavailable(
            f"cannot reach the Dask scheduler at {address} within {CONNECT_TIMEOUT_S} s; "
            "start it, or leave out --dask-address for a local cluster"
        ) from None
    try:
        yield client
    finally:
        client.close()


def _nearest_existing(path: Path) -> Path:
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


_HINTS = {
    "version": "install the same medgrit on every worker",
    "path": "OUT and the sources must be on a file system every worker shares, at the same path",
    "api_key": "set OPENAI_API_KEY for every worker, or pass --llm-api-key-block NAME",
    "api": "set PREFECT_API_URL to a Prefect server every worker can reach",
    "ephemeral": "workers on other machines cannot reach Prefect's ephemeral server on "
    "127.0.0.1: start `prefect server start --host 0.0.0.0` and set PREFECT_API_URL to it",
}


def _check_workers(
    client: Any, config: BuildConfig, api_url: str, ephemeral: bool, paths: list[str]
) -> None:
    address = config.dask_address
    needs_api_key = config.generator == "llm" and not (config.llm and config.llm.api_key_block)
    try:
        found = client.run(worker_problems, _version(), paths, api_url, needs_api_key)
    except ImportError as exc:
        raise RunnerUnavailable(
            f"the Dask workers at {address} cannot import medgrit ({exc}); "
            "install the same medgrit on every worker"
        ) from None
    troubled = {worker: problems for worker, problems in sorted(found.items()) if problems}
    if not troubled:
        return
    worker, problems = next(iter(troubled.items()))
    kind, detail = problems[0]
    if kind == "api" and ephemeral:
        kind = "ephemeral"
    more = len(troubled) - 1
    others = f" (and {more} more worker{'s' if more > 1 else ''})" if more else ""
    raise RunnerUnavailable(f"Dask worker {worker} {detail}{others}; {_HINTS[kind]}")


async def worker_problems(
    version: str, paths: list[str], api_url: str, needs_api_key: bool
) -> list[tuple[str, str]]:
    """What keeps this Dask worker from running a shard of the build, as (kind, detail) pairs
    (run on every worker before the build; empty when nothing does)."""
    problems: list[tuple[str, str]] = []
    if _version() != version:
        problems.append(("version", f"runs medgrit {_version()}, not {version}"))
    for path in paths:
        if not os.path.exists(path):
            problems.append(("path", f"cannot see {escape_name(path)}"))
    if needs_api_key and not os.environ.get("OPENAI_API_KEY"):
        problems.append(("api_key", "has no OPENAI_API_KEY"))
    url = urlsplit(api_url)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        _, writer = await asyncio.wait_for(
            asyncio.open_connection(url.hostname, port), _PROBE_TIMEOUT_S
        )
        writer.close()
    except (OSError, TimeoutError) as exc:
        why = getattr(exc, "strerror", None) or type(exc).__name__
        problems.append(("api", f"cannot reach the Prefect API at {api_url} ({why})"))
    return problems


async def flush_prefect_logs() -> None:
    """Send the logs and events this worker's Prefect services still hold (run on every worker
    after a build: a cluster's workers outlive the build, its ephemeral server does not)."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    for service in (APILogWorker, EventsWorker):
        await service.drain_all(timeout=_FLUSH_TIMEOUT_S, at_exit=False)


def _flush_worker_logs(client: Any) -> None:
    try:
        client.run(flush_prefect_logs)
    except (OSError, TimeoutError):
        pass  # a worker gone since: its logs are lost, the build's tables are not


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("medgrit")
    except PackageNotFoundError:
        return "unknown"
