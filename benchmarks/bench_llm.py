"""Benchmark the LLM client against the provider's rate limit, on the OpenAI-compatible test server.

What it measures
----------------
The test server (:mod:`medgrit_testing.openai_server`) runs in its own process with 50-300 ms of
latency per request and OpenAI-style RPM/TPM limits (token buckets of one second's worth, 429
with ``Retry-After`` and ``x-ratelimit-*`` headers). This process runs only the client, so its
``time.process_time`` is the client's CPU. For each setting it prints:

- **rpm/limit**: answered requests per minute of wall time (start of the first request to the
  end of the last) divided by the binding limit; for the token-bound setting also **tpm/limit**,
  the tokens the server charged (``ceil(chars / 4)`` of the prompt plus ``max_tokens``, the cost
  its limiter counts) per minute divided by the TPM limit;
- **429 share**: 429 answers / all chat requests the server received (from its ``/stats``);
- **CPU ms/req**: client CPU seconds per answered request.

Settings (``--only`` picks some):

- **a** 1,200 RPM; the client set to 1,200 RPM (requests bind). Target >= 0.99, <= 0.1% 429s.
- **b** token-bound: 1,200 RPM and a TPM limit that binds first (prompts of 2-8 regions, so of
  varied length). Target >= 0.95 of the TPM limit, <= 0.5% 429s.
- **c** the client set to 2,400 RPM against a server allowing 1,200 (a wrong setting, or a
  provider lowering limits). Target >= 0.95 of the true limit, <= 2% 429s.
- **d** 20,000 RPM (the client's own overhead binds on two cores): the ratio is reported.
- **e** baseline: a naive sequential loop over the sync ``openai.OpenAI`` client with tenacity
  retries (exponential backoff with jitter on 429/5xx/timeouts), at 1,200 RPM.
- **f** baseline: unbounded ``asyncio.gather`` over ``openai.AsyncOpenAI`` with the same tenacity
  retries, at 1,200 RPM.

The baselines run on a capped subset (``--baseline-requests``, default 300) and stop at
``--baseline-time-limit`` seconds (default 90), so that the whole run stays under about 12
minutes; their rows say how many requests they finished. The client under test is
``medgrit.adapters.llm.client.OpenAICompatibleClient`` (``complete_all``).

Requests are the generator's real prompts: ``prompts/llm_system.j2`` and ``prompts/llm_user.j2``
rendered over random image facts (2-8 regions, all eight modalities), with the JSON schema
``response_format``. Everything is seeded.

Run (from the repository root)::

    python benchmarks/bench_llm.py                      # all settings, 2,000 requests each
    python benchmarks/bench_llm.py --only a,d --requests 500
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import platform
import random
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import openai
from tenacity import (
    AsyncRetrying,
    Retrying,
    retry_if_exception_type,
    stop_after_attempt,
    stop_after_delay,
    wait_random_exponential,
)

from medgrit.adapters.llm.chat import ChatRequest, LLMSettings
from medgrit.adapters.llm.client import OpenAICompatibleClient
from medgrit.adapters.text.templates import make_environment, view_variables
from medgrit.core.text import laterality_of
from medgrit.core.vocab import MODALITIES, TASKS
from medgrit.schemas.llm import ImagePromptFacts, PromptRegion, response_json_schema
from medgrit_testing.openai_server import RunningServer, ServerConfig, serve

SEED = 20240611
MAX_TOKENS = 1024
LATENCY_MS = (50.0, 300.0)
API_KEY = "sk-bench-not-a-secret"
MODEL = "gpt-bench"
UNLIMITED = 1_000_000_000

LABELS = (
    "liver", "spleen", "pancreas", "stomach", "gallbladder", "aorta", "inferior vena cava",
    "left kidney", "right kidney", "left adrenal gland", "right adrenal gland", "left lung",
    "right lung", "heart", "esophagus", "urinary bladder", "prostate", "duodenum", "colon",
    "left femoral head", "right femoral head", "tumor", "polyp", "optic disc", "lesion",
)  # fmt: skip
POSITIONS = (
    "upper left", "upper center", "upper right", "middle left", "center", "middle right",
    "lower left", "lower center", "lower right",
)  # fmt: skip
SIZES = ("tiny", "small", "medium", "large")
RETRYABLE = (openai.RateLimitError, openai.InternalServerError, openai.APITimeoutError,
             openai.APIConnectionError)  # fmt: skip


# --- requests ---------------------------------------------------------------------------------


def random_facts(rng: random.Random) -> ImagePromptFacts:
    """Image facts with 2-8 regions, as the generator would show them."""
    modality = rng.choice(MODALITIES)
    plane = rng.choice(("axial", "coronal", "2d")) if modality in ("ct", "mr", "pet") else "2d"
    names = view_variables(modality, plane)
    regions = []
    for i, label in enumerate(rng.sample(LABELS, rng.randint(2, 8))):
        x0, y0 = rng.randrange(0, 800), rng.randrange(0, 800)
        box = (x0, y0, x0 + rng.randrange(20, 200), y0 + rng.randrange(20, 200))
        regions.append(
            PromptRegion(
                id=f"r{i}",
                label=label,
                box=box,
                position=rng.choice(POSITIONS),
                size=rng.choice(SIZES),
                side=laterality_of(label),  # type: ignore[arg-type]
            )
        )
    return ImagePromptFacts(modality=names["modality"], view=names["view"], regions=regions)


def build_requests(n: int, seed: int = SEED) -> list[ChatRequest]:
    """``n`` chat requests rendered from the real prompt templates over random facts."""
    env = make_environment()
    system = env.get_template("llm_system.j2").render(tasks=list(TASKS))
    user_template = env.get_template("llm_user.j2")
    rng = random.Random(seed)
    schema = response_json_schema()
    requests = []
    for i in range(n):
        user = user_template.render(
            facts_json=random_facts(rng).model_dump_json(),
            turns=rng.randint(3, 6),
            feedback=None,
        )
        messages = ({"role": "system", "content": system}, {"role": "user", "content": user})
        requests.append(ChatRequest(custom_id=f"img-{i:05d}", messages=messages,
                                    response_format=schema))  # fmt: skip
    return requests


def token_cost(request: ChatRequest, max_tokens: int = MAX_TOKENS) -> int:
    """What the server's TPM limiter charges for ``request``."""
    return math.ceil(sum(len(m["content"]) for m in request.messages) / 4) + max_tokens


# --- runs -------------------------------------------------------------------------------------


@dataclass
class Row:
    """One setting's figures."""

    name: str
    note: str
    sent: int
    answered: int
    wall_s: float
    cpu_s: float
    limit_rpm: int
    rpm_ratio: float
    share_429: float
    tpm_ratio: float | None = None
    max_in_flight: int = 0
    server_cpu_s: float | None = None


def process_cpu_s(pid: int) -> float | None:
    """User + system CPU seconds of process ``pid`` (Linux ``/proc``; None elsewhere)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(
    name: str,
    note: str,
    server: RunningServer,
    requests: list[ChatRequest],
    run: Callable[[list[ChatRequest]], int],
    limit_rpm: int,
    limit_tpm: int | None = None,
) -> Row:
    """Run ``run(requests)`` (returns the number answered) and collect client and server
    figures."""
    server.reset_stats()
    server_cpu0 = process_cpu_s(server.process.pid)
    cpu0, wall0 = time.process_time(), time.perf_counter()
    answered = run(requests)
    wall = time.perf_counter() - wall0
    cpu = time.process_time() - cpu0
    server_cpu1 = process_cpu_s(server.process.pid)
    server_cpu = None
    if server_cpu0 is not None and server_cpu1 is not None:
        server_cpu = server_cpu1 - server_cpu0
    stats = server.stats()
    sent = stats["requests"].get("chat_completions", 0)
    rpm = answered / wall * 60
    tpm_ratio = None
    if limit_tpm:
        charged = stats.get("prompt_tokens", 0) + MAX_TOKENS * stats["status_200"]
        tpm_ratio = charged / wall * 60 / limit_tpm
    return Row(
        name=name,
        note=note,
        sent=sent,
        answered=answered,
        wall_s=wall,
        cpu_s=cpu,
        limit_rpm=limit_rpm,
        rpm_ratio=rpm / limit_rpm,
        share_429=stats["status_429"] / sent if sent else 0.0,
        tpm_ratio=tpm_ratio,
        max_in_flight=stats["max_in_flight"],
        server_cpu_s=server_cpu,
    )


def run_project_client(base_url: str, rpm: int, tpm: int, concurrency: int):
    """A runner that sends all requests through ``OpenAICompatibleClient.complete_all``."""
    settings = LLMSettings(
        model=MODEL,
        base_url=base_url,
        temperature=0.2,
        max_tokens=MAX_TOKENS,
        requests_per_minute=rpm,
        tokens_per_minute=tpm,
        max_concurrency=concurrency,
        timeout_s=30.0,
    )

    async def go(requests: list[ChatRequest]) -> int:
        async with OpenAICompatibleClient(settings, API_KEY) as client:
            results = await client.complete_all(requests)
        return sum(r.content is not None for r in results)

    return lambda requests: asyncio.run(go(requests))


def _kwargs(request: ChatRequest) -> dict:
    return {
        "model": MODEL,
        "messages": list(request.messages),
        "temperature": 0.2,
        "max_tokens": MAX_TOKENS,
        "response_format": request.response_format,
    }


def run_naive_sequential(base_url: str, time_limit_s: float):
    """Baseline: one request after the other, tenacity retries with exponential jitter."""

    def go(requests: list[ChatRequest]) -> int:
        client = openai.OpenAI(base_url=base_url, api_key=API_KEY, max_retries=0, timeout=30)
        deadline = time.monotonic() + time_limit_s
        answered = 0
        for request in requests:
            if time.monotonic() > deadline:
                break
            for attempt in Retrying(
                retry=retry_if_exception_type(RETRYABLE),
                wait=wait_random_exponential(multiplier=0.5, max=20),
                stop=stop_after_attempt(8),
                reraise=True,
            ):
                with attempt:
                    client.chat.completions.create(**_kwargs(request))
            answered += 1
        client.close()
        return answered

    return go


def run_unbounded_gather(base_url: str, time_limit_s: float):
    """Baseline: every request at once with ``asyncio.gather``, tenacity retries on each."""

    async def go(requests: list[ChatRequest]) -> int:
        client = openai.AsyncOpenAI(base_url=base_url, api_key=API_KEY, max_retries=0, timeout=30)
        answered = 0

        async def one(request: ChatRequest) -> None:
            nonlocal answered
            async for attempt in AsyncRetrying(
                retry=retry_if_exception_type(RETRYABLE),
                wait=wait_random_exponential(multiplier=0.5, max=20),
                stop=stop_after_attempt(12) | stop_after_delay(time_limit_s),
                reraise=True,
            ):
                with attempt:
                    await client.chat.completions.create(**_kwargs(request))
            answered += 1

        try:
            await asyncio.wait_for(
                asyncio.gather(*(one(r) for r in requests), return_exceptions=True), time_limit_s
            )
        except TimeoutError:
            pass
        await client.close()
        return answered

    return lambda requests: asyncio.run(go(requests))


# --- report -----------------------------------------------------------------------------------


def environment_note() -> str:
    """Python, SDK and machine, for the record."""
    return (
        f"python {platform.python_version()}, openai {openai.__version__}, "
        f"{os.cpu_count()} CPUs, {platform.machine()}"
    )


def print_row(row: Row) -> None:
    per = max(row.answered, 1)
    tpm = f"  tpm/limit {row.tpm_ratio:5.3f}" if row.tpm_ratio is not None else ""
    server = (
        f", server CPU {1000 * row.server_cpu_s / per:.2f} ms/req"
        if row.server_cpu_s is not None
        else ""
    )
    print(
        f"  {row.name:<2} rpm/limit {row.rpm_ratio:5.3f}{tpm}  429 share {row.share_429:6.2%}  "
        f"client CPU {1000 * row.cpu_s / per:5.2f} ms/req  "
        f"({row.answered}/{row.sent} answered/sent in {row.wall_s:.1f} s, limit "
        f"{row.limit_rpm} RPM, max in flight {row.max_in_flight}{server})  {row.note}",
        flush=True,
    )


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=2000, help="requests per setting")
    parser.add_argument(
        "--only", default="a,b,c,d,e,f", help="comma-separated settings among a,b,c,d,e,f"
    )
    parser.add_argument("--baseline-requests", type=int, default=300)
    parser.add_argument("--baseline-time-limit", type=float, default=90.0, metavar="SECONDS")
    parser.add_argument("--concurrency", type=int, default=32, help="client max_concurrency")
    args = parser.parse_args(argv)
    args.only = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = set(args.only) - set("abcdef")
    if unknown:
        parser.error(f"unknown settings {sorted(unknown)}: choose among a,b,c,d,e,f")
    if args.requests < 1 or args.baseline_requests < 1:
        parser.error("--requests and --baseline-requests must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    print("medgrit benchmark: adapters.llm.client.OpenAICompatibleClient vs rate limits")
    print(environment_note())
    requests = build_requests(args.requests)
    costs = [token_cost(r) for r in requests]
    mean_cost = sum(costs) / len(costs)
    print(
        f"{len(requests)} requests, {LATENCY_MS[0]:.0f}-{LATENCY_MS[1]:.0f} ms latency, "
        f"token cost per request {min(costs)}-{max(costs)} (mean {mean_cost:.0f}: prompt "
        f"chars/4 + max_tokens {MAX_TOKENS})"
    )
    # TPM that binds at about 3/4 of the RPM limit's request rate.
    tpm_b = int(round(0.75 * 1200 * mean_cost, -4))
    base = ServerConfig(latency_ms=LATENCY_MS, api_key=API_KEY, seed=SEED, deterministic=False)
    rows = []
    with serve(base) as server:
        url = server.base_url

        def setting(name: str, note: str, server_rpm: int, server_tpm: int | None, runner,
                    subset: list[ChatRequest], limit_tpm: int | None = None) -> None:  # fmt: skip
            server.configure(base.model_copy(update={"rpm": server_rpm, "tpm": server_tpm}))
            row = measure(name, note, server, subset, runner, server_rpm, limit_tpm)
            rows.append(row)
            print_row(row)

        cap = requests[: args.baseline_requests]
        limit_s = args.baseline_time_limit
        c = args.concurrency
        plans = {
            "a": lambda: setting("a", "1,200 RPM, client at 1,200", 1200, None,
                                 run_project_client(url, 1200, UNLIMITED, c), requests),
            "b": lambda: setting("b", f"1,200 RPM + {tpm_b:,} TPM (tokens bind), client at both",
                                 1200, tpm_b, run_project_client(url, 1200, tpm_b, c), requests,
                                 limit_tpm=tpm_b),
            "c": lambda: setting("c", "server 1,200 RPM, client configured at 2,400", 1200, None,
                                 run_project_client(url, 2400, UNLIMITED, c), requests),
            "d": lambda: setting("d", "20,000 RPM, client at 20,000", 20000, None,
                                 run_project_client(url, 20000, UNLIMITED, max(c, 128)),
                                 requests),
            "e": lambda: setting("e", f"naive sequential tenacity loop, first {len(cap)} "
                                 f"requests, {limit_s:.0f} s cap", 1200, None,
                                 run_naive_sequential(url, limit_s), cap),
            "f": lambda: setting("f", f"unbounded asyncio.gather + tenacity, first {len(cap)} "
                                 f"requests, {limit_s:.0f} s cap", 1200, None,
                                 run_unbounded_gather(url, limit_s), cap),
        }  # fmt: skip
        for name in args.only:
            plans[name]()
    return 0


if __name__ == "__main__":
    sys.exit(main())
