"""``medgrit validate`` checks contents, not only hashes: a catalogue of damage.

A real dataset is built once; each case copies it, damages it the way a tool or a person could
(rewriting a part and fixing its sha256 and row count in dataset.json, so that only a content
check can tell), and expects the problem to be named. Manifests medgrit cannot use are one line
and exit code 2.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from catalogue import write_ct_source

from medgrit.adapters.store.manifest import ManifestError
from medgrit.adapters.store.validate import validate_dataset
from medgrit.schemas.tables import TABLES

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def built(medgrit, tmp_path_factory: pytest.TempPathFactory) -> Path:
    source = write_ct_source(tmp_path_factory.mktemp("src") / "Dataset090_CT", cases=4)
    out = tmp_path_factory.mktemp("built") / "ds"
    result = medgrit("build", f"nnunet:{source}", "--out", str(out), "--cases-per-shard", "2")
    assert result.returncode == 0, result.stderr[-2000:]
    return out


def _manifest(out: Path) -> dict:
    return json.loads((out / "dataset.json").read_text())


def _save(out: Path, manifest: dict) -> None:
    (out / "dataset.json").write_text(json.dumps(manifest, indent=2))


def rewrite(out: Path, table: str, shard: str, change: Callable[[list[dict]], list[dict]]) -> None:
    """Rewrite one part with changed rows and record its new sha256 and row count."""
    rel = f"{table}/part-{shard}.parquet"
    rows = change(pq.read_table(out / rel).to_pylist())
    pq.write_table(pa.Table.from_pylist(rows, schema=TABLES[table]), out / rel)
    manifest = _manifest(out)
    entry = next(s for s in manifest["shards"] if s["id"] == shard)
    entry["files"][rel] = hashlib.sha256((out / rel).read_bytes()).hexdigest()
    entry["rows"][table] = len(rows)
    _save(out, manifest)


def _not_png(rows: list[dict]) -> list[dict]:
    rows[0]["image"]["bytes"] = b"GIF89a" + rows[0]["image"]["bytes"][6:]
    return rows


def _truncated_png(rows: list[dict]) -> list[dict]:
    rows[0]["image"]["bytes"] = rows[0]["image"]["bytes"][:-40]
    return rows


def _wrong_width(rows: list[dict]) -> list[dict]:
    rows[0]["width"] += 1
    return rows


def _bbox_1000(rows: list[dict]) -> list[dict]:
    x0, y0, x1, y1 = rows[0]["bbox_1000"]
    rows[0]["bbox_1000"] = [x0, y0, x1, max(y0 + 1, y1 - 3)]
    return rows


def _extra_part(out: Path) -> None:
    shutil.copy(out / "regions" / "part-00000.parquet", out / "regions" / "part-00007.parquet")


def _edited_totals(out: Path) -> None:
    manifest = _manifest(out)
    manifest["totals"]["rows"]["images"] += 1
    _save(out, manifest)


def _edited_stats(out: Path) -> None:
    manifest = _manifest(out)
    stats = manifest["shards"][0]["stats"]["images_by_modality"]
    stats["ct"] += 5
    _save(out, manifest)


def _shard_deleted(out: Path) -> None:
    manifest = _manifest(out)
    gone = manifest["shards"].pop(0)
    for rel in gone["files"]:
        (out / rel).unlink()
    _save(out, manifest)


def _image_twice(out: Path) -> None:
    first = pq.read_table(out / "images" / "part-00000.parquet").to_pylist()[:1]
    rewrite(out, "images", "00001", lambda rows: rows + first)


def _blank_png(rows: list[dict]) -> list[dict]:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("L", (rows[0]["width"], rows[0]["height"])).save(buffer, format="PNG")
    rows[0]["image"]["bytes"] = buffer.getvalue()
    return rows


def _set(field: str, value) -> Callable[[list[dict]], list[dict]]:
    def change(rows: list[dict]) -> list[dict]:
        rows[0][field] = value(rows[0]) if callable(value) else value
        return rows

    return change


def _manifest_edit(change: Callable[[dict], None]) -> Callable[[Path], None]:
    def apply(out: Path) -> None:
        manifest = _manifest(out)
        change(manifest)
        _save(out, manifest)

    return apply


DAMAGE: dict[str, tuple[Callable[[Path], None], str]] = {
    "blank-png": (lambda o: rewrite(o, "images", "00000", _blank_png), "blank"),
    "case-id-of-image": (
        lambda o: rewrite(o, "images", "00000", _set("case_id", "0" * 16)),
        "does not match its case",
    ),
    "area-larger-than-box": (
        lambda o: rewrite(o, "regions", "00000", _set("area", lambda r: r["area"] * 100)),
        "does not fit its box",
    ),
    "position-word": (
        lambda o: rewrite(o, "regions", "00000", _set("position", "nowhere")),
        "position 'nowhere'",
    ),
    "size-word": (
        lambda o: rewrite(
            o,
            "regions",
            "00000",
            _set("size", lambda r: "tiny" if r["size"] != "tiny" else "large"),
        ),
        "is not its area's",
    ),
    "laterality": (
        lambda o: rewrite(o, "regions", "00000", _set("laterality", "left")),
        "is not its label's",
    ),
    "invalid-config": (
        _manifest_edit(lambda m: m["config"].update(workers="two")),
        "build config is not valid",
    ),
    "bytes-not-png": (lambda o: rewrite(o, "images", "00000", _not_png), "not a PNG"),
    "truncated-png": (lambda o: rewrite(o, "images", "00000", _truncated_png), "does not decode"),
    "wrong-width": (lambda o: rewrite(o, "images", "00000", _wrong_width), "the row says"),
    "dropped-conversation": (
        lambda o: rewrite(o, "conversations", "00000", lambda r: r[1:]),
        "0 conversations, expected exactly one",
    ),
    "duplicated-conversation": (
        lambda o: rewrite(o, "conversations", "00000", lambda r: r + r[:1]),
        "duplicate id",
    ),
    "conversation-without-image": (
        lambda o: rewrite(o, "images", "00001", lambda r: r[1:]),
        "unknown image",
    ),
    "bbox-1000": (
        lambda o: rewrite(o, "regions", "00000", _bbox_1000),
        "is not the conversion of",
    ),
    "image-in-two-shards": (_image_twice, "duplicate id"),
    "unlisted-part": (_extra_part, "not listed in dataset.json"),
    "edited-totals": (_edited_totals, "totals"),
    "edited-stats": (_edited_stats, "images_by_modality"),
    "shard-deleted-with-its-entry": (_shard_deleted, "shard ids are not 00000..N-1"),
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_validate_names_content_damage(built: Path, tmp_path: Path, damage: str) -> None:
    out = tmp_path / "ds"
    shutil.copytree(built, out)
    assert validate_dataset(out) == []
    apply, expected = DAMAGE[damage]
    apply(out)
    problems = validate_dataset(out)
    assert any(expected in p for p in problems), problems


def _edit_first_mia(change: Callable[[str], str]) -> Callable[[list[dict]], list[dict]]:
    def edit(rows: list[dict]) -> list[dict]:
        for row in rows:
            mia = row["qa"][0]
            edited = change(mia["answer"])
            if edited != mia["answer"]:
                mia["answer"] = edited
                return rows
        raise AssertionError("no MIA answer this damage applies to")

    return edit


def _swap_two_boxes(answer: str) -> str:
    boxes = re.findall(r"<box>.*?</box>", answer)
    if len(set(boxes)) < 2:
        return answer
    a, b = boxes[0], next(x for x in boxes if x != boxes[0])
    return answer.replace(a, "\0").replace(b, a).replace("\0", b)


HAND_EDITED_LIES = {
    "swapped-boxes": (_swap_two_boxes, "ref_box_mismatch"),
    "invented-structure": (
        lambda a: a.replace(".", " and a small nodule.", 1),
        "invented_structure",
    ),
    "wrong-modality": (lambda a: a.replace("CT", "MRI", 1), "wrong_modality"),
    "wrong-plane": (lambda a: a.replace("axial", "sagittal", 1), "wrong_plane"),
}


@pytest.mark.parametrize("lie", sorted(HAND_EDITED_LIES))
def test_validate_reads_every_turn_like_the_build_and_names_table_row_and_reason(
    built: Path, medgrit, tmp_path: Path, lie: str
) -> None:
    out = tmp_path / "ds"
    shutil.copytree(built, out)
    change, reason = HAND_EDITED_LIES[lie]
    rewrite(out, "conversations", "00000", _edit_first_mia(change))

    result = medgrit("validate", str(out))

    assert result.returncode == 1
    lines = [line for line in result.stdout.splitlines() if reason in line]
    assert len(lines) == 1, result.stdout
    assert lines[0].startswith("conversations/part-00000.parquet row ")
    assert ", turn 1 (MIA): " in lines[0]


def test_validate_exits_1_and_lists_problems(built: Path, medgrit, tmp_path: Path) -> None:
    out = tmp_path / "ds"
    shutil.copytree(built, out)
    _edited_totals(out)
    result = medgrit("validate", str(out))
    assert result.returncode == 1 and "totals" in result.stdout
    assert "problem(s) found" in result.stderr


MALFORMED: dict[str, Callable[[dict], object]] = {
    "empty-object": lambda m: {},
    "a-list": lambda m: [],
    "no-shards": lambda m: {k: v for k, v in m.items() if k != "shards"},
    "shards-not-a-list": lambda m: {**m, "shards": {"00000": {}}},
    "unknown-schema-version": lambda m: {**m, "schema_version": 7},
    "schema-version-true": lambda m: {**m, "schema_version": True},
    "rows-not-an-object": lambda m: {
        **m,
        "shards": [{**m["shards"][0], "rows": [1, 2]}, *m["shards"][1:]],
    },
    "totals-not-an-object": lambda m: {**m, "totals": []},
    "nested-too-deep": lambda m: m,
    "no-marker": lambda m: {k: v for k, v in m.items() if k not in ("format", "medgrit_version")},
    "file-outside": lambda m: {
        **m,
        "shards": [
            {**m["shards"][0], "files": {"../../etc/passwd": "0" * 64}},
            *m["shards"][1:],
        ],
    },
}


@pytest.mark.parametrize("kind", sorted(MALFORMED))
def test_a_manifest_medgrit_cannot_use_is_one_line_and_exit_2(
    built: Path, medgrit_offline, tmp_path: Path, kind: str
) -> None:
    out = tmp_path / "ds"
    shutil.copytree(built, out)
    if kind == "nested-too-deep":
        (out / "dataset.json").write_text("[" * 200_000 + "]" * 200_000)
    else:
        (out / "dataset.json").write_text(json.dumps(MALFORMED[kind](_manifest(out))))
    with pytest.raises(ManifestError):
        validate_dataset(out)
    for command in ("validate", "status", "resume"):
        result = medgrit_offline(command, str(out))
        assert result.returncode == 2, (command, result.stderr[-2000:])
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("medgrit: error:"), result.stderr
        assert "Traceback" not in result.stderr


def test_nan_in_a_manifest_is_not_json(built: Path, medgrit_offline, tmp_path: Path) -> None:
    out = tmp_path / "ds"
    shutil.copytree(built, out)
    text = (out / "dataset.json").read_text().replace('"seed": 0', '"seed": NaN')
    (out / "dataset.json").write_text(text)
    result = medgrit_offline("validate", str(out))
    assert result.returncode == 2 and "not valid JSON" in result.stderr
