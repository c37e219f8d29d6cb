"""The training step on a tiny Qwen2.5-VL (random weights, no GPU): what gets a backward pass,
the defaults, the memory given back, the schedule on resume, the disk a run needs, and the box
format a base model gets. (bf16 and data-loader workers: the run of ``test_finetune.py``.)
"""

from __future__ import annotations

import gc
import json
import shutil
import weakref
from pathlib import Path

import pytest

from tests.test_finetune import _config, _in_process_config, killed_before

torch = pytest.importorskip("torch", reason="the train extra is part of the test extra")


def _batch(tiny_processor, finetune_records):
    from medgrit.adapters.export.records import iter_images
    from medgrit.adapters.training.processor import collate
    from medgrit.core.vlm import chat_pieces

    record, png = next((r, p) for r, p in iter_images(finetune_records) if r.qa)
    turns = [(q.question, q.answer) for q in record.qa]
    enc = tiny_processor.encode(chat_pieces(turns), record.width, record.height)
    return collate(tiny_processor, [enc.input_ids], [enc.labels], [png])


@pytest.mark.parametrize("mode", ["lora", "full"])
def test_the_frozen_vision_tower_gets_no_backward(
    mode, tiny_vlm, tiny_processor, finetune_records
) -> None:
    from medgrit.adapters.training.model import load_base_model, prepare_model
    from medgrit.schemas.finetune import FinetuneConfig

    batch = _batch(tiny_processor, finetune_records)
    for tower in (False, True):
        config = FinetuneConfig(
            dataset="d", output_dir="o", bf16=False, finetune=mode, train_vision_tower=tower
        )
        model, _ = prepare_model(load_base_model(str(tiny_vlm), config), config)
        # what the trainer does under gradient checkpointing: every input embedding, the
        # vision tower's patch embedding included, is made to require grad
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
        model.train()
        backward: list[int] = []
        blocks = [m for n, m in model.named_modules() if n.endswith("visual.blocks.0")]
        blocks[0].register_full_backward_hook(lambda *_, seen=backward: seen.append(1))
        model(**batch).loss.backward()
        grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
        tower_grads = [n for n in grads if ".visual." in n and ".merger." not in n]
        merger = [n for n, g in grads.items() if ".merger." in n and g.abs().sum() > 0]
        assert merger, "the merger trains whatever the tower does"
        if tower:
            assert backward and tower_grads
        else:
            assert not backward and not tower_grads


def _losses(config, steps: int) -> list[float]:
    """The logged losses of ``steps`` steps on four examples, through medgrit's trainer."""
    from medgrit.adapters.training import run
    from medgrit.adapters.training.examples import load_train_examples
    from medgrit.adapters.training.model import load_base_model, prepare_model
    from medgrit.adapters.training.trainer import build_trainer

    config = config.model_copy(update={"max_steps": steps, "save_steps": 10_000})
    run.start_run(config)
    run.prepare_examples(config)
    model, _ = prepare_model(load_base_model(config.model_name_or_path, config), config)
    examples = load_train_examples(Path(config.output_dir) / "examples").select(range(4))
    processor = run.load_processor(config)
    trainer = build_trainer(config, Path(config.output_dir), model, processor, examples)
    trainer.train()
    return [e["loss"] for e in trainer.state.log_history if "loss" in e]


def test_lora_defaults_train_where_birds_full_fine_tune_rate_barely_moves(
    finetune_dataset,
    tiny_vlm,
    tmp_path: Path,
) -> None:
    steady = {
        "per_device_train_batch_size": 4,
        "lr_scheduler_type": "constant",
        "warmup_ratio": 0.0,
    }
    defaults = _in_process_config(finetune_dataset, tiny_vlm, tmp_path / "new").model_copy(
        update=steady
    )
    assert (defaults.finetune, defaults.learning_rate, defaults.lora_alpha) == ("lora", 2e-4, 128)
    old = _in_process_config(finetune_dataset, tiny_vlm, tmp_path / "old").model_copy(
        update={**steady, "learning_rate": 2e-5, "lora_alpha": 16}
    )
    fell = {}
    for name, config in (("defaults", defaults), ("old", old)):
        losses = _losses(config, 8)
        fell[name] = sum(losses[:3]) / 3 - sum(losses[-3:]) / 3
    assert fell["defaults"] > 5 * max(fell["old"], 1e-3), fell


def test_the_merger_trains_at_its_own_learning_rate(finetune_dataset, tiny_vlm, tmp_path) -> None:
    from medgrit.adapters.training import run
    from medgrit.adapters.training.examples import load_train_examples
    from medgrit.adapters.training.model import load_base_model, prepare_model
    from medgrit.adapters.training.trainer import build_trainer

    config = _in_process_config(finetune_dataset, tiny_vlm, tmp_path / "run")
    run.start_run(config)
    run.prepare_examples(config)
    model, _ = prepare_model(load_base_model(str(tiny_vlm), config), config)
    examples = load_train_examples(tmp_path / "run" / "examples")
    trainer = build_trainer(config, tmp_path / "run", model, run.load_processor(config), examples)
    groups = trainer.create_optimizer().param_groups
    names = {id(p): n for n, p in model.named_parameters()}
    by_rate: dict[float, list[str]] = {}
    for group in groups:
        by_rate.setdefault(group["lr"], []).extend(names[id(p)] for p in group["params"])
    assert set(by_rate) == {2e-4, 2e-5}
    assert all(".merger." in n for n in by_rate[2e-5])
    assert not any(".merger." in n for n in by_rate[2e-4])
    assert sum(len(g["params"]) for g in groups) == sum(
        1 for p in model.parameters() if p.requires_grad
    )
    assert groups[0]["lr"] == 2e-4  # the rate the trainer logs is the language model's
    # norm scales and biases take no weight decay, whatever their module's class
    for group in groups:
        vectors = [p.ndim < 2 for p in group["params"]]
        assert all(vectors) if group["weight_decay"] == 0 else not any(vectors)
    undecayed = [names[id(p)] for g in groups if g["weight_decay"] == 0 for p in g["params"]]
    assert any(".ln_q." in n for n in undecayed)


def test_the_trained_model_is_freed_before_training_returns(
    finetune_dataset,
    tiny_vlm,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from medgrit.adapters.training import run, trainer

    loaded: list[weakref.ref] = []
    real = trainer.load_base_model

    def load(path, config):
        model = real(path, config)
        loaded.append(weakref.ref(model))
        return model

    monkeypatch.setattr(trainer, "load_base_model", load)
    config = _in_process_config(
        finetune_dataset, tiny_vlm, tmp_path / "run", max_steps=2, save_steps=10
    )
    run.start_run(config)
    run.prepare_examples(config)
    gc.collect()
    gc.disable()  # only what train() itself frees counts
    try:
        run.train_model(config)
        assert loaded and loaded[0]() is None
    finally:
        gc.enable()


def test_a_resume_without_optimizer_state_keeps_the_learning_rate_schedule(
    finetune_dataset,
    tiny_vlm,
    tmp_path: Path,
) -> None:
    from medgrit.adapters.training import run
    from medgrit.adapters.training.footprint import saves

    config = _in_process_config(
        finetune_dataset,
        tiny_vlm,
        tmp_path / "run",
        max_steps=6,
        save_steps=4,
        save_total_limit=None,
        save_optimizer_state=False,
        warmup_ratio=0.0,
    )
    run.start_run(config)
    run.prepare_examples(config)
    run.train_model(config)
    out = Path(config.output_dir)
    # a save every four steps and one at the last: as many as the disk check counts
    written = sorted(p.name for p in (out / "checkpoints").glob("checkpoint-*"))
    assert written == ["checkpoint-4", "checkpoint-6"]
    assert saves(config, 10**6) == len(written)
    state = json.loads((out / "checkpoints" / "checkpoint-6" / "trainer_state.json").read_text())
    rates = [e["learning_rate"] for e in state["log_history"] if "learning_rate" in e]
    assert not (out / "checkpoints" / "checkpoint-4" / "optimizer.pt").exists()
    killed_before(out, "checkpoint-6")
    again = run.train_model(config)
    assert again["resumed_from"] == "checkpoint-4" and again["steps"] == 6
    state = json.loads((out / "checkpoints" / "checkpoint-6" / "trainer_state.json").read_text())
    resumed = [e["learning_rate"] for e in state["log_history"] if "learning_rate" in e]
    assert resumed[-2:] == pytest.approx(rates[-2:]) and rates[-2] != rates[-1]


def test_a_run_the_disk_cannot_hold_is_refused_in_one_line(
    medgrit_offline,
    finetune_dataset,
    tiny_vlm,
    tmp_path: Path,
) -> None:
    huge = tmp_path / "huge"
    shutil.copytree(tiny_vlm, huge)
    settings = json.loads((huge / "config.json").read_text())
    text = settings.get("text_config", settings)
    # about a trillion parameters: checkpoints of some 16 TB with the optimizer state
    text.update(hidden_size=32768, intermediate_size=131072, num_hidden_layers=64)
    text.update(layer_types=["full_attention"] * 64)
    text.update(num_attention_heads=64, num_key_value_heads=8)
    (huge / "config.json").write_text(json.dumps(settings))
    config = _config(
        tmp_path / "a", finetune_dataset, huge, finetune="full", save_steps=1, max_steps=9
    )
    done = medgrit_offline("finetune", "--config", str(config))
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stderr.count("\n") == 1, done.stderr
    assert "needs about" in done.stderr and "save_optimizer_state = false" in done.stderr
    assert not (tmp_path / "a" / "run").exists()


def test_the_box_format_follows_the_base_models_family(tiny_vlm, tmp_path: Path) -> None:
    from transformers import Qwen2VLConfig

    from medgrit.adapters.training.model import ModelError, settled
    from medgrit.schemas.finetune import FinetuneConfig

    def box_format(path: Path, **fields) -> str:
        config = FinetuneConfig(dataset="d", output_dir="o", model_name_or_path=str(path), **fields)
        return settled(config).box_format

    assert box_format(tiny_vlm) == "qwen2.5-absolute"
    qwen2 = tmp_path / "qwen2"
    Qwen2VLConfig().save_pretrained(qwen2)
    assert box_format(qwen2) == "qwen2-tokens"
    assert box_format(qwen2, box_format="qwen2.5-json") == "qwen2.5-json"
    assert box_format(tiny_vlm, box_format="qwen2.5-vl") == "qwen2.5-absolute"  # older name
    bert = tmp_path / "bert"
    bert.mkdir()
    (bert / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ModelError, match="bert"):
        box_format(bert)
