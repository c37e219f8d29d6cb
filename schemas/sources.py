"""The registry of source formats: the only place a new format is added.

Each :class:`Format` names the module that reads its cases and the source kinds (layouts) a
user types as ``KIND:PATH``; the config's checks, ``medgrit build --help`` and the source opener
(``medgrit.adapters.sources``) all read it. Modules are named, not imported, so each format's
dependencies load only when a source of it is used.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Format:
    """One source format: its module and the source kinds (layouts) that list its cases.

    Attributes:
        name: the format, as its case type's ``format`` names it.
        module: the module with the case type and ``read_case(case) -> LoadedCase``.
        kinds: source kind -> (its opener as ``module:function``, a line for ``--help``). An
            opener is ``(spec, root, modality, key) -> Source``.
    """

    name: str
    module: str
    kinds: dict[str, tuple[str, str]]


FORMATS: tuple[Format, ...] = (
    Format(
        "nifti",
        "medgrit.adapters.sources.nifti",
        {
            "nnunet": (
                "medgrit.adapters.sources.nnunet:open_nnunet",
                "nnU-Net v2 raw dataset (dataset.json, imagesTr, labelsTr)",
            ),
            "msd": (
                "medgrit.adapters.sources.nnunet:open_msd",
                "Medical Segmentation Decathlon task (dataset.json, training)",
            ),
        },
    ),
    Format(
        "dicom",
        "medgrit.adapters.sources.dicom",
        {
            "dicom": (
                "medgrit.adapters.sources.dicom:open_dicom",
                "folder of DICOM files with SEG, RTSTRUCT or PNG masks",
            )
        },
    ),
    Format(
        "samed2d",
        "medgrit.adapters.sources.samed2d",
        {
            "samed2d": (
                "medgrit.adapters.sources.samed2d:open_samed2d",
                "SA-Med2D-20M release (images, masks, SAMed2D_v1.json)",
            )
        },
    ),
    Format(
        "images",
        "medgrit.adapters.sources.image_folder",
        {
            "images": (
                "medgrit.adapters.sources.image_folder:open_image_folder",
                "folder of 2D images and masks with labels.json",
            )
        },
    ),
)

# Source kind -> (format, opener name, help line), in the order ``--help`` lists them.
SOURCE_KINDS: dict[str, tuple[Format, str, str]] = {
    kind: (fmt, opener, line) for fmt in FORMATS for kind, (opener, line) in fmt.kinds.items()
}

# Every source kind a user may type; ``demo`` is the bundled demo (a set of the kinds above).
KIND_NAMES: tuple[str, ...] = (*SOURCE_KINDS, "demo")


def kinds_help() -> str:
    """One line per source kind, for ``--help``."""
    return "; ".join(f"{kind}: {line}" for kind, (_, _, line) in SOURCE_KINDS.items())
