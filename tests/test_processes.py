"""Shards on worker processes (``--runner processes``, the default): the same tables as threads,
for a template build and for an LLM build (whose shards read their images there and ask the
LLM from the build's process), progress counted once, and a stopped or broken worker loses
nothing."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import threading
from pathlib import Path

import psutil
import pytest

from medgrit.adapters.synthetic.samed2d import write_samed2d_release
from medgrit_testing.openai_server import ServerConfig, serve


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


def test_an_llm_build_reads_its_images_on_workers_and_writes_what_threads_write(
    release: Path, env: dict[str, str], tmp_path: Path
) -> None:
    key = "sk-processes-test-not-a-secret"
    llm = {**env, "OPENAI_API_KEY": key}
    config = ServerConfig(rpm=6000, tpm=6_000_000, latency_ms=(5, 30), api_key=key, seed=3)
    built: dict[str, dict[str, str]] = {}
    with serve(config) as server:
        for runner in ("threads", "processes"):
            out = tmp_path / runner
            args = _build(release, out, "--max-images", "48", "--runner", runner)
            flags = ("--generator", "llm", "--llm-model", "m", "--llm-base-url", server.base_url)
            done = _run(*args, *flags, "--llm-rpm", "6000", "--llm-tpm", "60000000", env=llm)
            assert done.returncode == 0, done.stderr[-3000:]
            assert ("worker processes of this machine" in done.stderr) == (runner == "processes")
            built[runner] = _tables(out)
            manifest = json.loads((out / "dataset.json").read_text())
            assert manifest["totals"]["rows"]["conversations"] > 0
    assert len(built["threads"]) >= 20 and built["processes"] == built["threads"]


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


# A build's pool, driven directly: one shard whose job the worker cannot build (it raises there,
# so it ran), then the pool stays up, idle, while the script sleeps.
_IDLE_POOL = """
import signal, sys, time, types
from medgrit.adapters.runtime.processes import run_shard

if __name__ == "__main__":
    signal.signal(signal.SIGINT, lambda signum, frame: None)  # (the test's Ctrl-Cs reach it too)
    print("ready", flush=True)
    try:
        run_shard(types.SimpleNamespace(shard="00000"), 2)
    except AttributeError:
        print("idle", flush=True)
    time.sleep(120)
"""

# A script without a __main__ guard: each spawned process runs it again, and fails there.
_UNGUARDED = """
import json, sys, types
from medgrit.adapters.runtime.processes import WorkerProcessDied, close_shard_processes, run_shard

print("body", file=sys.stderr, flush=True)
errors = []
for shard in ("00000", "00001", "00002"):
    try:
        run_shard(types.SimpleNamespace(shard=shard), 2)
    except WorkerProcessDied as exc:
        errors.append(str(exc))
close_shard_processes()
print(json.dumps(errors))
"""


def test_workers_leave_signals_to_the_build_end_with_it_and_an_unguarded_script_is_told(
    tmp_path: Path, env: dict[str, str]
) -> None:
    script = tmp_path / "idle_pool.py"
    script.write_text(_IDLE_POOL)
    build = subprocess.Popen(
        [shutil.which("python") or "python", str(script)],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    stop_pressing = threading.Event()

    def press_ctrl_c() -> None:  # as a terminal does, to the whole group, while workers start
        while not stop_pressing.wait(0.05):
            os.killpg(build.pid, signal.SIGINT)

    presser = threading.Thread(target=press_ctrl_c, daemon=True)
    try:
        assert build.stdout is not None and build.stdout.readline().strip() == "ready"
        presser.start()
        assert build.stdout.readline().strip() == "idle"  # its worker lived to run the shard
        stop_pressing.set()
        presser.join()
        workers = [
            w for w in psutil.Process(build.pid).children() if "spawn_main" in " ".join(w.cmdline())
        ]
        assert len(workers) == 1
        # A terminal's Ctrl-C, hang-up and a service manager's SIGTERM reach every process of
        # the group: the worker leaves them to the build's process.
        for sig in (signal.SIGINT, signal.SIGHUP, signal.SIGTERM):
            workers[0].send_signal(sig)
        _, alive = psutil.wait_procs(workers, timeout=1)
        assert alive == workers
        # The build's process killed outright: its idle worker does not wait for shards forever.
        build.kill()
        _, alive = psutil.wait_procs(workers, timeout=15)
        assert not alive
    finally:
        stop_pressing.set()
        build.kill()
        build.wait(timeout=30)

    unguarded = tmp_path / "unguarded.py"
    unguarded.write_text(_UNGUARDED)
    ran = subprocess.run(
        [shutil.which("python") or "python", str(unguarded)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert ran.returncode == 0, ran.stderr[-3000:]
    errors = json.loads(ran.stdout.strip().splitlines()[-1])
    # Every shard fails with the one line that says what to do ...
    assert len(errors) == 3 and len(set(errors)) == 1, errors
    assert "could not start" in errors[0] and 'if __name__ == "__main__":' in errors[0]
    # ... and once the first pool's worker failed to start, no other was spawned to run the
    # script again.
    assert ran.stderr.count("body") == 2, ran.stderr[-3000:]
