"""Reading DICOM files quietly: datasets, pixel data, and what reading them raises.

pydicom's warnings and log records may quote attribute values (names, dates, UIDs of invalid
form), and values are converted lazily, so every access to a dataset in this package runs
under :func:`quiet_pydicom`. Error details name only technical values (modality, shapes,
transfer syntax) and exception class names, never a file name: DICOM file names may carry
identifiers.
"""

from __future__ import annotations

import logging
import struct
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.pixels import pixel_array as decode_pixels

from medgrit.adapters.sources.limits import MAX_VOXELS, check_pixels
from medgrit.core.cases import UnreadableImage
from medgrit.core.failures import fails_the_shard

# What pydicom raises for files it cannot parse or decode.
READ_ERRORS = (
    InvalidDicomError,
    OSError,
    EOFError,
    ValueError,
    KeyError,
    TypeError,
    AttributeError,
    IndexError,
    NotImplementedError,
    RuntimeError,
    OverflowError,
    struct.error,
)
# What reading a missing or malformed attribute raises.
ATTRIBUTE_ERRORS = (ValueError, TypeError, AttributeError, KeyError, IndexError, OverflowError)


class _DropRecords(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return False


_DROP = _DropRecords()
_quiet_lock = threading.Lock()
_quiet_depth = 0
_quiet_warnings: warnings.catch_warnings | None = None


@contextmanager
def quiet_pydicom() -> Iterator[None]:
    """Silence pydicom's log records and all warnings while pydicom reads.

    Both may quote attribute values (names, dates, UIDs of invalid form); values are converted
    lazily, so this must cover every access to a dataset, not only ``dcmread``. Entries and
    exits are counted under a lock, so that concurrent shards (threads) install the silencing
    once and restore the previous state once, after the last of them.
    """
    global _quiet_depth, _quiet_warnings
    with _quiet_lock:
        if _quiet_depth == 0:
            for logger in _pydicom_loggers():
                logger.addFilter(_DROP)
            _quiet_warnings = warnings.catch_warnings()
            _quiet_warnings.__enter__()
            warnings.simplefilter("ignore")
        _quiet_depth += 1
    try:
        yield
    finally:
        with _quiet_lock:
            _quiet_depth -= 1
            if _quiet_depth == 0:
                if _quiet_warnings is not None:
                    _quiet_warnings.__exit__(None, None, None)
                    _quiet_warnings = None
                for logger in _pydicom_loggers():
                    logger.removeFilter(_DROP)


def _pydicom_loggers() -> list[logging.Logger]:
    names = [n for n in list(logging.root.manager.loggerDict) if n.startswith("pydicom.")]
    return [logging.getLogger("pydicom"), *(logging.getLogger(n) for n in names)]


def read_header_dataset(path: Path, force: bool) -> Dataset:
    """The header of a file, without its pixel data (``force`` for files without preamble)."""
    with quiet_pydicom():
        return pydicom.dcmread(path, stop_before_pixels=True, force=force)


def read_dataset(path: Path, role: str) -> Dataset:
    """A whole file (call under :func:`quiet_pydicom`); ``role`` names it in messages.

    Raises:
        UnreadableImage: ``file_missing`` or ``dicom_unreadable``.
    """
    if not path.is_file():
        raise UnreadableImage("file_missing", f"a file of the {role} is missing")
    try:
        return pydicom.dcmread(path, force=True)
    except READ_ERRORS as exc:
        if fails_the_shard(exc):
            raise
        raise UnreadableImage(
            "dicom_unreadable", f"{role} cannot be read ({type(exc).__name__})"
        ) from None


def read_pixels(ds: Dataset, role: str, index: int | None = None) -> np.ndarray:
    """Decoded stored values (no rescale), as pydicom returns them; frame ``index`` if given."""
    if not any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        raise UnreadableImage("missing_pixel_data", f"{role} has no pixel data")
    try:
        declared = (
            int(ds.get("NumberOfFrames", 1) or 1) if index is None else 1,
            int(ds.get("Rows", 0) or 0),
            int(ds.get("Columns", 0) or 0),
            int(ds.get("SamplesPerPixel", 1) or 1),
        )
    except ATTRIBUTE_ERRORS:
        raise UnreadableImage(
            "dicom_unreadable", f"{role} has malformed image dimensions"
        ) from None
    check_pixels(declared[1:3], role)  # one frame: the 2D limit of the PNG readers
    check_pixels(declared, role, limit=MAX_VOXELS)
    try:
        if index is None:
            return decode_pixels(ds, as_rgb=False)
        return decode_pixels(ds, index=index, as_rgb=False)
    except READ_ERRORS as exc:
        if fails_the_shard(exc):
            raise
        syntax = str(getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "?"))
        raise UnreadableImage(
            "dicom_unreadable",
            f"{role} pixel data cannot be decoded ({type(exc).__name__}, transfer syntax "
            f"{getattr(pydicom.uid.UID(syntax), 'name', syntax)})",
        ) from None
