"""JSON responses in OpenAI's shape: ``{"error": {message, type, param, code}}`` for errors."""

from __future__ import annotations

import json
from typing import Any

from starlette.responses import Response

from .state import ProviderState


def json_response(
    payload: Any, status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    """``payload`` as a JSON response (UTF-8, not ASCII-escaped)."""
    return Response(
        json.dumps(payload, ensure_ascii=False).encode(),
        status_code=status,
        headers=headers,
        media_type="application/json",
    )


def error_response(
    status: int, message: str, type_: str, code: str | None, headers: dict | None = None
) -> Response:
    """An OpenAI-style error with ``status``."""
    body = {"error": {"message": message, "type": type_, "param": None, "code": code}}
    return json_response(body, status, headers)


def unauthorized(state: ProviderState, headers: dict | None = None) -> Response:
    """The 401 of a request without the configured key (counted as ``status_401``)."""
    state.count("status_401")
    message = "Incorrect API key provided."
    return error_response(401, message, "invalid_request_error", "invalid_api_key", headers)
