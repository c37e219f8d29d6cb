"""What the truth checks catch and what they cost.

Part 1, lies caught: ``medgrit build --generator llm`` (the CLI, in a subprocess) against the
project's fake OpenAI-compatible provider in its lies mode (``lie_rate`` of the turns are fluent
lies of every class, the rest honest), with no second ask, so every turn is judged as sent. For
each lie class it prints the lies injected (the provider's ledger), caught (not in the dataset)
and kept (in the dataset: must be 0); and the honest turns injected and kept.

Part 2, cost: the verification of 100,000 template turns about random images (1-8 regions of a
vocabulary of 60 labels) as the build runs it (one :class:`ImageTruth` per image, then
:func:`check_turn` per turn), against the verifier of the previous release measured in the same
run (it checked boxes against the image, the ROC label and sided names, not what each box and
word says; read from git history, ``BASELINE_COMMIT``). Reported as microseconds per turn and
the ratio.

Run (from the repository root)::

    python benchmarks/bench_truth.py [--images 120] [--turns 100000] [--skip-build]
"""

from __future__ import annotations

import argparse
import collections
import os
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

import numpy as np

from medgrit.adapters.store.validate import read_table
from medgrit.adapters.text.templates import TemplateGenerator
from medgrit.core.generation import ImageFacts, RegionFacts
from medgrit.core.lexicon import lexicon_for
from medgrit.core.regions import to_bbox_1000
from medgrit.core.text import position_word, size_word
from medgrit.core.verify import ImageTruth, check_turn

BASELINE_COMMIT = "ade5242"  # the last commit before the claim reader
MODALITIES = (("ct", "axial"), ("mr", "coronal"), ("pet", "sagittal"), ("xray", "2d"))
ORGANS = (
    "liver", "spleen", "pancreas", "stomach", "gallbladder", "aorta", "esophagus", "duodenum",
    "heart", "trachea", "urinary bladder", "prostate", "liver tumour", "lesion", "polyp",
    "optic disc", "optic cup", "brainstem", "spinal cord", "sternum",
)  # fmt: skip
SIDED = ("kidney", "lung", "adrenal gland", "femur", "hippocampus", "humerus", "clavicle", "rib")
VOCABULARY = (*ORGANS, *(f"{s} {o}" for o in SIDED for s in ("left", "right")), *(
    f"vertebra L{i}" for i in range(1, 5)))  # fmt: skip


def lies_caught(images: int) -> None:
    from medgrit_testing.openai_server import LIE_CLASSES, ServerConfig, serve

    config = ServerConfig(rpm=6000, latency_ms=(1, 5), seed=3, lie_rate=0.3, api_key="sk-bench")
    with serve(config) as server, tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "ds"
        env = {
            **os.environ,
            "OPENAI_API_KEY": "sk-bench",
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        }
        command = [
            "medgrit", "build", "--out", str(out), "--max-images", str(images), "--generator",
            "llm", "--llm-model", "bench", "--llm-base-url", server.base_url, "--llm-rpm", "6000",
            "--llm-retry-invalid", "0",
        ]  # fmt: skip
        start = time.monotonic()
        result = subprocess.run(command, env=env, capture_output=True, text=True)
        print(f"build: exit {result.returncode} in {time.monotonic() - start:.0f} s")
        if result.returncode != 0:
            print(result.stderr[-2000:])
            return
        regions = {
            r["region_id"]: (r["label"], tuple(r["bbox_1000"])) for r in read_table(out, "regions")
        }
        kept = collections.Counter(
            (t["question"], t["answer"], frozenset(regions[i] for i in t["region_ids"]))
            for c in read_table(out, "conversations")
            for t in c["qa"]
        )
        ledger = server.lies()
        stats = server.stats()
    keys = {
        (
            lie["question"],
            lie["answer"],
            frozenset((r["label"], tuple(r["box"])) for r in lie["regions"]),
        ): lie["class"]
        for lie in ledger
    }
    injected = collections.Counter(lie["class"] for lie in ledger)
    kept_lies = collections.Counter()
    for key, count in kept.items():
        if key in keys:
            kept_lies[keys[key]] += count
    print("| lie class | injected | caught | kept |\n|---|---:|---:|---:|")
    for name in LIE_CLASSES:
        n = injected[name]
        print(f"| {name} | {n} | {n - kept_lies[name]} | {kept_lies[name]} |")
    total = sum(injected.values())
    print(f"| all lies | {total} | {total - sum(kept_lies.values())} | {sum(kept_lies.values())} |")
    honest_kept = sum(c for k, c in kept.items() if k not in keys)
    share = honest_kept / max(1, stats["honest_turns"])
    print(f"honest turns: injected {stats['honest_turns']}, kept {honest_kept} ({share:.1%})")


def random_images(count: int, seed: int = 0) -> list[tuple[ImageFacts, list[RegionFacts]]]:
    rng = np.random.default_rng(seed)
    out = []
    for n in range(count):
        modality, plane = MODALITIES[n % len(MODALITIES)]
        image = ImageFacts(f"img{n:06d}-a0000", modality, plane, 512, 512)
        labels = rng.choice(len(VOCABULARY), size=int(rng.integers(1, 9)), replace=False)
        regions = []
        for i, index in enumerate(labels):
            x0, y0 = (int(v) for v in rng.integers(0, 480, 2))
            x1, y1 = (
                x0 + int(rng.integers(8, 512 - x0 + 1)),
                y0 + int(rng.integers(8, 512 - y0 + 1)),
            )
            x1, y1 = min(x1, 512), min(y1, 512)
            bbox = (x0, y0, x1, y1)
            area = int(rng.integers(1, (x1 - x0) * (y1 - y0) + 1))
            regions.append(
                RegionFacts(
                    f"{image.image_id}-r{i:03d}",
                    VOCABULARY[index],
                    int(index) + 1,
                    0,
                    tuple(to_bbox_1000(bbox, 512, 512).tolist()),
                    area,  # type: ignore[arg-type]
                    position_word(bbox, 512, 512),
                    size_word(area, 512, 512),
                )
            )
        out.append((image, regions))
    return out


def baseline_verifier() -> types.ModuleType | None:
    try:
        source = subprocess.run(
            ["git", "show", f"{BASELINE_COMMIT}:core/verify.py"],
            check=True, capture_output=True, text=True,
        ).stdout  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return None
    module = types.ModuleType("baseline_verify")
    sys.modules[module.__name__] = module  # dataclasses look their module up
    exec(compile(source, "baseline_verify.py", "exec"), module.__dict__)
    return module


def cost(turns_wanted: int) -> None:
    generator = TemplateGenerator(seed=1, max_region_turns=3)
    work = []
    total = 0
    for image, regions in random_images(turns_wanted // 3):
        turns = generator.generate(image, regions)
        work.append((image, regions, turns))
        total += len(turns)
        if total >= turns_wanted:
            break
    lexicon = lexicon_for(frozenset(VOCABULARY))
    start = time.perf_counter()
    failures = 0
    for image, regions, turns in work:
        truth = ImageTruth(regions, image, lexicon)
        failures += sum(check_turn(qa, truth) is not None for qa in turns)
    new = time.perf_counter() - start
    print(f"turns: {total} over {len(work)} images; untrue by the new rules: {failures}")
    print(f"new verifier: {1e6 * new / total:.1f} us/turn ({new:.2f} s)")
    baseline = baseline_verifier()
    if baseline is None:
        print("baseline: not measured (no git history)")
        return
    start = time.perf_counter()
    for _, regions, turns in work:
        by_id = {r.region_id: r for r in regions}
        for qa in turns:
            baseline.verify_qa(qa, by_id)
    old = time.perf_counter() - start
    print(f"baseline verifier ({BASELINE_COMMIT}): {1e6 * old / total:.1f} us/turn ({old:.2f} s)")
    print(f"ratio new/baseline: {new / old:.2f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=120, help="images of the lies build")
    parser.add_argument("--turns", type=int, default=100_000, help="turns to verify for cost")
    parser.add_argument("--skip-build", action="store_true", help="only the cost part")
    args = parser.parse_args(argv)
    if not args.skip_build:
        lies_caught(args.images)
    cost(args.turns)
    return 0


if __name__ == "__main__":
    sys.exit(main())
