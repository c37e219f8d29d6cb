"""The ASGI app: every route of the fake provider, and its endpoints for tests.

The OpenAI routes live in :mod:`.chat` and :mod:`.batches`. The endpoints for tests are not under
``/v1`` and need no key: ``GET /stats`` and ``POST /stats/reset`` (counters, see
:meth:`.state.ProviderState.stats`), ``GET /lies`` (the ledger of lies told), ``GET /requests``
(the messages of the chat requests answered), ``POST /admin/config`` (replace the configuration
of a running server) and ``GET /health``.
"""

from __future__ import annotations

from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from .batches import FilesAndBatches
from .chat import ChatEndpoint
from .config import ServerConfig
from .responses import error_response, json_response
from .state import ProviderState


class AdminEndpoints:
    """The endpoints tests use to read and steer a running server.

    Args:
        state: the server's state.
    """

    def __init__(self, state: ProviderState) -> None:
        self.state = state

    async def get_stats(self, request: Request) -> Response:
        """``GET /stats``."""
        return json_response(self.state.stats())

    async def get_lies(self, request: Request) -> Response:
        """``GET /lies``: the ledger of lie turns sent since start or the last reset."""
        return json_response(self.state.lie_ledger)

    async def get_requests(self, request: Request) -> Response:
        """``GET /requests``: the messages of each chat request answered since start or the last
        reset (the latest ``RECEIVED_KEPT``), oldest first."""
        return json_response(list(self.state.received))

    async def post_stats_reset(self, request: Request) -> Response:
        """``POST /stats/reset``."""
        self.state.reset_stats()
        return json_response(self.state.stats())

    async def post_config(self, request: Request) -> Response:
        """``POST /admin/config``: a full :class:`ServerConfig` as JSON."""
        try:
            config = ServerConfig.model_validate_json(await request.body())
        except ValidationError as exc:
            return error_response(400, str(exc), "invalid_request_error", None)
        self.state.configure(config)
        return json_response({"ok": True})

    async def health(self, request: Request) -> Response:
        """``GET /health``."""
        return json_response({"ok": True})


def create_app(config: ServerConfig) -> Starlette:
    """The ASGI app of a server with ``config`` (its state is ``app.state.provider``)."""
    state = ProviderState(config)
    chat = ChatEndpoint(state)
    store = FilesAndBatches(state)
    admin = AdminEndpoints(state)
    routes = [
        Route("/v1/chat/completions", chat.chat_completions, methods=["POST"]),
        Route("/v1/files", store.create_file, methods=["POST"]),
        Route("/v1/files/{file_id}", store.retrieve_file, methods=["GET"]),
        Route("/v1/files/{file_id}", store.delete_file, methods=["DELETE"]),
        Route("/v1/files/{file_id}/content", store.file_content, methods=["GET"]),
        Route("/v1/batches", store.create_batch, methods=["POST"]),
        Route("/v1/batches/{batch_id}", store.retrieve_batch, methods=["GET"]),
        Route("/v1/batches/{batch_id}/cancel", store.cancel_batch, methods=["POST"]),
        Route("/stats", admin.get_stats, methods=["GET"]),
        Route("/stats/reset", admin.post_stats_reset, methods=["POST"]),
        Route("/lies", admin.get_lies, methods=["GET"]),
        Route("/requests", admin.get_requests, methods=["GET"]),
        Route("/admin/config", admin.post_config, methods=["POST"]),
        Route("/health", admin.health, methods=["GET"]),
    ]
    app = Starlette(routes=routes)
    app.state.provider = state
    return app
