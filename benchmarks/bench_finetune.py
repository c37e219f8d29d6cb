"""Benchmark of the fine-tune's training step against plain transformers ``Trainer`` + peft.

What it measures
----------------
A demo dataset is built (``--images``, default 400) and a Qwen2.5-VL model is written from a
config with random weights (``--shape 3b``: Qwen2.5-VL-3B-Instruct's dimensions; no download),
with the image processor's ``min_pixels`` raised so that each example is about ``--seq`` tokens
(default 2048), BiRD's sequence length. Then, in one run and on the same examples:

- ``medgrit``: the finetune flow's training step (``medgrit.adapters.training.trainer.train``:
  TRL's ``SFTTrainer``, length-grouped batches padded to a multiple of 64, the fused AdamW, TRL's
  fused LM head loss), LoRA r=64 and the full language model;
- ``baseline``: plain ``transformers.Trainer`` with peft, the same model, collator and examples,
  its defaults otherwise (random order, padding to the longest, ``adamw_torch``).

Both train with bf16, gradient checkpointing, the vision tower frozen, batch ``--batch`` (4).
Each row reports tokens per second (tokens that are not padding), samples per second, peak GPU
memory (``torch.cuda.max_memory_allocated``) and an estimated model FLOP utilisation:
``flops/token * tokens/s / peak``, with 6 N flops per token for full fine-tuning and 4 N for
LoRA (no weight gradients of the frozen base) plus 2 N for the recomputed forward of gradient
checkpointing, N the language model's parameters, and ``--peak-tflops`` (989, an H200's dense
bf16). The first ``--warmup`` steps of each row are not timed.

Needs the ``train`` extra and a CUDA GPU; ``--tiny`` runs the same rows on the CPU with the tiny
model, to check the script.

Run (from the repository root)::

    python benchmarks/bench_finetune.py                 # on a GPU
    python benchmarks/bench_finetune.py --tiny --steps 4
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path


def _build(out: Path, images: int) -> Path:
    from medgrit.adapters.build import run_build
    from medgrit.adapters.runtime.mappers import ThreadMapper
    from medgrit.schemas.config import BuildConfig

    run_build(BuildConfig(out=str(out), max_images=images), ThreadMapper(2))
    return out


class StepTimer:
    """A ``TrainerCallback`` timing the steps after the first ``warmup``, with the trainer's own
    count of the tokens that are not padding (``include_num_input_tokens_seen``), which is kept
    in the main process whatever the number of data loader workers."""

    def __init__(self, warmup: int) -> None:
        from transformers import TrainerCallback

        timer = self

        class _Callback(TrainerCallback):
            def on_step_begin(self, args, state, control, **kwargs):
                if state.global_step == warmup:
                    timer.sync()
                    timer.start = time.perf_counter()
                    timer.tokens_start = state.num_input_tokens_seen

            def on_step_end(self, args, state, control, **kwargs):
                timer.sync()
                timer.end = time.perf_counter()
                timer.steps = state.global_step - warmup
                timer.tokens_end = state.num_input_tokens_seen

        self.callback = _Callback()
        self.start = self.end = 0.0
        self.tokens_start = self.tokens_end = 0
        self.steps = 0

    @staticmethod
    def sync() -> None:
        import torch

        if torch.cuda.is_available():
            torch.cuda.synchronize()


def _row(name, config, timer, params_lm, peak_tflops) -> dict:
    import torch

    seconds = max(timer.end - timer.start, 1e-9)
    tokens_s = (timer.tokens_end - timer.tokens_start) / seconds
    samples = timer.steps * config.per_device_train_batch_size * config.gradient_accumulation_steps
    per_token = (6 if config.finetune == "full" else 4) * params_lm
    if config.gradient_checkpointing:
        per_token += 2 * params_lm
    peak = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else 0.0
    return {
        "row": name,
        "mode": config.finetune,
        "steps_timed": timer.steps,
        "tokens_per_s": round(tokens_s, 1),
        "samples_per_s": round(samples / seconds, 3),
        "peak_gpu_gib": round(peak, 2),
        "est_mfu": round(per_token * tokens_s / (peak_tflops * 1e12), 4),
    }


def run_medgrit(config, warmup: int, params_lm: int, peak: float) -> dict:
    """The finetune flow's training step (SFTTrainer), timed by callbacks."""
    import torch
    from trl import SFTTrainer

    from medgrit.adapters.training.examples import load_train_examples
    from medgrit.adapters.training.model import load_base_model, prepare_model
    from medgrit.adapters.training.processor import TrainCollator, VisionChatProcessor
    from medgrit.adapters.training.trainer import sft_config

    out = Path(config.output_dir)
    processor = VisionChatProcessor.from_pretrained(
        config.model_name_or_path, config.min_pixels, config.max_pixels
    )
    model, _ = prepare_model(load_base_model(config.model_name_or_path, config), config)
    timer = StepTimer(warmup)
    args = sft_config(config, out)
    args.save_strategy = "no"
    args.include_num_input_tokens_seen = "non_padding"
    torch.cuda.reset_peak_memory_stats() if torch.cuda.is_available() else None
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=load_train_examples(out / "examples"),
        data_collator=TrainCollator(processor, config.pad_to_multiple_of),
        processing_class=processor.tokenizer,
        callbacks=[timer.callback],
    )
    trainer.train()
    return _row("medgrit (SFTTrainer)", config, timer, params_lm, peak)


def run_baseline(config, warmup: int, params_lm: int, peak: float) -> dict:
    """Plain transformers Trainer + peft on the same model, collator and examples."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import Trainer, TrainingArguments

    from medgrit.adapters.training.examples import load_train_examples
    from medgrit.adapters.training.model import load_base_model
    from medgrit.adapters.training.processor import TrainCollator, VisionChatProcessor

    out = Path(config.output_dir)
    processor = VisionChatProcessor.from_pretrained(
        config.model_name_or_path, config.min_pixels, config.max_pixels
    )
    model = load_base_model(config.model_name_or_path, config)
    for name, param in model.named_parameters():  # what medgrit trains: LM and merger
        param.requires_grad_(
            config.finetune == "full" and ("visual" not in name or "merger" in name)
        )
    if config.finetune == "lora":
        layers = "|".join(config.lora_target_modules)
        model = get_peft_model(
            model,
            LoraConfig(
                r=config.lora_r,
                lora_alpha=config.lora_alpha,
                target_modules=rf".*language_model\..*\.({layers})",
                modules_to_save=["merger"],
                task_type="CAUSAL_LM",
            ),
        )
    timer = StepTimer(warmup)
    args = TrainingArguments(
        output_dir=str(out / "baseline"),
        max_steps=config.max_steps,
        learning_rate=config.learning_rate,
        per_device_train_batch_size=config.per_device_train_batch_size,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        gradient_checkpointing=config.gradient_checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False},
        bf16=config.bf16,
        use_cpu=not torch.cuda.is_available(),
        remove_unused_columns=False,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        logging_steps=10**9,
        dataloader_num_workers=config.dataloader_num_workers,
        include_num_input_tokens_seen="non_padding",
    )
    torch.cuda.reset_peak_memory_stats() if torch.cuda.is_available() else None
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=load_train_examples(out / "examples"),
        data_collator=TrainCollator(processor, None),
        callbacks=[timer.callback],
    )
    trainer.train()
    return _row("baseline (Trainer + peft)", config, timer, params_lm, peak)


def _parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=400)
    parser.add_argument("--shape", default="3b", choices=["3b", "tiny"])
    parser.add_argument("--seq", type=int, default=2048, help="target tokens per example")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--peak-tflops", type=float, default=989.0)
    parser.add_argument("--modes", default="lora,full")
    parser.add_argument("--tiny", action="store_true", help="CPU smoke run with the tiny model")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    return parser.parse_args()


def _print_results(rows: list[dict], modes: list[str]) -> None:
    """A row per run (throughput, memory, MFU), then medgrit's throughput over the baseline's
    per fine-tune mode."""
    print(f"{'row':<28} {'mode':<5} {'tokens/s':>10} {'samples/s':>10} {'GiB':>7} {'MFU':>7}")
    for r in rows:
        print(
            f"{r['row']:<28} {r['mode']:<5} {r['tokens_per_s']:>10.0f} "
            f"{r['samples_per_s']:>10.2f} {r['peak_gpu_gib']:>7.1f} {r['est_mfu']:>7.3f}"
        )
    for mode in modes:
        ours = next(r for r in rows if r["mode"] == mode and r["row"].startswith("medgrit"))
        theirs = next(r for r in rows if r["mode"] == mode and r["row"].startswith("baseline"))
        ratio = ours["tokens_per_s"] / max(theirs["tokens_per_s"], 1e-9)
        print(f"{mode}: medgrit / baseline tokens/s = {ratio:.2f}x")


def main() -> None:
    args = _parse_args()

    import torch

    from medgrit.adapters.export.records import read_records
    from medgrit.adapters.training import run
    from medgrit.schemas.finetune import FinetuneConfig
    from medgrit_testing.tiny_vlm import write_model

    cuda = torch.cuda.is_available()
    if not cuda and not args.tiny:
        raise SystemExit("bench_finetune needs a CUDA GPU (or --tiny for a CPU smoke run)")
    shape = "tiny" if args.tiny else args.shape
    seq = min(args.seq, 512) if args.tiny else args.seq
    work = Path(tempfile.mkdtemp(prefix="bench-finetune-"))
    os.environ.setdefault("MEDGRIT_KEY_FILE", str(work / "key"))
    t0 = time.perf_counter()
    dataset = _build(work / "ds", args.images)
    records = read_records(dataset)
    texts = [q.question + " " + q.answer for s in records.splits.values() for r in s for q in r.qa]
    # about seq - 400 image tokens per example (text turns take the rest), 28x28 pixels each
    pixels = max(56 * 56, (seq - 400) * 28 * 28)
    model_dir = write_model(
        work / "model", texts, shape=shape, min_pixels=pixels, max_pixels=pixels
    )
    print(f"dataset and model in {time.perf_counter() - t0:.0f} s ({work})", flush=True)

    rows = []
    for mode in args.modes.split(","):
        for name, runner in (("medgrit", run_medgrit), ("baseline", run_baseline)):
            config = FinetuneConfig(
                dataset=str(dataset),
                output_dir=str(work / f"{name}-{mode}"),
                model_name_or_path=str(model_dir),
                finetune=mode,
                max_steps=args.steps,
                per_device_train_batch_size=args.batch,
                gradient_accumulation_steps=1,
                bf16=cuda,
                optim="adamw_torch_fused" if cuda else "adamw_torch",
                max_length=seq + 512,
                min_pixels=pixels,
                max_pixels=pixels,
                dataloader_num_workers=4 if cuda else 0,
                predict=False,
            )
            run.start_run(config)
            stats = run.prepare_examples(config)
            base = run.load_processor(config)
            del base
            from medgrit.adapters.training.model import load_base_model

            lm = load_base_model(str(model_dir), config).model.language_model
            params_lm = sum(p.numel() for p in lm.parameters())
            del lm
            row = runner(config, args.warmup, params_lm, args.peak_tflops)
            row["mean_example_tokens"] = round(stats["tokens"] / stats["examples"], 1)
            rows.append(row)
            print(json.dumps(row), flush=True)
            if cuda:
                torch.cuda.empty_cache()

    device = torch.cuda.get_device_name(0) if cuda else platform.processor() or "cpu"
    print(f"\ndevice: {device}; shape {shape}; batch {args.batch}; steps {args.steps}")
    _print_results(rows, args.modes.split(","))
    if args.json:
        args.json.write_text(json.dumps({"device": device, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
