"""NIfTI reading with nibabel: array plus the little geometry the pipeline needs.

Volumes come back reoriented to canonical RAS+ (axis 0 toward the patient's Right, 1 Anterior,
2 Superior; see ``medgrit.core.slicing``) with voxel spacing in mm. A 4D image keeps one channel
(axis 3); a label map must be 3D. Header limits (``MAX_VOXELS``) are checked before any voxel is
read. Unreadable files raise :class:`UnreadableImage` with a stable reason code, which the
pipeline turns into a reject row.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.filebasedimages import ImageFileError

from medgrit.core.failures import fails_the_shard
from medgrit.core.fsnames import escape_name
from medgrit.core.regions import label_dtype


class UnreadableImage(Exception):
    """A file that cannot be read as an image; ``reason`` is a reject reason code."""

    def __init__(self, reason: str, detail: str) -> None:
        detail = " ".join(detail.split())  # one line, whatever the library said
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class Volume:
    """A canonical RAS+ volume.

    Attributes:
        data: (X, Y, Z) array, as stored (labels stay integer, images keep their dtype scaled
            by the NIfTI slope/intercept when present).
        spacing: voxel size in mm along each axis.
        affine: 4x4 voxel-to-world (RAS+ mm) matrix of ``data``.
    """

    data: np.ndarray
    spacing: tuple[float, float, float]
    affine: np.ndarray


# The largest volume read (1 Gi voxels, 4 GiB as float32), checked on the header before any
# voxel is allocated: a header may declare far more than its file holds.
MAX_VOXELS = 1 << 30
# Labels within this distance of an integer are that integer (float label maps written by
# resampling tools); farther ones are fractional and rejected, never rounded.
LABEL_TOLERANCE = 1e-3


class NiftiReader:
    """Reads ``.nii`` / ``.nii.gz`` files into canonical :class:`Volume` objects."""

    def read(self, path: str | Path, channel: int = 0, as_labels: bool = False) -> Volume:
        """Read one NIfTI file.

        Args:
            path: the file.
            channel: the channel kept from a 4D image.
            as_labels: return integer labels instead of intensities; label maps must be 3D
                (trailing axes of size 1 are dropped) and hold whole non-negative numbers.

        Raises:
            UnreadableImage: missing file (``file_missing``), unreadable or truncated data
                (``nifti_unreadable``), an unsupported shape (``unsupported_shape``), more than
                ``MAX_VOXELS`` voxels (``too_large``), RGB or complex intensities
                (``unsupported_dtype``), or labels that are not whole non-negative numbers
                (``complex_label``, ``non_finite_label``, ``fractional_label``,
                ``negative_label``).
        """
        path = Path(path)
        name = escape_name(path.name)
        if not path.is_file():
            if path.exists() or path.is_symlink():  # a folder, a device, a pipe, a bad link
                raise UnreadableImage("nifti_unreadable", f"{name} is not a regular file")
            raise UnreadableImage("file_missing", f"no such file: {name}")
        try:
            image = nib.load(str(path))
            image = _three_d(image, name, channel, as_labels)
            voxels = math.prod(int(n) for n in image.shape)
            if voxels > MAX_VOXELS:
                raise UnreadableImage(
                    "too_large",
                    f"{name} declares {image.shape} = {voxels} voxels, more than {MAX_VOXELS}",
                )
            stored = image.get_data_dtype()
            if as_labels and stored.kind == "c":
                raise UnreadableImage("complex_label", f"{name} stores complex labels ({stored})")
            if stored.fields is not None or stored.kind not in "biuf":
                what = "RGB" if stored.fields is not None else str(stored)
                raise UnreadableImage(
                    "unsupported_dtype",
                    f"{name} stores {what} values; medgrit reads scalar (greyscale) volumes",
                )
            canonical = nib.as_closest_canonical(image)
            if as_labels:
                data = as_label_array(np.asanyarray(canonical.dataobj), name)
            else:
                data = canonical.get_fdata(dtype=np.float32)
        except UnreadableImage:
            raise
        except (OSError, EOFError, ValueError, zlib.error, ImageFileError) as exc:
            if fails_the_shard(exc):
                raise  # the disk or the network, not this file
            raise UnreadableImage(
                "nifti_unreadable", f"{name}: {library_message(exc, path)}"
            ) from exc
        zooms = tuple(float(z) for z in canonical.header.get_zooms()[:3])
        return Volume(data=data, spacing=zooms, affine=canonical.affine)  # type: ignore[arg-type]


def library_message(exc: BaseException, path: Path) -> str:
    """What a library said about ``path``, with the file's folders left out and names escaped
    (reject rows name the file, not where the user keeps it)."""
    text = str(exc)
    for spelled in {str(path), str(path.absolute()), str(path.resolve())}:
        text = text.replace(spelled, path.name)
    return escape_name(text)


def _three_d(image, name: str, channel: int, as_labels: bool):
    """The 3D image of a NIfTI file: one channel of a 4D image; axes of size 1 past the third
    dropped; label maps with channels refused."""
    shape = tuple(int(n) for n in image.shape)
    if len(shape) < 3:
        raise UnreadableImage("unsupported_shape", f"{name} has shape {shape}, expected 3D")
    extra = shape[3:]
    if as_labels or len(shape) > 4:
        if any(n != 1 for n in extra):
            what = "label map" if as_labels else "image"
            raise UnreadableImage(
                "unsupported_shape", f"{name}: {what} of shape {shape}, expected 3D"
            )
        return image.slicer[(..., *([0] * len(extra)))] if extra else image
    if len(shape) == 4:
        if channel >= shape[3]:
            raise UnreadableImage("unsupported_shape", f"{name} has no channel {channel}")
        return image.slicer[..., channel]
    return image


def as_label_array(data: np.ndarray, name: str = "label map") -> np.ndarray:
    """Labels in the smallest unsigned dtype that holds them, never altered.

    Float labels are accepted only when every value is a whole number (within
    ``LABEL_TOLERANCE``); nothing is rounded away or cast silently.

    Raises:
        UnreadableImage: ``complex_label``, ``non_finite_label`` (NaN or infinite values),
            ``fractional_label``, ``negative_label``, ``unsupported_dtype`` or
            ``unsupported_shape`` (ids past 2**32).
    """
    kind = data.dtype.kind
    if kind == "c":
        raise UnreadableImage("complex_label", f"{name} holds complex labels")
    if kind == "b":
        data = data.astype(np.uint8)
    elif kind == "f":
        data = _whole_labels(data, name)
    elif kind not in "iu":
        raise UnreadableImage("unsupported_dtype", f"{name} holds {data.dtype} values, not labels")
    if data.size and data.min() < 0:
        raise UnreadableImage("negative_label", f"{name} holds negative values")
    try:
        dtype = label_dtype(int(data.max(initial=0)))
    except ValueError as exc:
        raise UnreadableImage("unsupported_shape", str(exc)) from None
    return data.astype(dtype, copy=False)


def _whole_labels(data: np.ndarray, name: str) -> np.ndarray:
    """Float labels as int64, checked slab by slab (bounded extra memory on large maps)."""
    out = np.empty(data.shape, dtype=np.int64)
    flat_in, flat_out = data.reshape(-1), out.reshape(-1)
    step = 1 << 22
    for start in range(0, flat_in.size, step):
        block = flat_in[start : start + step]
        finite = np.isfinite(block)
        if not finite.all():
            bad = int(block.size - np.count_nonzero(finite))
            raise UnreadableImage(
                "non_finite_label", f"{name} holds NaN or infinite labels ({bad}+ voxels)"
            )
        whole = np.rint(block)
        off = np.abs(block - whole) > LABEL_TOLERANCE
        if off.any():
            example = float(block[np.argmax(off)])
            raise UnreadableImage(
                "fractional_label",
                f"{name} holds fractional labels (e.g. {example:g}); labels must be whole numbers",
            )
        if whole.size and np.abs(whole).max() > np.iinfo(np.uint32).max:
            raise UnreadableImage("unsupported_shape", f"{name} holds label ids past 2**32")
        flat_out[start : start + step] = whole.astype(np.int64)
    return out
