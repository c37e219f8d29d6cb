"""Mask files and label names shared by the 2D sources (image folders, SA-Med2D-20M, DICOM).

Masks are single-channel images read with Pillow under the pixel limit of
``medgrit.adapters.sources.limits``; each comes back as an (H, W) unsigned integer array in
stored orientation (rows top to bottom), pixel value = label id (binary masks: non-zero =
foreground). Label names are ``labels.json`` mappings of label id (an integer >= 0 as a string
key) to a name; id 0 is the background and is never a label.

Two readers, for two contracts:

- :func:`read_mask` (image folders and SA-Med2D-20M): label maps or binary masks in any
  lossless or JPEG format, colour allowed where it is unambiguous; messages name the file.
- :func:`read_mask_png` (masks next to DICOM images): a label-map PNG only; messages name no
  file, since DICOM file names may carry identifiers.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from medgrit.adapters.sources.label_files import SYNONYMS, read_label_file, read_synonyms
from medgrit.adapters.sources.limits import open_image
from medgrit.core.cases import SourceError, UnreadableImage
from medgrit.core.failures import fails_the_shard
from medgrit.core.fsnames import escape_name, library_message
from medgrit.core.label_maps import as_label_array
from medgrit.core.label_names import check_label_map

__all__ = [
    "JPEG_THRESHOLD",
    "LOSSY_SUFFIXES",
    "PIL_ERRORS",
    "check_label_names",
    "foreground",
    "link_problem",
    "read_label_names",
    "read_mask",
    "read_mask_png",
]

LOSSY_SUFFIXES: tuple[str, ...] = (".jpg", ".jpeg")
JPEG_THRESHOLD = 128

# What Pillow raises on truncated, corrupt or hostile files.
PIL_ERRORS = (
    OSError,
    ValueError,
    SyntaxError,
    EOFError,
    struct.error,
    zlib.error,
    Image.DecompressionBombError,
)
_PNG_ERRORS = (OSError, UnidentifiedImageError, ValueError, SyntaxError, EOFError)


# --------------------------------------------------------------------------- label names


def check_label_names(raw: object, path: Path) -> dict[int, str]:
    """The ``"labels"`` entry of an image folder's ``labels.json``: label id -> name.

    Raises:
        SourceError: not a non-empty mapping, or what
            :func:`medgrit.core.label_names.check_label_map` refuses.
    """
    if not isinstance(raw, dict) or not raw:
        raise SourceError(f'{path}: "labels" must map label id -> name, e.g. {{"1": "polyp"}}')
    return check_label_map(raw.items(), f'{escape_name(str(path))}, "labels"')


def read_label_names(
    path: Path,
) -> tuple[tuple[tuple[int, str], ...], tuple[tuple[str, str], ...]]:
    """A ``labels.json`` of id -> name (``{"1": "left lung"}``) next to DICOM mask PNGs, with
    an optional ``"synonyms"`` entry (``{"left lung": ["left pulmonary field"]}``).

    Returns:
        (label id, name as written, normalised) pairs sorted by id, the background left out;
        and the (synonym, readable label name) pairs of
        :func:`medgrit.adapters.sources.label_files.read_synonyms`.

    Raises:
        SourceError: unreadable or malformed JSON, what
            :func:`medgrit.core.label_names.check_label_map` refuses, or a bad synonym.
    """
    data = read_label_file(path, '{"1": "left lung"}')
    if not isinstance(data, dict):
        raise SourceError(f"malformed {path}: expected a JSON object of id -> name")
    where = escape_name(str(path))
    entries = [(key, name) for key, name in data.items() if key != SYNONYMS]
    written = tuple(sorted(check_label_map(entries, where).items()))
    return written, read_synonyms(data.get(SYNONYMS), written, where)


# --------------------------------------------------------------------------- mask files


def link_problem(path: Path) -> str:
    """Why a symbolic link cannot be read (a loop, or a target that is missing)."""
    try:
        path.stat()
    except OSError as exc:
        return f"symbolic link cannot be followed ({exc.strerror})"
    return "symbolic link does not point to a file"


def read_mask(path: str | Path, binary: bool) -> np.ndarray:
    """Read one mask file as an (H, W) integer array.

    Palette images give their palette index; grey images their value. Colour masks: for a
    ``binary`` mask the brightest channel, else the common value of equal channels.

    Raises:
        UnreadableImage: ``mask_missing`` or ``mask_unreadable``.
    """
    path = Path(path)
    name = escape_name(path.name)
    if not path.is_file():
        if path.is_symlink():
            raise UnreadableImage("mask_unreadable", f"{name}: {link_problem(path)}")
        if path.exists():
            raise UnreadableImage("mask_unreadable", f"{name} is not a regular file")
        raise UnreadableImage("mask_missing", f"no such mask file: {name}")
    try:
        with open_image(path) as image:
            image.load()
            mode = image.mode
            if mode == "1":
                return np.asarray(image).astype(np.uint8)
            if mode in ("RGB", "RGBA", "LA", "RGBX", "CMYK", "YCbCr", "PA"):
                image = image.convert("RGB") if mode in ("CMYK", "YCbCr", "PA") else image
                values = np.asarray(image)
                colour = values[..., : 1 if mode == "LA" else 3]
                if binary:
                    return colour.max(axis=-1)
                if (colour == colour[..., :1]).all():
                    return np.ascontiguousarray(colour[..., 0])
                raise UnreadableImage(
                    "mask_unreadable",
                    f"{name} is a colour image; save label maps as single-channel images",
                )
            values = np.asarray(image)
    except PIL_ERRORS as exc:
        if fails_the_shard(exc):
            raise
        raise UnreadableImage("mask_unreadable", f"{name}: {library_message(exc, path)}") from exc
    if values.dtype.kind == "f":
        if binary:
            if not np.all(np.isfinite(values)):
                raise UnreadableImage("non_finite_label", f"{name} holds NaN or infinite values")
            return (values > 0).astype(np.uint8)
        values = as_label_array(values, name)
    if values.size and values.min() < 0:
        raise UnreadableImage("mask_unreadable", f"{name} holds negative values")
    return values


def foreground(mask: np.ndarray, path: str | Path) -> np.ndarray:
    """Boolean foreground of a binary mask: > 0, or >= 128 for lossy JPEG files."""
    if str(path).lower().endswith(LOSSY_SUFFIXES):
        return mask >= JPEG_THRESHOLD
    return mask > 0


def read_mask_png(path: Path) -> np.ndarray:
    """A label-map PNG (pixel value = label id) as an (H, W) unsigned integer array.

    Raises:
        UnreadableImage: ``mask_unreadable`` for a missing, corrupt or colour PNG; ``too_large``
            for one over the pixel limit (checked before decoding).
    """
    try:
        with open_image(path, "mask PNG") as image:
            image.load()
            mode = image.mode
            data = np.asarray(image)
    except _PNG_ERRORS as exc:
        if fails_the_shard(exc):
            raise
        raise UnreadableImage(
            "mask_unreadable", f"mask PNG cannot be read ({type(exc).__name__})"
        ) from None
    if mode in ("RGB", "RGBA", "LA", "CMYK", "YCbCr") or data.ndim != 2:
        raise UnreadableImage("mask_unreadable", f"mask PNG is {mode}; expected a label map")
    if data.dtype == bool:
        data = data.astype(np.uint8)
    if data.dtype.kind not in "ui" or (data.size and data.min() < 0):
        raise UnreadableImage("mask_unreadable", "mask PNG holds no non-negative label ids")
    return as_label_array(data)
