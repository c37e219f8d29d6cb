"""What the truth checks keep, what they catch, and what they cost.

Part 1, honest turns kept: ``medgrit build --generator llm`` (the CLI, in a subprocess) against
the project's fake OpenAI-compatible provider answering honestly, with no second ask, in its
``plain`` style (fixed templates) and its ``paraphrase`` style (fluent clinical prose: synonyms,
body parts, sides, halves, relations). For each task it prints the turns sent (kept plus
rejected), kept and the keep rate, then the reasons of the honest turns rejected, each with an
example detail, read from the dataset's rejects table.

Part 2, natural answers: the hand-written answers of ``benchmarks/data/natural_honest*.json``
(``medgrit_testing.natural_turns``: turns written in free prose from an image's facts by writers
who did not read the verifier) checked with :func:`check_turn`, with the build's text rules:
keep rate per task and reject reasons. Then the lies of ``natural_lies*.json`` (each turn with
its ``class``): lies kept per class, which must be 0.

Part 3, lies caught: the provider's lies mode (half the turns are fluent lies of every class, the
rest honest), in both styles. For each lie class: the lies injected (the provider's ledger),
caught (not in the dataset) and kept (in the dataset: must be 0), and each lie kept; and the
honest turns injected and kept.

The cost of verification per turn is measured by ``benchmarks/bench_verify_cost.py``.

Run (from the repository root; about six minutes, four of them the four builds)::

    python benchmarks/bench_truth.py [--images 120] [--skip-build]
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medgrit.adapters.store.validate import read_table
from medgrit.adapters.text.templates import make_environment
from medgrit.core.generation import ImageFacts, RegionFacts
from medgrit.core.lexicon import lexicon_for
from medgrit.core.regions import to_bbox_1000
from medgrit.core.text import position_word, size_word
from medgrit.core.verify import ImageTruth, TextRules, check_turn
from medgrit.core.vocab import TASKS
from medgrit_testing.natural_turns import NaturalTurn, load_turns

BASELINE_COMMIT = "ade5242"  # the last commit before the claim reader
DATA = Path(__file__).parent / "data"
MODALITIES = (("ct", "axial"), ("mr", "coronal"), ("pet", "sagittal"), ("xray", "2d"))
ORGANS = (
    "liver", "spleen", "pancreas", "stomach", "gallbladder", "aorta", "esophagus", "duodenum",
    "heart", "trachea", "urinary bladder", "prostate", "liver tumour", "lesion", "polyp",
    "optic disc", "optic cup", "brainstem", "spinal cord", "sternum",
)  # fmt: skip
SIDED = ("kidney", "lung", "adrenal gland", "femur", "hippocampus", "humerus", "clavicle", "rib")
VOCABULARY = (*ORGANS, *(f"{s} {o}" for o in SIDED for s in ("left", "right")), *(
    f"vertebra L{i}" for i in range(1, 5)))  # fmt: skip
_TURN_DETAIL = re.compile(r"turn \d+ \((MIA|VG|ROC|RC)\)")


@dataclass
class Build:
    """What one build against the provider gave: the turns kept (as ledger keys, by task), the
    rejected turns (task, reason, detail), the provider's stats and lie ledger."""

    kept: collections.Counter
    kept_tasks: collections.Counter
    rejected: list[tuple[str, str, str]]
    stats: dict
    ledger: list[dict]


def run_build(images: int, **config: object) -> Build | None:
    """``medgrit build`` of ``images`` images against a provider of this configuration."""
    from medgrit_testing.openai_server import ServerConfig, serve

    server_config = ServerConfig(rpm=6000, latency_ms=(1, 5), seed=3, api_key="sk-bench", **config)
    with serve(server_config) as server, tempfile.TemporaryDirectory() as tmp:
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
        print(f"build ({config}): exit {result.returncode} in {time.monotonic() - start:.0f} s")
        if result.returncode != 0:
            print(result.stderr[-2000:])
            return None
        regions = {
            r["region_id"]: (r["label"], tuple(r["bbox_1000"])) for r in read_table(out, "regions")
        }
        turns = [t for c in read_table(out, "conversations") for t in c["qa"]]
        kept = collections.Counter(
            (t["question"], t["answer"], frozenset(regions[i] for i in t["region_ids"]))
            for t in turns
        )
        rejected = []
        for row in read_table(out, "rejects"):
            match = _TURN_DETAIL.search(row["detail"])
            if match:
                rejected.append((match[1], row["reason"], row["detail"]))
        tasks = collections.Counter(t["task"] for t in turns)
        return Build(kept, tasks, rejected, server.stats(), server.lies())


def ledger_keys(ledger: list[dict]) -> dict:
    """Each lie's key (question, answer, regions), as the dataset's turns are keyed: its class."""
    return {
        (
            lie["question"],
            lie["answer"],
            frozenset((r["label"], tuple(r["box"])) for r in lie["regions"]),
        ): lie["class"]
        for lie in ledger
    }


def print_keep_rates(name: str, kept: collections.Counter, rejected: list) -> None:
    """Turns sent, kept and the keep rate per task, then the reasons of the rejected turns."""
    failed = collections.Counter(task for task, _, _ in rejected)
    print(f"\n{name}\n| task | sent | kept | keep rate |\n|---|---:|---:|---:|")
    for task in (*TASKS, "all"):
        k = sum(kept.values()) if task == "all" else kept[task]
        n = k + (sum(failed.values()) if task == "all" else failed[task])
        print(f"| {task} | {n} | {k} | {k / max(1, n):.1%} |")
    if not rejected:
        return
    reasons = collections.Counter((task, reason) for task, reason, _ in rejected)
    example = {(task, reason): detail for task, reason, detail in rejected}
    print("| task | reason | turns | example |\n|---|---|---:|---|")
    for (task, reason), count in sorted(reasons.items(), key=lambda kv: (kv[0][0], -kv[1])):
        detail = example[task, reason].replace("|", "/").replace("\n", " ")[:160]
        print(f"| {task} | {reason} | {count} | {detail} |")


def honest_kept(images: int) -> None:
    """Part 1: honest turns of both styles, kept per task, and why the others were not."""
    for style in ("plain", "paraphrase"):
        build = run_build(images, style=style)
        if build is None:
            continue
        print(f"provider's honest turns: {build.stats['honest_turns']}")
        print_keep_rates(f"honest turns, {style} style", build.kept_tasks, build.rejected)


def lies_caught(images: int) -> None:
    """Part 3: lies of every class in both styles, caught or kept, and the honest turns kept."""
    from medgrit_testing.openai_server import LIE_CLASSES

    rows: dict[str, dict[str, tuple[int, int]]] = collections.defaultdict(dict)
    for style in ("plain", "paraphrase"):
        build = run_build(images, style=style, lie_rate=0.5)
        if build is None:
            continue
        keys = ledger_keys(build.ledger)
        injected = collections.Counter(lie["class"] for lie in build.ledger)
        kept_lies: collections.Counter = collections.Counter()
        for key, count in build.kept.items():
            if key in keys:
                kept_lies[keys[key]] += count
                print(f"{style}: kept lie ({keys[key]}): {key[0][:80]} -> {key[1][:240]}")
        for name in (*LIE_CLASSES, "all lies"):
            n = sum(injected.values()) if name == "all lies" else injected[name]
            k = sum(kept_lies.values()) if name == "all lies" else kept_lies[name]
            rows[name][style] = (n, k)
        honest = sum(c for k, c in build.kept.items() if k not in keys)
        share = honest / max(1, build.stats["honest_turns"])
        print(f"{style}: honest turns injected {build.stats['honest_turns']}, kept {honest} "
              f"({share:.1%})")  # fmt: skip
    print("\n| lie class | plain injected | caught | kept | paraphrase injected | caught | kept |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, by_style in rows.items():
        cells = [by_style.get(style, (0, 0)) for style in ("plain", "paraphrase")]
        print(f"| {name} | " + " | ".join(f"{n} | {n - k} | {k}" for n, k in cells) + " |")


def check_natural(path: Path) -> list[tuple[NaturalTurn, object]]:
    """Each turn of a natural answer file with the verifier's failure (None: kept), read with
    the labels of the file and the build's text rules."""
    turns = load_turns(path)
    lexicon = lexicon_for(frozenset(r.label for t in turns for r in t.regions))
    system = make_environment().get_template("llm_system.j2").render(tasks=list(TASKS))
    rules = TextRules.for_instructions(system)
    truths: dict[str, ImageTruth] = {}
    out = []
    for t in turns:
        truth = truths.get(t.image.image_id)
        if truth is None:
            truth = truths[t.image.image_id] = ImageTruth(t.regions, t.image, lexicon)
        out.append((t, check_turn(t.qa, truth, rules)))
    return out


def natural_answers() -> None:
    """Part 2: each set of hand-written honest answers kept per task, and its lies kept."""
    for honest in sorted(DATA.glob("natural_honest*.json")):
        checked = check_natural(honest)
        kept = collections.Counter(t.qa.task for t, failure in checked if failure is None)
        rejected = [
            (t.qa.task, f.reason, f"{f.evidence!r}: {t.qa.answer}")  # type: ignore[attr-defined]
            for t, f in checked
            if f is not None
        ]
        print_keep_rates(f"natural honest answers ({honest.name})", kept, rejected)
    for lies in sorted(DATA.glob("natural_lies*.json")):
        checked = check_natural(lies)
        told = collections.Counter(t.lie for t, _ in checked)
        kept = collections.Counter(t.lie for t, failure in checked if failure is None)
        caught = collections.Counter(
            (t.lie, f.reason)  # type: ignore[attr-defined]
            for t, f in checked
            if f is not None
        )
        print(f"\nnatural lies ({lies.name})\n| lie class | told | caught | kept | caught as |")
        print("|---|---:|---:|---:|---|")
        for name in sorted(told):  # type: ignore[type-var]
            reasons = ", ".join(f"{r} {n}" for (c, r), n in caught.most_common() if c == name)
            n, k = told[name], kept[name]
            print(f"| {name} | {n} | {n - k} | {k} | {reasons} |")
        print(f"| all | {sum(told.values())} | {sum(told.values()) - sum(kept.values())} | "
              f"{sum(kept.values())} | |")  # fmt: skip
        for turn, failure in checked:
            if failure is None:
                print(f"kept lie ({turn.lie}, {turn.qa.task}): {turn.qa.answer[:200]}")


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=120, help="images of each build")
    parser.add_argument("--skip-build", action="store_true", help="only the natural answers")
    args = parser.parse_args(argv)
    if not args.skip_build:
        honest_kept(args.images)
    natural_answers()
    if not args.skip_build:
        lies_caught(args.images)
    return 0


if __name__ == "__main__":
    sys.exit(main())
