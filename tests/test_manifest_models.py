"""``dataset.json`` and the shard records as typed models: a real manifest reads and writes back
as the same JSON, a hand-edited one is one line, and the totals are what the tables hold."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from conftest import build_demo_dataset

from medgrit.adapters.store.bookkeeping import load_dataset
from medgrit.adapters.store.manifest import ManifestError, load_manifest
from medgrit.core.summary import ShardCounts, build_totals
from medgrit.schemas.manifest import Manifest, ShardEntry, Totals
from medgrit.schemas.tables import TABLES


@pytest.fixture(scope="module")
def built(demo_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_demo_dataset(tmp_path_factory.mktemp("models") / "ds", demo_dir, 100_000)


def _json(out: Path) -> dict:
    return json.loads((out / "dataset.json").read_text())


def test_a_real_manifest_reads_and_writes_back_as_the_same_json(built: Path) -> None:
    on_disk = _json(built)
    manifest = Manifest.model_validate(on_disk)
    dumped = manifest.to_json()
    assert dumped == on_disk
    assert json.dumps(dumped, indent=2) == json.dumps(on_disk, indent=2)  # key order too
    assert load_manifest(built) == manifest


def test_a_hand_edited_manifest_with_a_wrong_type_is_one_line(built: Path, tmp_path: Path) -> None:
    out = tmp_path / "ds"
    shutil.copytree(built, out)
    manifest = _json(out)
    manifest["shards"][1]["rows"]["images"] = "12"  # a string where a count belongs
    (out / "dataset.json").write_text(json.dumps(manifest))
    with pytest.raises(ManifestError) as raised:
        load_dataset(out)
    message = str(raised.value)
    assert "\n" not in message
    assert "dataset.json" in message and "shard 00001 'rows'" in message
    assert "shards.1.rows.images" in message


def test_an_unknown_key_is_refused(built: Path, tmp_path: Path) -> None:
    out = tmp_path / "ds"
    shutil.copytree(built, out)
    manifest = _json(out)
    manifest["shards"][0]["statuss"] = "done"
    (out / "dataset.json").write_text(json.dumps(manifest))
    with pytest.raises(ManifestError, match=r"shards\.0\.statuss"):
        load_manifest(out)


def test_the_totals_are_what_the_tables_hold(built: Path) -> None:
    manifest = load_dataset(built)
    read = {
        t: pq.read_table(
            [
                built / rel
                for s in manifest.shards
                for rel in (s.files or {})
                if rel.startswith(f"{t}/")
            ]
        )
        for t in TABLES
    }
    tables = {t: read[t].to_pylist() for t in TABLES}
    modality = {r["image_id"]: r["modality"] for r in tables["images"]}
    qa: dict[str, Counter] = {}
    for conversation in tables["conversations"]:
        qa.setdefault(modality[conversation["image_id"]], Counter()).update(
            turn["task"] for turn in conversation["qa"]
        )

    totals = manifest.totals_now()

    assert totals.rows == {t: read[t].num_rows for t in TABLES}
    assert totals.images_by_modality == dict(Counter(r["modality"] for r in tables["images"]))
    assert totals.images_by_split == dict(Counter(r["split"] for r in tables["images"]))
    assert totals.qa_by_modality_task == {m: dict(c) for m, c in qa.items()}
    assert totals.rejects_by_reason == dict(Counter(r["reason"] for r in tables["rejects"]))
    assert totals.llm is not None and totals.llm.prompt == 0 and totals.llm.requests == 0
    assert manifest.totals == totals  # what the build recorded


def test_totals_count_done_shards_and_the_tokens_of_every_shard() -> None:
    done = ShardCounts(
        "done",
        {"images": 3, "rejects": 1},
        {"qa_by_modality_task": {"ct": {"VG": 2}}, "rejects_by_reason": {"empty_mask": 1}},
        {"requests": 2, "prompt": 10, "completion": 5, "cost_usd": 0.25},
    )
    failed = ShardCounts("failed", {"images": 9}, {}, {"requests": 1, "prompt": 4})
    totals = build_totals([done, failed], ("images", "rejects"))
    assert totals["rows"] == {"images": 3, "rejects": 1}
    assert totals["qa_by_modality_task"] == {"ct": {"VG": 2}}
    assert totals["llm"] == {
        "requests": 3,
        "cache_hits": 0,
        "prompt": 14,
        "completion": 5,
        "cost_usd": 0.25,
    }
    entry = ShardEntry.model_validate(
        {"id": "00000", "cases": [], "status": "done", "rows": {"images": 3, "rejects": 1}}
    )
    assert Totals.of([entry], ("images", "rejects")).rows == {"images": 3, "rejects": 1}


def test_a_manifest_records_its_synonyms_and_the_version_of_its_words(built: Path) -> None:
    from medgrit.core.lexicon import VOCABULARY_VERSION

    manifest = load_dataset(built)
    assert manifest.synonyms == {}  # the demo's label files give none
    assert manifest.vocabulary_version == VOCABULARY_VERSION


def test_a_manifest_written_before_synonyms_and_versions_reads_as_it_is(built: Path) -> None:
    on_disk = _json(built)
    del on_disk["synonyms"], on_disk["vocabulary_version"]
    manifest = Manifest.model_validate(on_disk)
    assert manifest.synonyms is None and manifest.vocabulary_version is None
    assert manifest.to_json() == on_disk  # nothing added when written back


def test_synonyms_that_are_not_lists_of_text_are_refused(built: Path, tmp_path: Path) -> None:
    out = tmp_path / "ds"
    shutil.copytree(built, out)
    manifest = _json(out)
    manifest["synonyms"] = {"liver": "hepar"}
    (out / "dataset.json").write_text(json.dumps(manifest))
    with pytest.raises(ManifestError) as raised:
        load_manifest(out)
    assert "\n" not in str(raised.value) and "synonyms.liver" in str(raised.value)
