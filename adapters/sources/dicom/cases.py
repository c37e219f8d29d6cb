"""The DICOM case types: an image series with its SEG or RTSTRUCT, a single image with mask
PNGs, and a file whose header cannot be parsed.

All are ``format = "dicom"`` and ``identifying``: their ``case`` and ``patient`` are keyed
pseudonyms, reject rows name a case by its pseudonym and quote only an exception's class, since
DICOM file names and library messages may carry identifiers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from medgrit.core.cases import Case

__all__ = ["DicomCase", "DicomPlanarCase", "DicomSeriesCase", "DicomUnparseableCase", "MaskFrame"]


@dataclass(frozen=True, kw_only=True)
class DicomCase(Case):
    """What the DICOM case types share."""

    format: ClassVar[str] = "dicom"
    identifying: ClassVar[bool] = True

    @property
    def label_file(self) -> str:
        """The file that makes this a case (cases sort by it after their pseudonym)."""
        raise NotImplementedError


@dataclass(frozen=True, kw_only=True)
class DicomSeriesCase(DicomCase):
    """An image series and the SEG or RTSTRUCT that labels it.

    Attributes:
        files: the series' files, sorted by path; ``()`` when the series the mask references
            is not in the source (it reads as ``referenced_series_missing``).
        mask: the SEG or RTSTRUCT file.
    """

    # SEG segments and RTSTRUCT ROIs are numbered per object, not per dataset.
    labels_per_case: ClassVar[bool] = True

    files: tuple[str, ...]
    mask: str

    @property
    def label_file(self) -> str:
        return self.mask

    @property
    def content_files(self) -> tuple[str, ...]:
        return (*self.files, self.mask)


@dataclass(frozen=True)
class MaskFrame:
    """A label-map PNG of one frame of a single image.

    Attributes:
        frame: the 0-based frame index.
        mask: the PNG file (pixel value = label id).
    """

    frame: int
    mask: str


@dataclass(frozen=True, kw_only=True)
class DicomPlanarCase(DicomCase):
    """A single DICOM image (one or more frames) with a mask PNG per masked frame.

    Attributes:
        image: the DICOM file.
        frames: the masked frames, ascending.
    """

    image: str
    frames: tuple[MaskFrame, ...]

    @property
    def label_file(self) -> str:
        return self.frames[0].mask if self.frames else self.image

    @property
    def content_files(self) -> tuple[str, ...]:
        return (self.image, *(f.mask for f in self.frames))


@dataclass(frozen=True, kw_only=True)
class DicomUnparseableCase(DicomCase):
    """A file that claims to be DICOM but whose header cannot be parsed; it reads as
    ``dicom_unreadable``.

    Attributes:
        path: the file.
    """

    path: str

    @property
    def label_file(self) -> str:
        return self.path

    @property
    def content_files(self) -> tuple[str, ...]:
        return (self.path,)
