"""NIfTI reading with nibabel: array plus the little geometry the pipeline needs.

Volumes come back reoriented to canonical RAS+ (axis 0 toward the patient's Right, 1 Anterior,
2 Superior; see ``medgrit.core.slicing``) with voxel spacing in mm. A 4D image keeps one channel
(axis 3). Unreadable files raise :class:`UnreadableImage` with a stable reason code, which the
pipeline turns into a reject row.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.filebasedimages import ImageFileError

from medgrit.core.regions import label_dtype


class UnreadableImage(Exception):
    """A file that cannot be read as an image; ``reason`` is a reject reason code."""

    def __init__(self, reason: str, detail: str) -> None:
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


class NiftiReader:
    """Reads ``.nii`` / ``.nii.gz`` files into canonical :class:`Volume` objects."""

    def read(self, path: str | Path, channel: int = 0, as_labels: bool = False) -> Volume:
        """Read one NIfTI file.

        Args:
            path: the file.
            channel: the channel kept from a 4D image.
            as_labels: return integer labels (rounded) instead of intensities.

        Raises:
            UnreadableImage: missing file (``file_missing``), unreadable or truncated data
                (``nifti_unreadable``), or an unsupported shape (``unsupported_shape``).
        """
        path = Path(path)
        if not path.is_file():
            raise UnreadableImage("file_missing", f"no such file: {path.name}")
        try:
            image = nib.load(str(path))
            if len(image.shape) == 4:
                if channel >= image.shape[3]:
                    raise UnreadableImage(
                        "unsupported_shape", f"{path.name} has no channel {channel}"
                    )
                image = image.slicer[..., channel]
            if len(image.shape) != 3:
                raise UnreadableImage(
                    "unsupported_shape", f"{path.name} has shape {image.shape}, expected 3D"
                )
            canonical = nib.as_closest_canonical(image)
            if as_labels:
                data = np.asanyarray(canonical.dataobj)
                if data.dtype.kind == "f":
                    data = np.rint(data)
                data = as_label_array(data)
            else:
                data = canonical.get_fdata(dtype=np.float32)
        except UnreadableImage:
            raise
        except (OSError, EOFError, ValueError, zlib.error, ImageFileError) as exc:
            raise UnreadableImage("nifti_unreadable", f"{path.name}: {exc}") from exc
        zooms = tuple(float(z) for z in canonical.header.get_zooms()[:3])
        return Volume(data=data, spacing=zooms, affine=canonical.affine)  # type: ignore[arg-type]


def as_label_array(data: np.ndarray) -> np.ndarray:
    """Labels in the smallest unsigned dtype that holds them.

    Raises:
        UnreadableImage: for negative labels (``negative_label``) or ids past 2**32.
    """
    if data.size and data.min() < 0:
        raise UnreadableImage("negative_label", "label map holds negative values")
    try:
        dtype = label_dtype(int(data.max(initial=0)))
    except ValueError as exc:
        raise UnreadableImage("unsupported_shape", str(exc)) from None
    return data.astype(dtype, copy=False)
