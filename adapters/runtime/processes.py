"""Shards on worker processes of this machine: CPU-bound shards in parallel past the GIL.

A template build's shard is CPU work in Python (reading, regions, text, verification, PNG), so
threads of one process take turns on one core. :func:`run_shard` runs a shard's
:func:`medgrit.adapters.shard.build_one_shard` on a pool of ``workers`` processes of this
machine instead, while the calling thread (a Prefect task's, or a plain thread mapper's) waits
for it: Prefect still sees one task per shard, with its state, retries and logs in the flow's
process, and the shard writes the same files.

The pool is started on first use (``spawn``: no copy of the parent's threads or locks) and
stopped by :func:`close_shard_processes` when the build ends. The workers:

- stop when the build stops: the waiting thread passes a stop request on through a shared
  event, and a worker's :func:`medgrit.adapters.runtime.interrupt.check_stop` raises at its next
  case or image, so no part file is left half-written;
- ignore SIGINT and SIGTERM (a terminal's Ctrl-C reaches the whole process group: the build's
  process decides), and stop at their next image when that process is gone;
- send the progress of their shard (images, rejects, QA pairs) to the build's process as it is
  made, when a display listens there.

A worker process that dies (killed, out of memory) fails the shard it ran with a one-line error;
the next shard starts a new pool.
"""

from __future__ import annotations

import multiprocessing
import os
import pickle
import signal
import threading
import time
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any

from medgrit.adapters.runtime import interrupt, progress

_POLL_S = 0.2  # how often a waiting thread looks for a stop request
_FLUSH_S = 10.0  # the longest a finished shard waits for its last progress counts
_STOP_S = 2.0  # how long the workers of a broken pool have to stop their shards


def local_processes(config: Any) -> int:
    """The worker processes a build's shards run on in this machine's pool: ``workers`` for a
    template build with ``runner`` ``processes``, else 0 (shards run on threads: an LLM build's
    wait on the network and share one rate limiter; Dask has processes of its own)."""
    if config.runner != "processes" or config.generator == "llm" or config.workers < 2:
        return 0
    return config.workers


class WorkerProcessDied(RuntimeError):
    """A worker process ended while it built a shard (killed, or out of memory)."""


@dataclass
class _Pool:
    executor: ProcessPoolExecutor
    stop: Any  # multiprocessing.Event shared with the workers
    updates: Any | None  # multiprocessing.Queue of (shard, counter, amount), when shown
    reader: threading.Thread | None
    flushed: dict[str, threading.Event]  # by shard: its worker's last count has been read
    closed: bool = False


_lock = threading.Lock()
_pool: _Pool | None = None


def run_shard(job: Any, workers: int) -> dict:
    """Build ``job`` (a :class:`medgrit.adapters.shard.ShardJob`) on this build's pool of
    ``workers`` processes and return its entry; the calling thread waits.

    Raises:
        BuildInterrupted: a stop was requested while the shard ran.
        WorkerProcessDied: the worker process running the shard ended.
        Exception: what the shard raised (an ``OSError`` of the disk, a bug).
    """
    pool = _pool_of(workers)
    progress.forget(job.shard)  # a retry: the attempt before it counts no more
    flushed = pool.flushed[job.shard] = threading.Event()
    try:
        future = pool.executor.submit(_build_in_worker, job)
    except BrokenProcessPool:
        _drop(pool)
        raise WorkerProcessDied("a worker process of the build ended; run again") from None
    try:
        return _wait(future, pool)
    finally:
        # The shard's counts come on another pipe than its result: all of them are read before
        # the build settles the shard's counts, so none is taken twice.
        if pool.updates is not None and future.done() and not future.cancelled():
            flushed.wait(timeout=_FLUSH_S)
        pool.flushed.pop(job.shard, None)


def _wait(future: Future, pool: _Pool) -> dict:
    while True:
        try:
            return future.result(timeout=_POLL_S)
        except FutureTimeout:
            if interrupt.stop_requested():
                pool.stop.set()
        except BrokenProcessPool:
            _drop(pool)
            raise WorkerProcessDied(
                "a worker process ended while it built this shard (killed, or out of memory)"
            ) from None


def _pool_of(workers: int) -> _Pool:
    global _pool
    with _lock:
        if _pool is None:
            context = multiprocessing.get_context("spawn")
            stop = context.Event()
            updates = context.Queue() if progress.active() else None
            executor = ProcessPoolExecutor(
                max_workers=workers,
                mp_context=context,
                initializer=_start_worker,
                initargs=(stop, updates, os.getpid()),
            )
            _pool = _Pool(executor, stop, updates, None, {})
            if updates is not None:
                reader = threading.Thread(target=_read_updates, args=(_pool,), daemon=True)
                reader.start()
                _pool.reader = reader
        return _pool


def _drop(pool: _Pool) -> None:
    """Forget a broken pool, so the next shard starts a new one. Its other workers are asked
    to stop their shards (so they leave no part file behind), then ended: they ignore SIGTERM,
    which is how the pool would end them."""
    global _pool
    with _lock:
        if _pool is pool:
            _pool = None
        if pool.closed:
            return
    pool.stop.set()
    processes = list((getattr(pool.executor, "_processes", None) or {}).values())
    deadline = time.monotonic() + _STOP_S
    for process in processes:
        process.join(timeout=max(0.0, deadline - time.monotonic()))
        if process.is_alive():
            process.kill()
    _shutdown(pool)


def close_shard_processes() -> None:
    """Stop this build's worker processes (after its last shard; nothing when none started)."""
    global _pool
    with _lock:
        pool, _pool = _pool, None
    if pool is not None:
        _shutdown(pool)


def _shutdown(pool: _Pool) -> None:
    with _lock:  # (every thread whose shard met a broken pool drops it: once is enough)
        if pool.closed:
            return
        pool.closed = True
    if interrupt.stop_requested():
        pool.stop.set()
    pool.executor.shutdown(wait=True, cancel_futures=True)
    if pool.updates is not None:
        pool.updates.put(None)
        if pool.reader is not None:
            pool.reader.join(timeout=10)
        pool.updates.close()
        pool.updates.join_thread()


def _read_updates(pool: _Pool) -> None:
    """The build's side of the workers' progress: their counts, as this process's."""
    while True:
        try:
            item = pool.updates.get()
        except (EOFError, OSError, ValueError):
            return
        if item is None:
            return
        shard, counter, amount = item
        if counter is None:  # the shard's last count
            flushed = pool.flushed.get(shard)
            if flushed is not None:
                flushed.set()
        else:
            progress.advance(counter, amount, unit=shard)


# -- in the worker process -------------------------------------------------------------------

_updates: Any | None = None
_shard: list[str] = [""]


class _Forward:
    """A worker's progress listener: its shard's counts go to the build's process."""

    def phase(self, text: str) -> None:
        """Phases are the build process's to tell."""

    def expect(self, counter: str, total: float | None, done: float = 0) -> None:
        """Totals are the build process's to tell."""

    def advance(self, counter: str, amount: float) -> None:
        if _updates is not None:
            _updates.put((_shard[0], counter, amount))


def _start_worker(stop: Any, updates: Any | None, parent: int) -> None:
    global _updates
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _updates = updates
    interrupt.share_stop(stop, parent)


def _build_in_worker(job: Any) -> dict:
    from medgrit.adapters.shard import build_one_shard

    _shard[0] = job.shard
    try:
        if _updates is None:
            return build_one_shard(job)
        with progress.listening(_Forward()):
            return build_one_shard(job)
    except BaseException as exc:  # noqa: BLE001 - re-raised, as something that travels back
        raise _picklable(exc) from None
    finally:
        if _updates is not None:
            _updates.put((job.shard, None, 0))


def _picklable(exc: BaseException) -> BaseException:
    """``exc``, or a RuntimeError with its class and message where it cannot travel back."""
    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:  # noqa: BLE001 - any failure to travel is answered the same way
        return RuntimeError(f"{type(exc).__name__}: {exc}")
