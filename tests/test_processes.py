"""Shards on worker processes (``--runner processes``, the default of a template build): the same
tables as threads, progress counted once, and a stopped or broken worker loses nothing."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
from pathlib import Path

import psutil
import pytest

from medgrit.adapters.synthetic.samed2d import write_samed2d_release


@pytest.fixture(scope="module")
def release(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small SA-Med2D-20M release: 120 images of 48x48 pixels."""
    return write_samed2d_release(tmp_path_factory.mktemp("samed2d") / "release", 120, size=48)


@pytest.fixture(scope="module")
def reference(
    release: Path, env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, str]:
    """The tables of the release built on threads in one process."""
    tmp = tmp_path_factory.mktemp("threads")
    built = _run(*_build(release, tmp / "out", "--runner", "threads"), env=env)
    assert built.returncode == 0, built.stderr[-3000:]
    return _tables(tmp / "out")


def _tables(out: Path) -> dict[str, str]:
    return {
        str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(out.rglob("*.parquet"))
    }


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """No Prefect server; one pseudonymisation key for every build here."""
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env["MEDGRIT_KEY_FILE"] = str(tmp_path_factory.mktemp("key") / "key")
    return env


def _run(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    exe = shutil.which("medgrit") or "medgrit"
    return subprocess.run(
        [exe, *args], env=env, capture_output=True, text=True, timeout=300, check=False
    )


def _build(release: Path, out: Path, *extra: str) -> list[str]:
    return [
        "build",
        f"samed2d:{release}",
        "--out",
        str(out),
        "--no-prefect",
        "--images-per-shard",
        "8",
        *extra,
    ]


def test_processes_write_what_threads_write_and_count_each_image_once(
    release: Path, reference: dict[str, str], env: dict[str, str], tmp_path: Path
) -> None:
    done = _run(*_build(release, tmp_path / "processes"), env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "worker processes of this machine" in done.stderr
    tables = _tables(tmp_path / "processes")
    assert len(tables) > 40 and tables == reference
    manifest = json.loads((tmp_path / "processes" / "dataset.json").read_text())
    images = manifest["totals"]["rows"]["images"]
    # The plain progress lines (stderr is no terminal) end at the dataset's own count.
    counts = [line for line in done.stderr.splitlines() if line.startswith("images: ")]
    assert counts and counts[-1].startswith(f"images: {images}/{images} (100%)"), counts[-3:]


def test_a_killed_worker_fails_its_shard_in_one_line_and_resume_finishes(
    release: Path, reference: dict[str, str], env: dict[str, str], tmp_path: Path
) -> None:
    out = tmp_path / "out"
    exe = shutil.which("medgrit") or "medgrit"
    proc = subprocess.Popen(
        [exe, *_build(release, out)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    for line in proc.stderr:  # once the pool runs: a shard is done
        if " done (" in line:
            break
    workers = psutil.Process(proc.pid).children()
    spawned = [w for w in workers if "spawn_main" in " ".join(w.cmdline())]
    assert spawned, [w.cmdline() for w in workers]
    spawned[0].send_signal(signal.SIGKILL)
    rest = proc.stderr.read()
    assert proc.wait(timeout=300) != 0
    assert "Traceback" not in rest
    failed = [line for line in rest.splitlines() if "failed" in line]
    assert any("worker process" in line and "ended" in line for line in failed), rest[-2000:]
    assert not list(out.rglob("*.tmp-*"))
    _, alive = psutil.wait_procs(spawned, timeout=30)  # the build left no worker behind
    assert not alive
    resumed = _run("resume", str(out), "--no-prefect", env=env)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert _tables(out) == reference
