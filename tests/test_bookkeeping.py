"""Shard bookkeeping: one small completion record per shard, ``dataset.json`` compacted from them.

Builds run in-process with the plain loop mapper over the bundled demo (no Prefect server);
the kill test runs the ``medgrit`` CLI in a subprocess.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
from conftest import run_cli

from medgrit.adapters.build import run_build
from medgrit.adapters.runtime.mappers import LoopMapper
from medgrit.adapters.shard import build_one_shard
from medgrit.adapters.store import bookkeeping
from medgrit.adapters.store import manifest as manifest_module
from medgrit.adapters.store.bookkeeping import load_dataset
from medgrit.adapters.store.validate import read_table, validate_dataset
from medgrit.schemas.config import BuildConfig

TABLES = ("images", "regions", "conversations", "rejects")


@pytest.fixture
def demo(demo_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("MEDGRIT_DEMO_DIR", str(demo_dir))
    return demo_dir


def _tables(out: Path) -> dict[str, list[dict]]:
    return {t: read_table(out, t) for t in TABLES}


def _manifest_writes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    writes: list[int] = []
    real = manifest_module.write_manifest

    def counting(out_dir, manifest):
        writes.append(1)
        real(out_dir, manifest)

    monkeypatch.setattr(manifest_module, "write_manifest", counting)
    return writes


def test_dataset_json_is_written_as_often_for_many_shards_as_for_one(
    demo: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    writes = _manifest_writes(monkeypatch)
    one = run_build(BuildConfig(out=str(tmp_path / "one"), max_images=12, images_per_shard=100))
    few = len(writes)
    writes.clear()
    many = run_build(BuildConfig(out=str(tmp_path / "many"), max_images=12, images_per_shard=1))
    assert len(one["shards"]) == 1 and len(many["shards"]) == 12
    assert len(writes) == few  # O(1) per shard: the records carry the shards, not dataset.json
    assert not (tmp_path / "many" / "shards").exists() or not any(
        (tmp_path / "many" / "shards").iterdir()
    )  # compacted at the end
    assert _tables(tmp_path / "one") == _tables(tmp_path / "many")


def test_a_crash_between_records_and_compaction_resumes_to_the_same_dataset(
    demo: Path, cli_env: dict[str, str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    reference = tmp_path / "reference"
    run_build(BuildConfig(out=str(reference), max_images=10, images_per_shard=2))

    out = tmp_path / "ds"
    config = BuildConfig(out=str(out), max_images=10, images_per_shard=2)
    built: list[str] = []

    def crash_after_three(job):
        if len(built) == 3:
            raise SystemExit("killed")  # as a process death: nothing after this runs
        built.append(job.shard)
        return build_one_shard(job)

    import medgrit.adapters.book as book_module

    never = lambda out, manifest: manifest  # noqa: E731 - never reached
    monkeypatch.setattr(book_module, "compact_manifest", never)
    with pytest.raises(SystemExit):
        run_build(config, LoopMapper(crash_after_three))
    monkeypatch.undo()
    monkeypatch.setenv("MEDGRIT_DEMO_DIR", str(demo))

    on_disk = json.loads((out / "dataset.json").read_text())
    assert {s["status"] for s in on_disk["shards"]} == {"pending"}  # only the plan
    state = load_dataset(out).to_json()  # dataset.json plus the records
    assert [s["status"] for s in state["shards"]][:3] == ["done"] * 3

    status = run_cli("status", str(out), "--json", env=cli_env)
    assert json.loads(status.stdout)["counts"]["done"] == 3, status.stderr

    resumed: list[str] = []

    def counting(job):
        resumed.append(job.shard)
        return build_one_shard(job)

    final = run_build(config, LoopMapper(counting))
    assert resumed == [s["id"] for s in final["shards"]][3:]  # the done shards were kept
    assert final["status"] == "complete"
    assert _tables(out) == _tables(reference)
    assert validate_dataset(out) == []


def test_records_of_other_settings_or_cases_are_not_taken(
    demo: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    out = tmp_path / "ds"
    run_build(BuildConfig(out=str(out), max_images=6, images_per_shard=2))
    manifest = load_dataset(out)
    entry = manifest.shards[0]
    bookkeeping.write_record(out, manifest.config, entry)
    assert bookkeeping.with_records(out, manifest)[1] == 1

    other = manifest.evolve(
        config={**manifest.config, "seed": 7},  # other content settings
        shards=[s.evolve(status="pending") for s in manifest.shards],
    )
    merged, count = bookkeeping.with_records(out, other)
    assert count == 0
    assert {s.status for s in merged.shards} == {"pending"}

    moved = manifest.with_shard(  # other cases under that id
        entry.evolve(cases=manifest.shards[1].cases, status="pending")
    )
    assert bookkeeping.with_records(out, moved)[1] == 0

    (out / "shards" / f"{entry.id}.json").write_text("{not json")
    assert bookkeeping.with_records(out, manifest)[1] == 0


@pytest.mark.slow
def test_kill_9_mid_build_keeps_the_finished_shards_and_resume_finishes_identically(
    cli_env: dict[str, str], tmp_path: Path
) -> None:
    reference, out = tmp_path / "reference", tmp_path / "ds"
    common = ["--max-images", "60", "--images-per-shard", "2", "--workers", "1"]
    done = run_cli("build", "--out", str(reference), *common, env=cli_env)
    assert done.returncode == 0, done.stderr
    proc = subprocess.Popen(
        [shutil.which("medgrit") or "medgrit", "build", "--out", str(out), *common],
        env=cli_env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    records = out / "shards"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        if records.is_dir() and len(list(records.glob("*.json"))) >= 3:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the build ended before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()

    status = run_cli("status", str(out), "--json", env=cli_env)
    assert json.loads(status.stdout)["counts"]["done"] >= 3, status.stderr
    resumed = run_cli("resume", str(out), env=cli_env)
    assert resumed.returncode == 0, resumed.stderr
    assert _tables(out) == _tables(reference)
    assert validate_dataset(out) == []


def test_a_dataset_of_an_older_table_schema_is_not_resumed_into_a_mix(
    demo: Path, tmp_path: Path
) -> None:
    out = tmp_path / "ds"
    run_build(BuildConfig(out=str(out), max_images=6, images_per_shard=2))
    data = json.loads((out / "dataset.json").read_text())
    data["schema_version"] = 1  # written by a medgrit whose regions had no relations
    data["shards"][-1]["status"] = "pending"
    (out / "dataset.json").write_text(json.dumps(data))
    before = {p: p.read_bytes() for p in out.rglob("*.parquet")}

    with pytest.raises(bookkeeping.DatasetMismatch, match="schema version 1"):
        run_build(BuildConfig(out=str(out), max_images=6, images_per_shard=2))
    assert {p: p.read_bytes() for p in out.rglob("*.parquet")} == before  # nothing changed
