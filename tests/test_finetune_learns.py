"""Proof that the fine-tune learns: ``medgrit finetune`` in a subprocess trains a tiny Qwen2.5-VL
(random weights, fully fine-tuned) on four demo images, CT and MR, until greedy decoding gives
back every answer it was trained on, word for word and box for box, through prediction and
evaluation.

Only a run whose pieces fit can do that: the loss must fall on the answers and nowhere else, a
turn asked after the image and the turns before it must be asked as it was trained, and the
boxes, written as Qwen2's box tokens in 0-1000, must come back to the dataset's 0-999 text
exactly.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from medgrit.core.vlm import IM_END
from tests.conftest import build_demo_dataset
from tests.test_finetune import ONE_THREAD, _config, _lines

pytest.importorskip("trl", reason="the train extra is part of the test extra")

BIRD_MIA_TOKENS = 100  # BiRD's new tokens for MIA answers
# A fixed pseudonymisation key: the pseudonyms choose the phrasings and which turns each image
# gets, so with it the four images always hold the same 16 turns of all four tasks.
KEY = "217b9916d48c211b09bb7535022ebe06d82810c0759bf544ef84c5cc3570d854"


@pytest.fixture(scope="module")
def few(tmp_path_factory: pytest.TempPathFactory, demo_dir: Path) -> Path:
    folder = tmp_path_factory.mktemp("few")
    (folder / "pseudonym.key").write_bytes(bytes.fromhex(KEY))
    return build_demo_dataset(folder / "ds", demo_dir, 4, folder / "pseudonym.key")


@pytest.fixture(scope="module")
def learned(tmp_path_factory, medgrit, few: Path) -> tuple[Path, Path, str]:
    from medgrit.adapters.export.records import read_records
    from medgrit_testing.tiny_vlm import write_model

    records = read_records(few)
    train = [r for r in records.splits["train"] if r.qa]
    texts = [q.question + " " + q.answer for s in records.splits.values() for r in s for q in r.qa]
    model_dir = write_model(tmp_path_factory.mktemp("tiny") / "model", texts)
    config = _config(
        tmp_path_factory.mktemp("learn"),
        few,
        model_dir,
        finetune="full",
        box_format="qwen2-tokens",
        learning_rate=1e-2,
        lr_scheduler_type="constant",  # no decay: the answers are learned in fewer steps
        weight_decay=0.0,
        max_steps=120,
        per_device_train_batch_size=len(train),  # every example in every step
        save_steps=80,
        logging_steps=20,
        eval_split="train",
        max_eval_samples=1000,
    )
    done = medgrit("finetune", "--config", str(config), env=ONE_THREAD)
    assert done.returncode == 0, done.stderr[-3000:]
    return config.parent / "run", model_dir, done.stdout


def test_greedy_decoding_gives_back_every_trained_answer(learned, few: Path) -> None:
    from medgrit.adapters.export.records import read_records

    out, _, _ = learned
    records = read_records(few)
    turns = [(r.name, q.task, q.answer) for r in records.splits["train"] for q in r.qa]
    predictions = _lines(out / "predictions.jsonl")
    assert sorted((p["id"], p["task"], p["annotation"]) for p in predictions) == sorted(turns)
    wrong = [
        (p["annotation"], p["response"]) for p in predictions if p["response"] != p["annotation"]
    ]
    assert not wrong, wrong[:3]
    assert {p["task"] for p in predictions} == {"VG", "ROC", "RC", "MIA"}
    assert not any(p.get("cut") for p in predictions)


def test_the_scores_of_a_model_that_learned_its_answers(learned) -> None:
    out, _, _ = learned
    metrics = json.loads((out / "metrics.json").read_text())["model"]
    assert metrics["VG"]["present_mean"]["recall@0.5"] == 1.0
    assert metrics["ROC"]["present_mean"]["accuracy"] == 1.0


def test_new_tokens_were_enough_for_answers_longer_than_birds_limit(learned) -> None:
    from medgrit.adapters.training.processor import VisionChatProcessor

    out, model_dir, stdout = learned
    tokenizer = VisionChatProcessor.from_pretrained(model_dir).tokenizer
    predictions = _lines(out / "predictions.jsonl")
    written = [p.get("raw_response", p["response"]) for p in predictions if p["task"] == "MIA"]
    longest = max(
        len(tokenizer(t + IM_END, add_special_tokens=False)["input_ids"]) for t in written
    )
    assert longest > BIRD_MIA_TOKENS  # BiRD's fixed limit would have cut this answer
    predict = json.loads((out / "finetune.json").read_text())["steps"]["predict"]
    assert predict["longest_answer_tokens"]["MIA"] == longest
    assert predict["max_new_tokens"]["MIA"] >= longest and predict["answers_cut"] == 0
    assert f"MIA {predict['max_new_tokens']['MIA']} ({longest})" in stdout


def test_one_checkpoint_is_kept_and_its_size_was_known_before(learned) -> None:
    from medgrit.adapters.training.footprint import footprint
    from medgrit.schemas.finetune import FinetuneConfig

    out, _, _ = learned
    kept = sorted(p.name for p in (out / "checkpoints").glob("checkpoint-*"))
    assert kept == ["checkpoint-120"]  # saved at 80 and at the last step; one kept
    config = FinetuneConfig.model_validate(
        json.loads((out / "finetune.json").read_text())["config"]
    )
    known = footprint(config, 4)
    assert (known.checkpoints_at_once, known.checkpoints_kept) == (2, 1)
    checkpoint = out / "checkpoints" / "checkpoint-120"
    weights = (checkpoint / "model.safetensors").stat().st_size
    optimizer = (checkpoint / "optimizer.pt").stat().st_size
    assert known.model == pytest.approx(weights, rel=0.02)
    assert known.checkpoint == pytest.approx(weights + optimizer, rel=0.03)
    assert (out / "model" / "model.safetensors").stat().st_size == pytest.approx(weights, rel=0.01)
