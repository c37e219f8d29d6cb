"""The dataset directory: one writer (a real second process), medgrit's own files, safe swap."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from medgrit.adapters.runtime.atomic import is_stale_temporary, temp_suffix
from medgrit.adapters.store.dataset_dir import (
    DatasetBusy,
    foreign_entries,
    hold_dataset,
    is_medgrit_dataset,
    prepare_staging,
    swap_in,
)
from medgrit.adapters.store.parquet import ParquetShardWriter

HOLDER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from medgrit.adapters.store.dataset_dir import hold_dataset
    with hold_dataset(Path(sys.argv[1])):
        print("held", flush=True)
        time.sleep(float(sys.argv[2]))
    """
)


def _hold_in_another_process(out: Path, seconds: float) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(out), str(seconds)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_writer_is_refused_while_the_first_holds_the_lock(tmp_path: Path) -> None:
    proc = _hold_in_another_process(tmp_path, 30)
    try:
        with pytest.raises(DatasetBusy, match=rf"pid {proc.pid}"), hold_dataset(tmp_path):
            pass
    finally:
        proc.kill()
        proc.wait()
    with hold_dataset(tmp_path):  # the OS released the dead writer's lock
        pass


def test_the_lock_is_reentrant_within_a_process(tmp_path: Path) -> None:
    with hold_dataset(tmp_path), hold_dataset(tmp_path):
        proc = subprocess.run(
            [sys.executable, "-c", HOLDER, str(tmp_path), "0"], capture_output=True, text=True
        )
        assert proc.returncode != 0 and "DatasetBusy" in proc.stderr
    proc = _hold_in_another_process(tmp_path, 0)
    proc.wait()


def test_cleanup_keeps_the_temporaries_of_live_writers(tmp_path: Path) -> None:
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    try:
        images = tmp_path / "images"
        images.mkdir()
        host = temp_suffix().split("~")[0]
        mine = images / f".part-00000.parquet{temp_suffix()}"
        theirs = images / f".part-00001.parquet{host}~{live.pid}~abcd"
        gone = images / f".part-00002.parquet{host}~{dead.pid}~abcd"
        legacy = images / f".part-00003.parquet.tmp-{dead.pid}"
        reused_pid = images / f".part-00004.parquet{host}~{os.getpid()}~0000dead"
        for path in (mine, theirs, gone, legacy, reused_pid):
            path.write_bytes(b"partial")
        removed = ParquetShardWriter(tmp_path).remove_temporaries()
        assert sorted(removed) == sorted(
            [f"images/{gone.name}", f"images/{legacy.name}", f"images/{reused_pid.name}"]
        )
        assert mine.exists() and theirs.exists()
        assert not is_stale_temporary(theirs.name) and is_stale_temporary(gone.name)
    finally:
        live.kill()
        live.wait()


def test_a_dataset_is_recognised_by_its_marker_not_its_file_name(tmp_path: Path) -> None:
    nnunet = tmp_path / "Dataset001_Liver"
    nnunet.mkdir()
    (nnunet / "dataset.json").write_text(json.dumps({"labels": {"liver": 1}, "shards": []}))
    assert not is_medgrit_dataset(nnunet)
    ours = tmp_path / "ours"
    ours.mkdir()
    (ours / "dataset.json").write_text(
        json.dumps({"format": "medgrit-dataset", "schema_version": 1, "shards": []})
    )
    assert is_medgrit_dataset(ours)


def test_foreign_entries_are_what_medgrit_did_not_write(tmp_path: Path) -> None:
    (tmp_path / "dataset.json").write_text("{}")
    (tmp_path / ".medgrit.lock").write_text("")
    for table in ("images", "regions"):
        (tmp_path / table).mkdir()
        (tmp_path / table / "part-00000.parquet").write_bytes(b"")
    (tmp_path / "llm" / "cache" / "ab").mkdir(parents=True)
    assert foreign_entries(tmp_path) == []
    (tmp_path / "NOTES.txt").write_text("my notes")
    (tmp_path / "images" / "thumbnail.png").write_bytes(b"")
    assert foreign_entries(tmp_path) == ["NOTES.txt", "images/thumbnail.png"]
    (tmp_path / "llm" / "notes.txt").write_text("mine")
    (tmp_path / "llm" / "cache" / "ab" / "mine.json").write_text("{}")
    (tmp_path / "llm" / "cache" / "ab" / f"{'a' * 64}.json").write_text("{}")
    assert foreign_entries(tmp_path) == [
        "NOTES.txt",
        "images/thumbnail.png",
        "llm/cache/ab/mine.json",
        "llm/notes.txt",
    ]


def test_swap_in_replaces_the_old_dataset_whole(tmp_path: Path) -> None:
    out = tmp_path / "ds"
    out.mkdir()
    (out / "dataset.json").write_text("old")
    staging = prepare_staging(out)
    (staging / "dataset.json").write_text("new")
    swap_in(staging, out)
    assert (out / "dataset.json").read_text() == "new"
    assert not staging.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]
    assert not (out / ".medgrit-staging").exists()


def test_staging_that_is_not_medgrits_is_never_reused(tmp_path: Path) -> None:
    out = tmp_path / "ds"
    out.mkdir()
    foreign = tmp_path / ".ds.medgrit-overwrite"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("someone's")
    with pytest.raises(FileExistsError):
        prepare_staging(out)
    assert (foreign / "keep.txt").read_text() == "someone's"


def test_lock_file_names_its_holder(tmp_path: Path) -> None:
    with hold_dataset(tmp_path):
        text = (tmp_path / ".medgrit.lock").read_text()
    assert text.startswith("pid ") and " on " in text
    with hold_dataset(tmp_path):  # released: a later writer may hold it
        pass
