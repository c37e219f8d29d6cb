"""The tables a build writes do not change by accident: the full demo, built with a fixed key,
gives exactly the rows recorded in ``tests/data/demo_tables.json`` (and, with the pyarrow that
recorded them, the same Parquet bytes).

The record is rewritten only on purpose, when a change is meant to change the tables:
``python tests/test_identical_tables.py DEMO_DIR`` prints the new record.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

import pyarrow
import pyarrow.parquet as pq

RECORD = Path(__file__).parent / "data" / "demo_tables.json"
KEY = bytes(range(32))


def rows_digest(path: Path) -> str:
    """sha256 of a Parquet file's schema (without metadata) and rows, whatever writer wrote it."""
    table = pq.read_table(path)
    digest = hashlib.sha256(table.schema.remove_metadata().to_string().encode())
    for row in table.to_pylist():
        digest.update(json.dumps(row, sort_keys=True, default=lambda b: b.hex()).encode())
    return digest.hexdigest()


def build_and_digest(root: Path, demo_dir: Path) -> dict:
    """Build the full demo into ``root/ds`` with the fixed key; the record of its tables."""
    from medgrit.adapters.build import run_build
    from medgrit.schemas.config import BuildConfig

    key = root / "key"
    key.write_bytes(KEY)
    saved = {name: os.environ.get(name) for name in ("MEDGRIT_DEMO_DIR", "MEDGRIT_KEY_FILE")}
    os.environ.update(MEDGRIT_DEMO_DIR=str(demo_dir), MEDGRIT_KEY_FILE=str(key))
    try:
        run_build(BuildConfig(out=str(root / "ds"), max_images=100_000))
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    manifest = json.loads((root / "ds" / "dataset.json").read_text())
    files: dict[str, str] = {}
    for shard in sorted(manifest["shards"], key=lambda s: s["id"]):
        files.update(shard["files"])
    return {
        "pyarrow": pyarrow.__version__,
        "files": files,
        "content": {rel: rows_digest(root / "ds" / rel) for rel in files},
    }


def test_the_demo_tables_are_the_recorded_ones(tmp_path: Path, demo_dir: Path) -> None:
    recorded = json.loads(RECORD.read_text())
    built = build_and_digest(tmp_path, demo_dir)
    assert list(built["content"]) == list(recorded["content"])  # the same parts, in order
    content = built["content"].items()
    changed = [rel for rel, digest in content if recorded["content"][rel] != digest]
    assert not changed, f"rows changed in {changed}"
    if built["pyarrow"] == recorded["pyarrow"]:
        assert built["files"] == recorded["files"]  # byte for byte


def test_the_digest_sees_a_changed_row(tmp_path: Path) -> None:
    table = pyarrow.table({"a": [1, 2], "b": [b"\x00", b"\x01"]})
    pq.write_table(table, tmp_path / "one.parquet")
    pq.write_table(table.set_column(0, "a", pyarrow.array([1, 3])), tmp_path / "two.parquet")
    assert rows_digest(tmp_path / "one.parquet") != rows_digest(tmp_path / "two.parquet")


if __name__ == "__main__":
    import tempfile

    with tempfile.TemporaryDirectory() as work:
        record = build_and_digest(Path(work), Path(sys.argv[1]).resolve())
    about = "Tables of the full demo built with the key bytes 0..31 "
    about += "(tests/test_identical_tables.py)."
    print(json.dumps({"about": about, **record}, indent=1))
