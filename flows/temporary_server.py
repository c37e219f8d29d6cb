"""Prefect's temporary server, started at the beginning of a command that runs a flow.

With no Prefect API configured (no ``PREFECT_API_URL`` in the environment or the profile) a
flow run starts Prefect's temporary server, a ``uvicorn`` process serving
``prefect.server.api.server:create_app`` without its UI. Left to Prefect, that happens when
the first flow run starts: after the command has imported Prefect and checked its sources, and
after this process has imported Prefect's whole server (seconds of CPU spent only to start a
subprocess), and the command waits while the server starts.

:func:`temporary_prefect_server` starts the same server, with the same settings, as soon as
the command's checks have passed: it starts on the other core while the command goes on
(its imports, the dataset's lock, the build's worker processes). A flow run waits only for
what is left of its start
(:func:`temporary_server_settings`, which also points Prefect's settings at it). It stops when
this process exits, as Prefect's own does (after Prefect has sent the logs and events it still
holds), or at once when no flow used it.
"""

from __future__ import annotations

import atexit
import importlib.util
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from medgrit.flows.prefect_env import apply_prefect_defaults

__all__ = ["TemporaryServer", "temporary_prefect_server", "temporary_server_settings"]

STARTUP_FAILED_EXIT = 3
"""uvicorn's exit code when its start failed: its port taken meanwhile (then another port is
tried, up to :data:`PORT_RETRIES` times), or the app's own start."""

PORT_RETRIES = 3

_STOP_WAIT_S = 5.0


class TemporaryServer:
    """One temporary Prefect server process on 127.0.0.1 (see the module docstring)."""

    def __init__(self, environment: dict[str, str]) -> None:
        self.environment = environment
        self.process: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.ready = False

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    def start(self) -> None:
        """Start the server process (returns at once; :meth:`wait_ready` waits for it)."""
        self.port = _free_port()
        spec = importlib.util.find_spec("prefect")
        assert spec is not None and spec.origin is not None
        app_dir = str(Path(spec.origin).parent.parent)
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "uvicorn",
                "--app-dir",
                app_dir,
                "--factory",
                "prefect.server.api.server:create_app",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--log-level",
                "error",
                "--lifespan",
                "on",
            ],
            env={
                **os.environ,
                **self.environment,
                # as Prefect runs its own temporary server: no UI, no background services
                "PREFECT_UI_ENABLED": "0",
                "PREFECT__SERVER_EPHEMERAL": "1",
                "PREFECT__SERVER_FINAL": "1",
            },
        )
        atexit.register(self.stop)

    def wait_ready(self, timeout_s: float) -> None:
        """Wait until the server answers its health check.

        Raises:
            RuntimeError: the server ended, or did not answer within ``timeout_s``.
        """
        import httpx

        deadline = time.monotonic() + timeout_s
        retries = PORT_RETRIES
        with httpx.Client() as client:
            while not self.ready:
                assert self.process is not None
                code = self.process.poll()
                if code == STARTUP_FAILED_EXIT and retries and not _port_free(self.port):
                    retries -= 1
                    self.start()  # the port was taken between choosing and binding it
                    continue
                if code is not None:
                    raise RuntimeError(
                        f"Prefect's temporary server ended with exit code {code} before it "
                        "answered (its messages are above)"
                    )
                try:
                    self.ready = client.get(f"{self.api_url}/health").status_code == 200
                except httpx.TransportError:
                    pass
                if not self.ready:
                    if time.monotonic() > deadline:
                        raise RuntimeError(
                            f"Prefect's temporary server did not answer within {timeout_s:.0f} "
                            "s (PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS)"
                        )
                    time.sleep(0.1)

    def stop(self) -> None:
        """Stop the server and reap it; safe to call twice."""
        process = self.process
        if process is None:
            return
        process.terminate()
        try:
            process.wait(timeout=_STOP_WAIT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        self.process = None
        atexit.unregister(self.stop)


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _free_port() -> int:
    """A port of 127.0.0.1 that no socket holds now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


_current: list[TemporaryServer | None] = []


@contextmanager
def temporary_prefect_server() -> Iterator[None]:
    """Start Prefect's temporary server now when the flows run inside would start one (no
    Prefect API configured, Prefect's ephemeral mode on); they use it through
    :func:`temporary_server_settings`. One that no flow used stops when the block ends."""
    apply_prefect_defaults()  # (before Prefect reads its settings: the server gets them too)
    if os.environ.get("PREFECT_API_URL"):
        yield
        return
    from prefect.settings import get_current_settings

    settings = get_current_settings()
    server = None
    if not settings.api.url and settings.server.ephemeral.enabled:
        server = TemporaryServer(settings.to_environment_variables(exclude_unset=True))
        server.start()
    _current.append(server)
    try:
        yield
    finally:
        _current.pop()
        if server is not None and not server.ready:
            server.stop()


@contextmanager
def temporary_server_settings() -> Iterator[str | None]:
    """Around a flow run: wait for the server :func:`temporary_prefect_server` started, and
    point Prefect's settings at it; yields its API URL (None, changing nothing, when no server
    was started here)."""
    if not _current:
        yield None
        return
    server = _current[-1]
    if server is None:
        yield None
        return
    from prefect.settings import (
        PREFECT_API_URL,
        PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS,
        PREFECT_UI_URL,
        temporary_settings,
    )

    if not server.ready:  # (the command has said that it is starting)
        server.wait_ready(float(PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS.value()))
    # No UI: no "View at" link to one.
    with temporary_settings(updates={PREFECT_API_URL: server.api_url, PREFECT_UI_URL: ""}):
        yield server.api_url
