"""Prefect tasks of the build flow: thin wrappers over ``medgrit.adapters.shard``.

One task per shard (never per slice or region). Only infrastructure failures (``OSError``: disk,
network file systems) are retried, and not a full disk, which waiting does not fix; record-level
problems are already reject rows.
"""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from medgrit.adapters.shard import ShardJob, run_one_shard
from medgrit.core.failures import is_disk_full


def _retry_on_os_error(task, task_run, state) -> bool:
    """Retry only infrastructure failures: an OSError from disk or a network file system,
    except a full disk (a retry fills it again)."""
    try:
        state.result()
    except OSError as exc:
        return not is_disk_full(exc)
    except Exception:  # noqa: BLE001 - anything else is a bug and must not be retried
        return False
    return False


@task(
    name="build_shard",
    cache_policy=NO_CACHE,
    retries=2,
    retry_delay_seconds=[2, 10],
    retry_condition_fn=_retry_on_os_error,
)
def build_shard(job: ShardJob) -> dict:
    """Build and write one shard; returns its manifest entry (files, row counts, stats, tokens).
    With ``job.processes`` > 1 the work runs on a worker process and this task waits for it."""
    return run_one_shard(job)
