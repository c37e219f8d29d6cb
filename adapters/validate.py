"""Checks a dataset directory against the data contract (what ``medgrit validate`` runs).

Reads every part listed in ``dataset.json`` and checks: files present with their recorded sha256
and row counts; each table's schema equals the contract; ids unique and references resolvable;
boxes inside the image and ``bbox_1000`` in [0, 1000); every conversation turn passes
:func:`medgrit.core.verify.verify_qa`; splits agree between images and conversations and no case
is in both splits.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import pyarrow.parquet as pq

from medgrit.adapters.manifest import read_manifest
from medgrit.adapters.parquet import sha256_file
from medgrit.core.generation import QA, RegionFacts
from medgrit.core.verify import verify_qa
from medgrit.schemas.tables import TABLES


def read_table(out_dir: str | Path, table: str) -> list[dict]:
    """All rows of one table of a dataset directory, shards in manifest order."""
    out = Path(out_dir)
    manifest = read_manifest(out)
    rows: list[dict] = []
    for shard in manifest["shards"]:
        rel = f"{table}/part-{shard['id']}.parquet"
        if shard.get("status") == "done" and (out / rel).is_file():
            rows.extend(pq.read_table(out / rel, schema=TABLES[table]).to_pylist())
    return rows


def validate_dataset(out_dir: str | Path) -> list[str]:
    """Problems found in a dataset directory (empty when it meets the contract)."""
    out = Path(out_dir)
    manifest = read_manifest(out)
    problems: list[str] = []
    for shard in manifest.get("shards", []):
        if shard.get("status") != "done":
            problems.append(f"shard {shard['id']} is {shard.get('status')}")
            continue
        for rel, digest in shard["files"].items():
            path = out / rel
            if not path.is_file():
                problems.append(f"{rel}: missing")
                continue
            if sha256_file(path) != digest:
                problems.append(f"{rel}: sha256 differs from dataset.json")
            table = rel.split("/", 1)[0]
            schema = pq.read_schema(path)
            if not schema.equals(TABLES[table], check_metadata=False):
                problems.append(f"{rel}: schema differs from the contract")
            rows = pq.ParquetFile(path).metadata.num_rows
            if rows != shard["rows"][table]:
                problems.append(f"{rel}: {rows} rows, dataset.json says {shard['rows'][table]}")
    if problems:
        return problems

    images = {r["image_id"]: r for r in read_table(out, "images")}
    regions = read_table(out, "regions")
    conversations = read_table(out, "conversations")
    if sum(s["rows"]["images"] for s in manifest["shards"]) != len(images):
        problems.append("image_id values are not unique")
    by_image: dict[str, dict[str, RegionFacts]] = defaultdict(dict)
    for r in regions:
        image = images.get(r["image_id"])
        if image is None:
            problems.append(f"region {r['region_id']}: unknown image {r['image_id']}")
            continue
        x0, y0, x1, y1 = r["bbox"]
        if not (0 <= x0 < x1 <= image["width"] and 0 <= y0 < y1 <= image["height"]):
            problems.append(f"region {r['region_id']}: bbox {r['bbox']} outside the image")
        if not all(0 <= v < 1000 for v in r["bbox_1000"]):
            problems.append(f"region {r['region_id']}: bbox_1000 {r['bbox_1000']} out of range")
        if r["region_id"] in by_image[r["image_id"]]:
            problems.append(f"region {r['region_id']}: duplicate id")
        by_image[r["image_id"]][r["region_id"]] = RegionFacts(
            r["region_id"],
            r["label"],
            r["label_id"],
            r["instance"],
            tuple(r["bbox_1000"]),
            r["area"],
            r["position"],
            r["size"],
        )
    case_splits: dict[tuple[str, str], set[str]] = defaultdict(set)
    for image in images.values():
        case_splits[(image["dataset"], image["case_id"])].add(image["split"])
    for (dataset, case_id), splits in case_splits.items():
        if len(splits) > 1:
            problems.append(f"case {dataset}/{case_id} is in both splits")
    for conv in conversations:
        image = images.get(conv["image_id"])
        if image is None:
            problems.append(f"conversation {conv['conversation_id']}: unknown image")
            continue
        if conv["split"] != image["split"]:
            problems.append(f"conversation {conv['conversation_id']}: split differs from image")
        for turn in conv["qa"]:
            qa = QA(turn["task"], turn["question"], turn["answer"], tuple(turn["region_ids"]))
            reason = verify_qa(qa, by_image[conv["image_id"]])
            if reason:
                problems.append(f"conversation {conv['conversation_id']}: {turn['task']} {reason}")
    return problems
