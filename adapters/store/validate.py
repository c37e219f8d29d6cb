"""Checks a dataset directory against the data contract (what ``medgrit validate`` runs).

Contents, not only hashes. The manifest must be medgrit's, of a known schema version, with shard
ids ``00000..N-1`` in order (ids of retired shards, whose cases were rebuilt, left out) and part
paths of the form ``{table}/part-{shard}.parquet`` (never a path outside the dataset). Every
done shard lists one part per table; each part is present with its recorded sha256, row count
and the contract's schema (of the manifest's schema version); no part file lies in a table
folder unless the manifest lists it. Within each shard: image, region and conversation ids are
unique; every image decodes as a PNG of its recorded width and height that is not blank, and its
id is that of its case, plane and slice; every image has exactly one conversation and every
conversation an image; regions belong to an image of the shard, with boxes inside it,
``bbox_1000`` equal to the conversion of ``bbox``, an area that fits the box, the position, size
and side words their box, area and label give, and mask relations to another label's region of
the image that states them the other way round; every turn is true of its image by the truth
rules the build keeps turns by (:func:`medgrit.core.verify.check_turn`, names read with the
manifest's ``vocabulary``; the LLM generator's length and copying bounds are its own), each
failure reported as table part, row (0-based), turn and reason; the shard's recorded stats
equal its tables. Over the dataset: the build config is valid, image ids are unique, no case is
in both splits, each label id has one name, in words and as its source writes it, across all
shards (within its dataset; within its case where ids are numbered per case, as DICOM SEG
segments are), and ``totals`` equal the tables.

Shards are read one at a time, so memory stays bounded by the largest shard; each one checked
advances the ``images`` progress counter (``medgrit.adapters.runtime.progress``) by its images.
"""

from __future__ import annotations

import io
import os
import re
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
from PIL import Image
from pydantic import ValidationError

from medgrit.adapters.runtime import progress
from medgrit.adapters.store.bookkeeping import load_dataset
from medgrit.adapters.store.parquet import (
    UnreadablePart,
    open_parquet,
    part_path,
    read_parquet,
    sha256_file,
)
from medgrit.core.cases import Vocabulary
from medgrit.core.generation import ImageFacts, RegionFacts
from medgrit.core.ids import image_id_for
from medgrit.core.intensity import is_blank
from medgrit.core.lexicon import VOCABULARY_VERSION, Lexicon
from medgrit.core.regions import to_bbox_1000
from medgrit.core.rows import qa_of, region_facts
from medgrit.core.sharding import shard_name
from medgrit.core.summary import ShardCounts, build_totals, shard_stats
from medgrit.core.text import laterality_of, position_word, size_word
from medgrit.core.verify import ImageTruth, check_turn
from medgrit.schemas.config import BuildConfig
from medgrit.schemas.manifest import Manifest, ShardEntry
from medgrit.schemas.tables import TABLES, schema_for

_PART = re.compile(r"^part-(?P<shard>[0-9A-Za-z_-]+)\.parquet$")
_STAT_KEYS = ("images_by_modality", "images_by_split", "qa_by_modality_task", "rejects_by_reason")


def read_table(out_dir: str | Path, table: str) -> list[dict]:
    """All rows of one table of a dataset directory, shards in manifest order."""
    out = Path(out_dir)
    manifest = load_dataset(out)
    rows: list[dict] = []
    for shard in manifest.shards:
        rel = part_path(table, shard.id)
        if shard.status == "done" and (out / rel).is_file():
            rows.extend(read_parquet(out / rel, schema=TABLES[table]).to_pylist())
    return rows


@dataclass
class _Seen:
    """What the checks gather over the shards: image ids, the splits of each case, the names
    of each label id (within its dataset, or its case where ``per_case`` holds the case's id),
    and each readable shard's counts as recomputed from its tables."""

    per_case: set[str]
    image_ids: set[str] = field(default_factory=set)
    case_splits: dict[tuple[str, str], set[str]] = field(default_factory=lambda: defaultdict(set))
    names: dict[tuple[str, str, int], dict[str, str]] = field(
        default_factory=lambda: defaultdict(dict)
    )
    counts: list[ShardCounts] = field(default_factory=list)


def validate_dataset(out_dir: str | Path) -> list[str]:
    """Problems found in a dataset directory (empty when it meets the contract).

    Raises:
        ManifestError: the manifest is missing, malformed, not medgrit's, of an unknown schema
            version, or names files outside the dataset.
    """
    out = Path(out_dir)
    manifest = load_dataset(out)
    problems: list[str] = []
    try:
        BuildConfig(**manifest.config)
    except (ValidationError, TypeError) as exc:
        problems.append(f"dataset.json: the build config is not valid ({str(exc).splitlines()[0]})")
    shards = manifest.shards
    retired_ids = [r.id for r in manifest.retired or []]
    ids = [s.id for s in shards]
    expected_ids = [shard_name(i) for i in range(len(shards) + len(retired_ids))]
    if ids != sorted(ids) or sorted([*ids, *retired_ids]) != expected_ids:
        problems.append(
            "shard ids are not 00000..N-1 in order (counting retired shards): a shard was "
            "removed from or added to dataset.json"
        )
    problems += _unlisted_parts(out, shards)
    not_done = [s for s in shards if s.status != "done"]
    problems += [f"shard {s.id} is {s.status}" for s in not_done]
    if manifest.status == "complete" and not_done:
        problems.append("dataset.json says complete, but not every shard is done")

    lexicon = Vocabulary.recorded(manifest.vocabulary or [], manifest.synonyms).lexicon()
    seen = _Seen(_cases_numbered_per_case(manifest))
    done = [s for s in shards if s.status == "done"]
    progress.expect("images", sum((s.rows or {}).get("images", 0) for s in done))
    for shard in done:
        # A shard appended later is read with its own names and synonyms.
        own = (
            lexicon
            if shard.vocabulary is None
            else Vocabulary.recorded(shard.vocabulary, shard.synonyms).lexicon()
        )
        problems += _check_shard(out, shard, seen, own, manifest.schema_version)
        progress.advance("images", (shard.rows or {}).get("images", 0))  # checked
    problems += _label_meanings(seen.names)
    for (dataset, case_id), splits in sorted(seen.case_splits.items()):
        if len(splits) > 1:
            problems.append(f"case {dataset}/{case_id} is in both splits")
    if len(seen.counts) == len(shards) - len(not_done):
        # totals over unreadable parts would only repeat the problems above
        problems += _check_totals(manifest, seen.counts)
    return problems


def vocabulary_note(manifest: Manifest) -> str | None:
    """The line that says which version of the packaged words (``VOCABULARY_VERSION``) a
    dataset records when it is not this medgrit's, whose words :func:`validate_dataset` reads
    the turns with (a turn kept by older words may read otherwise now); None when they agree."""
    recorded = manifest.vocabulary_version
    if recorded == VOCABULARY_VERSION:
        return None
    said = (
        "no vocabulary version (it was written before versions were recorded)"
        if recorded is None
        else f"vocabulary version {recorded}"
    )
    return f"dataset.json records {said}; its turns are read with version {VOCABULARY_VERSION}"


def _cases_numbered_per_case(manifest: Manifest) -> set[str]:
    """Case ids whose label ids are numbered per case (DICOM SEG segments and RTSTRUCT ROIs,
    marked so in their entries; a DICOM case whose entry was written before entries were
    marked, which carries no fingerprint either): their ids are compared within their case,
    all others within their dataset."""
    dicom = {s.spec for s in manifest.sources if s.kind == "dicom"}
    return {
        c.case_id
        for shard in manifest.shards
        for c in shard.cases
        if c.labels_per_case or (c.source in dicom and c.fingerprint is None)
    }


def _label_meanings(names: dict[tuple[str, str, int], dict[str, str]]) -> list[str]:
    """A label id with more than one name across the shards (of its dataset, or of its case
    where ids are numbered per case): the dataset would say two things by one id."""
    problems = []
    for (dataset, case_id, label_id), found in sorted(names.items()):
        if len(found) > 1:
            where = f"dataset {dataset}" + (f", case {case_id}" if case_id else "")
            shown = ", ".join(f"{name!r} (shard {shard})" for name, shard in found.items())
            problems.append(f"label id {label_id} of {where} has {len(found)} names: {shown}")
    return problems


def _unlisted_parts(out: Path, shards: list[ShardEntry]) -> list[str]:
    listed = {rel for s in shards for rel in (s.files or {})}
    problems = []
    for table in TABLES:
        folder = out / table
        if not folder.is_dir():
            continue
        for path in sorted(folder.iterdir()):
            rel = f"{table}/{path.name}"
            if rel in listed:
                continue
            if path.name.startswith(".part-") and ".tmp-" in path.name:
                problems.append(f"{rel}: temporary file of an interrupted run")
            else:
                problems.append(f"{rel}: not listed in dataset.json")
    return problems


def _read_part(
    out: Path, shard: ShardEntry, table: str, version: int, problems: list[str]
) -> pa.Table | None:
    """One part of a shard, checked against the contract of the dataset's schema ``version``
    (a version 2 dataset with a version 1 regions part, from a build resumed across versions,
    is a problem)."""
    rel = part_path(table, shard.id)
    files = shard.files or {}
    if rel not in files:
        problems.append(f"shard {shard.id}: dataset.json lists no {table} part")
        return None
    path = out / rel
    if not path.is_file():
        problems.append(f"{rel}: missing")
        return None
    if sha256_file(path) != files[rel]:
        problems.append(f"{rel}: sha256 differs from dataset.json")
    try:
        with open_parquet(path) as parquet:
            schema = parquet.schema_arrow
            if not schema.equals(schema_for(table, version), check_metadata=False):
                problems.append(f"{rel}: schema differs from the contract")
                return None
            recorded = (shard.rows or {}).get(table)
            if parquet.metadata.num_rows != recorded:
                problems.append(
                    f"{rel}: {parquet.metadata.num_rows} rows, dataset.json says {recorded}"
                )
            return parquet.read()
    except UnreadablePart as exc:
        problems.append(f"{rel}: not a readable Parquet file ({exc.reason})")
        return None


def _png_size(data: bytes | None) -> tuple[int, int] | str:
    """(width, height) of PNG bytes that decode fully, else why not."""
    if not data:
        return "no image bytes"
    if not data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image bytes are not a PNG"
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            if image.mode not in ("L", "RGB"):
                return f"PNG mode {image.mode}, expected L or RGB"
            if is_blank(np.asarray(image)):
                return "the image is blank (one value everywhere)"
            return image.size
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        return f"PNG does not decode ({type(exc).__name__})"


def _region_words(r: dict, width: int, height: int) -> list[str]:
    """A region's derived values against its box and label: bbox_1000, area, and the position,
    size and side words the text uses."""
    found = []
    rid, bbox = r["region_id"], r["bbox"]
    if list(r["bbox_1000"]) != to_bbox_1000(bbox, width, height).tolist():
        found.append(f"region {rid}: bbox_1000 {r['bbox_1000']} is not the conversion of {bbox}")
    box_area = (bbox[2] - bbox[0]) * (bbox[3] - bbox[1])
    if not 1 <= r["area"] <= box_area:
        found.append(f"region {rid}: area {r['area']} does not fit its box ({box_area} px)")
        return found
    if r["position"] != position_word(tuple(bbox), width, height):
        found.append(f"region {rid}: position {r['position']!r} is not its box's")
    if r["size"] != size_word(r["area"], width, height):
        found.append(f"region {rid}: size {r['size']!r} is not its area's")
    if r["laterality"] != laterality_of(r["label"]):
        found.append(f"region {rid}: laterality {r['laterality']!r} is not its label's")
    if "source_label" in r and not r["source_label"]:  # schema 3 on
        found.append(f"region {rid}: no source label")
    return found


def _check_shard(
    out: Path, shard: ShardEntry, seen: _Seen, lexicon: Lexicon, version: int
) -> list[str]:
    """The problems of one done shard's parts (of schema ``version``); its counts join ``seen``
    when all are readable."""
    problems: list[str] = []
    tables = {t: _read_part(out, shard, t, version, problems) for t in TABLES}
    if any(t is None for t in tables.values()):
        return problems
    parts: dict[str, pa.Table] = tables  # type: ignore[assignment]
    images = _check_images(parts["images"].to_pylist(), seen, problems)
    by_image = _check_regions(parts["regions"].to_pylist(), images, shard.id, seen, problems)
    conversations = parts["conversations"].to_pylist()
    _check_conversations(conversations, images, by_image, shard.id, lexicon, problems)

    rejects = parts["rejects"].select(["reason"]).to_pylist()
    known = [c for c in conversations if c["image_id"] in images]
    recomputed = shard_stats(
        {"images": list(images.values()), "conversations": known, "rejects": rejects}
    )
    recorded = shard.stats.to_json() if shard.stats is not None else {}
    for key in _STAT_KEYS:
        if recorded.get(key) != recomputed[key]:
            problems.append(f"shard {shard.id}: {key} in dataset.json differ from its tables")
    rows = {name: table.num_rows for name, table in parts.items()}
    seen.counts.append(ShardCounts("done", rows, recomputed))
    return problems


def _check_images(rows: list[dict], seen: _Seen, problems: list[str]) -> dict[str, dict]:
    """Each image's id and PNG against its row; returns the rows by image id, bytes dropped."""
    images: dict[str, dict] = {}
    # Decoding is most of validate's time; Pillow decodes without the GIL, so threads help.
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        sizes = list(pool.map(_png_size, (r["image"]["bytes"] for r in rows)))
    for row, size in zip(rows, sizes, strict=True):
        image_id = row["image_id"]
        if image_id in seen.image_ids or image_id in images:
            problems.append(f"image {image_id}: duplicate id")
        if image_id != image_id_for(row["case_id"], row["plane"], row["slice_index"]):
            problems.append(f"image {image_id}: id does not match its case, plane and slice")
        if isinstance(size, str):
            problems.append(f"image {image_id}: {size}")
        elif size != (row["width"], row["height"]):
            problems.append(
                f"image {image_id}: PNG is {size[0]}x{size[1]}, the row says "
                f"{row['width']}x{row['height']}"
            )
        row["image"] = None  # keep the bytes out of memory once checked
        images[image_id] = row
        seen.case_splits[(row["dataset"], row["case_id"])].add(row["split"])
    seen.image_ids.update(images)
    return images


def _check_regions(
    rows: list[dict], images: dict[str, dict], shard_id: str, seen: _Seen, problems: list[str]
) -> dict[str, dict[str, RegionFacts]]:
    """Each region against its image; returns the regions' facts per image."""
    by_image: dict[str, dict[str, RegionFacts]] = defaultdict(dict)
    for r in rows:
        image = images.get(r["image_id"])
        if image is None:
            problems.append(f"region {r['region_id']}: unknown image {r['image_id']}")
            continue
        width, height = image["width"], image["height"]
        x0, y0, x1, y1 = r["bbox"]
        if not (0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height):
            problems.append(f"region {r['region_id']}: bbox {r['bbox']} outside the image")
        else:
            problems += _region_words(r, width, height)
        if not r["region_id"].startswith(f"{r['image_id']}-r"):
            problems.append(f"region {r['region_id']}: id does not name its image")
        if r["region_id"] in by_image[r["image_id"]]:
            problems.append(f"region {r['region_id']}: duplicate id")
        scope = image["case_id"] if image["case_id"] in seen.per_case else ""
        # The name as the source writes it is part of the label's meaning too (schema 3 on).
        written = r.get("source_label")
        name = r["label"] if written in (None, r["label"]) else f"{r['label']} ({written})"
        seen.names[(image["dataset"], scope, r["label_id"])].setdefault(name, shard_id)
        by_image[r["image_id"]][r["region_id"]] = region_facts(r)
    for regions in by_image.values():
        problems += _relation_problems(regions)
    return by_image


_CONVERSE = {"inside": "contains", "contains": "inside", "adjacent": "adjacent"}


def _relation_problems(regions: dict[str, RegionFacts]) -> list[str]:
    """The stored mask relations of one image's regions: each a mask relation to another
    region of the image with another label, stated by that region the other way round."""
    problems = []
    for rid, fact in regions.items():
        for relation, other_id in fact.relations:
            other = regions.get(other_id)
            if relation not in _CONVERSE:
                problems.append(f"region {rid}: unknown relation {relation!r}")
            elif other is None or other.label_id == fact.label_id:
                problems.append(
                    f"region {rid}: relation {relation!r} to {other_id}, not another label's "
                    "region of its image"
                )
            elif (_CONVERSE[relation], rid) not in other.relations:
                problems.append(
                    f"region {rid}: {relation} {other_id}, but {other_id} does not say "
                    f"{_CONVERSE[relation]} {rid}"
                )
    return problems


def _check_conversations(
    conversations: list[dict],
    images: dict[str, dict],
    by_image: dict[str, dict[str, RegionFacts]],
    shard_id: str,
    lexicon: Lexicon,
    problems: list[str],
) -> None:
    """Ids, splits and every turn's truth, and exactly one conversation per image."""
    per_image: dict[str, int] = defaultdict(int)
    seen_conversations: set[str] = set()
    part = part_path("conversations", shard_id)
    for row_number, conv in enumerate(conversations):
        cid = conv["conversation_id"]
        if cid in seen_conversations:
            problems.append(f"conversation {cid}: duplicate id")
        seen_conversations.add(cid)
        image = images.get(conv["image_id"])
        if image is None:
            problems.append(f"conversation {cid}: unknown image {conv['image_id']}")
            continue
        per_image[conv["image_id"]] += 1
        if conv["split"] != image["split"]:
            problems.append(f"conversation {cid}: split differs from image")
        if not conv["qa"]:
            problems.append(f"conversation {cid}: no turns")
        facts = ImageFacts(
            image["image_id"],
            image["modality"],
            image["plane"],
            image["width"],
            image["height"],
            image.get("sequence") or "",
        )
        truth = ImageTruth(by_image[conv["image_id"]].values(), facts, lexicon)
        for number, turn in enumerate(conv["qa"], 1):
            failure = check_turn(qa_of(turn), truth)
            if failure:
                problems.append(
                    f"{part} row {row_number} (conversation {cid}), turn {number} "
                    f"({turn['task']}): {failure}"
                )
    for image_id in images:
        count = per_image.get(image_id, 0)
        if count != 1:
            problems.append(f"image {image_id}: {count} conversations, expected exactly one")


def _check_totals(manifest: Manifest, counts: list[ShardCounts]) -> list[str]:
    """The recorded totals against the totals of the shards' tables."""
    if manifest.totals is None:
        return [] if manifest.status != "complete" else ["dataset.json has no totals"]
    recorded = manifest.totals.to_json()
    found = build_totals(counts, tuple(TABLES))
    problems = []
    recorded_rows = recorded.get("rows") or {}
    for table, count in found["rows"].items():
        if recorded_rows.get(table) != count:
            problems.append(
                f"totals: {recorded_rows.get(table)} {table} in dataset.json, "
                f"the tables hold {count}"
            )
    for key in _STAT_KEYS:
        if recorded.get(key) != found[key]:
            problems.append(f"totals: {key} in dataset.json differ from the tables")
    return problems
