"""Explicit pyarrow schemas of the four on-disk tables (data contract, schema version 2).

Every writer passes these schemas; readers can check a file against them with
:func:`schema_for`. Boxes: ``bbox`` is a half-open pixel box [x0, y0, x1, y1); ``bbox_1000`` is the
Qwen-VL box in [0, 1000). The ``image`` column follows the Hugging Face ``Image`` layout.

Version 2 added the regions' ``relations`` column: a list (never null, empty when none) of the
region's mask relations, ``{relation: "inside" | "contains" | "adjacent", region_id: the other
region}`` (see ``medgrit.core.relations``). Version 1 tables, which lack it, are read with
:func:`schema_for` of their version; read with the current schema, the column comes back null.
"""

from __future__ import annotations

import pyarrow as pa

SCHEMA_VERSION = 2
_META = {b"medgrit.schema_version": str(SCHEMA_VERSION).encode()}

IMAGES = pa.schema(
    [
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("dataset", pa.string(), nullable=False),
        pa.field("case_id", pa.string(), nullable=False),
        pa.field("modality", pa.string(), nullable=False),
        pa.field("plane", pa.string(), nullable=False),
        pa.field("slice_index", pa.int32(), nullable=False),
        pa.field("width", pa.int32(), nullable=False),
        pa.field("height", pa.int32(), nullable=False),
        pa.field("split", pa.string(), nullable=False),
        pa.field(
            "image",
            pa.struct([pa.field("bytes", pa.binary()), pa.field("path", pa.string())]),
            nullable=False,
        ),
    ],
    metadata=_META,
)

_REGION_FIELDS = [
    pa.field("region_id", pa.string(), nullable=False),
    pa.field("image_id", pa.string(), nullable=False),
    pa.field("label", pa.string(), nullable=False),
    pa.field("label_id", pa.int32(), nullable=False),
    pa.field("instance", pa.int32(), nullable=False),
    pa.field("bbox", pa.list_(pa.int32(), 4), nullable=False),
    pa.field("bbox_1000", pa.list_(pa.int32(), 4), nullable=False),
    pa.field("area", pa.int64(), nullable=False),
    pa.field("position", pa.string(), nullable=False),
    pa.field("size", pa.string(), nullable=False),
    pa.field("laterality", pa.string(), nullable=True),
]
RELATION_TYPE = pa.struct(
    [
        pa.field("relation", pa.string(), nullable=False),
        pa.field("region_id", pa.string(), nullable=False),
    ]
)
REGIONS = pa.schema(
    [*_REGION_FIELDS, pa.field("relations", pa.list_(RELATION_TYPE), nullable=False)],
    metadata=_META,
)
REGIONS_V1 = pa.schema(_REGION_FIELDS, metadata={b"medgrit.schema_version": b"1"})
"""The regions table of schema version 1 (no ``relations``)."""

QA_TYPE = pa.struct(
    [
        pa.field("task", pa.string(), nullable=False),
        pa.field("question", pa.string(), nullable=False),
        pa.field("answer", pa.string(), nullable=False),
        pa.field("region_ids", pa.list_(pa.string()), nullable=False),
    ]
)

CONVERSATIONS = pa.schema(
    [
        pa.field("conversation_id", pa.string(), nullable=False),
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("split", pa.string(), nullable=False),
        pa.field("qa", pa.list_(QA_TYPE), nullable=False),
        pa.field("generator", pa.string(), nullable=False),
        pa.field("template_hash", pa.string(), nullable=False),
        pa.field("prompt_hash", pa.string(), nullable=True),
        pa.field("prompt_tokens", pa.int64(), nullable=False),
        pa.field("completion_tokens", pa.int64(), nullable=False),
    ],
    metadata=_META,
)

REJECTS = pa.schema(
    [
        pa.field("stage", pa.string(), nullable=False),
        pa.field("reason", pa.string(), nullable=False),
        pa.field("detail", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("dataset", pa.string(), nullable=True),
        pa.field("case_id", pa.string(), nullable=True),
        pa.field("image_id", pa.string(), nullable=True),
    ],
    metadata=_META,
)

TABLES: dict[str, pa.Schema] = {
    "images": IMAGES,
    "regions": REGIONS,
    "conversations": CONVERSATIONS,
    "rejects": REJECTS,
}


def schema_for(table: str, version: int = SCHEMA_VERSION) -> pa.Schema:
    """The schema of one table by name (``images``, ``regions``, ``conversations``, ``rejects``)
    with the columns schema ``version`` (1 or 2) wrote; only ``regions`` differs between them.

    Raises:
        ValueError: for an unknown table or version.
    """
    if version not in (1, SCHEMA_VERSION):
        raise ValueError(f"unknown schema version {version!r}; expected 1 or {SCHEMA_VERSION}")
    try:
        schema = TABLES[table]
    except KeyError:
        raise ValueError(f"unknown table {table!r}; expected one of {sorted(TABLES)}") from None
    return REGIONS_V1 if table == "regions" and version == 1 else schema
