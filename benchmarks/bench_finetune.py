"""Benchmark of the fine-tune's training step against plain transformers ``Trainer`` + peft.

A demo dataset (``--images``) and a Qwen2.5-VL model with random weights are written: Qwen2.5-VL-
3B-Instruct's dimensions, vocabulary (151,936) and tied LM head, no download; each example is
about ``--seq`` tokens (BiRD's 2,048, about 80% image tokens). Each row runs in a process of its
own (``--row NAME``; its peak memory is its own) on the same examples, batch ``--batch``, with
gradient checkpointing:

- ``medgrit-lora``, ``medgrit-full``: the finetune flow's ``build_trainer`` (TRL's ``SFTTrainer``
  with its fused LM head loss, length-grouped batches padded to a multiple of 64, fused AdamW) on
  ``prepare_model``'s model (fp32 master weights for what trains, the frozen vision tower cut from
  backward). The LoRA row saves its adapter.
- ``baseline-lora``, ``baseline-full``: plain ``transformers.Trainer`` + peft on the same model,
  collator and examples, training the same parts (LoRA r=64 on the language model, or all of it;
  the merger) in the same precision (trained weights fp32, frozen ones bf16, bf16 autocast), its
  defaults otherwise: random order, padding to the longest, ``adamw_torch``, no detach.
- ``predict``: the LoRA adapter loaded in bf16 (``load_trained_model``) answers test turns with
  ``predict_lines``: answers per second, all text, logits finite (random weights: noise).

Training rows report, after the first ``--warmup`` steps: tokens (not padding) and samples per
second, peak GPU memory (``torch.cuda.max_memory_allocated``) and RSS, model TFLOP/s and MFU over
``--peak-tflops`` (989: H100 SXM dense bf16). Model FLOPs count each trained example's tokens
``s`` and image patches from its batch, with no recompute and no backward through the frozen
tower (``finetune_flops.py`` says how).

Run from the repository root (``train`` extra, ``pip install -e ./testing``): ``python
benchmarks/bench_finetune.py --json out.json`` on one CUDA GPU (about 6 minutes); ``--tiny`` runs
the same rows with the tiny model on a CPU, to check the script (bf16 autocast there too;
``--fp32`` is quicker). ``benchmarks/gpu_finetune.sh`` installs and runs it on a bare GPU machine.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from finetune_flops import ModelShape, batch_flops, model_shape

TRAIN_ROWS = {"medgrit": "medgrit (SFTTrainer)", "baseline": "baseline (Trainer + peft)"}
PREDICT_ROW = "prediction (LoRA, bf16)"


class StepMeter:
    """Times the steps after the first ``warmup`` and counts what they trained on: a forward
    pre-hook on the inner ``Qwen2_5_VLModel`` (once per batch: gradient checkpointing recomputes
    only its layers) reads the attention mask and image grids; a callback closes each step after
    a device sync."""

    def __init__(self, warmup: int, shape: ModelShape, mode: str) -> None:
        self.warmup, self.shape, self.mode = warmup, shape, mode
        self.start = self.end = 0.0
        self.steps = 0
        self.totals = self.step = (0, 0, 0, 0.0)  # tokens, samples, image tokens, FLOPs

    def attach(self, model: Any) -> None:
        parts = {"visual", "language_model"}
        inner = next(m for m in model.modules() if parts <= dict(m.named_children()).keys())
        inner.register_forward_pre_hook(self._count, with_kwargs=True)

    def _count(self, module: Any, args: tuple, kwargs: dict) -> None:
        if module.training:
            lengths = [int(n) for n in kwargs["attention_mask"].sum(dim=1).tolist()]
            thw = kwargs.get("image_grid_thw")
            grids = [tuple(int(x) for x in g) for g in (thw.tolist() if thw is not None else [])]
            images = sum(t * h * w for t, h, w in grids) // self.shape.merge**2
            flops = batch_flops(self.shape, self.mode, lengths, grids)
            self.step = _add(self.step, (sum(lengths), len(lengths), images, flops))

    def close_step(self, step: int) -> None:
        _sync()
        if step == self.warmup:
            self.start = time.perf_counter()
        elif step > self.warmup:
            self.end, self.steps = time.perf_counter(), self.steps + 1
            self.totals = _add(self.totals, self.step)
        self.step = (0, 0, 0, 0.0)

    def callback(self) -> Any:
        from transformers import TrainerCallback

        meter = self

        class StepEnd(TrainerCallback):
            def on_step_end(self, args, state, control, **kwargs):
                meter.close_step(state.global_step)

        return StepEnd()


def _add(a: tuple, b: tuple) -> tuple:
    return tuple(x + y for x, y in zip(a, b, strict=True))


def _sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _sig(value: float) -> float:
    return float(f"{value:.4g}")


def _memory() -> dict:
    import torch

    gpu = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else 0.0
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux
    return {"peak_gpu_gib": round(gpu, 2), "peak_rss_gib": round(rss, 2)}


def pixels_of(s: dict) -> int:
    """Pixels per image: about ``seq - 400`` image tokens of 28x28 pixels (the text the rest)."""
    return max(56 * 56, (s["seq"] - 400) * 28 * 28)


def row_config(s: dict, work: Path, mode: str, output: Path) -> Any:
    """A row's ``FinetuneConfig`` (its box format the written model's)."""
    from medgrit.adapters.training.model import settled
    from medgrit.schemas.finetune import FinetuneConfig

    gpu, pixels = not s["tiny"], pixels_of(s)
    fields = dict(dataset=str(work / "ds"), model_name_or_path=str(work / "model"), finetune=mode)
    fields |= dict(max_steps=s["steps"], per_device_train_batch_size=s["batch"], bf16=not s["fp32"])
    fields |= dict(optim="adamw_torch_fused" if gpu else "adamw_torch", min_pixels=pixels)
    fields |= dict(max_pixels=pixels, max_length=s["seq"] + 512, gradient_accumulation_steps=1)
    fields |= dict(dataloader_num_workers=s["workers"], save_steps=10**9, predict=False)
    return settled(FinetuneConfig(output_dir=str(output), **fields))


def stage_prepare(s: dict, work: Path) -> dict:
    """Dataset, model and examples, and what the examples hold."""
    import torch

    from medgrit.adapters.build import run_build
    from medgrit.adapters.export.records import read_records
    from medgrit.adapters.runtime.mappers import ThreadMapper
    from medgrit.adapters.training import run
    from medgrit.schemas.config import BuildConfig
    from medgrit_testing.tiny_vlm import write_model

    cuda = torch.cuda.is_available()
    if not cuda and not s["tiny"]:
        raise SystemExit("bench_finetune needs a CUDA GPU (or --tiny for a CPU run)")
    t0 = time.perf_counter()
    threads = ThreadMapper(max(2, min(8, os.cpu_count() or 2)))
    run_build(BuildConfig(out=str(work / "ds"), max_images=s["images"]), threads)
    records = read_records(work / "ds")
    turns = [q for split in records.splits.values() for r in split for q in r.qa]
    texts = [q.question + " " + q.answer for q in turns]
    pixels = dict(min_pixels=pixels_of(s), max_pixels=pixels_of(s))
    on_gpu = dict(dtype=torch.bfloat16, device="cuda") if cuda else {}
    shape = dict(shape="tiny", model_vocab=4096, tied=True) if s["tiny"] else dict(shape="3b")
    write_model(work / "model", texts, **shape, **pixels, **on_gpu)  # tiny: tied, vocab > ids
    config = row_config(s, work, "lora", work / "examples-run")
    run.start_run(config)
    run.prepare_examples(config)
    counted = model_shape(config.model_name_or_path, config.lora_r, config.lora_target_modules)
    held = examples_held(config, counted, work / "examples-run" / run.EXAMPLES)
    seconds = round(time.perf_counter() - t0, 1)
    return {"row": "prepare", "seconds": seconds, "model": asdict(counted)} | held


def examples_held(config: Any, shape: ModelShape, folder: Path) -> dict:
    """Read from the examples file: per example, tokens, image tokens, patches and model GFLOPs,
    and the share of tokens that carry a label."""
    import io

    from PIL import Image

    from medgrit.adapters.training import run
    from medgrit.adapters.training.examples import load_train_examples

    processor = run.load_processor(config)
    patch = int(processor.image_processor.patch_size)
    n = tokens = images = patches = labelled = 0
    flops = {"lora": 0.0, "full": 0.0}
    for row in load_train_examples(folder):
        w, h = processor.resized(*Image.open(io.BytesIO(row["png"])).size)
        grid = (1, h // patch, w // patch)
        n, tokens, patches = n + 1, tokens + row["length"], patches + grid[1] * grid[2]
        images += sum(1 for t in row["input_ids"] if t == processor.image_token_id)
        labelled += sum(1 for t in row["labels"] if t != -100)
        for mode in flops:
            flops[mode] += batch_flops(shape, mode, [row["length"]], [grid])
    per_example = {"tokens": tokens, "image_tokens": images, "patches": patches}
    held = {"examples": n} | {f"{k}_per_example": round(v / n, 1) for k, v in per_example.items()}
    held |= {"image_token_share": round(images / tokens, 3)}
    held |= {"labelled_share": round(labelled / tokens, 3)}
    return held | {"gflops_per_example": {m: _sig(f / n / 1e9) for m, f in flops.items()}}


def train_medgrit(config: Any, examples: Path, meter: StepMeter) -> Any:
    """The finetune flow's trainer on its prepared model; the LoRA run saves its model."""
    from medgrit.adapters.training import run
    from medgrit.adapters.training.examples import load_train_examples
    from medgrit.adapters.training.model import load_base_model, prepare_model
    from medgrit.adapters.training.trainer import MODEL, build_trainer

    out = Path(config.output_dir)
    processor = run.load_processor(config)
    model, _ = prepare_model(load_base_model(config.model_name_or_path, config), config)
    meter.attach(model)
    dataset = load_train_examples(examples)
    trainer = build_trainer(config, out, model, processor, dataset, (meter.callback(),))
    trainer.train()
    if config.finetune == "lora":
        trainer.save_model(str(out / MODEL))
        processor.save_pretrained(out / MODEL)
    return trainer


def train_baseline(config: Any, examples: Path, meter: StepMeter) -> Any:
    """Plain ``Trainer`` + peft: the same parts trained, in fp32 under bf16 autocast."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import Trainer, TrainingArguments

    from medgrit.adapters.training import run
    from medgrit.adapters.training.examples import load_train_examples
    from medgrit.adapters.training.model import load_base_model
    from medgrit.adapters.training.processor import TrainCollator

    processor = run.load_processor(config)
    model = load_base_model(config.model_name_or_path, config)  # bf16 unless --fp32
    full = config.finetune == "full"
    for name, param in model.named_parameters():  # the language model and the merger
        param.requires_grad_(full and ("visual" not in name or "merger" in name))
    if not full:
        targets = rf".*language_model\..*\.({'|'.join(config.lora_target_modules)})"
        lora = dict(r=config.lora_r, lora_alpha=config.lora_alpha, target_modules=targets)
        lora |= dict(lora_dropout=config.lora_dropout, modules_to_save=["merger"])
        model = get_peft_model(model, LoraConfig(**lora, task_type="CAUSAL_LM"))
    for param in model.parameters():
        if param.requires_grad:
            param.data = param.data.float()
    meter.attach(model)
    kwargs = dict(output_dir=str(Path(config.output_dir) / "trainer"), max_steps=config.max_steps)
    kwargs |= dict(learning_rate=config.learning_rate, bf16=config.bf16, optim="adamw_torch")
    kwargs |= dict(per_device_train_batch_size=config.per_device_train_batch_size)
    kwargs |= dict(
        gradient_checkpointing=True, gradient_checkpointing_kwargs={"use_reentrant": False}
    )
    kwargs |= dict(use_cpu=not torch.cuda.is_available(), remove_unused_columns=False)
    kwargs |= dict(dataloader_num_workers=config.dataloader_num_workers, save_strategy="no")
    kwargs |= dict(report_to="none", disable_tqdm=True, logging_steps=config.logging_steps)
    args = TrainingArguments(**kwargs, logging_first_step=True)
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=load_train_examples(examples),
        data_collator=TrainCollator(processor, None),
        callbacks=[meter.callback()],
    )
    trainer.train()
    return trainer


def stage_train(s: dict, work: Path, name: str) -> dict:
    """One training row (``medgrit-lora``, ``baseline-full``, ...)."""
    from medgrit.adapters.training.run import EXAMPLES

    kind, mode = name.split("-")
    config = row_config(s, work, mode, work / name)
    shape = ModelShape(**json.loads((work / "rows" / "prepare.json").read_text())["model"])
    meter = StepMeter(s["warmup"], shape, mode)
    runner = train_medgrit if kind == "medgrit" else train_baseline
    trainer = runner(config, work / "examples-run" / EXAMPLES, meter)
    seconds = meter.end - meter.start
    if meter.steps == 0 or seconds <= 0:
        raise RuntimeError(f"no step was timed: raise --steps above --warmup ({s['warmup']})")
    tokens, samples, images, flops = meter.totals
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    rates = {"tokens_per_s": tokens, "samples_per_s": samples, "model_tflops_per_s": flops / 1e12}
    row = {"row": TRAIN_ROWS[kind], "mode": mode, "steps_timed": meter.steps}
    row |= {"seconds": round(seconds, 3), "image_token_share": round(images / tokens, 3)}
    row |= {k: _sig(v / seconds) for k, v in rates.items()}
    row |= {"mfu": _sig(flops / seconds / (s["peak_tflops"] * 1e12))}
    return row | {"last_loss": _sig(losses[-1]) if losses else None, **_memory()}


def stage_predict(s: dict, work: Path) -> dict:
    """The LoRA row's saved adapter, loaded in bf16, answers test turns."""
    import torch

    from medgrit.adapters.export.records import read_records
    from medgrit.adapters.training import run
    from medgrit.adapters.training.examples import iter_prompts, select_test_items
    from medgrit.adapters.training.generate import predict_lines
    from medgrit.adapters.training.model import load_trained_model
    from medgrit.adapters.training.processor import collate
    from medgrit.adapters.training.trainer import MODEL

    config = row_config(s, work, "lora", work / "medgrit-lora").model_copy(update={"bf16": True})
    folder = str(work / "medgrit-lora" / MODEL)
    records, processor = read_records(work / "ds"), run.load_processor(config, folder)
    tasks = list(config.eval_tasks)
    chosen = select_test_items(records, tasks, s["predict_per_task"], "test")
    prompts = list(iter_prompts(records, processor, config.box_format, chosen, "test"))
    if not prompts:
        raise RuntimeError("the dataset has no test turns to answer: raise --images")
    model = load_trained_model(folder, config)
    model = model.to("cuda") if torch.cuda.is_available() else model
    limits = {task: s["new_tokens"] for task in tasks}
    _sync()
    t0 = time.perf_counter()
    lines = predict_lines(model, processor, prompts, 8, limits, config.box_format)
    _sync()
    seconds = time.perf_counter() - t0
    answers = [json.loads(line) for line in lines]
    batch = collate(processor, [prompts[0][0].input_ids], None, [prompts[0][1]], True)
    batch = {k: v.to(model.device) for k, v in batch.items()}
    batch["pixel_values"] = batch["pixel_values"].to(torch.bfloat16)
    with torch.inference_mode():
        finite = bool(torch.isfinite(model(**batch).logits.float()).all())
    row = {"row": PREDICT_ROW, "answers": len(answers), "seconds": round(seconds, 3)}
    row |= {"answers_per_s": _sig(len(answers) / seconds), "new_tokens": s["new_tokens"]}
    row |= {"all_text": all(isinstance(a.get("response"), str) for a in answers)}
    row |= {"answers_cut": sum(1 for a in answers if a.get("cut")), "logits_finite": finite}
    return row | _memory()


def run_stage(name: str, work: Path) -> None:
    """In a child process: one stage; its result, or its error, written as JSON."""
    import torch

    settings = json.loads((work / "settings.json").read_text(encoding="utf-8"))
    out = work / "rows" / f"{name}.json"
    stages = {"prepare": stage_prepare, "predict": stage_predict}
    try:
        stage = stages.get(name) or (lambda s, w: stage_train(s, w, name))
        result = stage(settings, work)
        result["device"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    except BaseException as exc:
        out.write_text(json.dumps({"row": name, "error": f"{type(exc).__name__}: {exc}"}) + "\n")
        raise
    out.write_text(json.dumps(result, indent=2) + "\n")


def run_child(name: str, work: Path, timeout: float, env: dict) -> dict:
    """One stage in a fresh Python process, in a session of its own so that a timeout also ends
    its data loader workers."""
    command = [sys.executable, str(Path(__file__).resolve()), "--row", name, "--work", str(work)]
    print(f"--- {name}", flush=True)
    t0 = time.perf_counter()
    child = subprocess.Popen(command, env=env, start_new_session=True)
    try:
        code = child.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(child.pid, signal.SIGKILL)
        child.wait()
        return {"row": name, "error": f"timed out after {timeout:.0f} s"}
    print(f"--- {name}: {time.perf_counter() - t0:.0f} s in all", flush=True)
    path = work / "rows" / f"{name}.json"
    if path.is_file():
        return json.loads(path.read_text(encoding="utf-8"))
    return {"row": name, "error": f"exit code {code}"}


def _parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--images", type=int, default=200, help="demo images to build")
    add("--seq", type=int, default=2048, help="target tokens per example (--tiny: 512 at most)")
    add("--batch", type=int, default=4)
    add("--steps", type=int, default=25)
    add("--warmup", type=int, default=5, help="first steps, not timed (at least 1)")
    add("--peak-tflops", type=float, default=989.0, help="989: H100 SXM dense bf16")
    add("--modes", default="lora,full", help="lora,full, lora or full")
    add("--workers", type=int, help="data loader workers (default 4 on a GPU, 0 on a CPU)")
    add("--predict-per-task", type=int, default=4, help="test turns answered per task")
    add("--new-tokens", type=int, default=32, help="new tokens per answer")
    add("--row-timeout", type=float, default=600.0, help="seconds each process may take")
    add("--tiny", action="store_true", help="the tiny model on a CPU, to check the script")
    add("--fp32", action="store_true", help="train without bf16 autocast (quicker on a CPU)")
    add("--json", type=Path, help="also write the results here")
    add("--work", type=Path, help="working folder, kept (default: a temporary one, removed)")
    add("--row", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.warmup < 1 or args.steps <= args.warmup:
        parser.error("--warmup must be at least 1 and below --steps")
    if not set(args.modes.split(",")) <= {"lora", "full"}:
        parser.error("--modes takes lora, full or lora,full")
    if args.row and not args.work:
        parser.error("--row needs --work")
    return args


COLUMNS = (  # key, heading, format
    ("steps_timed", "steps", ">5"),
    ("tokens_per_s", "tokens/s", ">9.0f"),
    ("samples_per_s", "samples/s", ">9.2f"),
    ("peak_gpu_gib", "GPU GiB", ">7.1f"),
    ("peak_rss_gib", "RSS GiB", ">7.1f"),
    ("model_tflops_per_s", "TFLOP/s", ">8.3g"),
    ("mfu", "MFU", ">6.3f"),
)


def summarise(result: dict, modes: list[str]) -> list[str]:
    """The table: a row per training run, medgrit's over the baseline's per mode (peak memory:
    the GPU's, on a CPU the RSS), the prediction check."""
    heads = " ".join(f"{h:{f.split('.')[0]}}" for _, h, f in COLUMNS)
    lines = [f"{'row':<26} {'mode':<5} {heads}"]
    for r in result["rows"]:
        cells = " ".join(f"{r[k]:{f}}" for k, _, f in COLUMNS) if "error" not in r else ""
        lines.append(f"{r['row']:<26} {r['mode']:<5} {cells or 'failed: ' + r['error']}")
    for mode in modes:
        pair = [r for r in result["rows"] if r["mode"] == mode and "error" not in r]
        if len(pair) == 2:  # medgrit's, then the baseline's
            ours, base = pair
            memory = "peak_gpu_gib" if base["peak_gpu_gib"] else "peak_rss_gib"
            ratio = {k: _sig(ours[k] / base[k]) for k in ("tokens_per_s", memory)}
            result["ratios"][mode] = ratio
            text = f"tokens/s {ratio['tokens_per_s']:.2f}x, {memory} {ratio[memory]:.2f}x"
            lines.append(f"{mode}: medgrit / baseline: {text}")
    p = result.get("prediction") or {}
    if "error" in p:
        lines.append(f"{PREDICT_ROW}: failed: {p['error']}")
    elif p:
        text = f"{p['answers']} answers in {p['seconds']:.1f} s ({p['answers_per_s']:.3g}/s), "
        lines.append(
            f"{PREDICT_ROW}: {text}all text: {p['all_text']}, finite: {p['logits_finite']}"
        )
    return lines


def main() -> None:
    args = _parse_args()
    if args.row:
        run_stage(args.row, args.work)
        return
    modes = args.modes.split(",")
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-finetune-"))
    (work / "rows").mkdir(parents=True, exist_ok=True)
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    settings["seq"] = min(args.seq, 512) if args.tiny else args.seq
    settings["workers"] = args.workers if args.workers is not None else (0 if args.tiny else 4)
    (work / "settings.json").write_text(json.dumps(settings, indent=2) + "\n", encoding="utf-8")
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false")
    env.setdefault("MEDGRIT_KEY_FILE", str(work / "pseudonym.key"))
    env.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
    if args.tiny:  # the CPU: one thread per process runs the tiny model's small ops fastest
        env |= {"CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": env.get("OMP_NUM_THREADS", "1")}
    result: dict[str, Any] = {"settings": settings, "rows": [], "ratios": {}}
    result["prepare"] = run_child("prepare", work, args.row_timeout, env)
    if "error" not in result["prepare"]:
        for mode in modes:
            for kind, label in TRAIN_ROWS.items():
                row = run_child(f"{kind}-{mode}", work, args.row_timeout, env)
                result["rows"].append(row | {"row": label, "mode": mode})
        if "lora" in modes:
            result["prediction"] = run_child("predict", work, args.row_timeout, env)
    result["device"] = result["prepare"].get("device", "?")
    held = {k: v for k, v in result["prepare"].items() if k not in ("model", "row", "device")}
    print(
        f"\ndevice: {result['device']}; batch {args.batch}; steps {args.steps} "
        f"({args.warmup} not timed); examples: {json.dumps(held)}"
    )
    print("\n".join(summarise(result, modes)))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)
    stages = [result["prepare"], *result["rows"], result.get("prediction", {})]
    if any("error" in r for r in stages):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
