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
from typing import ClassVar

import nibabel as nib
import numpy as np
from nibabel.filebasedimages import ImageFileError

from medgrit.core.cases import Case, LoadedCase, UnreadableImage, Volume
from medgrit.core.failures import fails_the_shard
from medgrit.core.fsnames import escape_name, library_message
from medgrit.core.label_maps import as_label_array

# The largest volume read (1 Gi voxels, 4 GiB as float32), checked on the header before any
# voxel is allocated: a header may declare far more than its file holds.
MAX_VOXELS = 1 << 30


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


@dataclass(frozen=True, kw_only=True)
class NiftiCase(Case):
    """A NIfTI image and its label map (nnU-Net and Decathlon layouts).

    Attributes:
        image: the image file (``.nii`` or ``.nii.gz``).
        label: the label map file, on the image's grid.
        channel: the channel kept from a 4D (multi-channel) image.
    """

    format: ClassVar[str] = "nifti"

    image: str
    label: str
    channel: int = 0

    @property
    def reference(self) -> str:
        return Path(self.label).name

    @property
    def message_paths(self) -> tuple[str, ...]:
        return (self.image, self.label)

    @property
    def content_files(self) -> tuple[str, ...]:
        return (self.image, self.label)


_PLANE_CODES = {"axial": "SI", "coronal": "AP", "sagittal": "LR"}


def slices_along(path: str | Path, plane: str) -> int:
    """Slices of a NIfTI file along ``plane``, from its header (no voxel is read)."""
    header = nib.load(path)
    codes = nib.aff2axcodes(header.affine)
    wanted = _PLANE_CODES.get(plane, "SI")
    axis = next((i for i, c in enumerate(codes[:3]) if c in wanted), 2)
    return int(header.shape[axis])


def estimate_images(case: NiftiCase, plane: str) -> int:
    """Slices of the label map along ``plane``, from its header (no voxel is read)."""
    return slices_along(case.label, plane)


def read_case(case: NiftiCase) -> LoadedCase:
    """Read a NIfTI image/label pair into canonical volumes (CT in HU, others by percentile).

    Raises:
        UnreadableImage: see :class:`NiftiReader`.
    """
    reader = NiftiReader()
    image = reader.read(case.image, channel=case.channel)
    labels = reader.read(case.label, as_labels=True)
    intensity = "hu" if case.modality == "ct" else "percentile"
    return LoadedCase(case.modality, intensity, volume=image, label_volume=labels)
