"""Retries of the LLM generator ask again for only the untrue turns of an answer.

The generator runs against the fake provider (``medgrit_testing.openai_server``) on 127.0.0.1
through the ``openai`` SDK. The first answers come from a server that invents one box in every
answer (a turn that stays untrue whatever the verifier's wording rules); they are cached, so
the retries alone then reach a server configured for the case at hand, whose request log
(``GET /requests``) shows what was asked.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from medgrit.adapters.llm.generator import LLMGenerator
from medgrit.adapters.text.templates import make_environment
from medgrit.core.generation import QA, Generated, ImageFacts, RegionFacts
from medgrit.core.text import position_word, size_word
from medgrit.core.verify import ImageTruth, check_turn
from medgrit.schemas.config import LLMConfig
from medgrit.schemas.llm import FACTS_MARKER, ImagePromptFacts
from medgrit_testing.openai_server import ServerConfig, estimate_prompt_tokens, serve

SIZE = 512
TURN_LINE = re.compile(r"^Turn (\d+): task (\w+), region_ids (.+)$", re.MULTILINE)


def _region(image_id: str, label_id: int, label: str, box: tuple[int, int, int, int]):
    x0, y0, x1, y1 = box
    area = (x1 - x0) * (y1 - y0)
    return RegionFacts(
        region_id=f"{image_id}-{label_id}",
        label=label,
        label_id=label_id,
        instance=0,
        bbox_1000=tuple(v * 1000 // SIZE for v in box),
        area=area,
        position=position_word(box, SIZE, SIZE),
        size=size_word(area, SIZE, SIZE),
    )


def _image(i: int) -> tuple[ImageFacts, list[RegionFacts]]:
    """An axial CT slice with four abdominal organs, shifted a little per image."""
    image_id, d = f"ct-{i:03d}", 8 * i
    regions = [
        _region(image_id, 1, "liver", (60 + d, 120, 250 + d, 330)),
        _region(image_id, 2, "spleen", (330, 140 + d, 430, 260 + d)),
        _region(image_id, 3, "right kidney", (140, 300 + d, 210, 400 + d)),
        _region(image_id, 4, "left kidney", (300 + d, 300, 370 + d, 400)),
    ]
    return ImageFacts(image_id, "ct", "axial", SIZE, SIZE), regions


ITEMS = [_image(i) for i in range(3)]


@pytest.fixture(scope="module")
def server():
    with serve(ServerConfig(seed=5)) as running:
        yield running


def _generator(server, cache: Path, retry_invalid: int, batch: bool = False) -> LLMGenerator:
    config = LLMConfig(
        model="test-model",
        base_url=server.base_url,
        response_format="json_schema",
        requests_per_minute=6000,
        retry_invalid=retry_invalid,
        batch=batch,
        batch_poll_s=0.1,
    )
    return LLMGenerator(config, "sk-test", cache)


def _untrue(generator: LLMGenerator, results: list[Generated]) -> list[dict[int, QA]]:
    """Each image's untrue turns by number."""
    out = []
    for (image, regions), result in zip(ITEMS, results, strict=True):
        truth = ImageTruth(regions, image, generator.lexicon)
        out.append(
            {
                number: qa
                for number, qa in enumerate(result.turns, 1)
                if check_turn(qa, truth, generator.text_rules) is not None
            }
        )
    return out


def _user(messages: list[dict]) -> str:
    return messages[-1]["content"]


def _facts(messages: list[dict]) -> ImagePromptFacts:
    line = next(x for x in _user(messages).splitlines() if x.startswith(FACTS_MARKER))
    return ImagePromptFacts.model_validate_json(line[len(FACTS_MARKER) :])


def _boxes(messages: list[dict]) -> set[tuple[str, tuple[int, ...]]]:
    return {(r.label, tuple(r.box)) for r in _facts(messages).regions}


def _for_image(requests: list[list[dict]], regions: list[RegionFacts]) -> list[list[dict]]:
    """The requests whose facts are about the image of ``regions`` (its boxes are its own)."""
    own = {(r.label, r.bbox_1000) for r in regions}
    return [m for m in requests if _boxes(m) <= own]


@pytest.fixture
def first_answers(server, tmp_path: Path):
    """Cached first answers, each with one untrue turn: (cache, results, requests received)."""
    server.configure(ServerConfig(seed=5, invented_box_rate=1.0))
    server.reset_stats()
    cache = tmp_path / "cache"
    generator = _generator(server, cache, retry_invalid=0)
    results = generator.generate_all(ITEMS)
    untrue = _untrue(generator, results)
    assert [len(u) for u in untrue] == [1, 1, 1]
    return cache, results, untrue, server.requests()


def test_a_retry_asks_for_only_the_untrue_turn_and_keeps_the_true_ones(
    server, first_answers
) -> None:
    cache, first, untrue, whole_asks = first_answers
    server.configure(ServerConfig(seed=5))
    server.reset_stats()
    generator = _generator(server, cache, retry_invalid=1)
    results = generator.generate_all(ITEMS)
    retries = server.requests()

    assert len(retries) == len(ITEMS)  # the first answers came from the cache
    assert generator.spend.cache_hits == len(ITEMS) and generator.spend.requests == len(ITEMS)
    assert generator.spend.prompt_tokens == sum(estimate_prompt_tokens(m) for m in retries)
    for (image, regions), before, after, bad in zip(ITEMS, first, results, untrue, strict=True):
        [retry] = _for_image(retries, regions)
        [whole] = _for_image(whole_asks, regions)
        [(number, failed)] = bad.items()
        text = _user(retry)
        by_box = {tuple(r.box): r.id for r in _facts(whole).regions}
        prompt_ids = [by_box[r.bbox_1000] for r in regions if r.region_id in failed.region_ids]
        assert TURN_LINE.findall(text) == [(str(number), failed.task, ", ".join(prompt_ids))]
        assert failed.answer in text and "unknown_box" in text
        assert {r.id for r in _facts(retry).regions} == set(prompt_ids)  # facts of that turn
        kept = [qa for n, qa in enumerate(before.turns, 1) if n != number]
        assert not any(qa.answer in text for qa in kept)  # no other turn to copy
        if failed.task != "MIA":  # an MIA turn is about every region: all facts are shown
            assert estimate_prompt_tokens(retry) < estimate_prompt_tokens(whole)

        assert len(after.turns) == len(before.turns)
        for n, (old, new) in enumerate(zip(before.turns, after.turns, strict=True), 1):
            if n != number:
                assert new == old
            else:
                assert (new.task, new.region_ids) == (old.task, old.region_ids)
                assert check_turn(new, ImageTruth(regions, image, generator.lexicon)) is None
        assert [reason for reason, _ in after.rejects] == ["unknown_box"]
        assert after.rejects[0][1].startswith(f"attempt 1, turn {number} ({failed.task})")
        assert after.prompt_tokens == before.prompt_tokens + estimate_prompt_tokens(retry)


def test_a_rerun_from_the_cache_and_a_batch_run_give_the_same_turns(
    server, first_answers, tmp_path: Path
) -> None:
    cache = first_answers[0]
    batch_cache = tmp_path / "batch-cache"
    shutil.copytree(cache, batch_cache)
    server.configure(ServerConfig(seed=5))
    online = _generator(server, cache, retry_invalid=1).generate_all(ITEMS)

    server.reset_stats()
    again = _generator(server, cache, retry_invalid=1)
    assert again.generate_all(ITEMS) == online
    assert server.requests() == [] and again.spend.cache_hits == 2 * len(ITEMS)

    batch = _generator(server, batch_cache, retry_invalid=1, batch=True)
    assert batch.generate_all(ITEMS) == online
    assert batch.spend.batches and batch.spend.requests == len(ITEMS)


def test_a_replacement_of_another_task_is_rejected_and_asked_for_again(
    server, first_answers
) -> None:
    cache, first, untrue, _ = first_answers
    # Every retry answer turns into an ROC turn about some region; no untrue turn is an ROC
    # turn (an invented box sits in an answer, and ROC answers have none).
    server.configure(ServerConfig(seed=5, wrong_label_rate=1.0))
    server.reset_stats()
    generator = _generator(server, cache, retry_invalid=2)
    results = generator.generate_all(ITEMS)
    received = server.requests()

    assert len(received) == 2 * len(ITEMS)
    for (_, regions), before, after, bad in zip(ITEMS, first, results, untrue, strict=True):
        [(number, failed)] = bad.items()
        assert failed.task != "ROC"
        assert after.turns == before.turns  # the untrue turn stays, to be rejected on writing
        assert [reason for reason, _ in after.rejects] == ["region_ids_mismatch"] * 2
        for attempt, (_, detail) in enumerate(after.rejects, 2):
            assert detail.startswith(f"attempt {attempt}, turn {number} (ROC)")
        first_retry, second_retry = _for_image(received, regions)
        for retry in (first_retry, second_retry):
            [(asked, task, _)] = TURN_LINE.findall(_user(retry))
            assert (int(asked), task) == (number, failed.task)
        assert f"region_ids_mismatch (asked for {failed.task} of r" in _user(second_retry)


def test_a_retry_reply_that_is_not_json_is_asked_for_again_with_that_fed_back(
    server, first_answers
) -> None:
    cache, first, untrue, _ = first_answers
    server.configure(ServerConfig(seed=5, malformed_json_rate=1.0))
    server.reset_stats()
    results = _generator(server, cache, retry_invalid=2).generate_all(ITEMS)
    received = server.requests()

    for (_, regions), before, after, bad in zip(ITEMS, first, results, untrue, strict=True):
        first_retry, second_retry = _for_image(received, regions)
        assert "could not be used" not in _user(first_retry)
        assert "could not be used: the answer is not a JSON object" in _user(second_retry)
        assert TURN_LINE.findall(_user(first_retry)) == TURN_LINE.findall(_user(second_retry))
        assert [int(n) for n, _, _ in TURN_LINE.findall(_user(second_retry))] == list(bad)
        assert after.turns == before.turns
        assert [reason for reason, _ in after.rejects] == ["invalid_json"]


def test_the_user_prompt_renders_a_whole_ask_and_a_retry() -> None:
    template = make_environment().get_template("llm_user.j2")
    facts = '{"modality":"CT","view":"axial CT","regions":[]}'
    failed = [
        {
            "number": 2,
            "task": "VG",
            "region_ids": ["r1", "r2"],
            "question": "Where are the kidneys?",
            "answer": "<ref>kidney</ref><box>(1,2),(3,4)</box>",
            "reason": "unknown_box (<box>(1,2),(3,4)</box>)",
        },
        {
            "number": 4,
            "task": "ROC",
            "region_ids": ["r0"],
            "question": "What is in <box>(5,6),(7,8)</box>?",
            "answer": "The stomach.",
            "reason": "invented_structure ('stomach')",
        },
    ]

    whole = template.render(facts_json=facts, turns=4, feedback=None)
    retry = template.render(facts_json=facts, turns=4, feedback=None, failed=failed)

    assert whole == (
        f"Image facts (JSON): {facts}\n"
        "Write a conversation of 4 turns: one MIA turn first, then region turns."
    )
    assert retry == (
        "Part of your previous answer was rejected: the turns below; its other turns were kept. "
        "The facts give only the regions of these turns.\n"
        f"Image facts (JSON): {facts}\n"
        "\n"
        "Turn 2: task VG, region_ids r1, r2\n"
        "Question: Where are the kidneys?\n"
        "Answer: <ref>kidney</ref><box>(1,2),(3,4)</box>\n"
        "Rejected: unknown_box (<box>(1,2),(3,4)</box>)\n"
        "\n"
        "Turn 4: task ROC, region_ids r0\n"
        "Question: What is in <box>(5,6),(7,8)</box>?\n"
        "Answer: The stomach.\n"
        "Rejected: invented_structure ('stomach')\n"
        "\n"
        "Write these 2 turns again, in this order, each with the same task and region_ids, "
        "every word following from the facts, as one JSON object whose conversation holds only "
        "these 2 turns."
    )
