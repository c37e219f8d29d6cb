"""``--runner dask``: shards on Dask worker processes give the tables that threads give.

The end-to-end runs start the ``medgrit`` CLI in a subprocess, on a LocalCluster it creates or on
one this module starts (``--dask-address``), and compare every table row by row with a build on
the default runner (wall-clock data lives only in dataset.json).
"""

from __future__ import annotations

import asyncio
import json
import os
import pickle
import re
import socket
import sqlite3
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from multiprocessing import get_context
from pathlib import Path

import pytest
from conftest import run_cli

from medgrit.adapters.store.validate import read_table
from medgrit.schemas.tables import TABLES

BUILD = ("--max-images", "40", "--images-per-shard", "10")  # four shards of ten images


def _assert_same_tables(out: Path, expected: Path) -> None:
    for table in TABLES:
        rows = read_table(out, table)
        assert rows == read_table(expected, table), table
    ours, theirs = (json.loads((p / "dataset.json").read_text()) for p in (out, expected))
    assert [s["files"] for s in ours["shards"]] == [s["files"] for s in theirs["shards"]]
    assert ours["totals"] == theirs["totals"]


@pytest.fixture(scope="module")
def threads_build(medgrit, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("threads") / "demo"
    result = medgrit("build", "--out", str(out), *BUILD)
    assert result.returncode == 0, result.stderr[-3000:]
    assert len(read_table(out, "images")) == 40
    return out


@pytest.fixture(scope="module")
def cluster() -> str:
    """An existing cluster of two worker processes; yields its scheduler address."""
    from distributed import LocalCluster

    with LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0"
    ) as local:
        yield local.scheduler_address


@pytest.mark.slow
def test_a_local_cluster_builds_the_same_tables_on_the_ephemeral_server(
    threads_build: Path, demo_dir: Path, tmp_path: Path
) -> None:
    home = tmp_path / "prefect-home"
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env.update(MEDGRIT_DEMO_DIR=str(demo_dir), PREFECT_HOME=str(home))
    out = tmp_path / "dask"
    result = run_cli("build", "--out", str(out), *BUILD, "--runner", "dask", env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "shards run on 2 worker processes" in result.stderr
    _assert_same_tables(out, threads_build)
    assert json.loads((out / "dataset.json").read_text())["config"]["runner"] == "dask"
    # The workers reported to the one server the CLI started, rather than each to its own:
    # no process left to Prefect's own start of a temporary server (which says so) started one.
    assert not re.findall(r"temporary server on (\S+)", result.stderr), result.stderr[-3000:]
    with sqlite3.connect(home / "prefect.db") as db:
        runs = db.execute("SELECT name, state_type FROM task_run").fetchall()
    assert sorted(runs) == [(f"build_shard-0000{i} (dask)", "COMPLETED") for i in range(4)]


@pytest.mark.slow
def test_an_existing_cluster_builds_and_resumes_the_same_tables(
    threads_build: Path, cluster: str, medgrit, prefect_server: str, tmp_path: Path
) -> None:
    out = tmp_path / "dask"
    on_cluster = ("--runner", "dask", "--dask-address", cluster)
    result = medgrit("build", "--out", str(out), *BUILD, *on_cluster, "--workers", "7")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "shards run on 2 worker processes" in result.stderr  # the cluster's, not --workers
    _assert_same_tables(out, threads_build)
    # The workers' task runs logged to the session's server (it runs without the services
    # that record task runs from events, so their logs are what it holds of them).
    flow_run = result.stderr.split("/runs/flow-run/")[1].split()[0]
    logs = _task_run_logs(prefect_server, flow_run)
    finished = {run for run, message in logs if message == "Finished in state Completed()"}
    assert len(finished) == 4, logs

    manifest = json.loads((out / "dataset.json").read_text())
    lost = manifest["shards"][1]
    for rel in lost["files"]:
        (out / rel).unlink()
    lost["status"] = "failed"
    (out / "dataset.json").write_text(json.dumps(manifest))
    result = medgrit("resume", str(out), *on_cluster)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "4 shards planned, 1 to build" in result.stderr
    _assert_same_tables(out, threads_build)


def _task_run_logs(api_url: str, flow_run: str) -> list[tuple[str, str]]:
    """(task run id, message) of the task-run logs the Prefect server holds for a flow run."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.settings import PREFECT_API_URL, temporary_settings

    async def read() -> list[tuple[str, str]]:
        async with get_client() as client:
            logs = await client.read_logs(
                log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run]))
            )
        return [(str(log.task_run_id), log.message) for log in logs if log.task_run_id]

    with temporary_settings(updates={PREFECT_API_URL: api_url}):
        return asyncio.run(read())


@pytest.mark.slow
def test_the_flow_splits_llm_limits_over_the_cluster_workers(cluster: str) -> None:
    from prefect.task_runners import ThreadPoolTaskRunner
    from prefect_dask import DaskTaskRunner

    from medgrit.flows.runners import worker_processes

    with DaskTaskRunner(address=cluster) as runner:
        assert worker_processes(runner) == 2
    assert worker_processes(ThreadPoolTaskRunner(max_workers=4)) == 1


def test_each_worker_takes_its_share_of_the_llm_limits(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from medgrit.adapters.text.generators import make_generator
    from medgrit.schemas.config import BuildConfig

    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    config = BuildConfig(
        out=str(tmp_path / "ds"),
        generator="llm",
        llm={
            "model": "m",
            "requests_per_minute": 600,
            "tokens_per_minute": 90_000,
            "response_format": "json_schema",
        },
    )
    alone = make_generator(config, "00000", []).settings
    shared = make_generator(config, "00000", [], llm_share=3).settings
    assert (alone.requests_per_minute, alone.tokens_per_minute) == (600, 90_000)
    assert (shared.requests_per_minute, shared.tokens_per_minute) == (200, 30_000)


def test_a_shard_job_builds_the_same_shard_in_a_fresh_spawned_process(
    demo_dir: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """What a Dask worker does: unpickle the job in a new interpreter and build it there."""
    from medgrit.adapters.planning import prepare_build
    from medgrit.adapters.shard import ShardJob, build_one_shard
    from medgrit.core.pipeline import build_vocabulary
    from medgrit.schemas.config import BuildConfig

    monkeypatch.setenv("MEDGRIT_DEMO_DIR", str(demo_dir))
    config = BuildConfig(out=str(tmp_path / "here"), max_images=6)
    plan = prepare_build(config).plan
    vocabulary = build_vocabulary([c for _, cases in plan for c in cases])
    shard, cases = plan[0]
    job = ShardJob(shard, cases, config, [], vocabulary)
    assert pickle.loads(pickle.dumps(job)) == job

    # A worker never reads the pseudonymisation key: the cases were pseudonymised above.
    (tmp_path / "not-a-folder").write_text("")
    monkeypatch.setenv("MEDGRIT_KEY_FILE", str(tmp_path / "not-a-folder" / "pseudonym.key"))
    there = replace(job, config=config.model_copy(update={"out": str(tmp_path / "there")}))
    with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as pool:
        spawned = pool.submit(build_one_shard, there).result()
    here = build_one_shard(job)
    wall_clock = {"seconds"}
    assert {k: v for k, v in spawned.items() if k not in wall_clock} == {
        k: v for k, v in here.items() if k not in wall_clock
    }
    assert spawned["rows"]["images"] == 6


def test_dask_address_without_runner_dask_is_one_line_and_exit_2(
    medgrit_offline, tmp_path: Path
) -> None:
    out = tmp_path / "never"
    result = medgrit_offline("build", "--out", str(out), "--dask-address", "tcp://127.0.0.1:8786")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "medgrit: error: --dask-address needs --runner dask"
    ]
    assert not out.exists()


@pytest.mark.parametrize("address", ["127.0.0.1:8786", "tcp://127.0.0.1", "tcp://h:70000"])
def test_a_malformed_dask_address_is_one_line_and_exit_2(
    medgrit_offline, tmp_path: Path, address: str
) -> None:
    out = tmp_path / "never"
    result = medgrit_offline(
        "build", "--out", str(out), "--runner", "dask", "--dask-address", address
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "is not a Dask scheduler address" in lines[0], result.stderr
    assert not out.exists()


@pytest.mark.slow
def test_resume_with_a_dask_address_but_threads_is_one_line_and_exit_2(
    threads_build: Path, medgrit_offline
) -> None:
    before = (threads_build / "dataset.json").read_bytes()
    result = medgrit_offline("resume", str(threads_build), "--dask-address", "tcp://h:8786")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "medgrit: error: --dask-address needs --runner dask"
    ]
    assert (threads_build / "dataset.json").read_bytes() == before


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_an_unreachable_or_empty_cluster_is_one_line_and_exit_2(
    medgrit_offline, tmp_path: Path
) -> None:
    from distributed import LocalCluster

    out = tmp_path / "never"
    address = f"tcp://127.0.0.1:{_closed_port()}"
    result = medgrit_offline(
        "build", "--out", str(out), "--runner", "dask", "--dask-address", address
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and f"cannot reach the Dask scheduler at {address}" in lines[0]
    with LocalCluster(n_workers=0, processes=True, dashboard_address=":0") as empty:
        result = medgrit_offline(
            "build",
            "--out",
            str(out),
            "--runner",
            "dask",
            "--dask-address",
            empty.scheduler_address,
        )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "has no workers; start some with `dask worker" in lines[0]
    assert not out.exists()


def test_a_worker_is_told_what_it_lacks(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from importlib.metadata import version

    from medgrit.flows.runners import worker_problems

    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    closed = f"http://127.0.0.1:{_closed_port()}/api"
    found = asyncio.run(worker_problems("0.0.0-elsewhere", [str(tmp_path / "nope")], closed, True))
    assert [kind for kind, _ in found] == ["version", "path", "api_key", "api"]
    assert "nope" in found[1][1] and closed in found[3][1]

    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        api = f"http://127.0.0.1:{server.getsockname()[1]}/api"
        assert asyncio.run(worker_problems(version("medgrit"), [str(tmp_path)], api, False)) == []


def test_how_shards_run_is_not_part_of_what_a_resume_compares(tmp_path: Path) -> None:
    from medgrit.adapters.store.bookkeeping import content_config
    from medgrit.schemas.config import BuildConfig

    threads = BuildConfig(out=str(tmp_path / "a")).model_dump(mode="json")
    dask = BuildConfig(
        out=str(tmp_path / "b"), runner="dask", dask_address="tcp://10.0.0.5:8786", workers=8
    ).model_dump(mode="json")
    assert content_config(threads) == content_config(dask)
