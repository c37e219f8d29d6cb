"""On-disk tables: exact Parquet round trips under the explicit schemas, byte-stable and atomic."""

from __future__ import annotations

import os
import tempfile
import tracemalloc
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from medgrit.adapters.store.parquet import (
    ParquetShardWriter,
    UnreadablePart,
    open_parquet,
    part_path,
    read_parquet,
    sha256_file,
)
from medgrit.schemas.tables import TABLES, schema_for

text = st.text(max_size=24)
optional_text = st.none() | text
int32 = st.integers(-(2**31), 2**31 - 1)
int64 = st.integers(-(2**63), 2**63 - 1)
box = st.lists(int32, min_size=4, max_size=4)

image_rows = st.fixed_dictionaries(
    {
        "image_id": text,
        "dataset": text,
        "case_id": text,
        "modality": text,
        "plane": text,
        "slice_index": int32,
        "width": int32,
        "height": int32,
        "split": st.sampled_from(["train", "test"]),
        "image": st.fixed_dictionaries(
            {"bytes": st.none() | st.binary(max_size=64), "path": optional_text}
        ),
        "sequence": optional_text,
    }
)
region_rows = st.fixed_dictionaries(
    {
        "region_id": text,
        "image_id": text,
        "label": text,
        "label_id": int32,
        "instance": int32,
        "bbox": box,
        "bbox_1000": box,
        "area": int64,
        "position": text,
        "size": text,
        "laterality": st.none() | st.sampled_from(["left", "right"]),
        "relations": st.lists(
            st.fixed_dictionaries({"relation": text, "region_id": text}), max_size=3
        ),
        "source_label": text,
    }
)
qa_items = st.fixed_dictionaries(
    {
        "task": st.sampled_from(["VG", "ROC", "RC", "MIA"]),
        "question": text,
        "answer": text,
        "region_ids": st.lists(text, max_size=3),
    }
)
conversation_rows = st.fixed_dictionaries(
    {
        "conversation_id": text,
        "image_id": text,
        "split": st.sampled_from(["train", "test"]),
        "qa": st.lists(qa_items, max_size=4),
        "generator": text,
        "template_hash": text,
        "prompt_hash": optional_text,
        "prompt_tokens": int64,
        "completion_tokens": int64,
    }
)
reject_rows = st.fixed_dictionaries(
    {
        "stage": text,
        "reason": text,
        "detail": text,
        "source": text,
        "dataset": optional_text,
        "case_id": optional_text,
        "image_id": optional_text,
    }
)
ROWS = {
    "images": image_rows,
    "regions": region_rows,
    "conversations": conversation_rows,
    "rejects": reject_rows,
}


def files_under(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


@pytest.mark.parametrize("table", sorted(TABLES))
@settings(max_examples=50, deadline=None)
@given(data=st.data())
def test_rows_round_trip_exactly(table, data):
    rows = data.draw(st.lists(ROWS[table], max_size=6), label="rows")
    with tempfile.TemporaryDirectory() as tmp:
        written = ParquetShardWriter(tmp).write_table(table, "00007", rows)

        path = Path(tmp) / written.path
        assert written.path == f"{table}/part-00007.parquet"
        assert written.rows == len(rows)
        assert pq.read_table(path).to_pylist() == rows


@pytest.mark.parametrize("table", sorted(TABLES))
@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_written_schema_is_the_declared_schema(table, data):
    rows = data.draw(st.lists(ROWS[table], max_size=3), label="rows")
    with tempfile.TemporaryDirectory() as tmp:
        written = ParquetShardWriter(tmp).write_table(table, "00000", rows)

        schema = pq.read_schema(Path(tmp) / written.path)
        # Names, types and nullability; list children come back named "element" (Parquet's
        # compliant nested layout), which pyarrow counts as metadata, so that is compared apart.
        assert schema.equals(TABLES[table])
        assert schema.metadata == TABLES[table].metadata
        assert schema.metadata[b"medgrit.schema_version"] == b"3"


@pytest.mark.parametrize("table", sorted(TABLES))
@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_same_rows_give_the_same_bytes(table, data):
    rows = data.draw(st.lists(ROWS[table], max_size=4), label="rows")
    with tempfile.TemporaryDirectory() as a, tempfile.TemporaryDirectory() as b:
        first = ParquetShardWriter(a).write_table(table, "00000", rows)
        second = ParquetShardWriter(b).write_table(table, "00000", rows)

        assert first.sha256 == second.sha256
        assert first.sha256 == sha256_file(Path(a) / first.path)


@pytest.mark.parametrize("table", sorted(TABLES))
@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_no_temporary_file_remains_after_writing(table, data):
    rows = data.draw(st.lists(ROWS[table], max_size=3), label="rows")
    with tempfile.TemporaryDirectory() as tmp:
        writer = ParquetShardWriter(tmp)
        writer.write_table(table, "00000", rows)
        writer.write_table(table, "00000", rows)  # rewriting a part replaces it

        assert files_under(Path(tmp)) == [part_path(table, "00000")]


def test_rewriting_a_part_replaces_its_rows(tmp_path):
    writer = ParquetShardWriter(tmp_path)
    row = {
        "stage": "verify",
        "reason": "unknown_box",
        "detail": "VG: <box>(1,2),(3,4)</box>",
        "source": "demo",
        "dataset": None,
        "case_id": None,
        "image_id": None,
    }
    writer.write_table("rejects", "00000", [row, row])

    written = writer.write_table("rejects", "00000", [row])

    assert written.rows == 1
    assert pq.read_table(tmp_path / written.path).num_rows == 1


def test_null_in_a_required_column_fails_and_writes_nothing(tmp_path):
    row = {
        "stage": None,
        "reason": "r",
        "detail": "d",
        "source": "s",
        "dataset": None,
        "case_id": None,
        "image_id": None,
    }

    with pytest.raises(pa.ArrowInvalid, match="stage"):
        ParquetShardWriter(tmp_path).write_table("rejects", "00000", [row])

    assert files_under(tmp_path) == []


def test_write_shard_writes_all_four_tables_even_when_empty(tmp_path):
    written = ParquetShardWriter(tmp_path).write_shard("00003", {})

    assert sorted(written) == sorted(TABLES)
    for name, part in written.items():
        assert part.path == f"{name}/part-00003.parquet"
        assert part.rows == 0
        schema = pq.read_schema(tmp_path / part.path)
        assert schema.equals(TABLES[name])
        assert schema.metadata == TABLES[name].metadata
    assert files_under(tmp_path) == sorted(part_path(name, "00003") for name in TABLES)


def test_schema_for_names_the_known_tables_on_error():
    assert schema_for("regions") is TABLES["regions"]
    with pytest.raises(ValueError, match="conversations"):
        schema_for("region")


def _image_rows(n: int, png_bytes: int = 64) -> list[dict]:
    return [
        {
            "image_id": f"img-{i}",
            "dataset": "D",
            "case_id": "c",
            "modality": "ct",
            "plane": "axial",
            "slice_index": i,
            "width": 8,
            "height": 8,
            "split": "train",
            "image": {"bytes": os.urandom(png_bytes), "path": f"{i}.png"},
            "sequence": None,
        }
        for i in range(n)
    ]


def test_parts_read_back_in_a_folder_whose_name_is_not_utf8(tmp_path):
    out = tmp_path / os.fsdecode(b"scans-\xff\xfe")
    rows = _image_rows(5)
    ParquetShardWriter(out).write_shard("00000", {"images": rows})
    part = out / part_path("images", "00000")

    assert read_parquet(part, schema=TABLES["images"]).to_pylist() == rows
    assert read_parquet(part, ["image_id"]).column_names == ["image_id"]
    with open_parquet(part) as parquet:
        assert parquet.metadata.num_rows == 5
        group = parquet.read_row_group(0, columns=["slice_index"])
    assert group.column(0).to_pylist() == list(range(5))


@pytest.mark.parametrize(
    "damage", ["empty", "garbage", "truncated", "damaged pages", "missing", "a fifo"]
)
def test_a_part_that_is_not_readable_parquet_raises_one_error(tmp_path, damage):
    ParquetShardWriter(tmp_path).write_shard("00000", {"images": _image_rows(50, 4096)})
    part = tmp_path / part_path("images", "00000")
    data = part.read_bytes()
    if damage == "empty":
        part.write_bytes(b"")
    elif damage == "garbage":
        part.write_bytes(b"not parquet\n" * 100)
    elif damage == "truncated":
        part.write_bytes(data[: len(data) // 2])
    elif damage == "damaged pages":  # the footer still reads; the image bytes do not
        start = len(data) // 4
        part.write_bytes(data[:start] + b"\xff" * (len(data) // 4) + data[2 * start :])
    else:
        part.unlink()
        if damage == "a fifo":  # read without blocking on a writer that never comes
            os.mkfifo(part)

    with pytest.raises(UnreadablePart) as caught:
        read_parquet(part)
    # what every caller already catches: pyarrow's ArrowInvalid, a ValueError
    assert isinstance(caught.value, pa.ArrowInvalid) and isinstance(caught.value, ValueError)
    assert caught.value.path == part and caught.value.reason in str(caught.value)
    with pytest.raises(UnreadablePart):
        with open_parquet(part) as parquet:
            for _ in parquet.iter_batches(batch_size=8):
                pass


def test_reading_a_large_part_copies_neither_the_file_nor_the_columns_left_out(tmp_path):
    rows = _image_rows(48, 1 << 20)  # 48 MB of image bytes that do not compress
    ParquetShardWriter(tmp_path).write_shard("00000", {"images": rows})
    part = tmp_path / part_path("images", "00000")
    del rows
    before = pa.total_allocated_bytes()
    tracemalloc.start()
    try:
        ids = read_parquet(part, ["image_id", "slice_index"])
        held = pa.total_allocated_bytes() - before
        with open_parquet(part) as parquet:
            count = sum(b.num_rows for b in parquet.iter_batches(batch_size=4, columns=["image"]))
        _, python_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert ids.num_rows == count == 48
    assert held < 1 << 20  # the ids, not the images
    assert python_peak < 4 << 20  # the file is mapped, never read into a bytes object
