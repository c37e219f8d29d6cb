"""How shards run: a :class:`ShardMapper` submits :class:`ShardJob` objects and yields them as they
finish. :func:`medgrit.adapters.build.run_build` takes any mapper; the mapper changes how shards
run, never what they hold.

The build flow maps shards with Prefect's own task runners (``medgrit.flows.build.PrefectMapper``:
a thread pool or Dask). The two mappers here serve where there is no Prefect flow to run in:
:class:`LoopMapper` builds in-process with no server (the library call, the tests' builds) and
:class:`ThreadMapper` does the same on a pool of threads (benchmarks of the bare build, which must
not count a Prefect server's start). A Prefect task runner needs a flow run and its API, so it
cannot serve these.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import as_completed as _futures_completed
from dataclasses import dataclass, field
from typing import Any, Protocol

from medgrit.adapters.shard import ShardJob, build_one_shard, run_one_shard


class ShardFuture(Protocol):
    """A submitted shard: ``result()`` returns its entry or raises what it raised."""

    def result(self) -> dict: ...

    def done(self) -> bool: ...


class ShardMapper(Protocol):
    """Runs shards: ``submit`` hands one over, ``as_completed`` yields them as they finish."""

    def submit(self, job: ShardJob) -> ShardFuture: ...

    def as_completed(self, futures: list[ShardFuture]) -> Iterator[ShardFuture]: ...

    def close(self) -> None:
        """Stop what has not started and wait for what runs (after the last shard, or when the
        build stops)."""


class _Deferred:
    """A shard the loop mapper runs when its turn comes."""

    def __init__(self, job: ShardJob, work: Callable[[ShardJob], dict]) -> None:
        self.job, self.work = job, work
        self.outcome: dict | BaseException | None = None

    def run(self) -> None:
        try:
            self.outcome = self.work(self.job)
        except Exception as exc:  # noqa: BLE001 - kept for result(), as a future keeps it
            self.outcome = exc

    def done(self) -> bool:
        return self.outcome is not None

    def result(self) -> dict:
        if isinstance(self.outcome, BaseException):
            raise self.outcome
        assert self.outcome is not None
        return self.outcome


@dataclass
class LoopMapper:
    """Shards one after another in this thread (no Prefect, no pool)."""

    work: Callable[[ShardJob], dict] = build_one_shard

    def submit(self, job: ShardJob) -> ShardFuture:
        return _Deferred(job, self.work)

    def as_completed(self, futures: list[ShardFuture]) -> Iterator[ShardFuture]:
        for future in futures:
            future.run()  # type: ignore[attr-defined]
            yield future

    def close(self) -> None:
        """Nothing runs once the loop is left."""


class RunnerFuture:
    """A task runner's future as ``run_build`` takes one.

    Args:
        future: the runner's future (``concurrent.futures``, Prefect, ...).
        finished: whether that future ran to an end (a shard cancelled before it started, or
            one still running, has not).
    """

    def __init__(self, future: Any, finished: Callable[[Any], bool]) -> None:
        self.future, self.finished = future, finished

    def result(self) -> dict:
        return self.future.result()

    def done(self) -> bool:
        return self.finished(self.future)


def in_completion_order(
    futures: list[ShardFuture], as_completed: Callable[[list], Iterator[Any]]
) -> Iterator[ShardFuture]:
    """The :class:`RunnerFuture` objects in the order their runner's ``as_completed`` gives."""
    by_future = {f.future: f for f in futures}  # type: ignore[attr-defined]
    for done in as_completed(list(by_future)):
        yield by_future[done]


def _pool_finished(future: Future) -> bool:
    return future.done() and not future.cancelled()


@dataclass
class ThreadMapper:
    """Shards on a pool of ``workers`` threads (one pool per build; ``close`` ends it); a job
    with ``processes`` set is built on a worker process while its thread waits."""

    workers: int = 2
    work: Callable[[ShardJob], dict] = run_one_shard
    _pool: ThreadPoolExecutor | None = field(default=None, init=False, repr=False)

    def submit(self, job: ShardJob) -> ShardFuture:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=self.workers)
        return RunnerFuture(self._pool.submit(self.work, job), _pool_finished)

    def as_completed(self, futures: list[ShardFuture]) -> Iterator[ShardFuture]:
        return in_completion_order(futures, _futures_completed)

    def close(self) -> None:
        """Drop the shards not started and wait for the running ones."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None


def outcome_of(future: ShardFuture) -> dict | BaseException:
    """What a finished shard gave: its entry, or the exception it raised."""
    try:
        return future.result()
    except Exception as exc:  # noqa: BLE001 - recorded in the manifest, the others go on
        return exc
