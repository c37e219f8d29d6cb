"""A real Prefect server for tests and benchmarks: ``prefect server start`` on a free port of
127.0.0.1 with a Prefect home of its own."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["running_prefect_server"]

START_TIMEOUT_S = 240.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def running_prefect_server(
    home: Path, extra_env: dict[str, str] | None = None, services: bool = False
) -> Iterator[str]:
    """``prefect server start`` (its background services only with ``services``) with
    PREFECT_HOME ``home``, its output in ``home/server.log``; yields its API URL once it
    answers, and stops it at the end. ``extra_env`` may use ``{url}`` (the API URL).

    Raises:
        RuntimeError: the server ended, or did not answer within ``START_TIMEOUT_S``.
    """
    port = _free_port()
    url = f"http://127.0.0.1:{port}/api"
    env = {
        **os.environ,
        "PREFECT_HOME": str(home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1",
        **{k: v.format(url=url) for k, v in (extra_env or {}).items()},
    }
    env.pop("PREFECT_API_URL", None)
    home.mkdir(parents=True, exist_ok=True)
    log = (home / "server.log").open("w")
    cmd = [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1"]
    cmd += ["--port", str(port), *([] if services else ["--no-services"])]
    proc = subprocess.Popen(
        cmd, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                tail = (home / "server.log").read_text()[-2000:]
                raise RuntimeError(f"the Prefect server did not start: {tail}")
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
