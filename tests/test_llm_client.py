"""The LLM client stack against a real OpenAI-compatible HTTP server on 127.0.0.1.

``medgrit_testing.openai_server`` runs in a child process (Starlette on uvicorn) and the real
``openai`` SDK talks to it over HTTP: rate limits with 429 + Retry-After + x-ratelimit-*
headers, injected 500/503s and hangs, API-key auth, files and batches. Its ``/stats`` counters
show what actually reached the server.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from tenacity import wait_random_exponential

from medgrit.adapters.llm import client as llm_client
from medgrit.adapters.llm.batch import BatchError, BatchRunner
from medgrit.adapters.llm.cache import AnswerCache, ResponseCache
from medgrit.adapters.llm.chat import (
    ChatRequest,
    ChatResult,
    LLMSettings,
    Usage,
    estimate_cost,
    request_hash,
)
from medgrit.adapters.llm.client import OpenAICompatibleClient
from medgrit.adapters.runtime.interrupt import clear_stop, request_stop
from medgrit.schemas.llm import FACTS_MARKER, LLMConversation
from medgrit_testing.openai_server import ServerConfig, serve

KEY = "sk-medgrit-test-7f3a9c1e5b"


@pytest.fixture(scope="module")
def server():
    with serve(ServerConfig(api_key=KEY)) as running:
        yield running


@pytest.fixture
def configure(server):
    """Give the shared server a fresh configuration (buckets full) and zeroed stats."""

    def apply(**fields) -> None:
        deadline = time.monotonic() + 5.0
        while server.stats()["in_flight"] and time.monotonic() < deadline:
            time.sleep(0.05)  # hung requests of an earlier test are still open
        server.configure(ServerConfig(api_key=KEY, **fields))
        server.reset_stats()

    apply()
    return apply


@pytest.fixture(autouse=True)
def fast_backoff(monkeypatch):
    """Backoff of milliseconds instead of seconds (Retry-After is still honoured in full)."""
    monkeypatch.setattr(llm_client, "_BACKOFF", wait_random_exponential(multiplier=0.01, max=0.05))


def settings(server, **fields) -> LLMSettings:
    """Client settings for the test server; limits that do not bind unless a test sets them."""
    fields = {"requests_per_minute": 60_000, "tokens_per_minute": 10**8, **fields}
    return LLMSettings(model="medgrit-test", base_url=server.base_url, max_tokens=256, **fields)


def request(i: int, turns: int = 4) -> ChatRequest:
    facts = {
        "modality": "CT",
        "view": "axial CT",
        "regions": [
            {"id": "r0", "label": "liver", "box": [100 + i % 50, 200, 400, 500],
             "position": "upper left", "size": "large", "side": None},
            {"id": "r1", "label": "left kidney", "box": [600, 480, 690, 640],
             "position": "center right", "size": "small", "side": "left"},
        ],
    }  # fmt: skip
    return ChatRequest(
        custom_id=f"img-{i}",
        messages=(
            {"role": "system", "content": "You write conversations about medical images."},
            {
                "role": "user",
                "content": f"{FACTS_MARKER} {json.dumps(facts)}\n"
                f"Write a conversation of {turns} turns: one MIA turn first, then region turns.",
            },
        ),
    )


def chat_count(server) -> int:
    return server.stats()["requests"].get("chat_completions", 0)


async def ask(config: LLMSettings, requests, key=KEY):
    async with OpenAICompatibleClient(config, key) as client:
        results = await client.complete_all(requests)
        return results, client.usage


# --- answers, order, usage -------------------------------------------------------------------


def test_answers_come_back_in_input_order_with_usage(server, configure):
    configure(latency_ms=(0, 30))
    requests = [request(i) for i in range(20)]

    config = settings(server, price_input_per_million=2.0, price_output_per_million=8.0)

    results, usage = asyncio.run(ask(config, requests))

    assert [r.custom_id for r in results] == [r.custom_id for r in requests]
    for req, res in zip(requests, results, strict=True):
        assert res.error is None
        assert LLMConversation.model_validate_json(res.content).conversation
        assert res.prompt_tokens > 0 and res.completion_tokens > 0
        assert res.request_hash == request_hash(settings(server), req)
        assert not res.from_cache
    stats = server.stats()
    assert usage.requests_sent == 20 == chat_count(server)
    assert usage.prompt_tokens == stats["prompt_tokens"]
    assert usage.completion_tokens == stats["completion_tokens"]
    assert (usage.retries, usage.rate_limited) == (0, 0)
    expected = (usage.prompt_tokens * 2.0 + usage.completion_tokens * 8.0) / 1e6
    assert estimate_cost(config, usage) == pytest.approx(expected)


def test_the_cache_key_covers_model_parameters_and_messages_but_not_the_custom_id(server):
    base = settings(server)
    req = request(1)

    assert request_hash(base, req) == request_hash(base, ChatRequest("other-id", req.messages))
    assert request_hash(base, req) != request_hash(base, request(2))
    assert request_hash(base, req) != request_hash(settings(server, temperature=0.7), req)
    with_format = ChatRequest(req.custom_id, req.messages, {"type": "json_object"})
    assert request_hash(base, req) != request_hash(base, with_format)


# --- what is retried -------------------------------------------------------------------------


def settled_stats(server, attempts: int) -> dict:
    """The server's stats once it has taken all ``attempts`` and answered them (hung requests
    end after ``hang_s``); the wait is bounded, the counts are what is asserted."""
    deadline = time.monotonic() + 10.0
    stats = server.stats()
    while time.monotonic() < deadline and (
        stats["in_flight"] or stats["requests"].get("chat_completions", 0) < attempts
    ):
        time.sleep(0.05)
        stats = server.stats()
    return stats


def test_server_errors_and_timeouts_are_retried_until_answered(server, configure):
    configure(fail_500_rate=0.2, fail_503_rate=0.2, hang_rate=0.1, hang_s=1.0, seed=3)
    requests = [request(i) for i in range(30)]

    results, usage = asyncio.run(ask(settings(server, timeout_s=0.4, max_attempts=12), requests))

    assert all(r.content is not None for r in results)
    stats = settled_stats(server, usage.requests_sent)
    faults = stats["faults"]
    assert faults["http_500"] > 0 and faults["http_503"] > 0 and faults["hang"] > 0
    # Each injected fault cost one retry. On a loaded machine an answer can also come after
    # its attempt timed out: the server answered it (one more 200 than requests) and the
    # client asked again; nothing else is retried.
    late = stats["status_200"] - len(requests)
    assert usage.retries == faults["http_500"] + faults["http_503"] + faults["hang"] + late
    assert usage.requests_sent == chat_count(server) == 30 + usage.retries


def test_a_server_error_that_persists_fails_after_max_attempts(server, configure):
    configure(fail_503_rate=1.0)

    results, usage = asyncio.run(ask(settings(server, max_attempts=3), [request(0)]))

    assert results[0].content is None
    assert results[0].error == "server_error"
    assert chat_count(server) == 3
    assert usage.retries == 2


def test_a_hung_request_times_out_and_is_retried(server, configure):
    configure(hang_rate=1.0, hang_s=1.0)
    start = time.monotonic()

    results, _ = asyncio.run(ask(settings(server, timeout_s=0.3, max_attempts=2), [request(0)]))

    assert results[0].error == "timeout"
    assert chat_count(server) == 2
    assert 0.6 <= time.monotonic() - start < 2.5


def test_a_bad_request_is_not_retried(server, configure):
    bad = ChatRequest("no-facts", ({"role": "user", "content": "hello"},))

    results, usage = asyncio.run(ask(settings(server), [bad, request(1)]))

    assert results[0].content is None and results[0].error == "bad_request"
    assert results[1].content is not None
    assert chat_count(server) == 2
    assert usage.retries == 0


def test_a_wrong_key_is_not_retried_and_never_shown(server, configure, caplog):
    caplog.set_level(logging.DEBUG)
    wrong = "sk-wrong-key-0123456789"

    results, _ = asyncio.run(ask(settings(server), [request(0)], key=wrong))

    assert results[0].error == "authentication_error"
    assert server.stats().get("status_401") == 1
    assert wrong not in caplog.text and KEY not in caplog.text


# --- rate limits -----------------------------------------------------------------------------


class AttemptLog:
    """Wraps the client's HTTP call to record each attempt by body: when it ended, its status
    and Retry-After (``attempts``), and when it began (``starts``)."""

    def __init__(self, client: OpenAICompatibleClient) -> None:
        self.attempts: dict[bytes, list[tuple[float, int, float | None]]] = {}
        self.starts: dict[bytes, list[float]] = {}
        post = client._post

        async def recording(path, **kwargs):
            body = kwargs["content"]
            self.starts.setdefault(body, []).append(time.monotonic())
            try:
                response = await post(path, **kwargs)
            except llm_client.openai.APIStatusError as error:
                retry_after = float(error.response.headers.get("retry-after", "nan"))
                self.attempts.setdefault(body, []).append(
                    (time.monotonic(), error.status_code, retry_after)
                )
                raise
            self.attempts.setdefault(body, []).append((time.monotonic(), 200, None))
            return response

        client._post = recording


def test_retry_after_is_honoured_between_attempts(server, configure):
    configure(rpm=60)  # one request per second, a bucket of one

    async def run():
        async with OpenAICompatibleClient(
            settings(server, requests_per_minute=6000, max_concurrency=4), KEY
        ) as client:
            log = AttemptLog(client)
            results = await client.complete_all([request(i) for i in range(3)])
            return results, log, client.usage

    results, log, usage = asyncio.run(run())

    assert all(r.content is not None for r in results)
    assert usage.rate_limited >= 1
    checked = 0
    for attempts in log.attempts.values():
        for (t0, status, retry_after), (t1, _, _) in itertools.pairwise(attempts):
            assert status == 429
            assert t1 - t0 >= retry_after - 0.005
            checked += 1
    assert checked == usage.rate_limited == server.stats()["status_429"]
    assert usage.rate_limited <= 3  # the first 429 lowered the limit to the server's 60 RPM


def test_concurrency_is_bounded(server, configure):
    configure(latency_ms=(150, 150))
    start = time.monotonic()

    results, _ = asyncio.run(
        ask(settings(server, max_concurrency=4), [request(i) for i in range(16)])
    )

    assert all(r.content is not None for r in results)
    assert server.stats()["max_in_flight"] == 4
    assert time.monotonic() - start >= 4 * 0.15


def test_a_requests_per_minute_limit_is_respected(server, configure):
    configure(rpm=1200, latency_ms=(20, 80))  # 20/s, the server's bucket holds 20
    start = time.monotonic()

    results, _ = asyncio.run(
        ask(settings(server, requests_per_minute=1200), [request(i) for i in range(100)])
    )

    elapsed = time.monotonic() - start
    assert all(r.content is not None for r in results)
    assert server.stats()["status_429"] <= 1
    assert elapsed < 1.3 * (100 - 20) / 20 + 1.0  # close to what the server allows


def test_a_client_configured_above_the_servers_limit_adopts_it(server, configure):
    configure(rpm=1200, latency_ms=(20, 80))

    async def run():
        config = settings(server, requests_per_minute=2400, max_concurrency=64)
        async with OpenAICompatibleClient(config, KEY) as client:
            log = AttemptLog(client)
            results = await client.complete_all([request(i) for i in range(100)])
            return results, client.limiter.limiter.requests_per_minute, log

    results, adopted, log = asyncio.run(run())

    assert all(r.content is not None for r in results)
    assert adopted == 1200
    # Only requests on their way before the first answer (whose headers name the server's
    # limit) were refused: however late that answer came on a loaded machine, none after it.
    first_answer = min(t for attempts in log.attempts.values() for t, _, _ in attempts)
    refused = [
        start
        for body, attempts in log.attempts.items()
        for start, (_, status, _) in zip(log.starts[body], attempts, strict=True)
        if status == 429
    ]
    assert len(refused) == server.stats()["status_429"]
    assert all(start < first_answer for start in refused)


def test_a_request_waiting_for_the_limiter_when_the_build_stops_is_never_sent(server, configure):
    async def run() -> ChatResult:
        async with OpenAICompatibleClient(settings(server), KEY) as client:
            client.limiter.limiter.pause(1.0, time.monotonic())  # as after a 429
            task = asyncio.create_task(client.complete(request(0)))
            while not client.limiter.waiting:  # built by the SDK, waiting for its grant
                await asyncio.sleep(0.01)
            request_stop()
            try:
                return await task
            finally:
                clear_stop()

    result = asyncio.run(run())

    assert result.error == "stopped"
    assert chat_count(server) == 0


def test_a_tokens_per_minute_limit_is_respected(server, configure):
    # 120,000 TPM = 2,000 tokens/s; a request is charged ~130 prompt + 256 max tokens
    configure(tpm=120_000, latency_ms=(20, 80))

    results, _ = asyncio.run(
        ask(settings(server, tokens_per_minute=120_000), [request(i) for i in range(20)])
    )

    assert all(r.content is not None for r in results)
    assert server.stats()["status_429"] == 0


# --- cache -----------------------------------------------------------------------------------


def test_a_cache_hit_sends_no_request(server, configure, tmp_path):
    config = settings(server)
    cache = AnswerCache(tmp_path / "llm" / "cache", config)
    req = request(7)

    async def first() -> ChatResult:
        async with OpenAICompatibleClient(config, KEY) as client:
            result = await client.complete(req)
            assert not list(cache.records.folder.rglob("*.json"))  # the client never caches
            cache.store(req, result)
            return result

    answer = asyncio.run(first())
    sent = chat_count(server)

    hits, todo = cache.split([req, request(8)])
    fresh, usage = asyncio.run(ask(config, [r for _, r in todo]))

    assert hits[0].from_cache and hits[0].content == answer.content
    assert (hits[0].prompt_tokens, hits[0].completion_tokens) == (
        answer.prompt_tokens,
        answer.completion_tokens,
    )
    assert chat_count(server) == sent + 1  # only request 8 went out
    assert len(hits) == 1 and usage.requests_sent == 1 and fresh[0].content is not None
    key = answer.request_hash
    record = json.loads((cache.records.folder / key[:2] / f"{key}.json").read_text())
    assert set(record) == {"content", "prompt_tokens", "completion_tokens", "model"}


def test_failures_cannot_be_stored(server, tmp_path):
    cache = AnswerCache(tmp_path, settings(server))
    failed = ChatResult("x", None, 0, 0, "ab" * 32, error="server_error")

    with pytest.raises(ValueError, match="no answer"):
        cache.store(request(0), failed)


def test_a_rounds_answers_are_stored_together_and_a_failure_among_them_stores_none(
    server, tmp_path
):
    config = settings(server)
    cache = AnswerCache(tmp_path, config)
    answers = [
        (
            request(i),
            ChatResult(f"img-{i}", f"answer {i}", 10 + i, 20, request_hash(config, request(i))),
        )
        for i in range(20)
    ]
    failed = (request(99), ChatResult("img-99", None, 0, 0, "ab" * 32, error="timeout"))

    with pytest.raises(ValueError, match="no answer"):
        cache.store_all([*answers[:5], failed])
    assert not list(tmp_path.rglob("*.json"))

    cache.store_all(answers)

    hits, todo = cache.split([req for req, _ in answers])
    assert todo == []
    assert [(hits[i].content, hits[i].prompt_tokens) for i in range(20)] == [
        (f"answer {i}", 10 + i) for i in range(20)
    ]


# --- the API key -----------------------------------------------------------------------------


def test_the_api_key_never_appears_in_logs_reprs_or_errors(server, configure, caplog, tmp_path):
    caplog.set_level(logging.DEBUG)
    configure(fail_500_rate=0.3, rpm=600, batch_fail_rate=0.5, seed=1)
    config = settings(server, requests_per_minute=6000, max_attempts=2)

    async def run():
        async with OpenAICompatibleClient(config, KEY) as client:
            results = await client.complete_all([request(i) for i in range(12)])
            text = repr(client) + repr(results) + repr(client.settings) + repr(client.usage)
        runner = BatchRunner(config, KEY, poll_interval_s=0.02, max_resubmits=0)
        text += repr(runner) + repr(await runner.run([request(i) for i in range(6)]))
        return text

    text = asyncio.run(run())
    stats = server.stats()
    assert stats["faults"]["http_500"] > 0 and stats["status_429"] > 0  # failures were logged

    server.configure(ServerConfig(api_key="sk-another-key"))
    runner = BatchRunner(config, KEY, poll_interval_s=0.02)
    with pytest.raises(BatchError) as raised:
        asyncio.run(runner.run([request(0)]))

    assert KEY not in text
    assert KEY not in caplog.text
    assert KEY not in str(raised.value) and raised.value.reason == "authentication_error"
    assert any(r.name.startswith("medgrit.adapters.llm.") for r in caplog.records)


# --- batches ---------------------------------------------------------------------------------


def run_batch(server, requests, known=(), max_resubmits=2):
    created: list[str] = []
    runner = BatchRunner(settings(server), KEY, poll_interval_s=0.02, max_resubmits=max_resubmits)
    results = asyncio.run(runner.run(requests, known_batch_ids=known, on_batch=created.append))
    return results, created, runner.usage


def test_a_batch_round_trip_resubmits_failed_lines(server, configure):
    configure(batch_fail_rate=0.3, seed=5)
    requests = [request(i) for i in range(12)]

    results, created, usage = run_batch(server, requests)

    assert [r.custom_id for r in results] == [r.custom_id for r in requests]
    assert all(r.content is not None for r in results)
    stats = server.stats()
    assert stats["batch_lines_failed"] > 0
    assert len(created) == stats["requests"]["batches_create"] >= 2
    assert usage.retries == stats["batch_lines_failed"]
    assert usage.prompt_tokens == stats["prompt_tokens"]
    online, _ = asyncio.run(ask(settings(server), requests))  # same answers as online
    assert [r.content for r in results] == [r.content for r in online]
    assert [(r.prompt_tokens, r.completion_tokens) for r in results] == [
        (r.prompt_tokens, r.completion_tokens) for r in online
    ]


def test_lines_that_keep_failing_end_as_errors(server, configure):
    configure(batch_fail_rate=1.0)

    results, created, _ = run_batch(server, [request(0), request(1)], max_resubmits=1)

    assert [r.error for r in results] == ["server_error", "server_error"]
    assert len(created) == 2


def test_an_expired_batch_is_resumed_without_paying_twice(server, configure):
    configure(batch_expire=True)
    requests = [request(i) for i in range(10)]

    first, created, _ = run_batch(server, requests, max_resubmits=0)

    assert sum(r.content is not None for r in first) == 5
    assert {r.error for r in first if r.content is None} == {"expired"}

    configure()  # the provider recovers; a resume passes the recorded batch ids
    second, resubmitted, _ = run_batch(server, requests, known=created)

    assert all(r.content is not None for r in second)
    answered = {r.custom_id: r.content for r in first if r.content is not None}
    assert all(r.content == answered[r.custom_id] for r in second if r.custom_id in answered)
    stats = server.stats()
    assert stats["batch_lines"] == 5  # only the expired half was asked again
    assert stats["duplicate_requests"] == 0
    assert len(resubmitted) == 1


def test_known_batches_are_reused_without_a_new_batch(server, configure):
    requests = [request(i) for i in range(6)]
    first, created, _ = run_batch(server, requests)
    server.reset_stats()

    again, more, _ = run_batch(server, requests, known=created)

    assert more == []
    assert server.stats()["requests"].get("batches_create", 0) == 0
    assert [r.content for r in again] == [r.content for r in first]


def test_a_known_batch_still_running_is_waited_for(server, configure):
    configure(batch_delay_s=0.5)
    requests = [request(i) for i in range(4)]
    created: list[str] = []

    async def interrupted():
        runner = BatchRunner(settings(server), KEY, poll_interval_s=0.02)
        task = asyncio.create_task(runner.run(requests, on_batch=created.append))
        while not created:
            await asyncio.sleep(0.01)
        task.cancel()  # the build is interrupted while the batch runs
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(interrupted())
    results, more, _ = run_batch(server, requests, known=created)

    assert more == []
    assert all(r.content is not None for r in results)
    assert server.stats()["requests"]["batches_create"] == 1


def test_a_known_batch_of_other_requests_is_ignored(server, configure):
    _, created, _ = run_batch(server, [request(1)])

    results, more, _ = run_batch(server, [request(2)], known=created)

    assert results[0].content is not None
    assert len(more) == 1


def test_cached_requests_are_not_submitted(server, configure, tmp_path):
    cache = AnswerCache(tmp_path, settings(server))
    online, _ = asyncio.run(ask(settings(server), [request(3)]))
    record = {"content": online[0].content, "prompt_tokens": 1, "completion_tokens": 2}
    cache.records.put(online[0].request_hash, {**record, "model": "medgrit-test"})

    hits, todo = cache.split([request(3)])
    results, created, usage = run_batch(server, [r for _, r in todo])

    assert hits[0].from_cache and results == [] and created == []
    assert usage == Usage()


def test_duplicate_custom_ids_are_rejected(server):
    with pytest.raises(ValueError, match="repeats"):
        run_batch(server, [request(1), request(1)])


def test_settings_are_validated():
    with pytest.raises(ValueError, match="max_concurrency"):
        LLMSettings(model="m", max_concurrency=0)
    with pytest.raises(ValueError, match="response_format"):
        LLMSettings(model="m", response_format="xml")


def test_cache_records_are_atomic_and_sharded(tmp_path: Path):
    cache = ResponseCache(tmp_path)
    key = "ab" + "0" * 62

    cache.put(key, {"content": "x", "prompt_tokens": 1, "completion_tokens": 2, "model": "m"})

    assert cache.get(key)["content"] == "x"
    assert [p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")] == [
        "ab",
        f"ab/{key}.json",
    ]
    assert cache.get("cd" + "0" * 62) is None
    with pytest.raises(ValueError, match="hex"):
        cache.get("../escape")


def test_concurrent_writers_never_leave_a_partial_record(tmp_path: Path):
    cache = ResponseCache(tmp_path)
    keys = [f"{i:02x}" + "0" * 62 for i in range(4)]
    content = "x" * 200_000

    def write(n: int) -> None:
        for i in range(20):
            key = keys[(n + i) % len(keys)]
            cache.put(key, {"content": content, "prompt_tokens": n, "completion_tokens": i,
                            "model": "m"})  # fmt: skip
            assert cache.get(key)["content"] == content

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(write, range(8)))

    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == sorted(
        f"{k}.json" for k in keys
    )
