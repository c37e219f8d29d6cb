"""One LLM transport per process: the requests of every shard through one client.

Shards run on threads, each asking for its images in its own event loop. Were each to open its
own :class:`OpenAICompatibleClient`, each would pace to the whole limit (the limit multiplied)
and a shard with few requests left would leave the provider idle. Instead :func:`shared_client`
gives every shard of the process the same :class:`SharedClient` for the same endpoint settings
and key: one client, one RPM/TPM limiter and one in-flight window, on an event loop in a daemon
thread of its own. A shard's requests join those of the shards already waiting, so the provider's
limit is the only bottleneck as long as enough shards are in flight
(:func:`shards_in_flight`). :func:`close_shared_clients` closes them (at the
end of a build, and at exit).
"""

from __future__ import annotations

import asyncio
import atexit
import hashlib
import threading
from collections.abc import Callable, Sequence

from medgrit.adapters.llm.chat import ChatRequest, ChatResult, LLMSettings
from medgrit.adapters.llm.client import OpenAICompatibleClient
from medgrit.adapters.runtime.interrupt import check_stop
from medgrit.core.failures import InfrastructureError
from medgrit.schemas.config import BuildConfig

__all__ = [
    "ClientClosed",
    "SharedClient",
    "close_shared_clients",
    "shards_in_flight",
    "shared_client",
]


class ClientClosed(InfrastructureError, RuntimeError):
    """The shared client was closed while a shard's requests were pending (the shard fails and
    a resume asks again; answers received are cached)."""


class SharedClient:
    """An :class:`OpenAICompatibleClient` on an event loop thread of its own, used from any
    thread or event loop."""

    def __init__(self, settings: LLMSettings, api_key: str) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self.loop.run_forever, name="medgrit-llm", daemon=True
        )
        self._thread.start()
        self._closed = False
        self.client: OpenAICompatibleClient = asyncio.run_coroutine_threadsafe(
            self._open(settings, api_key), self.loop
        ).result()

    @staticmethod
    async def _open(settings: LLMSettings, api_key: str) -> OpenAICompatibleClient:
        return OpenAICompatibleClient(settings, api_key)  # created on its own loop

    async def complete_all(
        self,
        requests: Sequence[ChatRequest],
        on_result: Callable[[ChatResult], None] | None = None,
    ) -> list[ChatResult]:
        """``OpenAICompatibleClient.complete_all`` on the shared client, awaited from any loop
        (``on_result`` is called on the client's loop thread).

        Raises:
            StopRequested: the client was closed because the build is stopping.
            ClientClosed: the client was closed while these requests were pending.
        """
        future = asyncio.run_coroutine_threadsafe(
            self.client.complete_all(list(requests), on_result), self.loop
        )
        try:
            return await asyncio.wrap_future(future)
        except asyncio.CancelledError:
            if not future.cancelled():
                raise  # the caller itself was cancelled
            check_stop()
            raise ClientClosed("the shared LLM client closed while requests were pending") from None

    def close(self) -> None:
        """Cancel what is pending (its callers get :class:`ClientClosed`, or ``StopRequested``
        when the build is stopping), close the connections and stop the loop thread."""
        if self._closed:
            return
        self._closed = True

        async def shutdown() -> None:
            pending = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
            await self.client.aclose()

        try:
            asyncio.run_coroutine_threadsafe(shutdown(), self.loop).result(timeout=10)
        except Exception:  # noqa: BLE001 - closing at exit: the connections die with us
            pass
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)


_shared: dict[tuple[LLMSettings, str], SharedClient] = {}
_guard = threading.Lock()


def shared_client(settings: LLMSettings, api_key: str) -> SharedClient:
    """The process's client for these settings and key (opened on first use)."""
    key = (settings, hashlib.sha256(api_key.encode("utf-8")).hexdigest())
    with _guard:
        client = _shared.get(key)
        if client is None:
            client = _shared[key] = SharedClient(settings, api_key)
        return client


def close_shared_clients() -> None:
    """Close every shared client (the next request opens a new one)."""
    with _guard:
        clients = list(_shared.values())
        _shared.clear()
    for client in clients:
        client.close()


atexit.register(close_shared_clients)


LLM_LATENCY_GUESS_S = 20.0
"""Seconds of requests at the limit that the shards in flight hold: a generous latency, and the
seconds the others must bridge while finished shards are replaced (measured at 2-8 s on two busy
cores: the runner starting the next shard, its images read and its prompts rendered, answers the
cache gives instead of the provider)."""
MAX_LLM_SHARDS_IN_FLIGHT = 32
"""The most shards an LLM build runs at once, whatever its limit."""


def shards_in_flight(config: BuildConfig) -> int:
    """How many shards a build runs at once: ``workers``; for an LLM build enough more that
    the requests of the shards in flight keep the limiter busy, since the shards' threads
    mostly wait on the shared client.

    Those are the shards that hold ``LLM_LATENCY_GUESS_S`` seconds of requests at the limit,
    and two more: a shard ends only when its last answer is in, and while the shard at the
    head of the queue waits for its last answers and a finished one is replaced, the others
    must still hold requests to send."""
    if config.generator != "llm" or config.llm is None or config.llm.batch:
        return config.workers
    window = config.llm.max_concurrency or (
        config.llm.requests_per_minute / 60.0 * LLM_LATENCY_GUESS_S
    )
    needed = -(-int(window) // config.images_per_shard) + 2
    return max(config.workers, min(MAX_LLM_SHARDS_IN_FLIGHT, needed))
