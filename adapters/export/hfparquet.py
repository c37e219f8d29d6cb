"""Parquet files that Hugging Face ``datasets`` reads with typed features (images decoded).

``datasets`` takes a Parquet file's features from the ``huggingface`` key of its schema metadata;
without it an image struct ``{bytes, path}`` stays a plain dict. The features are written in the
JSON form ``datasets`` has read since 2.x (a list ``[feature]`` for a sequence, ``{"_type":
"Image"}`` for an image), so the base install needs no ``datasets``.

Files are written row group by row group (:class:`ParquetRowGroupWriter`), ``ROWS_PER_GROUP``
rows each, as ``datasets`` itself writes image data, so a writer holds at most one group's rows
and image bytes.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import TracebackType

import pyarrow as pa
import pyarrow.parquet as pq

STRING = {"dtype": "string", "_type": "Value"}
INT32 = {"dtype": "int32", "_type": "Value"}
IMAGE = {"_type": "Image"}
ROWS_PER_GROUP = 100  # datasets' PARQUET_ROW_GROUP_SIZE_FOR_IMAGE_DATASETS
IMAGE_TYPE = pa.struct([pa.field("bytes", pa.binary()), pa.field("path", pa.string())])


def with_features(schema: pa.Schema, features: dict) -> pa.Schema:
    """``schema`` carrying ``features`` as ``datasets`` metadata."""
    meta = {b"huggingface": json.dumps({"info": {"features": features}}).encode()}
    return schema.with_metadata(meta)


class ParquetRowGroupWriter:
    """Writes rows with one schema (and its metadata) as a Parquet file, ``rows_per_group`` rows
    per row group; use as a context manager, which closes the file.

    Args:
        path: the file to write (its folder is made).
        schema: the rows' schema; every row is converted with it.
        rows_per_group: rows buffered before a row group is written.
    """

    def __init__(self, path: Path, schema: pa.Schema, rows_per_group: int = ROWS_PER_GROUP):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.schema = schema
        self.rows_per_group = rows_per_group
        self.count = 0
        self._rows: list[dict] = []
        self._handle = path.open("wb")  # pyarrow's own paths must be UTF-8
        self._writer = pq.ParquetWriter(self._handle, schema)

    def add(self, row: dict) -> None:
        """Buffer one row, writing a row group once ``rows_per_group`` are buffered."""
        self._rows.append(row)
        if len(self._rows) >= self.rows_per_group:
            self._flush()

    def _flush(self) -> None:
        if self._rows:
            self._writer.write_table(pa.Table.from_pylist(self._rows, schema=self.schema))
            self.count += len(self._rows)
            self._rows = []

    def close(self) -> None:
        """Write the buffered rows and close the file."""
        try:
            self._flush()
        finally:
            self._writer.close()
            self._handle.close()

    def __enter__(self) -> ParquetRowGroupWriter:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if kind is None:
            self.close()
        else:  # the caller removes the half-written file; only release it
            self._writer.close()
            self._handle.close()
