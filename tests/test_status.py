"""`medgrit status DIR`: a table of shards, the totals, why shards failed, JSON for scripts, and
exit codes scripts can trust (0 complete, 1 while anything failed, 3 while anything is pending)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from medgrit.adapters.build import run_build
from medgrit.adapters.runtime.mappers import LoopMapper
from medgrit.adapters.store.dataset_dir import hold_dataset
from medgrit.schemas.config import BuildConfig


@pytest.fixture(scope="module")
def built(demo_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    import os

    os.environ["MEDGRIT_DEMO_DIR"] = str(demo_dir)
    out = tmp_path_factory.mktemp("status") / "ds"
    manifest = run_build(BuildConfig(out=str(out), max_images=12, images_per_shard=3), LoopMapper())
    assert manifest["status"] == "complete" and len(manifest["shards"]) == 4
    return out


def _copy(built: Path, tmp_path: Path, change=None) -> Path:
    out = tmp_path / "ds"
    shutil.copytree(built, out)
    if change is not None:
        manifest = json.loads((out / "dataset.json").read_text())
        change(manifest)
        (out / "dataset.json").write_text(json.dumps(manifest))
    return out


def test_a_complete_build_shows_every_shard_and_exits_0(built: Path, medgrit_offline) -> None:
    result = medgrit_offline("status", str(built))
    assert result.returncode == 0, result.stderr
    manifest = json.loads((built / "dataset.json").read_text())
    lines = result.stdout.splitlines()
    assert lines[0] == "shards: 4 done, 0 pending, 0 failed (of 4)"
    for shard in manifest["shards"]:
        row = next(line for line in lines if line.startswith(shard["id"]))
        cells = row.split()
        qa = sum(sum(per.values()) for per in shard["stats"]["qa_by_modality_task"].values())
        assert cells[1] == "done"
        assert [int(c) for c in cells[2:]] == [
            len(shard["cases"]),
            shard["rows"]["images"],
            qa,
            shard["rows"]["rejects"],
            0,
        ]
    total = next(line for line in lines if line.startswith("total"))
    assert f" {manifest['totals']['rows']['images']} " in total
    modality = next(line for line in lines if line.startswith("modality"))  # the totals follow
    assert modality.split() == ["modality", "images", "VG", "ROC", "RC", "MIA", "QA"]
    assert "|" not in result.stdout  # plain text off a terminal, not Markdown


def test_json_lists_each_shard_and_the_totals(built: Path, medgrit_offline) -> None:
    result = medgrit_offline("status", str(built), "--json")
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    manifest = json.loads((built / "dataset.json").read_text())
    assert document["state"] == "complete" and document["writer"] is None
    assert document["counts"] == {"done": 4, "pending": 0, "failed": 0, "total": 4}
    assert [s["id"] for s in document["shards"]] == [s["id"] for s in manifest["shards"]]
    assert document["sum"]["images"] == manifest["totals"]["rows"]["images"]
    assert document["totals"] == manifest["totals"]


def test_a_failed_shard_exits_1_and_says_why(built: Path, medgrit_offline, tmp_path: Path) -> None:
    def fail_one(manifest: dict) -> None:
        manifest["shards"][2].update(status="failed", error="OSError: [Errno 5] Input/output error")
        manifest["shards"][3]["status"] = "pending"

    out = _copy(built, tmp_path, fail_one)
    result = medgrit_offline("status", str(out))
    assert result.returncode == 1, result.stderr
    assert "1 failed" in result.stdout
    assert "  00002: OSError: [Errno 5] Input/output error" in result.stdout
    assert f"medgrit resume {out}" in result.stdout
    document = json.loads(medgrit_offline("status", str(out), "--json").stdout)
    assert document["state"] == "failed"
    assert document["shards"][2]["error"].startswith("OSError")


def test_a_pending_shard_exits_3(built: Path, medgrit_offline, tmp_path: Path) -> None:
    def pend(manifest: dict) -> None:
        entry = manifest["shards"][1]
        entry["status"] = "pending"
        for key in ("rows", "files", "stats", "tokens"):
            entry.pop(key, None)

    out = _copy(built, tmp_path, pend)
    result = medgrit_offline("status", str(out))
    assert result.returncode == 3, result.stderr
    assert "1 pending" in result.stdout
    assert medgrit_offline("status", str(out), "--json").returncode == 3


def test_a_build_in_progress_is_named_not_sent_to_resume(
    built: Path, medgrit_offline, tmp_path: Path
) -> None:
    out = _copy(built, tmp_path, lambda m: m["shards"][3].update(status="pending"))
    with hold_dataset(out):
        result = medgrit_offline("status", str(out))
        document = json.loads(medgrit_offline("status", str(out), "--json").stdout)
    assert result.returncode == 3
    assert "a build is writing" in result.stdout and "resume" not in result.stdout
    assert document["writer"].startswith("pid ")


def test_status_of_a_folder_without_a_dataset_is_one_line(medgrit_offline, tmp_path: Path) -> None:
    result = medgrit_offline("status", str(tmp_path))
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1
