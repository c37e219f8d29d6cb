"""The one atomic writer: a file appears at its name whole or not at all, its folder is synced,
and a temporary names its owner so cleanup can tell a dead writer's leftovers from a live one's."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from medgrit.adapters.runtime.atomic import (
    atomic_file,
    atomic_folder,
    atomic_path,
    is_left_by_dead_process,
    is_stale_temporary,
    temp_suffix,
    temporary_owner,
    temporary_path,
    write_atomic,
)
from medgrit.adapters.store.dataset_dir import foreign_entries

# Writes half of its data through the writer, says so, then blocks on its stdin (a pipe) until
# it is killed.
_BLOCKED_WRITER = """
import sys
from medgrit.adapters.runtime.atomic import atomic_file

with atomic_file(sys.argv[1], "wb") as handle:
    handle.write(b"half of the new")
    handle.flush()
    print("writing", flush=True)
    sys.stdin.read()
    handle.write(b" content")
"""


def test_a_writer_killed_mid_write_leaves_the_old_file_and_a_temporary_of_a_dead_process(
    tmp_path: Path,
) -> None:
    target = tmp_path / "data.bin"
    target.write_bytes(b"old")
    child = subprocess.Popen(
        [sys.executable, "-c", _BLOCKED_WRITER, str(target)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    try:
        assert child.stdout.readline() == b"writing\n"
        (temporary,) = [p for p in tmp_path.iterdir() if p != target]
        assert temporary.name.startswith(".data.bin.tmp-")
        assert temporary.read_bytes() == b"half of the new"
        assert not is_stale_temporary(temporary.name)  # its writer is alive
        assert not is_left_by_dead_process(temporary.name)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=60)
        child.stdin.close()
        child.stdout.close()
    assert child.returncode == -signal.SIGKILL
    assert target.read_bytes() == b"old"
    owner = temporary_owner(temporary.name)
    assert owner is not None and owner.pid == child.pid
    assert is_left_by_dead_process(temporary.name) and is_stale_temporary(temporary.name)


def test_a_new_file_killed_mid_write_never_appears(tmp_path: Path) -> None:
    target = tmp_path / "new.bin"
    child = subprocess.Popen(
        [sys.executable, "-c", _BLOCKED_WRITER, str(target)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    try:
        assert child.stdout.readline() == b"writing\n"
    finally:
        child.kill()
        child.wait(timeout=60)
        child.stdin.close()
        child.stdout.close()
    assert not target.exists()
    (temporary,) = tmp_path.iterdir()
    assert is_left_by_dead_process(temporary.name)


@pytest.mark.parametrize("error", [ValueError, KeyboardInterrupt])
def test_an_exception_in_the_block_keeps_the_old_file_and_leaves_no_temporary(
    tmp_path: Path, error: type[BaseException]
) -> None:
    target = tmp_path / "dataset.json"
    target.write_text("old", encoding="utf-8")
    with pytest.raises(error), atomic_file(target, "w") as handle:
        handle.write("new, cut short")
        raise error()
    with pytest.raises(error), atomic_path(target) as path:
        path.write_text("new, cut short", encoding="utf-8")
        raise error()
    with pytest.raises(error), atomic_folder(tmp_path / "export") as folder:
        (folder / "train.json").write_text("[]", encoding="utf-8")
        raise error()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dataset.json"]
    assert target.read_text(encoding="utf-8") == "old"


def test_the_file_and_then_its_folder_are_fsynced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not os.path.isdir("/proc/self/fd"):
        pytest.skip("needs /proc to name the descriptors")
    synced: list[str] = []
    real_fsync = os.fsync

    def recording(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording)
    target = tmp_path / "part-00000.parquet"
    write_atomic(target, b"bytes")
    assert target.read_bytes() == b"bytes"
    assert len(synced) == 2
    assert Path(synced[0]).name.startswith(".part-00000.parquet.tmp-")  # the file, before rename
    assert synced[1] == str(tmp_path)  # then the folder that now names it

    synced.clear()
    real_sync = os.sync

    def recording_sync() -> None:
        synced.append("sync")
        real_sync()

    monkeypatch.setattr(os, "sync", recording_sync)
    with atomic_folder(tmp_path / "bird") as folder:
        (folder / "images").mkdir()
        (folder / "images" / "a.png").write_bytes(b"png")
        assert synced == []  # nothing is synced while the folder is written
    assert (tmp_path / "bird" / "images" / "a.png").read_bytes() == b"png"
    # Everything inside (one sync of the file systems), the folder itself, then the folder
    # beside it that now names it.
    assert synced[0] == "sync"
    assert Path(synced[1]).name.startswith(".bird.tmp-")
    assert synced[-1] == str(tmp_path)


def test_the_owner_in_a_temporary_name_is_parsed_back(tmp_path: Path) -> None:
    first, second = temporary_path(tmp_path / "x.json"), temporary_path(tmp_path / "x.json")
    assert first != second  # two writes of one name (two threads) never share a temporary
    assert first.name.startswith(f".x.json{temp_suffix()}")
    owner = temporary_owner(first.name)
    assert owner is not None
    assert owner.pid == os.getpid() and f".tmp-{owner.host}~" in temp_suffix()
    assert owner.token is not None and temp_suffix().endswith(owner.token[:8])
    assert not is_stale_temporary(first.name)  # this process's own
    legacy = temporary_owner(".part-00001.parquet.tmp-12345")  # names of older versions
    assert legacy is not None and legacy.host is None and legacy.pid == 12345
    assert temporary_owner("part-00001.parquet") is None
    assert is_stale_temporary(".x.json.tmp-another.host~1~abcd")
    assert not is_left_by_dead_process(".x.json.tmp-another.host~1~abcd")


def test_writers_in_threads_of_one_process_never_collide(tmp_path: Path) -> None:
    target = tmp_path / "record.json"
    errors: list[BaseException] = []

    def write(i: int) -> None:
        try:
            for _ in range(50):
                write_atomic(target, f"{i}" * 1000)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert [p.name for p in tmp_path.iterdir()] == ["record.json"]
    text = target.read_text(encoding="utf-8")
    assert len(text) == 1000 and len(set(text)) == 1


def test_exclusive_never_replaces_and_permissions_are_exact(tmp_path: Path) -> None:
    key = tmp_path / "pseudonym.key"
    old_umask = os.umask(0o077)
    try:
        write_atomic(key, b"first", permissions=0o600, exclusive=True)
        with pytest.raises(FileExistsError):
            write_atomic(key, b"second", permissions=0o600, exclusive=True)
        report = tmp_path / "report.html"
        write_atomic(report, "<html></html>", permissions=0o644)
    finally:
        os.umask(old_umask)
    assert key.read_bytes() == b"first"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert stat.S_IMODE(report.stat().st_mode) == 0o644  # whatever the umask
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pseudonym.key", "report.html"]


def test_a_folder_replaces_only_an_empty_one(tmp_path: Path) -> None:
    out = tmp_path / "export"
    out.mkdir()
    with atomic_folder(out) as folder:
        (folder / "train.json").write_text("[]", encoding="utf-8")
    assert (out / "train.json").read_text(encoding="utf-8") == "[]"
    with pytest.raises(OSError), atomic_folder(out) as folder:
        (folder / "other.json").write_text("{}", encoding="utf-8")
    assert sorted(p.name for p in out.iterdir()) == ["train.json"]
    assert [p.name for p in tmp_path.iterdir()] == ["export"]


def test_a_library_writes_through_a_path(tmp_path: Path) -> None:
    target = tmp_path / "table.txt"
    with atomic_path(target) as path:
        assert path.parent == tmp_path and not path.exists()
        path.write_text("rows", encoding="utf-8")
        assert not target.exists()
    assert target.read_text(encoding="utf-8") == "rows"
    assert [p.name for p in tmp_path.iterdir()] == ["table.txt"]


def test_the_temporaries_in_a_dataset_are_medgrits(tmp_path: Path) -> None:
    key = "ab" * 32
    cache = tmp_path / "llm" / "cache" / "ab"
    cache.mkdir(parents=True)
    write_atomic(cache / f"{key}.json", "{}")
    (cache / temporary_path(cache / f"{key}.json").name).write_text("{")  # the new scheme's
    (cache / f".{key[:16]}.k2j3h4g5.tmp").write_text("{")  # left by an earlier version
    for folder, name in (("images", "part-00000.parquet"), ("shards", "00000.json")):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / temporary_path(tmp_path / folder / name).name).write_bytes(b"")
    (tmp_path / temporary_path(tmp_path / "dataset.json").name).write_text("{")
    assert foreign_entries(tmp_path) == []
    (cache / ".notes.tmp").write_text("mine")
    assert foreign_entries(tmp_path) == ["llm/cache/ab/.notes.tmp"]


def test_text_mode_only_writes_new_files(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="mode"), atomic_file(tmp_path / "x", "a"):
        pass
    assert list(tmp_path.iterdir()) == []
