"""Explicit pyarrow schemas of the four on-disk tables (data contract, schema version 3).

Every writer passes these schemas; readers can check a file against them with
:func:`schema_for`. Boxes: ``bbox`` is a half-open pixel box [x0, y0, x1, y1); ``bbox_1000`` is the
Qwen-VL box in [0, 1000). The ``image`` column follows the Hugging Face ``Image`` layout.

Version 2 added the regions' ``relations`` column: a list (never null, empty when none) of the
region's mask relations, ``{relation: "inside" | "contains" | "adjacent", region_id: the other
region}`` (see ``medgrit.core.relations``). Version 3 added the images' ``sequence`` (the MR
sequence or channel the image shows, as its source names it: ``FLAIR``; null when the source names
none) and the regions' ``source_label`` (the label's name as its source writes it:
``kidney_left``, where ``label`` is the words the text uses: ``left kidney``). Older tables, which
lack them, are read with :func:`schema_for` of their version; read with the current schema, the
columns come back null.
"""

from __future__ import annotations

import pyarrow as pa

SCHEMA_VERSION = 3
_META = {b"medgrit.schema_version": str(SCHEMA_VERSION).encode()}

_IMAGE_FIELDS = [
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
]
IMAGES = pa.schema(
    [*_IMAGE_FIELDS, pa.field("sequence", pa.string(), nullable=True)], metadata=_META
)
IMAGES_V2 = pa.schema(_IMAGE_FIELDS, metadata={b"medgrit.schema_version": b"2"})
"""The images table of schema versions 1 and 2 (no ``sequence``)."""

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
_RELATIONS = pa.field("relations", pa.list_(RELATION_TYPE), nullable=False)
REGIONS = pa.schema(
    [*_REGION_FIELDS, _RELATIONS, pa.field("source_label", pa.string(), nullable=False)],
    metadata=_META,
)
REGIONS_V2 = pa.schema([*_REGION_FIELDS, _RELATIONS], metadata={b"medgrit.schema_version": b"2"})
"""The regions table of schema version 2 (no ``source_label``)."""
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
    with the columns schema ``version`` (1, 2 or 3) wrote; ``images`` and ``regions`` differ.

    Raises:
        ValueError: for an unknown table or version.
    """
    if version not in (1, 2, SCHEMA_VERSION):
        raise ValueError(f"unknown schema version {version!r}; expected 1 to {SCHEMA_VERSION}")
    try:
        schema = TABLES[table]
    except KeyError:
        raise ValueError(f"unknown table {table!r}; expected one of {sorted(TABLES)}") from None
    older = {
        ("regions", 1): REGIONS_V1,
        ("regions", 2): REGIONS_V2,
        ("images", 1): IMAGES_V2,
        ("images", 2): IMAGES_V2,
    }
    return older.get((table, version), schema)
