"""The source formats and kinds a user may name: their names and ``--help`` lines.

Each :class:`Format` names the source kinds (layouts) a user types as ``KIND:PATH``; the config's
checks and ``medgrit build --help`` read them here, without importing any reader. The reader of
each kind is ``medgrit.adapters.sources.registry.READERS[kind]`` (a test keeps the two in step).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple


@dataclass(frozen=True)
class Format:
    """One source format and the source kinds (layouts) that list its cases.

    Attributes:
        name: the format, as its case type's ``format`` names it.
        kinds: source kind -> a line for ``--help``.
    """

    name: str
    kinds: dict[str, str]


class SourceKind(NamedTuple):
    """A source kind: the format of its cases and its line in ``--help``."""

    format: str
    help: str


FORMATS: tuple[Format, ...] = (
    Format(
        "nifti",
        {
            "nnunet": "nnU-Net v2 raw dataset (dataset.json, imagesTr, labelsTr)",
            "msd": "Medical Segmentation Decathlon task (dataset.json, training)",
        },
    ),
    Format("dicom", {"dicom": "folder of DICOM files with SEG, RTSTRUCT or PNG masks"}),
    Format("samed2d", {"samed2d": "SA-Med2D-20M release (images, masks, SAMed2D_v1.json)"}),
    Format("images", {"images": "folder of 2D images and masks with labels.json"}),
    Format(
        "totalseg",
        {
            "totalseg": "TotalSegmentator dataset or output (case folders with ct.nii.gz or "
            "mri.nii.gz and segmentations/ or segmentations.nii.gz; meta.csv splits)"
        },
    ),
)

# Source kind -> (format, help line), in the order ``--help`` lists them.
SOURCE_KINDS: dict[str, SourceKind] = {
    kind: SourceKind(fmt.name, line) for fmt in FORMATS for kind, line in fmt.kinds.items()
}

# Every source kind a user may type; ``demo`` is the bundled demo (a set of the kinds above).
KIND_NAMES: tuple[str, ...] = (*SOURCE_KINDS, "demo")


def kinds_help() -> str:
    """One line per source kind, for ``--help``."""
    return "; ".join(f"{kind}: {entry.help}" for kind, entry in SOURCE_KINDS.items())
