"""The OpenAI-compatible test server, through the real ``openai`` SDK over HTTP on 127.0.0.1.

What a test of the LLM generator relies on: answers built from the prompt's image facts pass
verification; RPM and TPM limits answer 429 with ``Retry-After`` and ``x-ratelimit-*`` headers;
each injected fault shows up; files and batches round-trip (expiry and cancellation included);
``/stats`` counts duplicate requests; a configured key is enforced and never leaks; in lies mode
every class of lie is told and recorded in ``/lies`` (and those of the verifier's long-standing
rules rejected by it), while the true turns stay what they are without the mode.
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from pydantic import ValidationError

from medgrit.adapters.text.templates import make_environment
from medgrit.core.generation import QA, ImageFacts, RegionFacts
from medgrit.core.verify import TextRules, verify_qa
from medgrit.core.vocab import TASKS
from medgrit.schemas.llm import ImagePromptFacts, LLMConversation
from medgrit_testing.openai_server import (
    LIE_CLASSES,
    LIE_DECOYS,
    PLANE_WORDS,
    ProviderLimits,
    RunningServer,
    ServerConfig,
    estimate_prompt_tokens,
    format_duration,
    serve,
)

ENV = make_environment()
SYSTEM = ENV.get_template("llm_system.j2").render(tasks=list(TASKS))
RULES = TextRules.for_instructions(SYSTEM)

KIDNEYS = {
    "modality": "CT",
    "view": "axial CT",
    "regions": [
        {"id": "r0", "label": "liver", "box": [100, 200, 450, 600], "position": "middle left",
         "size": "large", "side": None},
        {"id": "r1", "label": "left kidney", "box": [600, 500, 750, 700],
         "position": "lower right", "size": "small", "side": "left"},
        {"id": "r2", "label": "right kidney", "box": [250, 500, 400, 700],
         "position": "lower left", "size": "small", "side": "right"},
    ],
}  # fmt: skip
LESIONS = {  # two instances of one label, and a 2D image
    "modality": "dermoscopy",
    "view": "dermoscopy",
    "regions": [
        {"id": "r0", "label": "lesion", "box": [10, 10, 200, 220], "position": "upper left",
         "size": "medium"},
        {"id": "r1", "label": "lesion", "box": [700, 650, 990, 980], "position": "lower right",
         "size": "small"},
    ],
}  # fmt: skip
BRAIN = {
    "modality": "MRI",
    "view": "coronal MRI",
    "regions": [
        {"id": f"r{i}", "label": f"{side} {part}", "box": [50 + 100 * i, 100, 140 + 100 * i, 300],
         "position": "center", "size": "small", "side": side}
        for i, (side, part) in enumerate(
            [(s, p) for p in ("grey matter", "white matter", "caudate", "putamen")
             for s in ("left", "right")]
        )
    ],
}  # fmt: skip
SINGLE = {
    "modality": "X-ray",
    "view": "X-ray",
    "regions": [{"id": "r0", "label": "right lung", "box": [80, 120, 480, 860],
                 "position": "middle left", "size": "large", "side": "right"}],
}  # fmt: skip
ALL_FACTS = (KIDNEYS, LESIONS, BRAIN, SINGLE)
# The images the fixtures describe, as the verifier sees them (modality key, plane).
IMAGES = {
    "axial CT": ImageFacts("abdomen-ct", "ct", "axial", 512, 512),
    "dermoscopy": ImageFacts("skin", "dermoscopy", "2d", 600, 450),
    "coronal MRI": ImageFacts("brain-mr", "mr", "coronal", 256, 256),
    "X-ray": ImageFacts("chest-xray", "xray", "2d", 1024, 1024),
}
# The build's label names: the structures a text may name at all.
VOCABULARY = tuple(sorted({r["label"] for facts in ALL_FACTS for r in facts["regions"]}))


def user_prompt(facts: dict, turns: int = 4, feedback: str | None = None) -> str:
    """The user prompt as the LLM generator renders it."""
    return ENV.get_template("llm_user.j2").render(
        facts_json=json.dumps(facts), turns=turns, feedback=feedback
    )


def messages(facts: dict, turns: int = 4, feedback: str | None = None) -> list[dict]:
    return [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": user_prompt(facts, turns, feedback)},
    ]


def region_facts(facts: dict) -> dict[str, RegionFacts]:
    """The prompt's regions as verification sees them (prompt ids as region ids)."""
    return {
        r["id"]: RegionFacts(
            region_id=r["id"],
            label=r["label"],
            label_id=i + 1,
            instance=1,
            bbox_1000=tuple(r["box"]),
            area=400,
            position=r["position"],
            size=r["size"],
        )
        for i, r in enumerate(facts["regions"])
    }


def verify_turn(turn: dict, facts: dict) -> str | None:
    """The verifier's reason for rejecting one turn of an answer about ``facts`` (None: kept)."""
    qa = QA(turn["task"], turn["question"], turn["answer"], tuple(turn["region_ids"]))
    return verify_qa(
        qa, region_facts(facts), RULES, image=IMAGES[facts["view"]], vocabulary=VOCABULARY
    )


def turn_reasons(content: str, facts: dict) -> list[str | None]:
    """Verification result of every turn of an answer (None: the turn passes)."""
    conversation = LLMConversation.model_validate_json(content)
    return [verify_turn(t.model_dump(), facts) for t in conversation.conversation]


def client_for(server: RunningServer, **kwargs) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url, api_key="sk-test", max_retries=0, **kwargs)


def ask(client: openai.OpenAI, facts: dict = KIDNEYS, **kwargs):
    return client.chat.completions.create(model="gpt-test", messages=messages(facts), **kwargs)


def converse(server: RunningServer, facts: dict, turns: int = 7, **kwargs) -> list[dict]:
    """The turns of the server's answer to a prompt about ``facts``."""
    completion = client_for(server).chat.completions.create(
        model="gpt-test", messages=messages(facts, turns, **kwargs)
    )
    return json.loads(completion.choices[0].message.content)["conversation"]


def ledger_turn(entry: dict) -> dict:
    """A ``/lies`` entry as the turn it was sent as."""
    return {k: entry[k] for k in ("task", "question", "answer", "region_ids")}


@pytest.fixture(scope="module")
def server() -> Iterator[RunningServer]:
    with serve() as running:
        yield running


@pytest.fixture
def fresh(server: RunningServer):
    """Configure the shared server for one test and zero its counters."""

    def configure(**fields) -> RunningServer:
        server.configure(ServerConfig(**fields))
        server.reset_stats()
        return server

    return configure


# --- answers ----------------------------------------------------------------------------------


@pytest.mark.parametrize("facts", [KIDNEYS, LESIONS, BRAIN, SINGLE], ids=lambda f: f["view"])
@pytest.mark.parametrize("turns", [1, 4, 7])
def test_answers_are_valid_conversations_built_from_the_facts(fresh, facts, turns) -> None:
    client = client_for(fresh())
    completion = client.chat.completions.create(
        model="gpt-test", messages=messages(facts, turns), response_format={"type": "json_object"}
    )
    content = completion.choices[0].message.content
    assert completion.object == "chat.completion"
    assert completion.model == "gpt-test"
    assert completion.choices[0].finish_reason == "stop"
    assert turn_reasons(content, facts) == [None] * turns
    tasks = [t.task for t in LLMConversation.model_validate_json(content).conversation]
    assert tasks[0] == "MIA"
    if turns >= 4:
        assert set(tasks) == {"MIA", "VG", "ROC", "RC"}
    chars = sum(len(m["content"]) for m in messages(facts, turns))
    assert completion.usage.prompt_tokens == -(-chars // 4)
    assert completion.usage.completion_tokens == -(-len(content) // 4)


def test_rc_answers_name_position_size_and_patient_side(fresh) -> None:
    content = ask(client_for(fresh()), KIDNEYS).choices[0].message.content
    rc = [t for t in LLMConversation.model_validate_json(content).conversation if t.task == "RC"]
    assert rc
    for turn in rc:
        region = next(r for r in KIDNEYS["regions"] if r["id"] == turn.region_ids[0])
        assert region["position"] in turn.answer and region["size"] in turn.answer
        if region["side"]:
            assert f"the patient's {region['side']} side" in turn.answer


def test_same_request_gives_the_same_answer_unless_nondeterministic(fresh) -> None:
    client = client_for(fresh(seed=7))
    first, second = (ask(client).choices[0].message.content for _ in range(2))
    assert first == second
    fresh(seed=8)
    assert ask(client).choices[0].message.content != first  # the seed changes the answer
    fresh(seed=7, deterministic=False)
    answers = {ask(client).choices[0].message.content for _ in range(6)}
    assert len(answers) > 1


def test_answer_longer_than_max_tokens_is_cut(fresh) -> None:
    completion = ask(client_for(fresh()), max_tokens=20)
    assert completion.choices[0].finish_reason == "length"
    assert completion.usage.completion_tokens == 20
    assert len(completion.choices[0].message.content) == 80


def test_request_without_image_facts_is_a_400(fresh) -> None:
    client = client_for(fresh())
    with pytest.raises(openai.BadRequestError, match="Image facts"):
        client.chat.completions.create(
            model="gpt-test", messages=[{"role": "user", "content": "hello"}]
        )


# --- rate limits ------------------------------------------------------------------------------


def test_rpm_limit_answers_429_with_retry_after_and_headers(fresh) -> None:
    client = client_for(fresh(rpm=60))  # a bucket of 1 request, refilled 1 per second
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-test", messages=messages(KIDNEYS)
    )
    assert raw.headers["x-ratelimit-limit-requests"] == "60"
    assert raw.headers["x-ratelimit-remaining-requests"] == "0"
    assert raw.headers["x-ratelimit-reset-requests"].endswith("s")
    with pytest.raises(openai.RateLimitError) as caught:
        ask(client)
    response = caught.value.response
    assert response.status_code == 429
    wait = float(response.headers["retry-after"])
    assert 0.5 < wait <= 1.0
    assert int(response.headers["retry-after-ms"]) == pytest.approx(wait * 1000, abs=1)
    assert response.headers["x-ratelimit-remaining-requests"] == "0"
    assert "x-ratelimit-limit-tokens" not in response.headers  # no token limit configured
    error = response.json()["error"]
    assert (error["type"], error["code"]) == ("requests", "rate_limit_exceeded")
    time.sleep(wait)
    ask(client)  # Retry-After was enough


def test_rate_limited_requests_are_counted_and_consume_nothing(fresh) -> None:
    server = fresh(rpm=60)  # capacity 1, one per second
    client = client_for(server)
    ask(client)
    for _ in range(3):
        with pytest.raises(openai.RateLimitError):
            ask(client)
    stats = server.stats()
    assert stats["status_200"] == 1 and stats["status_429"] == 3
    assert stats["rate_limited_requests"] == 3
    assert stats["duplicate_requests"] == 0  # the refused repeats were never answered


def test_tpm_limit_binds_on_tokens(fresh) -> None:
    server = fresh(tpm=300_000)  # a bucket of 5,000 tokens
    client = client_for(server)
    max_tokens = 2300 - estimate_prompt_tokens(messages(KIDNEYS))  # 2,300 tokens a request
    ask(client, max_tokens=max_tokens)
    ask(client, max_tokens=max_tokens)  # the third does not fit
    with pytest.raises(openai.RateLimitError) as caught:
        ask(client, max_tokens=max_tokens)
    response = caught.value.response
    assert response.json()["error"]["type"] == "tokens"
    assert response.headers["x-ratelimit-limit-tokens"] == "300000"
    assert int(response.headers["x-ratelimit-remaining-tokens"]) < 2300
    assert float(response.headers["retry-after"]) > 0
    assert server.stats()["rate_limited_tokens"] == 1


def test_limits_hold_the_long_run_rate(fresh) -> None:
    server = fresh(rpm=1200)  # 20 per second, bucket of 20
    client = client_for(server)
    start = time.monotonic()
    while time.monotonic() - start < 1.0:
        try:
            ask(client, facts=SINGLE)
        except openai.RateLimitError:
            pass
    assert 20 <= server.stats()["status_200"] <= 41  # a full bucket plus one second's refill


def test_bucket_and_duration_text() -> None:
    limits = ProviderLimits(rpm=60, tpm=None, now=0.0)
    assert limits.limiter.requests_capacity == 1 and limits.acquire(1, 0.0) == (None, 0.0)
    refused, wait = limits.acquire(1, 0.0)  # the bucket is empty now
    assert refused == "requests" and wait == pytest.approx(1.0)
    assert limits.headers(0.5)["x-ratelimit-reset-requests"] == "0.5s"
    big = ProviderLimits(rpm=None, tpm=6000, now=0.0)  # capacity 100: a request of 250 waits
    assert big.acquire(60, 0.0) == (None, 0.0)  # for a full bucket; 40 are left
    refused, wait = big.acquire(250, 0.0)
    assert refused == "tokens" and wait == pytest.approx(0.6)
    assert [format_duration(s) for s in (0, 0.05, 1, 12.5, 360, 3723)] == [
        "0s", "0.05s", "1s", "12.5s", "6m0s", "1h2m3s"
    ]  # fmt: skip


# --- faults -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rate", "error", "status"),
    [("fail_500_rate", openai.InternalServerError, 500),
     ("fail_503_rate", openai.InternalServerError, 503)],
)  # fmt: skip
def test_server_errors(fresh, rate, error, status) -> None:
    server = fresh(rpm=6000, **{rate: 1.0})
    with pytest.raises(error) as caught:
        ask(client_for(server))
    assert caught.value.status_code == status
    assert caught.value.response.headers["x-ratelimit-limit-requests"] == "6000"
    assert caught.value.response.json()["error"]["type"] == "server_error"
    assert server.stats()["faults"][f"http_{status}"] == 1


def test_hung_request_runs_past_the_client_timeout(fresh) -> None:
    server = fresh(hang_rate=1.0, hang_s=5)
    start = time.monotonic()
    with pytest.raises(openai.APITimeoutError):
        ask(client_for(server, timeout=0.3))
    assert time.monotonic() - start < 2
    assert server.stats()["faults"]["hang"] == 1


def test_malformed_json_answer(fresh) -> None:
    server = fresh(malformed_json_rate=1.0)
    content = ask(client_for(server)).choices[0].message.content
    with pytest.raises(ValidationError):
        LLMConversation.model_validate_json(content)
    assert content.startswith('{"conversation"')
    assert server.stats()["faults"]["malformed_json"] == 1


@pytest.mark.parametrize("facts", [KIDNEYS, LESIONS, SINGLE], ids=lambda f: f["view"])
def test_invented_box_is_caught_by_verification(fresh, facts) -> None:
    server = fresh(invented_box_rate=1.0)
    content = ask(client_for(server), facts).choices[0].message.content
    reasons = turn_reasons(content, facts)
    assert reasons.count("unknown_box") == 1 and reasons.count(None) == len(reasons) - 1
    assert server.stats()["faults"]["invented_box"] == 1


@pytest.mark.parametrize("facts", [KIDNEYS, LESIONS, BRAIN, SINGLE], ids=lambda f: f["view"])
def test_wrong_label_is_caught_by_verification(fresh, facts) -> None:
    server = fresh(wrong_label_rate=1.0)
    for turns in (2, 4):
        completion = client_for(server).chat.completions.create(
            model="gpt-test", messages=messages(facts, turns)
        )
        reasons = turn_reasons(completion.choices[0].message.content, facts)
        wrong = [r for r in reasons if r is not None]
        # another label, the other side, or (one label only) a decoy the image does not have
        assert len(wrong) == 1
        assert wrong[0] in ("roc_label_missing", "laterality_mismatch", "invented_structure")


def test_latency_overlaps_across_concurrent_requests(fresh) -> None:
    server = fresh(latency_ms=(200, 250))

    async def run() -> float:
        client = openai.AsyncOpenAI(base_url=server.base_url, api_key="k", max_retries=0)
        start = time.monotonic()
        await asyncio.gather(
            *(client.chat.completions.create(model="m", messages=messages(SINGLE))
              for _ in range(20))
        )  # fmt: skip
        await client.close()
        return time.monotonic() - start

    elapsed = asyncio.run(run())
    assert 0.2 <= elapsed < 1.5  # concurrent, not 20 x 0.2 s one after the other
    assert server.stats()["max_in_flight"] > 1


# --- lies -------------------------------------------------------------------------------------

# The tasks each lie can be told in (on KIDNEYS, where every class finds what it needs).
LIE_TASKS = {
    "swapped_box": {"VG", "MIA"},
    "invented_structure": {"MIA", "VG", "ROC", "RC"},
    "wrong_label": {"ROC"},
    "wrong_position": {"RC"},
    "wrong_size": {"RC"},
    "wrong_side": {"RC"},
    "other_structure": {"ROC", "RC"},
    "wrong_modality": {"MIA"},
    "wrong_plane": {"MIA"},
    "question_box": {"ROC", "RC"},
    "wrong_region_ids": {"VG", "ROC", "RC"},  # the MIA turn lists all of KIDNEYS' regions
    "invented_appearance": {"MIA", "VG", "ROC", "RC"},
    "wrong_body_region": {"MIA", "RC"},  # KIDNEYS is an abdomen: never the knee or the head
    "wrong_modality_word": {"MIA", "ROC", "RC"},
    "synonym_wrong_region": {"ROC", "RC"},
    "wrong_relation": {"ROC", "RC"},  # KIDNEYS' boxes rule out some relation of each region
}
# What the verifier must answer to each lie of the classes whose rule it has long had (the rule
# it breaks, or one it breaks first).
LIE_REASONS = {
    "swapped_box": {"ref_box_mismatch", "region_ids_mismatch"},
    "invented_structure": {"invented_structure"},
    "wrong_label": {"roc_label_missing", "laterality_mismatch", "invented_structure"},
    "wrong_position": {"wrong_position"},
    "wrong_size": {"wrong_size"},
    "wrong_side": {"wrong_side", "laterality_mismatch"},
    "other_structure": {"other_structure_named", "wrong_relation"},  # "next to": adjacency
    "wrong_modality": {"wrong_modality"},
    "wrong_plane": {"wrong_plane"},
    "question_box": {"question_box_mismatch"},
    "wrong_region_ids": {"region_ids_mismatch", "question_box_mismatch"},
}


def test_lie_tables_cover_every_class() -> None:
    assert set(LIE_TASKS) == set(LIE_CLASSES)
    assert set(LIE_REASONS) < set(LIE_CLASSES)


def test_lies_are_deterministic_and_recorded_with_their_text(fresh) -> None:
    server = fresh(lie_rate=0.5, seed=5)
    answers = [converse(server, facts) for facts in ALL_FACTS]
    ledger = server.lies()
    assert [converse(server, facts) for facts in ALL_FACTS] == answers  # same request, same lies
    assert server.lies() == ledger + ledger
    sent = [turn for answer in answers for turn in answer]
    assert 0 < len(ledger) < len(sent)
    assert all(ledger_turn(entry) in sent for entry in ledger)
    assert {entry["class"] for entry in ledger} <= set(LIE_CLASSES)
    stats = server.stats()
    assert sum(stats["lies"].values()) == 2 * len(ledger)
    assert stats["honest_turns"] == 2 * (len(sent) - len(ledger))
    assert server.reset_stats()["honest_turns"] == 0
    assert server.lies() == []
    fresh(lie_rate=0.5, seed=6)
    assert [converse(server, facts) for facts in ALL_FACTS] != answers  # the seed changes them


@pytest.mark.parametrize("lie_class", LIE_CLASSES)
def test_each_lie_class_is_told_and_recorded(fresh, lie_class) -> None:
    true_turns = converse(fresh(seed=2), KIDNEYS)
    server = fresh(seed=2, lie_rate=1.0, lie_classes=(lie_class,))
    turns = converse(server, KIDNEYS)
    ledger = server.lies()
    lied = [i for i, (told, true) in enumerate(zip(turns, true_turns, strict=True)) if told != true]
    assert [ledger_turn(entry) for entry in ledger] == [turns[i] for i in lied]
    assert {entry["class"] for entry in ledger} == {lie_class}
    assert {turns[i]["task"] for i in lied} == LIE_TASKS[lie_class]
    kept = [t["task"] for i, t in enumerate(turns) if i not in lied]
    assert not set(kept) & LIE_TASKS[lie_class]  # every turn it can be told in is a lie
    stats = server.stats()
    assert stats["lies"] == {c: len(ledger) if c == lie_class else 0 for c in LIE_CLASSES}
    assert stats["honest_turns"] == len(turns) - len(ledger)


def test_lies_name_a_modality_plane_or_structure_the_image_lacks(fresh) -> None:
    server = fresh(lie_rate=1.0, lie_classes=("wrong_modality",))
    assert converse(server, KIDNEYS, 1)[0]["answer"].startswith(
        ("This axial MRI", "This axial PET")
    )
    server = fresh(lie_rate=1.0, lie_classes=("wrong_plane",))
    for facts, planes in ((KIDNEYS, ("coronal", "sagittal")), (SINGLE, PLANE_WORDS)):
        opening = tuple(f"This {plane} {facts['modality']} image" for plane in planes)
        assert converse(server, facts, 1)[0]["answer"].startswith(opening)
    for facts in (KIDNEYS, LESIONS):
        server = fresh(lie_rate=1.0, lie_classes=("invented_structure",))
        converse(server, facts)
        words = {w for r in facts["regions"] for w in r["label"].split()}
        for entry in server.lies():
            text = f"{entry['question']} {entry['answer']}"
            named = [d for d in LIE_DECOYS if d not in words and re.search(rf"\b{d}\b", text)]
            assert len(named) == 1, text  # one structure, and not the image's own


def test_a_class_that_cannot_apply_passes_to_the_next(fresh) -> None:
    server = fresh(lie_rate=1.0, lie_classes=("swapped_box", "wrong_size"))
    turns = converse(server, SINGLE)  # one region: nothing to swap a box with
    ledger = server.lies()
    assert {e["class"] for e in ledger} == {"wrong_size"}
    assert {e["task"] for e in ledger} == {"RC"}
    assert len(ledger) == sum(t["task"] == "RC" for t in turns)
    server = fresh(lie_rate=1.0, lie_classes=("swapped_box", "question_box", "other_structure"))
    converse(server, SINGLE)
    assert server.lies() == [] and server.stats()["honest_turns"] == 7  # no lie applies


def test_without_lie_rate_nothing_is_recorded(fresh) -> None:
    server = fresh(invented_box_rate=0.5, wrong_label_rate=0.5)
    for facts in ALL_FACTS:
        converse(server, facts)
    stats = server.stats()
    assert server.lies() == [] and set(stats["lies"].values()) == {0}
    spoiled = stats["faults"]["invented_box"] + stats["faults"]["wrong_label"]
    assert stats["honest_turns"] == 7 * len(ALL_FACTS) - spoiled


def test_cut_answers_record_no_lies(fresh) -> None:
    server = fresh(lie_rate=1.0, malformed_json_rate=1.0)
    ask(client_for(server))
    completion = ask(client_for(fresh(lie_rate=1.0)), max_tokens=30)
    assert completion.choices[0].finish_reason == "length"
    assert server.lies() == [] and server.stats()["honest_turns"] == 0


@pytest.mark.parametrize("facts", ALL_FACTS, ids=lambda f: f["view"])
def test_true_turns_are_unchanged_by_the_mode(fresh, facts) -> None:
    for fault in ({}, {"wrong_label_rate": 1.0}, {"invented_box_rate": 1.0}):
        true_turns = converse(fresh(seed=3, **fault), facts)
        server = fresh(seed=3, lie_rate=0.5, **fault)
        turns = converse(server, facts)
        ledger = [ledger_turn(entry) for entry in server.lies()]
        assert len(turns) == len(true_turns)
        for told, true in zip(turns, true_turns, strict=True):
            assert told == true or told in ledger
        assert sum(told != true for told, true in zip(turns, true_turns, strict=True)) == len(
            ledger
        )
        if fault:  # the spoiled turn is sent as it is, never also as a lie
            assert server.stats()["honest_turns"] == len(turns) - len(ledger) - 1


@pytest.mark.parametrize(
    ("lie_class", "facts"),
    [pytest.param(c, f, id=f"{c}-{f['view']}") for c in LIE_REASONS for f in ALL_FACTS],
)
def test_the_verifier_rejects_each_lie_and_keeps_true_turns(fresh, lie_class, facts) -> None:
    server = fresh(lie_rate=1.0, lie_classes=(lie_class,))
    wrong = []
    for turns, feedback in ((4, None), (7, None), (7, "turn 2 (RC): wrong_size")):
        for turn in converse(server, facts, turns, feedback=feedback):
            is_lie = turn in map(ledger_turn, server.lies())
            reason = verify_turn(turn, facts)
            if (reason in LIE_REASONS[lie_class]) if is_lie else (reason is None):
                continue
            wrong.append((reason, turn))
    assert wrong == []


# --- files and batches ------------------------------------------------------------------------


def batch_lines(facts_list: list[dict]) -> list[dict]:
    return [
        {"custom_id": f"img-{i}", "method": "POST", "url": "/v1/chat/completions",
         "body": {"model": "gpt-test", "messages": messages(facts, 4), "max_tokens": 1024}}
        for i, facts in enumerate(facts_list)
    ]  # fmt: skip


def run_batch(client: openai.OpenAI, lines: list[dict], cancel: bool = False):
    data = "".join(json.dumps(line) + "\n" for line in lines).encode()
    uploaded = client.files.create(file=("requests.jsonl", data), purpose="batch")
    assert uploaded.purpose == "batch" and uploaded.bytes == len(data)
    assert client.files.retrieve(uploaded.id).filename == "requests.jsonl"
    assert client.files.content(uploaded.id).content == data
    batch = client.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    if cancel:
        batch = client.batches.cancel(batch.id)
        assert batch.status == "cancelling"
    deadline = time.monotonic() + 10
    while batch.status not in ("completed", "expired", "failed", "cancelled"):
        assert time.monotonic() < deadline, batch.status
        time.sleep(0.05)
        batch = client.batches.retrieve(batch.id)
    return batch


def read_jsonl(client: openai.OpenAI, file_id: str | None) -> dict[str, dict]:
    if file_id is None:
        return {}
    text = client.files.content(file_id).text
    return {rec["custom_id"]: rec for rec in map(json.loads, text.splitlines())}


def test_batch_round_trip_matches_online_answers(fresh) -> None:
    server = fresh(batch_delay_s=0.1, seed=3)
    client = client_for(server)
    lines = batch_lines([KIDNEYS, LESIONS, BRAIN, SINGLE])
    batch = run_batch(client, lines)
    assert batch.status == "completed" and batch.error_file_id is None
    assert batch.request_counts.total == 4 and batch.request_counts.completed == 4
    output = read_jsonl(client, batch.output_file_id)
    assert set(output) == {line["custom_id"] for line in lines}
    for line in lines:
        record = output[line["custom_id"]]
        assert record["error"] is None and record["response"]["status_code"] == 200
        completion = openai.types.chat.ChatCompletion.model_validate(record["response"]["body"])
        online = client.chat.completions.create(**line["body"])
        assert completion.choices[0].message.content == online.choices[0].message.content
    stats = server.stats()
    assert stats["batch_lines"] == 4 and stats["requests"]["batches_create"] == 1
    # The online repeats of the batch's requests were answered twice: paid twice.
    assert stats["duplicate_requests"] == 4


def test_batch_lines_tell_and_record_the_same_lies(fresh) -> None:
    server = fresh(lie_rate=1.0, seed=9)
    client = client_for(server)
    lines = batch_lines([KIDNEYS, BRAIN])
    batch = run_batch(client, lines)
    assert batch.status == "completed"
    from_batch = server.lies()
    sent = [
        turn
        for record in read_jsonl(client, batch.output_file_id).values()
        for turn in json.loads(record["response"]["body"]["choices"][0]["message"]["content"])[
            "conversation"
        ]
    ]
    assert from_batch and all(ledger_turn(entry) in sent for entry in from_batch)
    assert server.stats()["honest_turns"] == len(sent) - len(from_batch)
    server.reset_stats()
    for line in lines:
        client.chat.completions.create(**line["body"])
    assert sorted(map(json.dumps, server.lies())) == sorted(map(json.dumps, from_batch))


def test_batch_failed_lines_go_to_the_error_file(fresh) -> None:
    client = client_for(fresh(batch_fail_rate=0.5, seed=1))
    lines = batch_lines([KIDNEYS, LESIONS, BRAIN, SINGLE] * 3)
    batch = run_batch(client, lines)
    output = read_jsonl(client, batch.output_file_id)
    errors = read_jsonl(client, batch.error_file_id)
    assert batch.status == "completed" and output and errors
    assert set(output) | set(errors) == {line["custom_id"] for line in lines}
    assert not set(output) & set(errors)
    assert all(rec["response"]["status_code"] == 500 for rec in errors.values())
    counts = batch.request_counts
    assert (counts.completed, counts.failed) == (len(output), len(errors))


def test_expired_batch_keeps_finished_lines_and_drops_the_rest(fresh) -> None:
    client = client_for(fresh(batch_expire=True))
    lines = batch_lines([KIDNEYS, LESIONS, BRAIN, SINGLE, KIDNEYS, LESIONS])
    batch = run_batch(client, lines)
    assert batch.status == "expired" and batch.expired_at is not None
    output = read_jsonl(client, batch.output_file_id)
    assert sorted(output) == ["img-0", "img-1", "img-2"]
    assert batch.request_counts.total == 6 and batch.request_counts.completed == 3


def test_cancelled_batch(fresh) -> None:
    client = client_for(fresh(batch_delay_s=30))
    batch = run_batch(client, batch_lines([KIDNEYS, SINGLE]), cancel=True)
    assert batch.status == "cancelled" and batch.output_file_id is None


def test_invalid_batch_input_fails_validation(fresh) -> None:
    client = client_for(fresh())
    lines = batch_lines([KIDNEYS, KIDNEYS])
    lines[1]["custom_id"] = lines[0]["custom_id"]
    batch = run_batch(client, lines)
    assert batch.status == "failed"
    assert batch.errors.data[0].code == "duplicate_custom_id"


def test_unknown_file_is_a_404(fresh) -> None:
    with pytest.raises(openai.NotFoundError):
        client_for(fresh()).files.retrieve("file-missing")


# --- stats ------------------------------------------------------------------------------------


def test_stats_count_duplicate_requests(fresh) -> None:
    server = fresh()
    client = client_for(server)
    ask(client, KIDNEYS)
    ask(client, LESIONS)
    assert server.stats()["duplicate_requests"] == 0
    ask(client, KIDNEYS)
    client.chat.completions.create(
        model="gpt-test", messages=messages(KIDNEYS, feedback="turn 2 (ROC): roc_label_missing")
    )
    stats = server.stats()
    assert stats["duplicate_requests"] == 1
    assert stats["feedback_requests"] == 1
    assert stats["requests"]["chat_completions"] == 4 and stats["status_200"] == 4
    assert server.reset_stats()["duplicate_requests"] == 0


# --- auth, process and command line -----------------------------------------------------------


def test_key_is_required_and_never_leaks(tmp_path: Path) -> None:
    key = "sk-medgrit-secret-0123456789"
    log = tmp_path / "server.log"
    with serve(ServerConfig(api_key=key), log_path=log, log_level="debug") as server:
        good = openai.OpenAI(base_url=server.base_url, api_key=key, max_retries=0)
        ask(good)
        with pytest.raises(openai.AuthenticationError):
            ask(openai.OpenAI(base_url=server.base_url, api_key="sk-wrong", max_retries=0))
        assert httpx.get(f"{server.base_url}/files/x").status_code == 401  # no header at all
        assert server.lies() == []  # like /stats, the ledger needs no key
        cmdline = Path(f"/proc/{server.process.pid}/cmdline").read_bytes()
        stats = json.dumps(server.stats())
    assert key not in cmdline.decode() and key not in stats
    assert key not in repr(ServerConfig(api_key=key))
    assert key not in log.read_text()


def _accepts(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def test_server_stops_with_its_context_and_its_parent() -> None:
    with serve() as server:
        port = server.port
        assert _accepts(port)
    assert server.process.poll() is not None and not _accepts(port)

    parent = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent("""
            import time
            from medgrit_testing.openai_server import serve
            with serve() as server:
                print(server.port, flush=True)
                time.sleep(60)
        """)],
        stdout=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    port = int(parent.stdout.readline())
    assert _accepts(port)
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    deadline = time.monotonic() + 10
    while _accepts(port):
        assert time.monotonic() < deadline, "the server outlived its parent"
        time.sleep(0.1)


def test_command_line_help() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "medgrit_testing.openai_server", "--help"],
        capture_output=True,
        text=True,
        check=True,
    )
    for flag in (
        "--port",
        "--rpm",
        "--tpm",
        "--latency-ms",
        "--config-json",
        "--api-key-env",
        "--lie-rate",
        "--lie-classes",
        "--style",
    ):
        assert flag in result.stdout
    assert "wrong_region_ids" in result.stdout  # the lie classes are listed
    assert "wrong_relation" in result.stdout and "paraphrase" in result.stdout


def test_invalid_config_is_one_clear_error() -> None:
    with pytest.raises(ValidationError, match="at most 1"):
        ServerConfig(fail_500_rate=0.6, fail_503_rate=0.6)
    result = subprocess.run(
        [sys.executable, "-m", "medgrit_testing.openai_server", "--config-json",
         '{"hang_rate": 2}'],
        capture_output=True,
        text=True,
    )  # fmt: skip
    assert result.returncode == 2 and "invalid configuration" in result.stderr
    with pytest.raises(ValidationError, match="unknown lie class"):
        ServerConfig(lie_classes=("wrong_label", "white_lie"))
    with pytest.raises(ValidationError):
        ServerConfig(lie_rate=1.5)
    result = subprocess.run(
        [sys.executable, "-m", "medgrit_testing.openai_server", "--lie-rate", "0.3",
         "--lie-classes", "wrong_size,white_lie"],
        capture_output=True,
        text=True,
    )  # fmt: skip
    assert result.returncode == 2 and "white_lie" in result.stderr
    with pytest.raises(ValidationError, match="style"):
        ServerConfig(style="poetic")
    result = subprocess.run(
        [sys.executable, "-m", "medgrit_testing.openai_server", "--style", "poetic"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2 and "poetic" in result.stderr


def test_facts_fixtures_follow_the_contract() -> None:
    for facts in (KIDNEYS, LESIONS, BRAIN, SINGLE):
        ImagePromptFacts.model_validate(facts)
