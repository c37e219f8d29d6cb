"""Binary NIfTI masks on an image's grid, read fast: sources with a file per class
(TotalSegmentator's ``segmentations/``) read a hundred of them per case.

:func:`read_grid_mask` returns a mask's voxels as stored ((X, Y, Z), the file's axis order and
dtype, Fortran-ordered as NIfTI stores them; nothing converted to float), after checking that
the mask lies on the image's grid: the same shape, and an affine within
:data:`AFFINE_TOLERANCE` mm of the image's. A ``.nii.gz`` mask is gunzipped in memory (at most
the bytes a volume of the image's shape can hold), its header read with nibabel's header class
(without its fixes: the parts read are checked here), and its voxels viewed in place
(read-only) when stored unscaled: on a 128x128x48 mask that takes less than half the time of
nibabel's general reader, on a 256x256x300 one about 0.85 of it (decompression dominates;
``benchmarks/bench_totalseg.py`` times whole cases). Uncompressed and scaled masks are read by
nibabel as usual.
"""

from __future__ import annotations

import io
import math
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.filebasedimages import ImageFileError
from nibabel.spatialimages import HeaderDataError
from nibabel.wrapstruct import WrapStructError

from medgrit.core.cases import UnreadableImage
from medgrit.core.failures import fails_the_shard
from medgrit.core.fsnames import escape_name, library_message

__all__ = ["AFFINE_TOLERANCE", "read_grid_mask"]

AFFINE_TOLERANCE = 1e-3  # mm
# Room for a header and its extensions, past the voxels a mask of the image's shape holds.
_HEADER_ROOM = 16 << 20
_ERRORS = (
    OSError,
    EOFError,
    ValueError,
    zlib.error,
    ImageFileError,
    HeaderDataError,
    WrapStructError,
)


def _gunzip(data: bytes, limit: int, name: str) -> bytes:
    """The bytes of a gzip file (of one member or several), at most ``limit`` of them."""
    parts: list[bytes] = []
    size = 0
    while data:
        stream = zlib.decompressobj(wbits=47)  # gzip or zlib header, read from the data
        part = stream.decompress(data, limit - size)
        if stream.unconsumed_tail:
            raise UnreadableImage(
                "mask_unreadable", f"{name} holds more than a mask of the image's grid"
            )
        if not stream.eof:
            raise UnreadableImage("mask_unreadable", f"{name} is truncated")
        parts.append(part)
        size += len(part)
        data = stream.unused_data
    return parts[0] if len(parts) == 1 else b"".join(parts)


def _image_class(raw: bytes) -> type[nib.Nifti1Image]:
    """NIfTI-2 when the header says its size is 540 bytes (either byte order), else NIfTI-1."""
    nifti2 = 540 in (int.from_bytes(raw[:4], "little"), int.from_bytes(raw[:4], "big"))
    return nib.Nifti2Image if nifti2 else nib.Nifti1Image


def _header(raw: bytes, name: str) -> nib.Nifti1Header:
    """The header of a single-file NIfTI held in ``raw``. nibabel's checks and fixes of a
    header are left out (a third of a small mask's reading): what this module reads of it
    (magic, shape, affine, voxel type, scaling and offset) is checked where it is used.

    Raises:
        UnreadableImage: ``mask_unreadable``, when it is no single-file NIfTI-1 or NIfTI-2.
    """
    image_class = _image_class(raw)
    header = image_class.header_class.from_fileobj(io.BytesIO(raw), check=False)
    if bytes(header["magic"]).rstrip(b"\0")[:3] not in (b"n+1", b"n+2"):
        raise UnreadableImage("mask_unreadable", f"{name} is no single-file NIfTI")
    return header


def read_grid_mask(
    path: str | Path, shape: tuple[int, ...], affine: np.ndarray, shown: str | None = None
) -> np.ndarray:
    """A mask's voxels as stored, checked to lie on the image's grid.

    Args:
        path: the mask file (``.nii.gz`` or ``.nii``).
        shape: the image's (X, Y, Z) shape as stored.
        affine: the image's voxel-to-world matrix as stored.
        shown: how messages name the file (default: its name).

    Raises:
        UnreadableImage: ``mask_missing`` (no such file), ``mask_unreadable`` (not a regular
            file, corrupt, truncated, not scalar values), ``mask_shape_mismatch`` (another shape
            or affine than the image's; trailing axes of size 1 are dropped).
    """
    path = Path(path)
    name = shown or escape_name(path.name)
    if not path.is_file():
        if path.exists() or path.is_symlink():
            raise UnreadableImage("mask_unreadable", f"{name} is not a regular file")
        raise UnreadableImage("mask_missing", f"no such mask: {name}")
    try:
        image: nib.Nifti1Image | None = None
        raw: bytes | None = None
        if path.name.endswith(".gz"):
            limit = _HEADER_ROOM + math.prod(shape) * 16  # no voxel type is wider than 16 bytes
            raw = _gunzip(path.read_bytes(), limit, name)
            header = _header(raw, name)
        else:
            image = nib.load(path)
            header = image.header
        found = tuple(int(n) for n in header.get_data_shape())
        if found[:3] != shape or any(n != 1 for n in found[3:]):
            raise UnreadableImage("mask_shape_mismatch", f"{name}: mask {found} vs image {shape}")
        if not float(np.abs(header.get_best_affine() - affine).max()) <= AFFINE_TOLERANCE:
            raise UnreadableImage(
                "mask_shape_mismatch", f"{name}: its affine differs from the image's"
            )
        stored = header.get_data_dtype()
        if stored.fields is not None or stored.kind not in "biuf":
            raise UnreadableImage("mask_unreadable", f"{name} stores {stored} values")
        if raw is not None and header.get_slope_inter() in ((None, None), (1.0, 0.0)):
            offset = int(header.get_data_offset())
            if offset < header.sizeof_hdr:
                raise UnreadableImage("mask_unreadable", f"{name}: voxel offset {offset}")
            data = np.frombuffer(raw, stored, count=math.prod(found), offset=offset)
            return data.reshape(shape, order="F")  # NIfTI stores voxels x fastest
        if image is None:
            image = _image_class(raw).from_bytes(raw)  # type: ignore[arg-type]
        return np.asanyarray(image.dataobj).reshape(shape)
    except UnreadableImage:
        raise
    except _ERRORS as exc:
        if fails_the_shard(exc):
            raise  # the disk or the network, not this file
        raise UnreadableImage("mask_unreadable", f"{name}: {library_message(exc, path)}") from exc
