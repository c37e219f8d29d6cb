"""The fake provider's paraphrase style, through the real ``openai`` SDK over HTTP on 127.0.0.1.

Answers in fluent prose stay valid conversations of the schema that use each region's exact box,
name regions by their labels or the synonyms of the phrase bank, state sizes, halves, sides,
body parts and relations only as the facts give them, and vary; lies are told in that style and
recorded in ``/lies``; the new lie classes say what the facts rule out. Whether the verifier
keeps these answers is measured by ``benchmarks/bench_truth.py``, not asserted here.
"""

from __future__ import annotations

import functools
import json
import re
import subprocess
import sys
from collections.abc import Iterator

import openai
import pytest

from medgrit.adapters.text.templates import make_environment
from medgrit.core.text import BOX_PATTERN, laterality_of, strip_laterality
from medgrit.core.vocab import TASKS
from medgrit.schemas.llm import ImagePromptFacts, LLMConversation
from medgrit_testing.openai_server import LIE_CLASSES, READY_PREFIX, RunningServer, ServerConfig
from medgrit_testing.openai_server import serve as serve_provider
from medgrit_testing.openai_server.lies import APPEARANCES, OTHER_MODALITY_WORDS
from medgrit_testing.openai_server.paraphrase import synonyms_of

ENV = make_environment()
SYSTEM = ENV.get_template("llm_system.j2").render(tasks=list(TASKS))


def region(rid, label, box, position, size, image_side, relations=()) -> dict:
    side = laterality_of(label)
    return {"id": rid, "label": label, "box": box, "position": position, "size": size,
            "side": side, "image_side": image_side, "relations": list(relations)}  # fmt: skip


ABDOMEN = {  # abdomen and pelvis, sided labels, listed relations, every size but medium
    "modality": "CT",
    "view": "axial CT",
    "regions": [
        region("r0", "liver", [100, 200, 450, 600], "middle left", "large", "left",
               ["above the right kidney (r2)", "larger than the left kidney (r1)"]),
        region("r1", "left kidney", [600, 500, 750, 700], "lower right", "small", "right"),
        region("r2", "right kidney", [250, 500, 400, 700], "lower left", "small", "left",
               ["below the liver (r0)", "to the left of the left kidney in the image (r1)"]),
        region("r3", "bladder", [470, 800, 530, 900], "lower center", "tiny", "midline"),
    ],
}  # fmt: skip
BRAIN = {
    "modality": "MRI",
    "view": "coronal MRI",
    "regions": [
        region("r0", "left grey matter", [520, 100, 900, 800], "center", "large", "right"),
        region("r1", "right white matter", [150, 200, 480, 700], "center", "medium", "left"),
    ],
}  # fmt: skip
FUNDUS = {
    "modality": "fundus",
    "view": "fundus",
    "regions": [
        region("r0", "optic disc", [600, 400, 700, 520], "center", "small", "right"),
        region("r1", "macula", [350, 420, 450, 540], "center", "small", "left"),
    ],
}  # fmt: skip
SKIN = {
    "modality": "dermoscopy",
    "view": "dermoscopy",
    "regions": [region("r0", "skin lesion", [300, 250, 700, 750], "center", "medium", "midline")],
}
POLYP = {
    "modality": "endoscopy",
    "view": "endoscopy",
    "regions": [region("r0", "polyp", [50, 600, 300, 950], "lower left", "small", "left")],
}
CHEST = {
    "modality": "X-ray",
    "view": "X-ray",
    "regions": [
        region("r0", "right lung", [80, 120, 480, 860], "middle left", "large", "left"),
        region("r1", "left lung", [560, 120, 950, 860], "middle right", "large", "right"),
        region("r2", "heart", [400, 450, 700, 800], "lower center", "medium", "right"),
    ],
}  # fmt: skip
LESIONS = {  # one label, a merged region and its two instances
    "modality": "PET",
    "view": "sagittal PET",
    "regions": [
        region("r0", "lesion", [100, 100, 900, 900], "center", "medium", "midline"),
        region("r1", "lesion", [100, 100, 300, 300], "upper left", "tiny", "left"),
        region("r2", "lesion", [700, 700, 900, 900], "lower right", "tiny", "right"),
    ],
}  # fmt: skip
ALL_FACTS = (ABDOMEN, BRAIN, FUNDUS, SKIN, POLYP, CHEST, LESIONS)
# The tasks each lie is told in on ABDOMEN (every class finds what it needs there).
LIE_TASKS = {
    "swapped_box": {"VG", "MIA"}, "invented_structure": {"MIA", "VG", "ROC", "RC"},
    "wrong_label": {"ROC"}, "wrong_position": {"RC"}, "wrong_size": {"RC"}, "wrong_side": {"RC"},
    "other_structure": {"ROC", "RC"}, "wrong_modality": {"MIA"}, "wrong_plane": {"MIA"},
    "question_box": {"ROC", "RC"}, "wrong_region_ids": {"VG", "ROC", "RC"},
    "invented_appearance": {"MIA", "VG", "ROC", "RC"}, "wrong_body_region": {"MIA", "RC"},
    "wrong_modality_word": {"MIA", "ROC", "RC"}, "synonym_wrong_region": {"ROC", "RC"},
    "wrong_relation": {"ROC", "RC"},
}  # fmt: skip
SIZE_WORDS = {  # the words each size may be written with
    "tiny": ("tiny", "very small"),
    "small": ("small",),
    "medium": ("medium-sized", "moderately sized", "mid-sized"),
    "large": ("large",),
}


def messages(facts: dict, turns: int) -> list[dict]:
    user = ENV.get_template("llm_user.j2").render(
        facts_json=json.dumps(facts), turns=turns, feedback=None
    )
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]


@functools.cache
def client_for(base_url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=base_url, api_key="sk-test", max_retries=0)


def converse(server: RunningServer, facts: dict, turns: int = 7) -> list[dict]:
    """The turns of the server's answer about ``facts`` (validated against the schema)."""
    client = client_for(server.base_url)
    completion = client.chat.completions.create(model="m", messages=messages(facts, turns))
    content = completion.choices[0].message.content
    return [t.model_dump() for t in LLMConversation.model_validate_json(content).conversation]


def many_answers(configure, facts: dict, count: int = 12) -> list[dict]:
    """Every turn of ``count`` paraphrased answers about ``facts`` (prompts asking for 5, 6, ...
    turns: each prompt draws its own answer)."""
    server = configure(style="paraphrase")
    return [turn for n in range(5, 5 + count) for turn in converse(server, facts, n)]


@pytest.fixture(scope="module")
def server() -> Iterator[RunningServer]:
    with serve_provider() as running:
        yield running


@pytest.fixture
def fresh(server: RunningServer):
    def configure(**fields) -> RunningServer:
        server.configure(ServerConfig(**fields))
        server.reset_stats()
        return server

    return configure


def test_facts_fixtures_follow_the_contract() -> None:
    for facts in ALL_FACTS:
        ImagePromptFacts.model_validate(facts)


@pytest.mark.parametrize("facts", ALL_FACTS, ids=lambda f: f["view"])
def test_paraphrased_answers_are_conversations_that_use_each_exact_box(fresh, facts) -> None:
    by_id = {r["id"]: r for r in facts["regions"]}
    for seed in range(3):
        server = fresh(style="paraphrase", seed=seed)
        for turns in (1, 4, 7, 10):
            conversation = converse(server, facts, turns)
            assert len(conversation) == turns and conversation[0]["task"] == "MIA"
            if turns >= 4:
                assert {t["task"] for t in conversation} == {"MIA", "VG", "ROC", "RC"}
            for turn in conversation:
                own = [tuple(by_id[i]["box"]) for i in turn["region_ids"]]
                written = BOX_PATTERN.findall(turn["question"] + turn["answer"])
                assert {tuple(map(int, b)) for b in written} <= set(own), turn
                told = turn["answer"] if turn["task"] in ("MIA", "VG") else turn["question"]
                for box in own:
                    assert "<box>({},{}),({},{})</box>".format(*box) in told, turn


@pytest.mark.parametrize("facts", ALL_FACTS, ids=lambda f: f["view"])
def test_roc_answers_name_the_label_a_synonym_or_the_lesion(fresh, facts) -> None:
    lesion_like = [r for r in facts["regions"] if re.search(r"lesion|polyp", r["label"])]
    for turn in many_answers(fresh, facts):
        if turn["task"] != "ROC":
            continue
        label = next(r["label"] for r in facts["regions"] if r["id"] == turn["region_ids"][0])
        base, side = strip_laterality(label), laterality_of(label)
        names = {base, *synonyms_of(base, facts["modality"])}
        if len(lesion_like) == 1 and lesion_like[0]["label"] == label:
            names.add("lesion")
        assert any(name in turn["answer"] for name in names), turn
        assert not side or side in turn["answer"]


@pytest.mark.parametrize("facts", ALL_FACTS, ids=lambda f: f["view"])
def test_sizes_halves_and_sides_are_only_those_of_the_facts(fresh, facts) -> None:
    for turn in many_answers(fresh, facts):
        if turn["task"] != "RC":
            continue
        r = next(r for r in facts["regions"] if r["id"] == turn["region_ids"][0])
        text = turn["answer"]
        for size, words in SIZE_WORDS.items():
            said = any(re.search(rf"\b{w}\b", text) for w in words)
            assert not said or size == r["size"] or (size == "small" and "very small" in text)
        for half in ("left", "right"):
            assert f"{half} half" not in text or r["image_side"] == half
        assert "midline" not in text or r["image_side"] == "midline"
        for side in ("left", "right"):  # (a relation may name another region by its side)
            assert f"patient's {side}" not in text or r["side"] == side or r["relations"]


def test_relations_are_stated_as_listed_and_never_turned_round(fresh) -> None:
    said = {"r0": "", "r2": ""}  # the liver and the right kidney, which list relations
    for turn in many_answers(fresh, ABDOMEN, 20):
        if turn["task"] in ("ROC", "RC") and turn["region_ids"][0] in said:
            said[turn["region_ids"][0]] += turn["answer"]
    assert re.search(
        r"above the (right kidney|kidney on the patient's right|patient's right)", said["r0"]
    )
    assert re.search(r"(larger|bigger) than the [a-z' ]*left", said["r0"])
    assert re.search(r"to the left of the [a-z' ]*left[a-z' ]* in the image", said["r2"])
    assert re.search(r"below the liver", said["r2"])
    assert not re.search(r"below|smaller|to the (left|right) of", said["r0"])
    assert not re.search(r"above|larger|bigger|to the right of", said["r2"])


@pytest.mark.parametrize(
    ("facts", "wanted", "never"),
    [
        (ABDOMEN, ["abdomen and pelvis", "urinary bladder", "patient's left kidney"], ["chest"]),
        (BRAIN, ["brain", "gray matter", "cerebral white matter"], ["abdomen", "knee"]),
        (FUNDUS, ["retina", "optic nerve head", "macular region"], ["skin"]),
        (SKIN, ["skin", "the lesion", "dermoscopic"], ["retina"]),
        (POLYP, ["polypoid lesion", "endoscopic"], ["colon", "skin"]),
        (CHEST, ["chest radiograph", "cardiac silhouette", "lung field"], ["abdomen"]),
    ],
    ids=lambda v: v["view"] if isinstance(v, dict) else None,
)
def test_synonyms_and_body_parts_of_the_bank_are_used(fresh, facts, wanted, never) -> None:
    text = " ".join(f"{t['question']} {t['answer']}" for t in many_answers(fresh, facts))
    for phrase in wanted:
        assert phrase in text
    for phrase in never:
        assert phrase not in text


def test_answers_vary_and_differ_from_plain_ones(fresh) -> None:
    turns = many_answers(fresh, ABDOMEN)
    for task in TASKS:
        shapes = {re.sub(r"<box>[^<]*</box>", "B", t["answer"]) for t in turns if t["task"] == task}
        assert len(shapes) >= 5, task
    plain = converse(fresh(seed=0), ABDOMEN)
    server = fresh(style="paraphrase", seed=0)
    first = converse(server, ABDOMEN)
    assert first == converse(server, ABDOMEN) and first != plain  # same request, same answer
    stats = server.stats()
    assert stats["honest_turns"] == 2 * len(first) and server.lies() == []


@pytest.mark.parametrize("lie_class", LIE_CLASSES)
def test_each_lie_class_is_told_in_the_style_and_recorded(fresh, lie_class) -> None:
    true_turns = converse(fresh(style="paraphrase", seed=4), ABDOMEN)
    server = fresh(style="paraphrase", seed=4, lie_rate=1.0, lie_classes=(lie_class,))
    turns = converse(server, ABDOMEN)
    ledger = server.lies()
    lied = [i for i, (told, true) in enumerate(zip(turns, true_turns, strict=True)) if told != true]
    entries = [{k: e[k] for k in ("task", "question", "answer", "region_ids")} for e in ledger]
    assert entries == [turns[i] for i in lied]
    assert {e["class"] for e in ledger} == {lie_class}
    assert {turns[i]["task"] for i in lied} == LIE_TASKS[lie_class]
    assert server.stats()["honest_turns"] == len(turns) - len(ledger)


def lies_told(configure, facts: dict, lie_class: str, style: str) -> list[dict]:
    """The ledger of lies of one class told about ``facts`` in four answers."""
    server = configure(style=style, lie_rate=1.0, lie_classes=(lie_class,))
    for turns in range(5, 9):
        converse(server, facts, turns)
    ledger = server.lies()
    assert ledger and {e["class"] for e in ledger} == {lie_class}
    return ledger


@pytest.mark.parametrize("style", ["plain", "paraphrase"])
def test_new_lies_say_what_the_facts_rule_out(fresh, style) -> None:
    for facts in (ABDOMEN, FUNDUS, SKIN):
        for entry in lies_told(fresh, facts, "invented_appearance", style):
            assert any(p in entry["answer"] for p in APPEARANCES[facts["modality"]])
        for entry in lies_told(fresh, facts, "wrong_modality_word", style):
            assert any(w in entry["answer"] for w in OTHER_MODALITY_WORDS[facts["modality"]])
    far = {"the knee", "the abdomen", "the pelvis", "the chest"}
    for entry in lies_told(fresh, BRAIN, "wrong_body_region", style):
        assert any(part in entry["answer"] for part in far)
    for entry in lies_told(fresh, FUNDUS, "synonym_wrong_region", style):
        other = "macular region" if entry["region_ids"] == ["r0"] else "optic"
        assert other in entry["answer"]
    for entry in lies_told(fresh, ABDOMEN, "wrong_relation", style):
        if entry["region_ids"] == ["r0"]:  # the liver's listed relations, turned round
            assert re.search(r"(below|smaller than) the (right|left) kidney", entry["answer"])


def test_command_line_style_flag_serves_paraphrased_answers() -> None:
    child = subprocess.Popen(
        [sys.executable, "-m", "medgrit_testing.openai_server", "--port", "0", "--style",
         "paraphrase", "--seed", "3", "--watch-stdin"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        line = child.stdout.readline()
        assert line.startswith(READY_PREFIX)
        client = openai.OpenAI(base_url=line[len(READY_PREFIX) :].strip(), api_key="k")
        completion = client.chat.completions.create(model="m", messages=messages(SKIN, 4))
        from_cli = completion.choices[0].message.content
    finally:
        child.stdin.close()
        child.wait(timeout=10)
    with serve_provider(ServerConfig(style="paraphrase", seed=3)) as server:
        assert [t for t in json.loads(from_cli)["conversation"]] == converse(server, SKIN, 4)
