"""The finetune flow end to end: ``medgrit finetune --config FILE`` in a subprocess on a demo
dataset, with a tiny Qwen2.5-VL built from a config (random weights, a tokenizer trained on the
dataset's text), against the session's real Prefect server. No GPU, no model hub.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest

pytest.importorskip("trl", reason="the train extra is part of the test extra")

TASKS = ("VG", "ROC", "RC", "MIA")
PER_TASK = 3
# The tiny model's small ops run fastest on one thread a process; two threads each, beside the
# suite's other worker, spend most of their time waiting on each other.
ONE_THREAD = {"OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Runs in this process (resumed training, reloaded adapters) on one thread too."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def dataset(finetune_dataset: Path) -> Path:
    return finetune_dataset


@pytest.fixture(scope="module")
def model_dir(tiny_vlm: Path) -> Path:
    return tiny_vlm


def _config(folder: Path, dataset: Path, model_dir: Path, **fields) -> Path:
    """A TOML config in ``folder`` (relative paths, as users write them)."""
    values = {
        "dataset": str(dataset),
        "output_dir": "run",
        "model_name_or_path": str(model_dir),
        "bf16": False,
        "optim": "adamw_torch",
        "max_steps": 16,
        "learning_rate": 3e-3,
        "per_device_train_batch_size": 2,
        "gradient_accumulation_steps": 1,
        "logging_steps": 1,
        "save_steps": 8,
        "dataloader_num_workers": 0,
        "max_pixels": 84 * 84,  # not the tiny model's own 112 * 112: the override is saved
        "max_eval_samples": PER_TASK,
        "per_device_eval_batch_size": 4,
        **fields,
    }
    lines = []
    for key, value in values.items():
        if isinstance(value, Path):
            value = str(value)
        if isinstance(value, bool):
            lines.append(f"{key} = {str(value).lower()}")
        elif isinstance(value, str):
            lines.append(f"{key} = {json.dumps(value)}")
        else:
            lines.append(f"{key} = {value!r}")
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "finetune.toml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def finished(tmp_path_factory, medgrit, dataset: Path, model_dir: Path) -> tuple[Path, Path, str]:
    """One complete LoRA run through the CLI, in bf16 (CPU autocast) with the fused AdamW and
    two data-loader workers: (config file, output folder, stdout). A run into the same folder
    failed before, with a LoRA target the model lacks, after its examples."""
    folder = tmp_path_factory.mktemp("ft-run")
    wrong = _config(folder, dataset, model_dir, lora_target_modules=["nope"])
    failed = medgrit("finetune", "--config", str(wrong), env=ONE_THREAD)
    assert failed.returncode == 2, failed.stderr[-3000:]
    assert failed.stderr.strip().splitlines()[-1].startswith("medgrit: error: lora_target_modules")
    assert (folder / "run" / "examples").is_dir() and not (folder / "run" / "model").exists()
    # the fixed config runs into that folder: nothing was trained, so nothing binds it
    config = _config(
        folder,
        dataset,
        model_dir,
        bf16=True,
        optim="adamw_torch_fused",
        dataloader_num_workers=2,
    )
    done = medgrit("finetune", "--config", str(config), env=ONE_THREAD)
    assert done.returncode == 0, done.stderr[-3000:]
    return config, config.parent / "run", done.stdout


def _lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines()]


def test_the_run_trains_saves_predicts_and_scores(finished, dataset: Path) -> None:
    from medgrit.adapters.export.bird import test_items
    from medgrit.adapters.export.records import read_records

    _, out, stdout = finished
    record = json.loads((out / "finetune.json").read_text())
    losses = [loss for _, loss in record["steps"]["train"]["losses"]]
    assert len(losses) == 16 and all(map(lambda v: v == v and abs(v) < 1e4, losses))
    assert sum(losses[-4:]) / 4 < sum(losses[:4]) / 4 - 0.03, losses  # falling
    assert (out / "model" / "adapter_config.json").is_file()
    saved = json.loads((out / "model" / "preprocessor_config.json").read_text())
    assert saved["size"]["longest_edge"] == 84 * 84
    assert (out / "model" / "tokenizer.json").is_file()

    items = test_items(read_records(dataset))
    predictions = _lines(out / "predictions.jsonl")
    assert {p["task"] for p in predictions} == set(TASKS)
    for task in TASKS:
        expected = min(PER_TASK, sum(it.task == task for it in items))
        assert sum(p["task"] == task for p in predictions) == expected
    references = {(it.question, it.task): it.answer for it in items}
    for p in predictions:
        assert set(p) >= {"id", "image", "question", "annotation", "response", "task"}
        assert references[(p["question"], p["task"])] == p["annotation"]
        assert p["image"] == f"{p['id']}.png"
    baseline = _lines(out / "baseline.jsonl")
    assert [(b["id"], b["question"]) for b in baseline] == [
        (p["id"], p["question"]) for p in predictions
    ]

    metrics = json.loads((out / "metrics.json").read_text())
    for who in ("model", "baseline"):
        assert set(metrics[who]) == set(TASKS)
        assert sum(metrics[who]["VG"]["samples"].values()) == sum(
            p["task"] == "VG" for p in predictions
        )
    assert "recall@0.5" in metrics["model"]["VG"]["present_mean"]
    for task in TASKS:
        assert task in stdout
    assert "model saved to" in stdout


def test_the_saved_adapter_reloads_and_answers_as_the_run_did(finished, dataset: Path) -> None:
    from safetensors import safe_open

    from medgrit.adapters.export.records import read_records
    from medgrit.adapters.training.examples import iter_prompts, select_test_items
    from medgrit.adapters.training.generate import predict_lines
    from medgrit.adapters.training.model import load_trained_model
    from medgrit.adapters.training.processor import VisionChatProcessor
    from medgrit.schemas.finetune import FinetuneConfig

    _, out, _ = finished
    record = json.loads((out / "finetune.json").read_text())
    config = FinetuneConfig.model_validate(record["config"])
    assert config.box_format == "qwen2.5-absolute"  # "auto" on a Qwen2.5-VL base
    with safe_open(str(out / "model" / "adapter_model.safetensors"), "pt") as weights:
        names = list(weights.keys())
        lora_b = [n for n in names if "lora_B" in n]
        assert lora_b and all("language_model" in n for n in lora_b)
        assert any(weights.get_tensor(n).abs().sum() > 0 for n in lora_b)  # trained from zero
        # bf16 autocast, fp32 master weights: what trained is saved in fp32
        assert {str(weights.get_tensor(n).dtype) for n in lora_b} == {"torch.float32"}
        assert any("merger" in n for n in names)  # the merger trains whole, saved with it
        assert not any("visual.blocks" in n for n in names)  # the vision tower stays frozen
    records = read_records(dataset)
    processor = VisionChatProcessor.from_pretrained(out / "model")
    model = load_trained_model(str(out / "model"), config)
    chosen = select_test_items(records, list(TASKS), PER_TASK)
    again = predict_lines(
        model,
        processor,
        iter_prompts(records, processor, config.box_format, chosen),
        config.per_device_eval_batch_size,
        record["steps"]["predict"]["max_new_tokens"],
        config.box_format,
    )
    assert [json.loads(x) for x in again] == _lines(out / "predictions.jsonl")


def test_the_flow_publishes_its_tables(finished, prefect_server: str) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.settings import PREFECT_API_URL, temporary_settings

    keys = [f"medgrit-finetune-run-{p}" for p in ("examples", "training", "vg", "roc", "rc", "mia")]
    with temporary_settings({PREFECT_API_URL: prefect_server}):
        with get_client(sync_client=True) as client:
            found = client.read_artifacts(
                artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=keys))
            )
    latest = {a.key: a for a in sorted(found, key=lambda a: a.created)}
    assert set(latest) == set(keys)
    vg = json.loads(latest["medgrit-finetune-run-vg"].data)
    assert vg[-1]["modality"] == "mean over present"
    assert {"recall@0.5", "baseline recall@0.5"} <= set(vg[0])
    training = json.loads(latest["medgrit-finetune-run-training"].data)
    assert [row["step"] for row in training] == list(range(1, 17))


def test_the_same_command_again_redoes_nothing(finished, medgrit) -> None:
    config, out, _ = finished
    before = (out / "finetune.json").read_text()
    stamps = {p: p.stat().st_mtime_ns for p in (out / "model").iterdir()}
    again = medgrit("finetune", "--config", str(config), env=ONE_THREAD)
    assert again.returncode == 0, again.stderr[-2000:]
    assert json.loads((out / "finetune.json").read_text())["steps"] == json.loads(before)["steps"]
    assert {p: p.stat().st_mtime_ns for p in (out / "model").iterdir()} == stamps


def test_other_training_settings_are_refused_in_one_line(finished, medgrit) -> None:
    config, _, _ = finished
    text = config.read_text().replace("learning_rate = 0.003", "learning_rate = 0.001")
    other = config.with_name("other.toml")
    other.write_text(text)
    done = medgrit("finetune", "--config", str(other), env=ONE_THREAD)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "learning_rate" in done.stderr
    assert "use a new output_dir" in done.stderr


def _in_process_config(dataset: Path, model_dir: Path, out: Path, **fields):
    """A CPU config of two examples a step for the tiny model, for runs without the CLI."""
    from medgrit.schemas.finetune import FinetuneConfig

    return FinetuneConfig(
        dataset=str(dataset),
        output_dir=str(out),
        model_name_or_path=str(model_dir),
        bf16=False,
        optim="adamw_torch",
        per_device_train_batch_size=2,
        gradient_accumulation_steps=1,
        logging_steps=1,
        dataloader_num_workers=0,
        max_pixels=112 * 112,
        **fields,
    )


def killed_before(out: Path, checkpoint: str) -> None:
    """Leave ``out`` as a kill while ``checkpoint`` was written would: no such checkpoint, no
    model, no training step in the run's record."""
    shutil.rmtree(out / "checkpoints" / checkpoint)
    shutil.rmtree(out / "model")
    record = json.loads((out / "finetune.json").read_text())
    del record["steps"]["train"]
    (out / "finetune.json").write_text(json.dumps(record))


def test_a_killed_training_resumes_from_its_last_checkpoint(dataset, model_dir, tmp_path) -> None:
    from medgrit.adapters.training import run

    config = _in_process_config(
        dataset, model_dir, tmp_path / "run", max_steps=6, save_steps=3, save_total_limit=None
    )
    run.start_run(config)
    run.prepare_examples(config)
    first = run.train_model(config)
    assert first["steps"] == 6 and first["resumed_from"] is None
    # what a kill after the checkpoint of step 3 leaves: no later checkpoint, no model, no record
    out = Path(config.output_dir)
    killed_before(out, "checkpoint-6")
    # and a checkpoint cut off while it was written (no trainer_state.json): never resumed from
    (out / "checkpoints" / "checkpoint-5").mkdir()
    (out / "checkpoints" / "checkpoint-5" / "model.safetensors").write_bytes(b"half")
    second = run.train_model(config)
    assert second["resumed_from"] == "checkpoint-3" and second["steps"] == 6
    assert (out / "model" / "adapter_model.safetensors").is_file()
    assert [s for s, _ in second["losses"][-3:]] == [4, 5, 6]
    assert [v for _, v in second["losses"][-3:]] == pytest.approx(
        [v for _, v in first["losses"][-3:]], rel=1e-4
    )


def test_torchrun_trains_data_parallel_without_code_changes(dataset, model_dir, tmp_path) -> None:
    from medgrit.adapters.training import run

    config = _in_process_config(dataset, model_dir, tmp_path / "run", max_steps=4, num_processes=2)
    run.start_run(config)
    examples = run.prepare_examples(config)
    result = run.train_model(config)
    # two processes of two examples a step: each process takes every other example (one more
    # when they do not split evenly), so an epoch is ceil(ceil(n / 2) / 2) steps
    steps_per_epoch = math.ceil(math.ceil(examples["examples"] / 2) / 2)
    assert result["epochs"] == pytest.approx(4 / steps_per_epoch, rel=1e-6)
    assert (Path(config.output_dir) / "model" / "adapter_model.safetensors").is_file()


def test_config_problems_are_one_line_before_anything_runs(
    medgrit_offline, dataset, model_dir, tmp_path
) -> None:
    def refused(config: Path, *words: str) -> None:
        done = medgrit_offline("finetune", "--config", str(config))
        assert done.returncode == 2, done.stderr
        assert done.stderr.count("\n") == 1, done.stderr
        for word in words:
            assert word in done.stderr, done.stderr
        assert not (config.parent / "run").exists()

    refused(_config(tmp_path / "a", dataset, model_dir, learning_rate=-1.0), "learning_rate")
    refused(_config(tmp_path / "b", dataset, model_dir, epochs=2), "epochs", "Extra inputs")
    refused(_config(tmp_path / "c", tmp_path / "nothing", model_dir), "dataset", "no such")
    refused(_config(tmp_path / "d", dataset, tmp_path), "config.json")
    refused(_config(tmp_path / "e", dataset, "not a hub id"), "hub id")
    refused(_config(tmp_path / "f", dataset, model_dir, box_format="pixels"), "box_format")
    refused(
        _config(tmp_path / "g", dataset, model_dir, finetune="lora", train_language_model=False),
        "train_language_model",
    )
    foreign = _config(tmp_path / "h", dataset, model_dir)
    (foreign.parent / "run").mkdir()
    (foreign.parent / "run" / "notes.txt").write_text("mine")
    done = medgrit_offline("finetune", "--config", str(foreign))
    assert done.returncode == 2 and "not empty" in done.stderr
    assert (foreign.parent / "run" / "notes.txt").read_text() == "mine"
    partial = tmp_path / "partial"
    shutil.copytree(dataset, partial)
    manifest = json.loads((partial / "dataset.json").read_text())
    manifest["status"] = "running"
    (partial / "dataset.json").write_text(json.dumps(manifest))
    refused(_config(tmp_path / "i", partial, model_dir), "not a complete build")
    refused(_config(tmp_path / "k", dataset, model_dir, seed=-1), "seed")
    bert = tmp_path / "bert"
    shutil.copytree(model_dir, bert)
    (bert / "config.json").write_text(json.dumps({"model_type": "bert"}))
    refused(_config(tmp_path / "l", dataset, bert), "is a bert model")
    (bert / "config.json").write_text("{not json")
    refused(_config(tmp_path / "m", dataset, bert), "cannot read the model config")
    damaged = tmp_path / "damaged"
    shutil.copytree(dataset, damaged)
    (damaged / "conversations" / "part-00000.parquet").write_bytes(b"garbage")
    refused(_config(tmp_path / "n", damaged, model_dir), "not readable Parquet")
    (damaged / "conversations" / "part-00000.parquet").unlink()
    refused(_config(tmp_path / "o", damaged, model_dir), "lacks", "medgrit validate")
    (tmp_path / "j").mkdir()
    bad = tmp_path / "j" / "finetune.json"
    bad.write_text("{}")
    done = medgrit_offline("finetune", "--config", str(bad))
    assert done.returncode == 2 and ".toml, .yaml or .yml" in done.stderr


def test_a_rebuilt_dataset_changes_the_fingerprint(dataset: Path, tmp_path: Path) -> None:
    import hashlib

    from medgrit.adapters.training.run import dataset_fingerprint

    copy = tmp_path / "ds"
    shutil.copytree(dataset, copy)
    before = dataset_fingerprint(copy)
    assert before == dataset_fingerprint(dataset) != hashlib.sha256(b"").hexdigest()
    manifest = json.loads((copy / "dataset.json").read_text())
    files = manifest["shards"][-1]["files"]
    files[next(iter(files))] = "0" * 64  # a shard rebuilt with other contents
    (copy / "dataset.json").write_text(json.dumps(manifest))
    assert dataset_fingerprint(copy) != before


def test_the_defaults_and_the_example_config_are_birds_recipe() -> None:
    from medgrit.cli.finetune import load_finetune_config
    from medgrit.schemas.finetune import FinetuneConfig

    example = load_finetune_config(Path(__file__).parents[1] / "examples" / "finetune.toml")
    defaults = FinetuneConfig(dataset=example.dataset, output_dir=example.output_dir)
    assert example == defaults  # the example spells out the defaults
    recipe = (
        defaults.num_train_epochs,
        defaults.lr_scheduler_type,
        defaults.warmup_ratio,
        defaults.weight_decay,
        defaults.adam_beta2,
        defaults.max_length,
        defaults.bf16,
    )
    assert recipe == (2, "cosine", 0.01, 0.1, 0.95, 2048, True)
    assert not defaults.train_vision_tower and defaults.train_merger
    assert defaults.train_language_model and defaults.max_new_tokens == {}
    assert (defaults.finetune, defaults.learning_rate, defaults.merger_learning_rate) == (
        "lora",
        2e-4,
        2e-5,
    )
    full = FinetuneConfig(dataset="d", output_dir="o", finetune="full")
    assert full.learning_rate == 2e-5  # BiRD's, for a full fine-tune
    assert defaults.save_total_limit == 1 and defaults.box_format == "auto"
    assert Path(example.dataset).is_absolute() and Path(example.output_dir).is_absolute()
