"""The fine-tune's text and geometry rules, its processor and its examples, on a tiny model.

The model is a Qwen2.5-VL built from a config with random weights and a tokenizer trained on the
demo dataset's own text (``medgrit_testing.tiny_vlm``): no download, no GPU.
"""

from __future__ import annotations

import io
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medgrit.core.vlm import (
    IM_END,
    box_1000,
    chat_pieces,
    cut_answer,
    image_token_count,
    qwen_vl_text_of_absolute,
    scale_box,
    smart_resize,
)

torch = pytest.importorskip("torch", reason="the train extra is part of the test extra")


@pytest.fixture(scope="module")
def dataset(finetune_dataset: Path) -> Path:
    return finetune_dataset


@pytest.fixture(scope="module")
def records(finetune_records):
    return finetune_records


@pytest.fixture(scope="module")
def model_dir(tiny_vlm: Path) -> Path:
    return tiny_vlm


@pytest.fixture(scope="module")
def processor(tiny_processor):
    return tiny_processor


# -- pure rules ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "limits", [(56 * 56, 112 * 112), (56 * 56, 1280 * 28 * 28), (4 * 28 * 28, 16384 * 28 * 28)]
)
def test_smart_resize_is_the_image_processors(limits: tuple[int, int]) -> None:
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import (
        smart_resize as reference,
    )

    lo, hi = limits
    rng = np.random.default_rng(0)
    sizes = [(1, 1), (28, 28), (27, 29), (512, 512), (1024, 768), (3000, 40), (2, 300)]
    sizes += [tuple(int(v) for v in rng.integers(1, 2048, 2)) for _ in range(300)]
    for h, w in sizes:
        if max(h, w) / min(h, w) > 200:
            with pytest.raises(ValueError):
                smart_resize(h, w, 28, lo, hi)
            continue
        assert smart_resize(h, w, 28, lo, hi) == reference(h, w, 28, lo, hi), (h, w)


def test_image_token_count_is_the_patch_grid_over_the_merge_window() -> None:
    # 224x224 at most 112*112 pixels -> 112x112 -> 8x8 patches -> 16 tokens
    assert image_token_count(224, 224, max_pixels=112 * 112) == 16
    # 512x512 -> 504x504 (the nearest multiples of 28) -> 36x36 patches -> 324 tokens
    assert image_token_count(512, 512) == 324


def test_chat_pieces_train_only_the_answers_and_their_end_of_turn() -> None:
    pieces = chat_pieces([("Q1", "A1"), ("Q2", "A2")])
    text = "".join("<IMG>" if p.image else p.text for p in pieces)
    assert text == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\n<|vision_start|><IMG><|vision_end|>Q1<|im_end|>\n"
        "<|im_start|>assistant\nA1<|im_end|>\n"
        "<|im_start|>user\nQ2<|im_end|>\n<|im_start|>assistant\nA2<|im_end|>\n"
    )
    assert [p.text for p in pieces if p.trained] == ["A1<|im_end|>", "A2<|im_end|>"]
    prompt = chat_pieces([("Q", None)])
    assert prompt[-1].text.endswith("<|im_start|>assistant\n") and not any(
        p.trained for p in prompt
    )
    with pytest.raises(ValueError):
        chat_pieces([("Q1", None), ("Q2", "A2")])


def test_absolute_boxes_come_back_to_the_thousand_frame() -> None:
    rng = np.random.default_rng(1)
    for _ in range(500):
        w, h = (int(v) for v in rng.integers(32, 1500, 2))
        rh, rw = smart_resize(h, w, 28, 56 * 56, 1280 * 28 * 28)
        x0, x1 = sorted(int(v) for v in rng.integers(0, w + 1, 2))
        y0, y1 = sorted(int(v) for v in rng.integers(0, h + 1, 2))
        box = (x0, y0, x1, y1)
        absolute = scale_box(box, (w, h), (rw, rh))
        assert all(0 <= v <= max(rw, rh) for v in absolute)
        back = box_1000(absolute, (rw, rh))
        direct = box_1000(box, (w, h))
        # rounding to the resized grid moves a coordinate by at most half a resized pixel
        tolerance = [1000 / rw + 1, 1000 / rh + 1] * 2
        assert all(abs(a - b) <= t for a, b, t in zip(back, direct, tolerance, strict=True))


def test_qwen2_box_tokens_are_read_back_as_qwen_vl_text() -> None:
    raw = (
        "<|object_ref_start|>liver<|object_ref_end|><|box_start|>(56,0),(112,28)<|box_end|> and "
        "<|box_start|>(0, 0),(112, 112)<|box_end|>"
    )
    assert qwen_vl_text_of_absolute(raw, (112, 56)) == (
        "<ref>liver</ref><box>(500,0),(999,500)</box> and <box>(0,0),(999,999)</box>"
    )
    assert qwen_vl_text_of_absolute("no boxes", (10, 10)) == "no boxes"
    assert cut_answer(" The liver.<|im_end|>\ngarbage") == "The liver."
    assert cut_answer("text<|endoftext|>x") == "text"


# -- the processor ---------------------------------------------------------------------------


def _png(width: int, height: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((height, width), 128, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def test_labels_cover_exactly_the_answers(processor) -> None:
    enc = processor.encode(chat_pieces([("Where?", "Here."), ("What?", "That.")]), 100, 80)
    trained = [t for t, lab in zip(enc.input_ids, enc.labels, strict=True) if lab != -100]
    assert processor.tokenizer.decode(trained) == "Here.<|im_end|>That.<|im_end|>"
    pads = enc.input_ids.count(processor.image_token_id)
    assert pads == processor.image_tokens(100, 80) > 0


def test_batches_carry_image_grids_that_match_their_tokens(processor) -> None:
    from medgrit.adapters.training.processor import ProcessorError, collate

    sizes = [(100, 80), (64, 200)]
    encs = [processor.encode(chat_pieces([("Q", "A")]), w, h) for w, h in sizes]
    pngs = [_png(w, h) for w, h in sizes]
    batch = collate(processor, [e.input_ids for e in encs], [e.labels for e in encs], pngs)
    grids = batch["image_grid_thw"]
    merge = processor.image_processor.merge_size**2
    for i, enc in enumerate(encs):
        assert int(grids[i].prod()) // merge == enc.input_ids.count(processor.image_token_id)
    image = batch["input_ids"] == processor.image_token_id
    assert torch.equal(batch["mm_token_type_ids"].bool(), image)
    assert batch["pixel_values"].shape[0] == int(grids.prod(dim=1).sum())
    assert (batch["labels"][batch["attention_mask"] == 0] == -100).all()
    left = collate(processor, [e.input_ids for e in encs], None, pngs, left_pad=True)
    assert (left["attention_mask"][:, -1] == 1).all() and "labels" not in left
    # an image processor whose limits changed after tokenising is caught, not trained on
    with pytest.raises(ProcessorError):
        collate(processor, [encs[0].input_ids], None, [_png(400, 400)])


def test_mm_token_type_ids_give_the_image_3d_positions(processor, model_dir: Path) -> None:
    from transformers import Qwen2_5_VLForConditionalGeneration

    from medgrit.adapters.training.processor import collate

    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(model_dir)
    enc = processor.encode(chat_pieces([("Q", "A")]), 112, 112)
    batch = collate(processor, [enc.input_ids], [enc.labels], [_png(112, 112)])
    positions, _ = model.model.get_rope_index(
        batch["input_ids"],
        mm_token_type_ids=batch["mm_token_type_ids"],
        image_grid_thw=batch["image_grid_thw"],
        attention_mask=batch["attention_mask"],
    )
    image = batch["input_ids"][0] == processor.image_token_id
    t, h, w = (positions[k, 0][image] for k in range(3))
    assert torch.equal(t, torch.full_like(t, int(t[0])))  # one frame
    assert len(set(h.tolist())) == len(set(w.tolist())) == 4  # a 4x4 merged grid
    out = model(**batch)
    assert torch.isfinite(out.loss)


# -- the examples ----------------------------------------------------------------------------


def test_examples_write_every_train_turn_in_the_models_box_format(
    records, processor, tmp_path: Path
) -> None:
    from medgrit.adapters.training.examples import load_train_examples, write_train_examples

    train = [r for r in records.splits["train"] if r.qa]
    for box_format in ("qwen-vl", "qwen2.5-absolute"):
        folder = tmp_path / box_format
        stats = write_train_examples(records, processor, box_format, 4096, folder)
        assert stats.examples == len(train) and stats.examples_too_long == 0
        assert stats.turns == sum(len(r.qa) for r in train)
        ds = load_train_examples(folder)
        assert ds["name"] == [r.name for r in train]
        by_name = {r.name: r for r in train}
        for row in ds.select(range(0, len(ds), 7)):
            record = by_name[row["name"]]
            trained = [
                t for t, lab in zip(row["input_ids"], row["labels"], strict=True) if lab != -100
            ]
            answers = processor.tokenizer.decode(trained).split(IM_END)[:-1]
            if box_format == "qwen-vl":
                assert answers == [q.answer for q in record.qa]
                continue
            resized = processor.resized(record.width, record.height)
            for qa, answer in zip(record.qa, answers, strict=True):
                assert "<box>" not in answer
                # every box token is a region's pixel box, scaled to the resized image
                for box in re.findall(r"<\|box_start\|>\((\d+),(\d+)\),\((\d+),(\d+)\)", answer):
                    scaled = {
                        scale_box(r.bbox, (record.width, record.height), resized)
                        for r in record.regions.values()
                    }
                    assert tuple(int(v) for v in box) in scaled
                back = qwen_vl_text_of_absolute(answer, resized)
                assert (
                    back.count("<box>") == qa.answer.count("<box>") == answer.count("<|box_start|>")
                )
            assert Image.open(io.BytesIO(row["png"])).size == (record.width, record.height)


def test_examples_that_do_not_fit_lose_whole_turns_or_are_left_out(
    records, processor, tmp_path: Path
) -> None:
    from medgrit.adapters.training.examples import (
        NoExampleFits,
        load_train_examples,
        write_train_examples,
    )

    full = write_train_examples(records, processor, "qwen-vl", 4096, tmp_path / "full")
    lengths = sorted(load_train_examples(tmp_path / "full")["length"])
    limit = lengths[len(lengths) // 2]
    cut = write_train_examples(records, processor, "qwen-vl", limit, tmp_path / "cut")
    ds = load_train_examples(tmp_path / "cut")
    assert max(ds["length"]) <= limit
    assert cut.turns_cut > 0 and cut.turns < full.turns
    assert cut.examples + cut.examples_too_long == full.examples
    with pytest.raises(NoExampleFits):
        write_train_examples(records, processor, "qwen-vl", 64, tmp_path / "none")


def test_test_items_are_chosen_per_task_and_spread(records) -> None:
    from medgrit.adapters.export.bird import test_items
    from medgrit.adapters.training.examples import select_test_items

    items = test_items(records)
    every = select_test_items(records, ["VG", "ROC", "RC", "MIA"], None)
    assert every == list(range(len(items)))
    some = select_test_items(records, ["VG", "MIA"], 2)
    assert some == sorted(some) and some == select_test_items(records, ["VG", "MIA"], 2)
    tasks = [items[i].task for i in some]
    assert tasks.count("VG") == min(2, sum(it.task == "VG" for it in items))
    assert set(tasks) <= {"VG", "MIA"}


def test_predicted_box_tokens_are_scored_in_the_thousand_frame(processor) -> None:
    from medgrit.adapters.training.examples import Prompt
    from medgrit.adapters.training.generate import answer_batch

    answer = (
        "<|object_ref_start|>liver<|object_ref_end|><|box_start|>(56,0),(112,28)<|box_end|>"
        "<|im_end|>junk"
    )
    new = processor.tokenizer(answer, add_special_tokens=False)["input_ids"]

    class Replay(torch.nn.Module):  # answers with fixed tokens: only the decoding is under test
        def __init__(self) -> None:
            super().__init__()
            self.weight = torch.nn.Parameter(torch.zeros(1))

        def generate(self, input_ids, generation_config, **batch):
            assert generation_config.do_sample is False
            assert generation_config.repetition_penalty == 1.0
            tail = torch.tensor([new] * input_ids.shape[0])
            return torch.cat([input_ids, tail], dim=1)

    enc = processor.encode(chat_pieces([("Where is the liver?", None)]), 224, 112)
    resized = processor.resized(224, 112)
    prompt = Prompt(0, "VG", "ct_00--D--c--z_0000", "Q", "<ref>liver</ref>", enc.input_ids, resized)
    (line,) = answer_batch(Replay(), processor, [(prompt, _png(224, 112))], 80, "qwen2.5-absolute")
    w, h = resized
    x0, y0, x1, y1 = box_1000((56, 0, 112, 28), (w, h))
    assert line["response"] == f"<ref>liver</ref><box>({x0},{y0}),({x1},{y1})</box>"
    assert line["raw_response"] == answer.split("<|im_end|>")[0]
    (plain,) = answer_batch(Replay(), processor, [(prompt, _png(224, 112))], 80, "qwen-vl")
    assert "raw_response" not in plain and plain["response"] == line["raw_response"]


def test_the_weights_that_train_are_fp32_under_bf16(model_dir: Path, tmp_path: Path) -> None:
    from medgrit.adapters.training.model import load_base_model, prepare_model
    from medgrit.schemas.finetune import FinetuneConfig

    for mode in ("lora", "full"):
        config = FinetuneConfig(
            dataset=str(tmp_path), output_dir=str(tmp_path / "o"), bf16=True, finetune=mode
        )
        model, summary = prepare_model(load_base_model(str(model_dir), config), config)
        trained = {n: p.dtype for n, p in model.named_parameters() if p.requires_grad}
        frozen = {n: p.dtype for n, p in model.named_parameters() if not p.requires_grad}
        assert trained and set(trained.values()) == {torch.float32}
        assert any("merger" in n for n in trained) and not any(
            "visual.blocks" in n for n in trained
        )
        assert {d for n, d in frozen.items() if "visual.blocks" in n} == {torch.bfloat16}
        assert summary.trainable == sum(p.numel() for p in model.parameters() if p.requires_grad)


def test_new_tokens_follow_the_longest_answer_under_the_models_tokenizer(
    records, processor
) -> None:
    from pydantic import ValidationError

    from medgrit.adapters.training.examples import longest_answers, new_token_limits
    from medgrit.schemas.finetune import FinetuneConfig

    expected: dict[str, int] = {}
    for qa in (qa for record in records.splits["train"] for qa in record.qa):
        ids = processor.tokenizer(qa.answer + IM_END, add_special_tokens=False)["input_ids"]
        expected[qa.task] = max(expected.get(qa.task, 0), len(ids))
    assert longest_answers(records, processor, "qwen-vl") == expected
    # absolute pixel boxes are written out with other digits: counted in their own form
    longest = longest_answers(records, processor, "qwen2.5-absolute")
    assert set(longest) == set(expected) == {"VG", "ROC", "RC", "MIA"}
    limits = new_token_limits(longest, {"VG": 7})
    assert limits["VG"] == 7
    for task in ("ROC", "RC", "MIA"):
        assert limits[task] >= longest[task] + 16 and limits[task] >= longest[task] * 5 // 4
    config = FinetuneConfig(dataset="d", output_dir="o", max_new_tokens={"VG": 120})
    assert config.max_new_tokens == {"VG": 120}
    with pytest.raises(ValidationError, match="at least 1"):
        FinetuneConfig(dataset="d", output_dir="o", max_new_tokens={"MIA": 0})


def test_a_train_turn_is_asked_as_it_was_trained(records, processor, tmp_path: Path) -> None:
    from medgrit.adapters.training.examples import (
        iter_prompts,
        load_train_examples,
        select_test_items,
        write_train_examples,
    )

    for box_format in ("qwen-vl", "qwen2.5-absolute"):
        write_train_examples(records, processor, box_format, 4096, tmp_path / box_format)
        examples = {r["name"]: r for r in load_train_examples(tmp_path / box_format)}
        chosen = select_test_items(records, ["VG", "ROC", "RC", "MIA"], None, "train")
        asked = 0
        for prompt, _ in iter_prompts(records, processor, box_format, chosen, "train"):
            example = examples[prompt.name]
            n = len(prompt.input_ids)
            # the prompt is the example up to this turn's answer, which is trained from there
            assert example["input_ids"][:n] == prompt.input_ids
            assert example["labels"][n - 1] == -100 and example["labels"][n] != -100
            asked += 1
        assert asked == sum(len(r.qa) for r in records.splits["train"])
