"""``medgrit build --generator llm`` against an endpoint that lies: the fake provider's lies mode
mixes plausible untrue turns of every class with honest ones; the build keeps none of the lies
and nearly all honest turns, and ``medgrit validate`` agrees with what it kept."""

from __future__ import annotations

import collections
import re
from pathlib import Path

import pytest

from medgrit.adapters.store.validate import read_table
from medgrit_testing.openai_server import LIE_CLASSES, ServerConfig, serve

pytestmark = pytest.mark.slow

API_KEY = "sk-medgrit-truth-test"


def _build(medgrit, server, out: Path, *extra: str):
    return medgrit(
        "build",
        "--out",
        str(out),
        "--max-images",
        "60",
        "--generator",
        "llm",
        "--llm-model",
        "test-model",
        "--llm-base-url",
        server.base_url,
        "--llm-rpm",
        "6000",
        "--llm-tpm",
        "60000000",
        *extra,
        env={"OPENAI_API_KEY": API_KEY},
    )


@pytest.fixture(scope="module")
def lying_server():
    config = ServerConfig(rpm=6000, latency_ms=(1, 5), api_key=API_KEY, seed=11, lie_rate=0.3)
    with serve(config) as server:
        yield server


Turn = tuple[str, str, frozenset]


def _lie_key(lie: dict) -> Turn:
    regions = frozenset((r["label"], tuple(r["box"])) for r in lie["regions"])
    return lie["question"], lie["answer"], regions


def _kept_turns(out: Path) -> list[Turn]:
    """Kept turns as their texts and the (label, box) of each region they list: an identical
    text about other regions (a lie of region ids) is another turn."""
    regions = {
        r["region_id"]: (r["label"], tuple(r["bbox_1000"])) for r in read_table(out, "regions")
    }
    return [
        (t["question"], t["answer"], frozenset(regions[rid] for rid in t["region_ids"]))
        for c in read_table(out, "conversations")
        for t in c["qa"]
    ]


def test_a_build_keeps_no_lie_and_nearly_every_honest_turn(
    lying_server, medgrit, tmp_path: Path
) -> None:
    lying_server.reset_stats()
    out = tmp_path / "out"
    # No second ask: every answer's turns are judged as sent, so the counts are per turn.
    result = _build(medgrit, lying_server, out, "--llm-retry-invalid", "0")
    assert result.returncode == 0, result.stderr[-3000:]

    ledger = lying_server.lies()
    lies = {_lie_key(lie): lie["class"] for lie in ledger}
    stats = lying_server.stats()
    injected = collections.Counter(stats["lies"])
    kept = _kept_turns(out)
    kept_lies = collections.Counter(lies[t] for t in kept if t in lies)
    honest_kept = sum(t not in lies for t in kept)

    assert set(injected) == set(LIE_CLASSES), injected  # every class was tried
    assert sum(injected.values()) == len(ledger) > 0
    assert kept_lies == {}, [(lies[t], t) for t in kept if t in lies]
    assert honest_kept >= 0.95 * stats["honest_turns"], (honest_kept, stats["honest_turns"])
    rejects = read_table(out, "rejects")
    untrue = [r for r in rejects if r["stage"] == "verify" and r["reason"] != "empty_conversation"]
    assert len(untrue) >= sum(injected.values()) - 2 * len(read_table(out, "images"))  # per turn
    assert all(r["detail"].startswith("turn ") for r in untrue)
    validate = medgrit("validate", str(out))
    assert validate.returncode == 0, validate.stdout


def test_the_retry_names_the_failed_turns_and_keeps_no_lie(
    lying_server, medgrit, tmp_path: Path
) -> None:
    lying_server.reset_stats()
    out = tmp_path / "out"
    result = _build(medgrit, lying_server, out)  # one second ask (the default)
    assert result.returncode == 0, result.stderr[-3000:]

    lies = {_lie_key(lie) for lie in lying_server.lies()}
    assert lies and not lies.intersection(_kept_turns(out))
    assert lying_server.stats()["feedback_requests"] > 0
    # A retry asks again for the untrue turns of an answer only, never for a whole conversation.
    users = [messages[-1]["content"] for messages in lying_server.requests()]
    retries = [text for text in users if text.startswith("Part of your previous answer")]
    named = [len(re.findall(r"^Turn \d+: task ", text, re.MULTILINE)) for text in retries]
    assert retries and all(1 <= n <= 4 for n in named) and sum(named) < 3 * len(retries)
    assert not any("Write a conversation of" in text for text in retries)
    assert all(len(c["qa"]) <= 4 for c in read_table(out, "conversations"))
    replaced = [r for r in read_table(out, "rejects") if r["detail"].startswith("attempt ")]
    assert replaced and all(", turn " in r["detail"] for r in replaced)
    assert medgrit("validate", str(out)).returncode == 0
