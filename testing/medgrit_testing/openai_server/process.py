"""Running the fake provider in a child process: :func:`serve` and :class:`RunningServer`.

:func:`serve` (a context manager) passes the configuration, API key included, through the
child's stdin, never its command line, and the child exits when that pipe closes (the parent
exited or died). The child is ``python -m medgrit_testing.openai_server``; it prints
:data:`READY_PREFIX` and its base URL once it listens.
"""

from __future__ import annotations

import os
import select
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import httpx

from .config import ServerConfig

READY_PREFIX = "medgrit-openai-server ready at "


@dataclass
class RunningServer:
    """A server started by :func:`serve`."""

    url: str
    process: subprocess.Popen

    @property
    def base_url(self) -> str:
        """The OpenAI base URL, ``http://127.0.0.1:PORT/v1``."""
        return f"{self.url}/v1"

    @property
    def port(self) -> int:
        """The TCP port it listens on."""
        return int(self.url.rsplit(":", 1)[1])

    def stats(self) -> dict:
        """``GET /stats``."""
        return httpx.get(f"{self.url}/stats", timeout=10).raise_for_status().json()

    def reset_stats(self) -> dict:
        """``POST /stats/reset``; returns the zeroed stats (the lie ledger is emptied too)."""
        return httpx.post(f"{self.url}/stats/reset", timeout=10).raise_for_status().json()

    def lies(self) -> list[dict]:
        """``GET /lies``: each lie turn sent, as ``{"class", "task", "question", "answer",
        "region_ids", "regions"}``, in the order they were answered."""
        return httpx.get(f"{self.url}/lies", timeout=10).raise_for_status().json()

    def requests(self) -> list[list[dict]]:
        """``GET /requests``: the messages of each chat request answered (online or in a
        batch), oldest first; the latest 1000 since start or the last reset."""
        return httpx.get(f"{self.url}/requests", timeout=10).raise_for_status().json()

    def configure(self, config: ServerConfig) -> None:
        """Replace the running server's configuration (buckets start full; stats are kept)."""
        httpx.post(
            f"{self.url}/admin/config",
            content=config.to_json(),
            headers={"content-type": "application/json"},
            timeout=10,
        ).raise_for_status()


def _wait_ready(process: subprocess.Popen, timeout_s: float) -> str:
    deadline = time.monotonic() + timeout_s
    buffer = b""
    stdout = process.stdout
    assert stdout is not None  # created with stdout=PIPE
    while time.monotonic() < deadline:
        ready, _, _ = select.select([stdout], [], [], 0.1)
        if ready:
            chunk = os.read(stdout.fileno(), 4096)
            if not chunk:
                break
            buffer += chunk
            for line in buffer.decode("utf-8", "replace").splitlines():
                if line.startswith(READY_PREFIX):
                    return line[len(READY_PREFIX) :].strip().removesuffix("/v1")
        if process.poll() is not None:
            break
    code = process.poll()
    raise RuntimeError(
        f"the test OpenAI server did not start (exit code {code}); see its stderr"
        if code is not None
        else f"the test OpenAI server did not report ready within {timeout_s:.0f} s"
    )


def _stop(process: subprocess.Popen) -> None:
    if process.stdin is not None and not process.stdin.closed:
        try:
            process.stdin.close()  # the child's stdin watcher starts a graceful exit
        except OSError:
            pass
    for step in (process.terminate, process.kill):
        try:
            process.wait(3)
            break
        except subprocess.TimeoutExpired:
            step()
    else:
        process.wait(5)
    if process.stdout is not None:
        process.stdout.close()


@contextmanager
def serve(
    config: ServerConfig | None = None,
    host: str = "127.0.0.1",
    port: int = 0,
    startup_timeout_s: float = 30.0,
    log_path: str | os.PathLike[str] | None = None,
    log_level: str = "warning",
) -> Iterator[RunningServer]:
    """Run the server in a child process for the duration of the ``with`` block.

    The configuration (API key included) goes to the child through its stdin, never its command
    line; the child exits when that pipe closes, so it also stops if this process dies.

    Args:
        config: server behaviour (default: no limits, no latency, no faults).
        host: interface to bind.
        port: TCP port; 0 picks a free one.
        startup_timeout_s: how long to wait for the child to listen.
        log_path: file that receives the child's stderr (default: this process's stderr).
        log_level: uvicorn's log level in the child.

    Yields:
        The running server (``.base_url``, ``.stats()``, ``.configure()``).

    Raises:
        RuntimeError: the child exited or did not get ready in time.
    """
    config = config or ServerConfig()
    command = [
        sys.executable,
        "-m",
        "medgrit_testing.openai_server",
        "--host",
        host,
        "--port",
        str(port),
        "--config-json",
        "-",
        "--watch-stdin",
        "--log-level",
        log_level,
    ]
    log = open(log_path, "ab") if log_path is not None else None
    try:
        process = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log
        )
        try:
            assert process.stdin is not None  # created with stdin=PIPE
            process.stdin.write(config.to_json().encode() + b"\n")
            process.stdin.flush()
            url = _wait_ready(process, startup_timeout_s)
            yield RunningServer(url=url, process=process)
        finally:
            _stop(process)
    finally:
        if log is not None:
            log.close()
