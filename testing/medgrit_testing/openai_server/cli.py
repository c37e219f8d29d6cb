"""The command line: ``python -m medgrit_testing.openai_server --help``.

Flags override fields of a :class:`.config.ServerConfig` given as JSON (``--config-json``, or
``-`` to read one line of it from stdin, which is how :func:`.process.serve` passes it). The
server listens on its own socket with ``TCP_NODELAY`` and, with ``--watch-stdin``, exits when
stdin reaches end of file.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import sys
import threading
from typing import get_args

import uvicorn
from pydantic import ValidationError

from .app import create_app
from .config import ANSWER_STYLES, LIE_CLASSES, RESPONSE_FORMAT_KINDS, RefusalStyle, ServerConfig
from .process import READY_PREFIX


async def _serve_until_exit(server: uvicorn.Server, sock: socket.socket, url: str) -> None:
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started and not task.done():
        await asyncio.sleep(0.01)
    if server.started:
        print(f"{READY_PREFIX}{url}/v1", flush=True)
    await task


def _watch_stdin(server: uvicorn.Server) -> None:
    """Ask the server to exit once stdin reaches EOF (the parent closed it or died)."""

    def watch() -> None:
        while sys.stdin.buffer.read(65536):
            pass
        server.should_exit = True

    threading.Thread(target=watch, name="stdin-watch", daemon=True).start()


def _parse_latency(text: str) -> tuple[float, float]:
    low, _, high = text.partition(",")
    try:
        return float(low), float(high or low)
    except ValueError:
        raise argparse.ArgumentTypeError("expected MIN,MAX in milliseconds, e.g. 50,300") from None


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m medgrit_testing.openai_server",
        description="OpenAI-compatible test server: chat completions built from the prompt's "
        "image facts, files and batches, RPM/TPM limits, latency and fault injection.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="interface (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="TCP port; 0 picks a free one")
    parser.add_argument(
        "--config-json",
        metavar="JSON",
        help="a ServerConfig as JSON, or '-' to read one line of it from stdin",
    )
    parser.add_argument("--rpm", type=int, help="requests per minute")
    parser.add_argument("--tpm", type=int, help="tokens per minute")
    parser.add_argument("--latency-ms", type=_parse_latency, metavar="MIN,MAX")
    parser.add_argument("--seed", type=int)
    parser.add_argument(
        "--lie-rate",
        type=float,
        metavar="P",
        help="chance that each turn of an answer is a fluent lie (0-1; ledger at GET /lies)",
    )
    parser.add_argument(
        "--lie-classes",
        type=lambda text: tuple(c.strip() for c in text.split(",") if c.strip()),
        metavar="A,B",
        help=f"lies to tell, comma-separated (default all: {', '.join(LIE_CLASSES)})",
    )
    parser.add_argument(
        "--style",
        choices=ANSWER_STYLES,
        help="how answers are written: plain templates (default) or paraphrase, fluent clinical "
        "prose with synonyms, body parts and relations; both true of the image facts",
    )
    parser.add_argument(
        "--response-formats",
        type=lambda text: tuple(k.strip() for k in text.split(",") if k.strip()),
        metavar="A,B",
        help="response_format kinds answered, comma-separated, from "
        f"{', '.join(RESPONSE_FORMAT_KINDS)} (default: all; '': none; llama-cpp-python's "
        "server: text,json_object,json_object_schema)",
    )
    parser.add_argument(
        "--response-format-refusal",
        choices=get_args(RefusalStyle),
        help="how another kind is refused (default http_400; llama-cpp-python: "
        "http_500_validation)",
    )
    parser.add_argument(
        "--api-key-env", metavar="VAR", help="require the bearer key held in this variable"
    )
    parser.add_argument(
        "--watch-stdin", action="store_true", help="exit when stdin reaches end of file"
    )
    parser.add_argument("--log-level", default="warning", help="uvicorn log level")
    return parser


def _config(args: argparse.Namespace, parser: argparse.ArgumentParser) -> ServerConfig:
    """The configuration the flags give; a bad one is a usage error (exit code 2)."""
    raw = args.config_json
    if raw == "-":
        raw = sys.stdin.buffer.readline().decode()
    try:
        data = json.loads(raw) if raw else {}
        for field, value in (
            ("rpm", args.rpm),
            ("tpm", args.tpm),
            ("latency_ms", args.latency_ms),
            ("seed", args.seed),
            ("lie_rate", args.lie_rate),
            ("lie_classes", args.lie_classes),
            ("style", args.style),
            ("response_formats", args.response_formats),
            ("response_format_refusal", args.response_format_refusal),
        ):
            if value is not None:
                data[field] = value
        if args.api_key_env:
            if args.api_key_env not in os.environ:
                parser.error(f"environment variable {args.api_key_env} is not set")
            data["api_key"] = os.environ[args.api_key_env]
        config = ServerConfig.model_validate(data)
    except (ValueError, ValidationError) as exc:
        parser.error(f"invalid configuration: {exc}")
    return config


def main(argv: list[str] | None = None) -> int:
    """Command line: ``python -m medgrit_testing.openai_server --help``."""
    parser = _parser()
    args = parser.parse_args(argv)
    config = _config(args, parser)
    # proto=IPPROTO_TCP: asyncio sets TCP_NODELAY on accepted sockets only then; without it,
    # Nagle holds each response's body behind its headers for a delayed ACK (about 40 ms).
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind((args.host, args.port))
    url = f"http://{args.host}:{sock.getsockname()[1]}"
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(config),
            log_level=args.log_level,
            access_log=False,
            lifespan="off",
            backlog=4096,
            timeout_graceful_shutdown=1,
            timeout_keep_alive=30,
        )
    )
    if args.watch_stdin:
        _watch_stdin(server)
    asyncio.run(_serve_until_exit(server, sock, url))
    return 0
