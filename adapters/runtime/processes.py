"""Shards on worker processes of this machine: CPU-bound shards in parallel past the GIL.

A template build's shard is CPU work in Python (reading, regions, text, verification, PNG), so
threads of one process take turns on one core. :func:`run_shard` runs a shard's
:func:`medgrit.adapters.shard.build_one_shard` on a pool of ``workers`` processes of this
machine instead, while the calling thread (a Prefect task's, or a plain thread mapper's) waits
for it: Prefect still sees one task per shard, with its state, retries and logs in the flow's
process, and the shard writes the same files. An LLM build's shard makes only its image rows
there, and its conversations in the calling thread (``images_only``): its requests share this
process's client and rate limiter, and the GIL is left to them.

The pool is started on first use, or ahead of it by :func:`start_workers` (``spawn``: no copy
of the parent's threads or locks), and stopped by :func:`close_shard_processes` when the build
ends. The workers:

- stop when the build stops: the waiting thread passes a stop request on through a shared
  event, and a worker's :func:`medgrit.adapters.runtime.interrupt.check_stop` raises at its next
  case or image, so no part file is left half-written;
- ignore SIGINT, SIGTERM and SIGHUP (a terminal's Ctrl-C reaches the whole process group: the
  build's process decides; they are held while a worker starts, so one that comes while it
  imports cannot end it either), and stop at their next image when that process is gone (killed
  outright), then end, idle ones too;
- send the progress of their shard (images, rejects, QA pairs) to the build's process as it is
  made, when a display listens there.

A worker process that dies (killed, out of memory) fails the shard it ran with a one-line error;
the next shard starts a new pool. Workers that cannot start at all (an error while a spawned
process imports the build's ``__main__``, such as a script's build run again there for want of an
``if __name__ == "__main__":`` guard) fail the build's shards with one line that says so.
"""

from __future__ import annotations

import multiprocessing
import os
import pickle
import signal
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from medgrit.adapters.runtime import interrupt, progress

_POLL_S = 0.2  # how often a waiting thread looks for a stop request
_FLUSH_S = 10.0  # the longest a finished shard waits for its last progress counts
_STOP_S = 2.0  # how long the workers of a broken pool have to stop their shards
_WATCH_S = 0.5  # how often a worker looks whether the build's process is still there
# Signals a worker ignores: a terminal sends them to the whole process group (Ctrl-C, a closed
# terminal) and a service manager to the whole control group; the build's process decides.
_IGNORED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
_DIED = "a worker process ended while it built this shard (killed, or out of memory)"
_NOT_STARTED = (
    "the worker processes could not start (see the error they printed); a Python script "
    'must run a build under `if __name__ == "__main__":`, or use runner threads'
)


def local_processes(config: Any) -> int:
    """The worker processes a build's shards run on in this machine's pool: ``workers`` for a
    build with ``runner`` ``processes``, else 0 (Dask has processes of its own). An LLM build's
    shards make only their image rows there (``medgrit.adapters.shard.run_one_shard``)."""
    if config.runner != "processes" or config.workers < 2:
        return 0
    return config.workers


class WorkerProcessDied(RuntimeError):
    """A worker process ended while it built a shard (killed, or out of memory), or the
    workers could not start (an error while a spawned process imports the build's
    ``__main__``: a script without a ``__main__`` guard runs its build again there)."""


@dataclass
class _Pool:
    executor: ProcessPoolExecutor
    stop: Any  # multiprocessing.Event shared with the workers
    updates: Any | None  # multiprocessing.Queue of (shard, counter, amount), when shown
    reader: threading.Thread | None
    flushed: dict[str, threading.Event]  # by shard: its worker's last count has been read
    started: Any  # multiprocessing.Event: a worker of the pool has started
    exit_codes: list[int | None] = field(default_factory=list)  # of its workers, once broken
    closed: bool = False


_lock = threading.Lock()
_pool: _Pool | None = None
_not_started: list[str] = []  # this build's workers cannot start: its shards fail at once


def run_shard(job: Any, workers: int, images_only: bool = False) -> Any:
    """Build ``job`` (a :class:`medgrit.adapters.shard.ShardJob`) on this build's pool of
    ``workers`` processes and return its entry; the calling thread waits. ``images_only``: make
    only its rows before its conversations and return them
    (``medgrit.adapters.shard.shard_image_rows``).

    Raises:
        BuildInterrupted: a stop was requested while the shard ran.
        WorkerProcessDied: the worker process running the shard ended.
        Exception: what the shard raised (an ``OSError`` of the disk, a bug).
    """
    progress.forget(job.shard)  # a retry: the attempt before it counts no more
    pool, future = _submit(job, workers, images_only)
    try:
        return _wait(future, pool)
    finally:
        # The shard's counts come on another pipe than its result: all of them are read before
        # the build settles the shard's counts, so none is taken twice. A worker that died
        # sends no more.
        if pool.updates is not None and _ran_in_worker(future):
            pool.flushed[job.shard].wait(timeout=_FLUSH_S)
        pool.flushed.pop(job.shard, None)


def start_workers(workers: int, shards: int) -> None:
    """Start this build's pool of ``workers`` processes now, as many of them as ``shards`` (the
    shards it will run at least) need, each importing the shard code, so that its first shards
    do not wait for that (the build calls it while it waits for something else: Prefect's
    temporary server). A pool that breaks here is told by the first shard."""
    if _not_started:
        return
    pool = _pool_of(workers)
    try:
        with _signals_held():
            for _ in range(min(workers, shards)):  # (the pool starts a process per job queued)
                pool.executor.submit(_import_shard_code)
    except BrokenProcessPool:
        pass


def _submit(job: Any, workers: int, images_only: bool) -> tuple[_Pool, Future]:
    """Hand ``job`` to this build's pool; to a new one when the pool broke before it took the
    job (another shard's worker died: this shard never ran there)."""
    retried = False
    while True:
        if _not_started:  # (spawning them again would only run the failing start again)
            raise WorkerProcessDied(_not_started[0])
        pool = _pool_of(workers)
        pool.flushed[job.shard] = threading.Event()
        try:
            with _signals_held():  # (the pool spawns its workers as shards are submitted)
                return pool, pool.executor.submit(_build_in_worker, job, images_only)
        except BrokenProcessPool:
            pool.flushed.pop(job.shard, None)
            error = _broken(pool)
            if retried:
                raise error from None
            retried = True


def _ran_in_worker(future: Future) -> bool:
    """Whether a worker process ran the shard to its end (so sent its last count)."""
    if not future.done() or future.cancelled():
        return False
    return not isinstance(future.exception(), BrokenProcessPool)


@contextmanager
def _signals_held() -> Iterator[None]:
    """The signals a worker ignores held back from this thread for the block: a process
    spawned in it starts with them held, so a Ctrl-C while it imports cannot end it before
    :func:`_start_worker` has it ignore them (the build's process sees them still, on its
    other threads, or here once the block ends). The pool's semaphores started the resource
    tracker before (whose start unblocks SIGINT and SIGTERM in the thread that starts it)."""
    before = signal.pthread_sigmask(signal.SIG_BLOCK, _IGNORED)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, before)


def _wait(future: Future, pool: _Pool) -> dict:
    while True:
        try:
            return future.result(timeout=_POLL_S)
        except FutureTimeout:
            if interrupt.stop_requested():
                pool.stop.set()
        except BrokenProcessPool:
            raise _broken(pool) from None


def _broken(pool: _Pool) -> WorkerProcessDied:
    """Drop a broken pool; the error of its shards. When none of its workers started and none
    is known to have ended by a signal (killed), workers cannot start in this build (an error
    while they import the build's ``__main__``): its other shards fail at once, with that
    error. (A worker's exit code may be unknown: the pool's own thread may reap it first.)"""
    _drop(pool)
    if pool.started.is_set() or any(code is not None and code < 0 for code in pool.exit_codes):
        return WorkerProcessDied(_DIED)
    with _lock:
        _not_started[:] = [_NOT_STARTED]
    return WorkerProcessDied(_NOT_STARTED)


def _pool_of(workers: int) -> _Pool:
    global _pool
    with _lock:
        if _pool is None:
            context = multiprocessing.get_context("spawn")
            stop, started = context.Event(), context.Event()
            updates = context.Queue() if progress.active() else None
            executor = ProcessPoolExecutor(
                max_workers=workers,
                mp_context=context,
                initializer=_start_worker,
                initargs=(stop, updates, os.getpid(), started),
            )
            _pool = _Pool(executor, stop, updates, None, {}, started)
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
    ended = []  # (the exit codes of the workers that ended on their own, not by this kill)
    for process in processes:
        process.join(timeout=max(0.0, deadline - time.monotonic()))
        if process.is_alive():
            process.kill()
            process.join(timeout=_STOP_S)
        else:
            ended.append(process.exitcode)
    pool.exit_codes = ended
    _shutdown(pool)


def close_shard_processes() -> None:
    """Stop this build's worker processes (after its last shard; nothing when none started)."""
    global _pool
    with _lock:
        pool, _pool = _pool, None
        _not_started.clear()
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
_busy = threading.Event()  # a shard is being built in this worker


class _Forward:
    """A worker's progress listener: its shard's counts go to the build's process."""

    def phase(self, text: str) -> None:
        """Phases are the build process's to tell."""

    def expect(self, counter: str, total: float | None, done: float = 0) -> None:
        """Totals are the build process's to tell."""

    def advance(self, counter: str, amount: float) -> None:
        if _updates is not None:
            _updates.put((_shard[0], counter, amount))


def _start_worker(stop: Any, updates: Any | None, parent: int, started: Any) -> None:
    global _updates
    for sig in _IGNORED:
        signal.signal(sig, signal.SIG_IGN)
    # Spawned with them held (:func:`_signals_held`): one that came since is dropped now.
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _IGNORED)
    _updates = updates
    interrupt.share_stop(stop, parent)
    started.set()
    threading.Thread(target=_watch_build, args=(parent,), daemon=True).start()


def _watch_build(parent: int) -> None:
    """End this worker once the build's process is gone (killed, it could not end its pool:
    an idle worker would wait for shards forever). A shard running here stops first, at its
    next image, so it leaves no part file behind."""
    while os.getppid() == parent:
        time.sleep(_WATCH_S)
    interrupt.request_stop()
    while _busy.is_set():
        time.sleep(_WATCH_S)
    os._exit(0)


def _import_shard_code() -> None:
    import medgrit.adapters.shard  # noqa: F401 - imported ahead of the first shard


def _build_in_worker(job: Any, images_only: bool) -> Any:
    from medgrit.adapters.shard import build_one_shard, shard_image_rows

    work = shard_image_rows if images_only else build_one_shard
    _shard[0] = job.shard
    _busy.set()
    try:
        if _updates is None:
            return work(job)
        with progress.listening(_Forward()):
            return work(job)
    except BaseException as exc:  # noqa: BLE001 - re-raised, as something that travels back
        raise _picklable(exc) from None
    finally:
        if _updates is not None:
            _updates.put((job.shard, None, 0))
        _busy.clear()


def _picklable(exc: BaseException) -> BaseException:
    """``exc``, or a RuntimeError with its class and message where it cannot travel back."""
    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:  # noqa: BLE001 - any failure to travel is answered the same way
        return RuntimeError(f"{type(exc).__name__}: {exc}")
