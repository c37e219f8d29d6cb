"""Sharded Parquet output: each table of a shard goes to a temporary file, then is renamed.

A reader never sees a half-written part: ``{table}/part-{shard}.parquet`` appears only complete.
Files are written with the explicit schemas of ``medgrit.schemas.tables`` and fixed writer
settings, so the same rows give the same bytes.

Every reading of a part goes through :func:`open_parquet` or :func:`read_parquet`. pyarrow's own
paths must be UTF-8 while a dataset folder's name may be any bytes, and pyarrow's threads reading
a Python file object abort the interpreter (SIGABRT) when the process exits while they still
read. So a part is opened by its own bytes path, and pyarrow memory-maps it through the name of
that open descriptor: its threads read mapped pages and never call into Python, and memory stays
bounded (the kernel pages a multi-GB images part in and out as it is read).
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from medgrit.adapters.runtime.atomic import atomic_file, is_stale_temporary
from medgrit.schemas.manifest import Manifest
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


# The names of this process's open descriptors (Linux; /dev/fd elsewhere): ASCII, whatever the
# name of the file behind them.
_DESCRIPTORS = "/proc/self/fd" if os.path.isdir("/proc/self/fd") else "/dev/fd"


class UnreadablePart(pa.ArrowInvalid):
    """A table part that is not readable Parquet: empty, cut short, damaged, or no Parquet at all.

    pyarrow raises ``ArrowInvalid``, ``OSError`` and others for these; one ``ArrowInvalid`` (so
    also a ``ValueError``) lets every caller catch them alike. The cause is chained.
    """

    def __init__(self, path: Path, cause: BaseException) -> None:
        self.path = path
        self.reason = type(cause).__name__  # what pyarrow raised, for one-line messages
        first = (str(cause).strip().splitlines() or [""])[0]
        super().__init__(f"{path}: not a readable Parquet file ({type(cause).__name__}: {first})")


class MissingPart(Exception):
    """A done shard's table part is not in the dataset: one line of text."""


@contextmanager
def _unreadable(path: Path) -> Iterator[None]:
    try:
        yield
    except (OSError, pa.ArrowException) as exc:
        if isinstance(exc, UnreadablePart):
            raise
        raise UnreadablePart(path, exc) from exc


def _mapped(path: Path) -> pa.MemoryMappedFile:
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # a FIFO in a part's place does not block
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file", os.fspath(path))
        return pa.memory_map(f"{_DESCRIPTORS}/{fd}")
    finally:
        os.close(fd)  # the map holds its own


@contextmanager
def open_parquet(path: Path) -> Iterator[pq.ParquetFile]:
    """A table part to read (metadata, row groups, batches), memory-mapped (see the module
    docstring). Keep only reading in the block: pyarrow's errors raised in it, and any file
    name, read as one :class:`UnreadablePart`.

    Raises:
        UnreadablePart: the file is missing, empty or not readable Parquet.
    """
    with _unreadable(path):
        source = _mapped(path)
        try:
            yield pq.ParquetFile(source)
        finally:
            source.close()  # what was read stays valid: it holds the mapping


def read_parquet(
    path: Path, columns: Sequence[str] | None = None, schema: pa.Schema | None = None
) -> pa.Table:
    """All rows of a table part (only ``columns``, read as ``schema`` when given).

    Raises:
        UnreadablePart: the file is missing, empty or not readable Parquet.
    """
    with _unreadable(path), _mapped(path) as source:
        return pq.read_table(
            source, columns=None if columns is None else list(columns), schema=schema
        )


def require_parts(out: Path, manifest: Manifest, tables: Iterable[str] = TABLES) -> None:
    """Refuse a dataset whose done shards lack a table part: what reads it (an export, the
    baseline, the report) would leave that shard's rows out without a word.

    Raises:
        MissingPart: naming the first part that is not a file.
    """
    for shard in manifest.shards:
        if shard.status != "done":
            continue
        for table in tables:
            rel = part_path(table, shard.id)
            if not (out / rel).is_file():
                raise MissingPart(
                    f"{out} lacks {rel}; `medgrit validate {out}` says what else is wrong"
                )


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
        """Write one table's rows for a shard atomically (``atomic_file``: temp file, fsync,
        rename, fsync of the folder)."""
        schema = TABLES[table]
        arrow = pa.Table.from_pylist(rows, schema=schema)
        rel = part_path(table, shard)
        final = self.out_dir / rel
        final.parent.mkdir(parents=True, exist_ok=True)
        # A file object, not a path: pyarrow's paths must be UTF-8, folders may not be.
        with atomic_file(final, "wb") as handle:
            pq.write_table(arrow, handle, compression=self.compression, row_group_size=1024)
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
