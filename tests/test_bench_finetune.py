"""``benchmarks/bench_finetune.py`` end to end on a CPU: the tiny model, every row in a process of
its own, the table printed and the results written as JSON."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.bench  # `make bench-check`: a minute of CPU, out of `make test`

if importlib.util.find_spec("trl") is None:  # found, not imported: the runs import it
    pytest.skip("the train extra is part of the test extra", allow_module_level=True)

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "bench_finetune.py"
TRAINING = ("medgrit (SFTTrainer)", "baseline (Trainer + peft)")


def _positive(value: object) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess, Path]:
    """The smallest complete run: LoRA (full fine-tuning takes the same code paths but the
    freezing), both trainers, then the prediction check."""
    folder = tmp_path_factory.mktemp("bench-finetune")
    out = folder / "result.json"
    command = [sys.executable, str(SCRIPT), "--tiny", "--fp32", "--images", "24", "--steps", "3"]
    command += ["--warmup", "1", "--predict-per-task", "1", "--new-tokens", "4", "--modes", "lora"]
    command += ["--work", str(folder / "work"), "--json", str(out)]
    env = dict(os.environ, PREFECT_SERVER_ANALYTICS_ENABLED="false", DO_NOT_TRACK="1")
    done = subprocess.run(
        command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, check=False
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done, out


def test_every_row_trains_and_is_measured(run) -> None:
    done, out = run
    result = json.loads(out.read_text(encoding="utf-8"))
    rows = {(r["row"], r["mode"]): r for r in result["rows"]}
    assert set(rows) == {(name, "lora") for name in TRAINING}
    for row in rows.values():
        assert "error" not in row, row
        assert row["steps_timed"] == 2  # the steps after the one warm-up step
        for key in ("tokens_per_s", "samples_per_s", "model_tflops_per_s", "mfu", "peak_rss_gib"):
            assert _positive(row[key]), (key, row)
        assert row["peak_gpu_gib"] == 0.0  # a CPU run
        assert 0 < row["image_token_share"] < 1
        assert math.isfinite(row["last_loss"])
        assert row["device"] == "cpu"
    # FLOPs per token of what each row trained on: near those of the examples file as a whole
    prepare = result["prepare"]
    for (_, mode), row in rows.items():
        per_token = row["model_tflops_per_s"] * 1e3 / row["tokens_per_s"]  # GFLOPs
        whole = prepare["gflops_per_example"][mode] / prepare["tokens_per_example"]
        assert per_token == pytest.approx(whole, rel=0.2)
    for mode in ("lora",):
        ratio = result["ratios"][mode]
        assert _positive(ratio["tokens_per_s"]) and _positive(ratio["peak_rss_gib"])
        assert f"{mode}: medgrit / baseline: tokens/s" in done.stdout
    for name in TRAINING:
        assert name in done.stdout


def test_examples_are_counted_from_the_examples_file(run) -> None:
    _, out = run
    prepare = json.loads(out.read_text(encoding="utf-8"))["prepare"]
    assert prepare["examples"] > 0
    # four patches per image token (merge size 2), images a share of every example
    assert prepare["patches_per_example"] == pytest.approx(
        4 * prepare["image_tokens_per_example"], abs=0.5
    )
    assert prepare["image_tokens_per_example"] < prepare["tokens_per_example"]
    assert 0 < prepare["labelled_share"] < 1
    model = prepare["model"]
    assert model["merge"] == 2 and model["layers"] == 2 and model["lora"] > 0
    assert all(_positive(g) for g in prepare["gflops_per_example"].values())


def test_the_saved_adapter_answers(run) -> None:
    done, out = run
    prediction = json.loads(out.read_text(encoding="utf-8"))["prediction"]
    assert "error" not in prediction, prediction
    assert prediction["answers"] >= 1
    assert _positive(prediction["answers_per_s"])
    assert prediction["all_text"] is True
    assert prediction["logits_finite"] is True
    adapter = out.parent / "work" / "medgrit-lora" / "model" / "adapter_config.json"
    assert adapter.is_file()
    assert "prediction (LoRA, bf16):" in done.stdout
