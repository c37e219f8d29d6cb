"""The Prefect flow in-process against the session's real Prefect server."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from prefect.client.orchestration import get_client
from prefect.settings import PREFECT_API_URL, temporary_settings

from medgrit.flows.build import BuildFailed, build_dataset
from medgrit.schemas.config import BuildConfig


@pytest.fixture
def on_server(prefect_server: str, demo_dir: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("MEDGRIT_DEMO_DIR", str(demo_dir))
    with temporary_settings(updates={PREFECT_API_URL: prefect_server}):
        yield prefect_server


async def _latest_artifact(key: str) -> str:
    async with get_client() as client:
        artifact = await client.read_latest_artifacts()
        matches = [a for a in artifact if a.key == key]
        return matches[0].data if matches else ""


def test_flow_writes_manifest_and_summary_artifact(on_server: str, tmp_path: Path) -> None:
    config = BuildConfig(out=str(tmp_path / "ds"), max_images=12, cases_per_shard=2)
    manifest = build_dataset(config)
    assert manifest["status"] == "complete"
    assert manifest["totals"]["rows"]["images"] == 12
    on_disk = json.loads((tmp_path / "ds" / "dataset.json").read_text())
    assert on_disk["totals"] == manifest["totals"]
    assert "created_at" in on_disk and "host" in on_disk
    summary = asyncio.run(_latest_artifact("medgrit-build-summary"))
    assert "images: 12" in summary and "| ct |" in summary


def test_flow_validates_its_config_parameter(on_server: str, tmp_path: Path) -> None:
    manifest = build_dataset(config={"out": str(tmp_path / "ds"), "max_images": 3})
    assert manifest["totals"]["rows"]["images"] == 3
    with pytest.raises(Exception, match="plane"):
        build_dataset(config={"out": str(tmp_path / "x"), "plane": "oblique"})


def test_failed_shard_is_recorded_and_the_rest_is_kept(on_server: str, tmp_path: Path) -> None:
    out = tmp_path / "ds"
    blocker = out / "images" / "part-00001.parquet"
    blocker.mkdir(parents=True)  # the rename onto it fails: an infrastructure error
    config = BuildConfig(out=str(out), max_images=9, cases_per_shard=1)
    with pytest.raises(BuildFailed, match="00001"):
        build_dataset(config)
    manifest = json.loads((out / "dataset.json").read_text())
    status = {s["id"]: s["status"] for s in manifest["shards"]}
    assert status["00001"] == "failed" and "IsADirectoryError" in manifest["shards"][1]["error"]
    assert all(v == "done" for k, v in status.items() if k != "00001")
    assert manifest["status"] == "incomplete"

    blocker.rmdir()
    manifest = build_dataset(config)
    assert manifest["status"] == "complete"
    assert manifest["totals"]["rows"]["images"] == 9


def _tables(out: Path) -> dict[str, list[dict]]:
    import pyarrow.parquet as pq

    tables = {}
    for name in ("images", "regions", "conversations", "rejects"):
        rows = [
            r for p in sorted((out / name).glob("*.parquet")) for r in pq.read_table(p).to_pylist()
        ]
        tables[name] = rows
    return tables


def test_a_plain_loop_builds_the_same_tables_as_the_prefect_flow(
    on_server: str, tmp_path: Path
) -> None:
    from medgrit.adapters.build import run_build
    from medgrit.adapters.runtime.mappers import LoopMapper, ThreadMapper

    settings = {"max_images": 10, "cases_per_shard": 2}
    flow_out, loop_out, pool_out = tmp_path / "flow", tmp_path / "loop", tmp_path / "pool"
    build_dataset(BuildConfig(out=str(flow_out), **settings))
    manifest = run_build(BuildConfig(out=str(loop_out), **settings), LoopMapper())
    run_build(BuildConfig(out=str(pool_out), cases_per_shard=3, max_images=10), ThreadMapper(2))
    assert manifest["status"] == "complete" and manifest["totals"]["rows"]["images"] == 10
    flow_tables = _tables(flow_out)
    assert flow_tables["images"] and flow_tables == _tables(loop_out)
    assert (
        json.loads((loop_out / "dataset.json").read_text())["totals"]
        == json.loads((flow_out / "dataset.json").read_text())["totals"]
    )
    pool_tables = _tables(pool_out)  # other shards, same rows
    for name, rows in flow_tables.items():
        key = sorted(rows, key=lambda r: json.dumps(r, sort_keys=True, default=str))
        assert key == sorted(
            pool_tables[name], key=lambda r: json.dumps(r, sort_keys=True, default=str)
        )


def test_a_stopped_thread_pool_build_leaves_the_rest_pending_not_failed(
    demo_dir: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from medgrit.adapters.build import run_build
    from medgrit.adapters.runtime.interrupt import BuildInterrupted, request_stop, stop_requested
    from medgrit.adapters.runtime.mappers import ThreadMapper
    from medgrit.adapters.shard import build_one_shard

    monkeypatch.setenv("MEDGRIT_DEMO_DIR", str(demo_dir))

    def stop_after_the_first(job):
        entry = build_one_shard(job)
        request_stop()  # as a signal would, while other shards wait in the pool
        return entry

    config = BuildConfig(out=str(tmp_path / "ds"), max_images=8, cases_per_shard=1)
    with pytest.raises(BuildInterrupted):
        run_build(config, ThreadMapper(1, stop_after_the_first))
    manifest = json.loads((tmp_path / "ds" / "dataset.json").read_text())
    status = [s["status"] for s in manifest["shards"]]
    assert status[0] == "done" and len(status) > 2
    assert set(status[1:]) == {"pending"}
    assert not stop_requested()  # the stop ended with the build it stopped


def test_the_source_listing_is_taken_by_the_flow_and_kept_out_of_its_parameters(
    on_server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The CLI's listing reaches the build as an argument: the build opens no source itself,
    the flow run stores a placeholder for it, and a deployment's form does not offer it."""
    from prefect.utilities.callables import parameter_schema

    import medgrit.adapters.planning as planning
    from medgrit.adapters.runtime.keys import load_or_create_key

    config = BuildConfig(out=str(tmp_path / "ds"), max_images=6)
    key = load_or_create_key(None)
    listing = planning.open_build_sources(config, key)
    opened: list[str] = []
    real_open = planning._open

    def counting_open(config: BuildConfig, key: bytes) -> list:
        opened.append(config.out)
        return real_open(config, key)

    monkeypatch.setattr(planning, "_open", counting_open)
    manifest = build_dataset(config=config, listing=listing)
    assert manifest["status"] == "complete" and opened == []

    other_key = build_dataset(
        config=config.model_copy(update={"out": str(tmp_path / "two")}),
        listing=planning.SourceListing(config, b"another key of 32 bytes.........", []),
    )
    assert other_key["status"] == "complete" and opened == [str(tmp_path / "two")]

    assert "listing" not in parameter_schema(build_dataset.fn).properties
    stored = build_dataset.serialize_parameters({"config": config, "listing": listing})
    assert stored["listing"] == "<SourceListing>"
