"""Sharded Parquet output: each table of a shard goes to a temporary file, then is renamed.

A reader never sees a half-written part: ``{table}/part-{shard}.parquet`` appears only complete.
Files are written with the explicit schemas of ``medgrit.schemas.tables`` and fixed writer
settings, so the same rows give the same bytes.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from medgrit.adapters.store.dataset_dir import is_stale_temporary, temp_suffix
from medgrit.schemas.tables import TABLES


@dataclass(frozen=True)
class WrittenFile:
    """A part file as recorded in the manifest."""

    path: str
    rows: int
    sha256: str


def sha256_file(path: Path) -> str:
    """sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def part_path(table: str, shard: str) -> str:
    """Relative path of one table's part for a shard."""
    return f"{table}/part-{shard}.parquet"


class ParquetShardWriter:
    """Writes the four tables of a shard under a dataset directory.

    Args:
        out_dir: the dataset directory.
        compression: Parquet codec (PNG bytes do not shrink further; text does).
    """

    def __init__(self, out_dir: str | Path, compression: str = "zstd") -> None:
        self.out_dir = Path(out_dir)
        self.compression = compression

    def write_table(self, table: str, shard: str, rows: list[dict]) -> WrittenFile:
        """Write one table's rows for a shard atomically (temp file, fsync, rename)."""
        schema = TABLES[table]
        arrow = pa.Table.from_pylist(rows, schema=schema)
        rel = part_path(table, shard)
        final = self.out_dir / rel
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = final.with_name(f".{final.name}{temp_suffix()}")
        try:
            # A file object, not a path: pyarrow's paths must be UTF-8, folders may not be.
            with tmp.open("wb") as handle:
                pq.write_table(arrow, handle, compression=self.compression, row_group_size=1024)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, final)
        finally:
            tmp.unlink(missing_ok=True)
        return WrittenFile(rel, arrow.num_rows, sha256_file(final))

    def remove_temporaries(self) -> list[str]:
        """Delete temporary part files that writers now gone left behind; returns their paths.

        A temporary file names its writer (see ``medgrit.adapters.store.dataset_dir``): the files of
        this process and of live processes on this host are kept.
        """
        removed = []
        for table in TABLES:
            for tmp in sorted((self.out_dir / table).glob(".part-*.parquet.tmp-*")):
                if is_stale_temporary(tmp.name):
                    tmp.unlink(missing_ok=True)
                    removed.append(str(tmp.relative_to(self.out_dir)))
        return removed

    def remove_parts_except(self, keep: set[str]) -> list[str]:
        """Delete part files the manifest does not list (``keep``: relative paths), such as the
        parts of an earlier build with another config; returns their paths. Call it holding
        the dataset's lock."""
        removed = []
        for table in TABLES:
            for part in sorted((self.out_dir / table).glob("part-*.parquet")):
                rel = f"{table}/{part.name}"
                if rel not in keep and part.is_file() and not part.is_symlink():
                    part.unlink(missing_ok=True)
                    removed.append(rel)
        return removed

    def write_shard(self, shard: str, tables: dict[str, list[dict]]) -> dict[str, WrittenFile]:
        """Write all four tables of a shard; returns the written files by table name."""
        return {name: self.write_table(name, shard, tables.get(name, [])) for name in TABLES}
