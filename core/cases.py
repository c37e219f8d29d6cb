"""The case model shared by all sources: what discovery lists and what a reader returns.

Discovery (each format's opener) reads only metadata and lists :class:`Case` objects, one
frozen subclass per format with the files that format reads. During a shard, the reader the
source registry names for ``Case.format`` turns one case into a :class:`LoadedCase`: either a
canonical RAS+ :class:`Volume` with its label volume (NIfTI, DICOM series) or a list of
:class:`PlanarImage` already in display orientation (single DICOM images, SA-Med2D-20M slices,
image folders). A reader that cannot read a case raises :class:`UnreadableImage`, whose reason
becomes a reject row.

Privacy: a case holds file paths and, for DICOM, *pseudonymous* case and patient keys; no
DICOM attribute value other than whitelisted technical ones (modality, spacing, orientation)
leaves a reader.

The label names of the cases, with the synonyms their label files give, make a build's
:class:`Vocabulary`: the names every text of the build is read with.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from medgrit.core.lexicon import Lexicon, lexicon_for
from medgrit.core.vocab import RejectReason


class UnreadableImage(Exception):
    """A file that cannot be read as an image; ``reason`` is a reject reason code."""

    def __init__(self, reason: RejectReason, detail: str) -> None:
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


class SourceError(Exception):
    """A source a user must fix; the message is one line that says how."""


@dataclass(frozen=True, kw_only=True)
class Case:
    """What every case has, whatever its format (nothing here is written to the tables).

    Each source format subclasses it with the files it reads (``NiftiCase``,
    ``DicomSeriesCase``, ...); the format's reader takes exactly that type.

    Attributes:
        source: the source spec it came from (``KIND:PATH``).
        dataset: dataset name (from the source's metadata or folder name).
        case: the case's name in the source; for DICOM a keyed pseudonym.
        modality: modality key (``ct``, ``mr``, ``xray``, ...).
        labels: (label id, readable name) pairs known at discovery.
        patient: the key the train/test split groups by (patient); empty means the case.
        split: the split the source assigns the case (``train`` or ``test``, as
            TotalSegmentator's ``meta.csv`` does); empty: medgrit draws it
            (``medgrit.core.sharding``).
        written_labels: the same ids with their names as the label file writes them
            (normalised: ``medgrit.core.label_names``); what a dataset records as its source's
            label map and compares later, whatever words medgrit makes of them.
        synonyms: (synonym, readable label name) pairs the label file gives, sorted: other
            words a text may name those labels by.
        sequence: the MR sequence (or channel) the case's image shows, as its source names it
            (``FLAIR``, ``T1Gd``); empty when the source names none. The images table records
            it and the text may name it (``medgrit.core.sequences``).
        label_groups: region-based labels (nnU-Net's ``"tumor core": [2, 3]``): (label id,
            the stored values whose union is its region). Empty: each label id is the stored
            value of its own pixels. Grouped regions may overlap and nest.
    """

    # Which reader of the source registry reads this type (``medgrit.adapters.sources``).
    format: ClassVar[str] = ""
    # Whether messages about its files may quote patient data (DICOM): reject rows then give
    # only an exception's class.
    identifying: ClassVar[bool] = False
    # Whether its label ids are numbered per case (DICOM SEG segments, RTSTRUCT ROIs) rather
    # than once for its dataset (a label list of the source).
    labels_per_case: ClassVar[bool] = False

    source: str
    dataset: str
    case: str
    modality: str
    labels: tuple[tuple[int, str], ...] = ()
    patient: str = ""
    split: str = ""
    written_labels: tuple[tuple[int, str], ...] = ()
    synonyms: tuple[tuple[str, str], ...] = ()
    sequence: str = ""
    label_groups: tuple[tuple[int, tuple[int, ...]], ...] = ()

    @property
    def reference(self) -> str:
        """The name reject rows give the case (a file name, or for DICOM the pseudonym)."""
        return self.case

    @property
    def message_paths(self) -> tuple[str, ...]:
        """Paths whose folders are cut out of library messages quoted in reject rows."""
        return ()

    @property
    def content_files(self) -> tuple[str, ...]:
        """Every file the case's images and masks are read from: what a dataset fingerprints
        to tell, at a later build, that the case changed since it was built."""
        return ()


@dataclass(frozen=True)
class Vocabulary:
    """The structure names a build's texts are read with (``medgrit.core.lexicon``).

    Attributes:
        names: the readable label names of the build's cases, sorted.
        synonyms: (synonym, readable label name) pairs their label files give, sorted.
    """

    names: tuple[str, ...] = ()
    synonyms: tuple[tuple[str, str], ...] = ()

    @classmethod
    def recorded(
        cls, names: Iterable[str], synonyms: Mapping[str, Iterable[str]] | None = None
    ) -> Vocabulary:
        """The vocabulary a dataset records: its names and its synonyms per label name
        (``dataset.json`` writes ``{label: [synonym, ...]}``; None: none recorded)."""
        pairs = {(word, label) for label, words in (synonyms or {}).items() for word in words}
        return cls(tuple(sorted(set(names))), tuple(sorted(pairs)))

    def synonyms_by_label(self) -> dict[str, list[str]]:
        """The synonyms per label name, labels and synonyms sorted (as a dataset records them)."""
        out: dict[str, list[str]] = {}
        for word, label in self.synonyms:
            out.setdefault(label, []).append(word)
        return {label: sorted(words) for label, words in sorted(out.items())}

    def lexicon(self) -> Lexicon:
        """The (cached) lexicon of these names and synonyms."""
        return lexicon_for(frozenset(self.names), frozenset(self.synonyms))


NO_VOCABULARY = Vocabulary()
"""The vocabulary of no label: texts are read with the packaged words only."""


@dataclass(frozen=True)
class Source:
    """An opened source: its name, modality, label names and cases in sorted order."""

    spec: str
    kind: str
    root: str
    dataset: str
    modality: str
    labels: tuple[tuple[int, str], ...]
    cases: tuple[Case, ...]


@dataclass(frozen=True)
class PlanarImage:
    """One 2D image of a case, in display orientation.

    Attributes:
        slice_index: its index within the case (0 for single images).
        pixels: (H, W) float intensities, or (H, W) / (H, W, 3) uint8 ready for display.
        labels: (H, W) unsigned integer label map on the same grid.
        plane: ``2d`` for projection and photographic images, else the slice plane.
    """

    slice_index: int
    pixels: np.ndarray
    labels: np.ndarray
    plane: str = "2d"


# How a loaded case's intensities map to 8 bits: a CT window in HU, a SUV window, per-volume
# (or per-image) percentiles, or pixels that are already 8-bit display values.
INTENSITY_KINDS = ("hu", "suv", "percentile", "display")


@dataclass(frozen=True)
class LoadedCase:
    """What a loader returns for one case.

    Exactly one of ``volume`` (with ``label_volume``) or ``images`` is set.

    Attributes:
        modality: modality key (a loader may refine the discovered one, e.g. from DICOM).
        intensity: one of ``INTENSITY_KINDS``.
        volume: canonical RAS+ image volume (see ``medgrit.core.slicing``).
        label_volume: label volume on the same grid.
        images: 2D images for planar cases.
        label_names: label names found while loading (SEG segments, RTSTRUCT ROIs); they add
            to or replace the discovered names.
        written_label_names: the same ids with their names as the source writes them (empty:
            as ``label_names``).
        rejects: (reason, detail, slice_index or None) for parts of the case that were
            dropped while loading (a mask of the wrong size, an unreadable slice).
    """

    modality: str
    intensity: str
    volume: Volume | None = None
    label_volume: Volume | None = None
    images: tuple[PlanarImage, ...] = ()
    label_names: tuple[tuple[int, str], ...] = ()
    written_label_names: tuple[tuple[int, str], ...] = ()
    rejects: tuple[tuple[RejectReason, str, int | None], ...] = ()
