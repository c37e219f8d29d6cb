"""Structured-output negotiation against a real OpenAI-compatible HTTP server on 127.0.0.1.

The test server (``medgrit_testing.openai_server``) plays each kind of endpoint through its
``response_formats`` and ``response_format_refusal`` settings: OpenAI (answers every kind),
llama-cpp-python's server (``text``/``json_object``, a 500 validation error otherwise), a server
that takes ``json_object`` but no ``schema`` field, one refusing every ``response_format``; the
real ``openai`` SDK asks it.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from pathlib import Path

import pytest
from tenacity import wait_random_exponential

from medgrit.adapters.llm import client as llm_client
from medgrit.adapters.llm import formats
from medgrit.adapters.llm.chat import ChatRequest, LLMSettings
from medgrit.adapters.llm.client import (
    OpenAICompatibleClient,
    is_request_validation_error,
    status_reason,
)
from medgrit.adapters.llm.endpoint import resolve_llm_config
from medgrit.adapters.llm.formats import (
    MODE_ORDER,
    PROBE_ATTEMPTS,
    LLMEndpointError,
    check_response_format,
    negotiate_response_format,
    response_format_for,
)
from medgrit.adapters.store.bookkeeping import plan_manifest, store_manifest
from medgrit.adapters.text.generators import generator_info
from medgrit.schemas.config import BuildConfig, LLMConfig
from medgrit.schemas.llm import FACTS_MARKER
from medgrit.schemas.manifest import GeneratorEntry
from medgrit_testing.openai_server import ServerConfig, serve

KEY = "sk-medgrit-test-negotiation-4b1d"
LLAMA_CPP_PYTHON = {
    "response_formats": ("text", "json_object", "json_object_schema"),
    "response_format_refusal": "http_500_validation",
}
# One server per mode ``auto`` must settle on, each refusing the modes before it.
ENDPOINTS = {
    "openai": ({}, "json_schema"),
    "llama_cpp_python": (LLAMA_CPP_PYTHON, "json_object_schema"),
    "json_object_only": ({"response_formats": ("text", "json_object")}, "json_object"),
    "no_response_format_422": (
        {"response_formats": (), "response_format_refusal": "http_422"},
        "none",
    ),
    "no_response_format_400": ({"response_formats": ()}, "none"),
    "ignores_response_format": (
        {"response_formats": (), "response_format_refusal": "ignore"},
        "json_schema",
    ),
}


@pytest.fixture(scope="module")
def server():
    with serve(ServerConfig(api_key=KEY)) as running:
        yield running


@pytest.fixture
def configure(server):
    """Give the shared server a fresh configuration and zeroed stats."""

    def apply(**fields) -> None:
        deadline = time.monotonic() + 5.0
        while server.stats()["in_flight"] and time.monotonic() < deadline:
            time.sleep(0.05)
        server.configure(ServerConfig(api_key=KEY, **fields))
        server.reset_stats()

    apply()
    return apply


@pytest.fixture(autouse=True)
def fresh_process_state(monkeypatch):
    """Each test starts with no negotiated modes and millisecond backoff."""
    monkeypatch.setattr(formats, "_NEGOTIATED", {})
    monkeypatch.setattr(formats, "_CHECKED", set())
    monkeypatch.setattr(llm_client, "_BACKOFF", wait_random_exponential(multiplier=0.01, max=0.05))


def settings(server, **fields) -> LLMSettings:
    return LLMSettings(**{"model": "medgrit-test", "base_url": server.base_url, **fields})


def chat_count(server) -> int:
    return server.stats()["requests"].get("chat_completions", 0)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --- negotiation ------------------------------------------------------------------------------


@pytest.mark.parametrize("endpoint", ENDPOINTS, ids=str)
def test_auto_settles_on_the_strongest_mode_the_endpoint_answers(
    server, configure, endpoint
) -> None:
    fields, expected = ENDPOINTS[endpoint]
    configure(**fields)
    mode = asyncio.run(negotiate_response_format(settings(server), KEY))
    assert mode == expected
    # One probe per mode tried, none retried: a refusal is no outage.
    assert chat_count(server) == MODE_ORDER.index(expected) + 1


def test_the_negotiated_mode_is_kept_for_the_process(server, configure) -> None:
    configure(**LLAMA_CPP_PYTHON)
    assert asyncio.run(negotiate_response_format(settings(server), KEY)) == "json_object_schema"
    sent = chat_count(server)
    assert asyncio.run(negotiate_response_format(settings(server), KEY)) == "json_object_schema"
    assert chat_count(server) == sent
    other_model = settings(server, model="another-model")
    assert asyncio.run(negotiate_response_format(other_model, KEY)) == "json_object_schema"
    assert chat_count(server) > sent  # another (base_url, model) is asked again


def test_the_negotiated_mode_answers_the_real_requests(server, configure) -> None:
    configure(**LLAMA_CPP_PYTHON)
    mode = asyncio.run(negotiate_response_format(settings(server), KEY))
    facts = {
        "modality": "CT",
        "view": "axial CT",
        "regions": [
            {"id": "r0", "label": "liver", "box": [100, 200, 400, 500],
             "position": "upper left", "size": "large", "side": None},
        ],
    }  # fmt: skip
    request = ChatRequest(
        "img-0",
        ({"role": "user", "content": f"{FACTS_MARKER} {json.dumps(facts)}"},),
        response_format_for(mode),
    )

    async def ask():
        async with OpenAICompatibleClient(settings(server, max_tokens=1024), KEY) as client:
            return await client.complete(request)

    result = asyncio.run(ask())
    assert result.error is None and json.loads(result.content)["conversation"]


def test_an_outage_is_an_error_not_a_downgrade(server, configure) -> None:
    configure(fail_503_rate=1.0)
    with pytest.raises(LLMEndpointError, match="unreachable") as caught:
        asyncio.run(negotiate_response_format(settings(server), KEY))
    assert caught.value.reason == "unreachable"
    assert "--llm-base-url" in str(caught.value)
    # json_schema was retried, and no weaker mode was tried.
    assert chat_count(server) == PROBE_ATTEMPTS
    assert server.stats()["status_503"] == PROBE_ATTEMPTS
    assert formats._NEGOTIATED == {}  # nothing is kept


def test_a_plain_500_is_an_outage_too(server, configure) -> None:
    configure(fail_500_rate=1.0)
    with pytest.raises(LLMEndpointError) as caught:
        asyncio.run(negotiate_response_format(settings(server), KEY))
    assert caught.value.reason == "unreachable"
    assert chat_count(server) == PROBE_ATTEMPTS


def test_a_server_that_is_down_is_unreachable() -> None:
    down = LLMSettings(model="m", base_url=f"http://127.0.0.1:{free_port()}/v1", timeout_s=2)
    with pytest.raises(LLMEndpointError, match=r"unreachable \(connection_error"):
        asyncio.run(negotiate_response_format(down, KEY))


def test_an_outage_that_ends_within_the_retries_is_no_refusal(server, configure) -> None:
    configure(fail_503_rate=0.5, seed=3)
    assert asyncio.run(negotiate_response_format(settings(server), KEY)) == "json_schema"
    assert server.stats()["status_200"] == 1


def test_a_refused_key_is_an_error(server, configure) -> None:
    with pytest.raises(LLMEndpointError, match="refused the API key") as caught:
        asyncio.run(negotiate_response_format(settings(server), "sk-wrong"))
    assert caught.value.reason == "authentication_error"
    assert "sk-wrong" not in str(caught.value)
    assert chat_count(server) == 1


def test_an_endpoint_refusing_every_mode_is_an_error(server, configure) -> None:
    wrong_path = LLMSettings(model="m", base_url=f"{server.url}/not-v1")  # 404 for every mode
    with pytest.raises(LLMEndpointError, match="answered no probe with a JSON object") as caught:
        asyncio.run(negotiate_response_format(wrong_path, KEY))
    assert caught.value.reason == "no_json_answer"
    assert all(f"{mode}: HTTP 404" in str(caught.value) for mode in MODE_ORDER)


# --- explicit modes ---------------------------------------------------------------------------


def test_an_explicit_mode_the_endpoint_refuses_fails_in_one_line(server, configure) -> None:
    configure(**LLAMA_CPP_PYTHON)
    with pytest.raises(LLMEndpointError) as caught:
        asyncio.run(check_response_format(settings(server), KEY, "json_schema"))
    message = str(caught.value)
    assert caught.value.reason == "response_format_refused"
    assert "\n" not in message
    assert "response_format json_schema" in message and "--llm-response-format auto" in message
    assert chat_count(server) == 1


def test_an_explicit_mode_the_endpoint_accepts_passes(server, configure) -> None:
    configure(**LLAMA_CPP_PYTHON)
    asyncio.run(check_response_format(settings(server), KEY, "json_object_schema"))
    asyncio.run(check_response_format(settings(server), KEY, "json_object_schema"))
    assert chat_count(server) == 1  # checked once per process


# --- the client: a validation 500 is final ----------------------------------------------------


def test_a_validation_500_is_final_not_retried(server, configure) -> None:
    configure(**LLAMA_CPP_PYTHON)
    request = ChatRequest(
        "img-0",
        ({"role": "user", "content": 'Reply with this JSON object: {"ok": true}'},),
        response_format_for("json_schema"),
    )

    async def ask():
        async with OpenAICompatibleClient(settings(server, max_attempts=6), KEY) as client:
            return await client.complete(request)

    result = asyncio.run(ask())
    assert result.content is None and result.error == "unsupported_request"
    assert chat_count(server) == 1
    assert server.stats()["status_500"] == 1


def test_a_plain_500_is_still_retried(server, configure) -> None:
    configure(fail_500_rate=1.0)
    request = ChatRequest("img-0", ({"role": "user", "content": "{}"},))

    async def ask():
        async with OpenAICompatibleClient(settings(server, max_attempts=3), KEY) as client:
            return await client.complete(request)

    assert asyncio.run(ask()).error == "server_error"
    assert chat_count(server) == 3


def _error_body(message: str, type_: str = "internal_server_error") -> str:
    return json.dumps({"error": {"message": message, "type": type_, "param": None, "code": None}})


# The measured wording: pydantic's literal_error for response_format.type.
_LITERAL_ERROR = (
    "{'type': 'literal_error', 'loc': ('body', 'response_format', 'type'), "
    "'msg': \"Input should be 'text' or 'json_object'\", 'input': 'json_schema'}"
)
ERROR_BODIES = {
    # llama-cpp-python's server on a recent FastAPI, and on an older one (the error list)
    "llama_cpp_python": (_error_body(f"1 validation error:\n  {_LITERAL_ERROR}"), True),
    "old_fastapi": (_error_body(f"[{_LITERAL_ERROR}]"), True),
    "ik_llama_cpp": (
        _error_body(
            'response_format type must be one of "text" or "json_object", but got: json_schema',
            "server_error",
        ),
        True,
    ),
    "openai_500": (
        _error_body("The server had an error while processing your request.", "server_error"),
        False,
    ),
    "proxy_page": ("<html><body>502 Bad Gateway</body></html>", False),
    "empty": ("", False),
}


@pytest.mark.parametrize("case", ERROR_BODIES, ids=str)
def test_validation_error_bodies_are_told_from_outages(case: str) -> None:
    body, validation = ERROR_BODIES[case]
    assert is_request_validation_error(body) is validation
    assert status_reason(500, body) == ("unsupported_request" if validation else "server_error")
    assert status_reason(503, body) == "server_error"  # only a 500 is read so


# --- the build's config -----------------------------------------------------------------------


def llm_build(server, out: Path, response_format: str = "auto") -> BuildConfig:
    llm = LLMConfig(model="medgrit-test", base_url=server.base_url, response_format=response_format)
    return BuildConfig(out=str(out), generator="llm", llm=llm)


def test_resolve_llm_config_negotiates_auto(server, configure, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    configure(**LLAMA_CPP_PYTHON)
    config = llm_build(server, tmp_path)
    resolved = resolve_llm_config(config, tmp_path)
    assert resolved.llm.response_format == "json_object_schema"
    assert config.llm.response_format == "auto"  # the caller's config is left as it was
    assert resolved.model_copy(update={"llm": config.llm}) == config
    assert generator_info(resolved)["response_format"] == "json_object_schema"


def test_a_resume_reuses_the_recorded_mode_and_sends_nothing(
    server, configure, tmp_path, monkeypatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    configure()  # this server would now negotiate json_schema
    config = llm_build(server, tmp_path)
    earlier = config.model_copy(
        update={"llm": config.llm.model_copy(update={"response_format": "json_object"})}
    )
    generator = GeneratorEntry.model_validate(generator_info(earlier))
    store_manifest(tmp_path, plan_manifest(config, [], [], generator))
    assert resolve_llm_config(config, tmp_path).llm.response_format == "json_object"
    explicit = llm_build(server, tmp_path, "json_object")
    assert resolve_llm_config(explicit, tmp_path) == explicit
    assert chat_count(server) == 0
    # Another model is another endpoint: it is asked.
    other = config.model_copy(
        update={"llm": config.llm.model_copy(update={"model": "another-model"})}
    )
    assert resolve_llm_config(other, tmp_path).llm.response_format == "json_schema"
    assert chat_count(server) == 1


def test_template_builds_are_left_alone(tmp_path) -> None:
    config = BuildConfig(out=str(tmp_path))
    assert resolve_llm_config(config, tmp_path) is config
    assert "response_format" not in generator_info(config)


# --- end to end -------------------------------------------------------------------------------


@pytest.mark.slow
def test_default_build_against_llama_cpp_python_server(medgrit, tmp_path: Path) -> None:
    """``medgrit build --generator llm`` with the default format on a server that refuses
    json_schema with a 500 builds with json_object_schema instead of failing every request."""
    config = ServerConfig(api_key=KEY, rpm=3000, tpm=3_000_000, **LLAMA_CPP_PYTHON)
    out = tmp_path / "out"
    with serve(config) as llama:
        result = medgrit(
            *("build", "--out", str(out), "--max-images", "6"),
            *("--generator", "llm", "--llm-model", "smollm2", "--llm-base-url", llama.base_url),
            *("--llm-rpm", "3000", "--llm-timeout-s", "5"),
            env={"OPENAI_API_KEY": KEY},
        )
        stats = llama.stats()
    assert result.returncode == 0, result.stderr[-3000:]
    manifest = json.loads((out / "dataset.json").read_text())
    assert manifest["generator"]["response_format"] == "json_object_schema"
    assert manifest["config"]["llm"]["response_format"] == "auto"
    assert manifest["totals"]["rows"]["conversations"] > 0
    assert stats["status_500"] == 1  # the json_schema probe, and nothing after it
