"""Structured output: which ``response_format`` a request asks for, and refusing it.

``ServerConfig.response_formats`` names the kinds answered (:data:`.config.RESPONSE_FORMAT_KINDS`:
the ``type``, with ``json_object`` plus a ``schema`` field as ``json_object_schema``); ``None``
answers every kind, and a request without ``response_format`` is always answered. Another kind is
refused before rate limits and faults, in the ``response_format_refusal`` style: ``http_400``
(OpenAI's ``invalid_request_error``), ``http_422`` (FastAPI's ``detail`` list),
``http_500_validation`` (llama-cpp-python's server, which wraps its pydantic validation error in
a 500: accept ``text,json_object,json_object_schema`` to play it) or ``ignore`` (answered as if it
were absent).
"""

from __future__ import annotations

from typing import Any


def response_format_kind(response_format: Any) -> str:
    """The :data:`RESPONSE_FORMAT_KINDS` entry a ``response_format`` asks for (its ``type``, or
    ``json_object_schema`` for a json_object with a ``schema`` field)."""
    if not isinstance(response_format, dict):
        return repr(response_format)
    kind = str(response_format.get("type"))
    return "json_object_schema" if kind == "json_object" and "schema" in response_format else kind


def response_format_refusal(
    style: str, response_format: Any, accepted: tuple[str, ...]
) -> tuple[int, dict]:
    """(status, body) refusing a ``response_format`` of a kind not in ``accepted``, in the
    ``style`` of ``ServerConfig.response_format_refusal``.

    The error is pydantic's, as a server validating the request with it words it;
    ``http_500_validation`` wraps it the way llama-cpp-python's server does (every exception
    becomes a 500 whose message is the exception's text).
    """
    kind = response_format_kind(response_format)
    rf = response_format if isinstance(response_format, dict) else {}
    types = [t for t in ("text", "json_object", "json_schema") if t in accepted]
    if "json_object_schema" in accepted and "json_object" not in types:
        types.insert(1 if "text" in types else 0, "json_object")
    quoted = [f"'{t}'" for t in types]
    expected = " or ".join([", ".join(quoted[:-1]), quoted[-1]] if len(quoted) > 1 else quoted)
    if str(rf.get("type")) not in types:
        error = {
            "type": "literal_error",
            "loc": ("body", "response_format", "type"),
            "msg": f"Input should be {expected}",
            "input": rf.get("type", response_format),
            "ctx": {"expected": expected},
        }
        said = f"of type '{rf.get('type', kind)}' is not supported with this model"
    elif kind == "json_object_schema":  # json_object taken, its schema field not
        error = {
            "type": "extra_forbidden",
            "loc": ("body", "response_format", "schema"),
            "msg": "Extra inputs are not permitted",
            "input": rf.get("schema"),
        }
        said = "has an unrecognized argument 'schema'"
    else:  # json_object taken with a schema only
        error = {
            "type": "missing",
            "loc": ("body", "response_format", "schema"),
            "msg": "Field required",
            "input": rf,
        }
        said = "of type 'json_object' needs a 'schema'"
    if style == "http_500_validation":
        message = f"1 validation error:\n  {error!r}"
        return 500, {
            "error": {
                "message": message,
                "type": "internal_server_error",
                "param": None,
                "code": None,
            }
        }
    if style == "http_422":
        return 422, {"detail": [{**error, "loc": list(error["loc"])}]}
    message = f"Invalid parameter: 'response_format' {said}."
    return 400, {
        "error": {
            "message": message,
            "type": "invalid_request_error",
            "param": "response_format",
            "code": None,
        }
    }


def refused_format(
    response_format: Any, accepted: tuple[str, ...] | None, style: str
) -> tuple[int, dict] | None:
    """(status, body) refusing ``response_format``, or None when the request is answered: no
    ``response_format``, every kind accepted (``accepted`` is None), its kind accepted, or the
    ``ignore`` style."""
    if (
        accepted is None
        or response_format is None
        or style == "ignore"
        or response_format_kind(response_format) in accepted
    ):
        return None
    return response_format_refusal(style, response_format, accepted)
