"""SA-Med2D-20M (the release BiRD's Med-GRIT-270k was built from): 2D slices with binary masks.

Layout of the unpacked release (``SAMed2Dv1/``; ``samed2d:PATH`` points at it; the two JSON files
may also sit in ``PATH/annotations/``, as some toolkits move them)::

    SAMed2D_v1.json                    {"images/<image>.png": ["masks/<mask>.png", ...], ...}
    SAMed2D_v1_class_mapping_id.json   {"<dataset>": {"<class name>": <class index>, ...}, ...}
    images/{modality_sub}--{dataset}--{case}--{axis}_{slice}.png
    masks/{image stem}--{class:04d}_{instance:03d}.png      one binary mask per instance

e.g. ``images/ct_00--AbdomenCT1K--Case_00011--x_0040.png`` and
``masks/ct_00--AbdomenCT1K--Case_00011--x_0041--0000_001.png``. Paths in ``SAMed2D_v1.json``
are relative to the folder holding ``images/``. The class index in a mask name is the 0-based
index of ``SAMed2D_v1_class_mapping_id.json`` for that dataset.

Conventions:

- Axis letters: ``x`` -> sagittal, ``y`` -> coronal, ``z`` -> axial, i.e. the slice is taken
  at a fixed index of the first, second or third axis of the source volume's array (x, y, z
  of a NIfTI volume in RAS-like storage). The release does not document the letters; this is
  the array-axis reading, not checked against the release's slicing code, and a volume stored
  in another axis order would be mislabelled. ``2d_none`` marks an image that is 2D at source:
  plane ``2d``, slice index 0. The release stores slices as it cut them; medgrit does not
  reorient them, so the radiological display convention is not guaranteed for these images.
- Cases: one :class:`SaMed2dCase` per volume = (dataset, case, sub-modality); ``case`` is
  ``{case}--{modality_sub}`` (a patient's sequences, e.g. BraTS T1 and FLAIR, or autoPET CT and
  PET, are separate volumes with the same slice numbers), ``patient`` the release's case name,
  so all volumes of a patient share the train/test split. ``slices`` holds one
  :class:`SaMed2dSlice` per slice (image and mask paths, absolute), sorted by axis (x, y, z,
  2D) then slice number. ``index`` is the ``SAMed2D_v1.json`` that lists the case (the reader
  finds the class mapping next to it) and ``name`` the volume's file-name prefix
  ``{modality_sub}--{dataset}--{case}`` (it names the case in reject rows). Cases are sorted by
  dataset, case, sub-modality. The ``Source`` is named ``SA-Med2D-20M``; its modality is
  ``mixed`` when the cases have several, and its ``labels`` are empty when they come from
  several datasets (label ids are per dataset; each case's ``labels`` holds its dataset's).
- Modality from the file-name prefix: ``ct_*`` ct, ``mr_*`` mr, ``pet_*`` pet, ``x_ray`` xray,
  ``endoscopy_*``, ``dermoscopy_*``, ``fundus_photography`` fundus, ``ultrasound_*``. An unknown
  prefix takes ``--modality`` when given, else opening fails.
- Labels: label id = class index + 1 (so class 0 is not background). Names come from the class
  mapping through ``readable_label_name``. Classes medgrit will not name are dropped with a
  reject reason: ``composite_label`` (``union_*`` merges of other classes), ``generic_label``
  (``class``, ``class_3``: no anatomical name) and ``fragment_label`` (a bare ``left`` /
  ``right``).
- Label maps: masks are painted in ascending (class, instance) order, so where masks overlap the
  higher class id wins. Mask foreground is any non-zero pixel.
- Pixels: the release's 8-bit PNGs, as stored: (H, W) uint8 grey or (H, W, 3) uint8 RGB,
  intensity ``display`` (the release already normalised them). Labels: (H, W) uint8 (uint16 if
  a dataset has more than 255 classes) on the same grid.

Rejects (``LoadedCase.rejects``): per slice ``file_missing`` / ``image_unreadable`` (the slice is
dropped; so are non-8-bit images); per mask ``mask_missing``, ``mask_unreadable``,
``mask_shape_mismatch`` and ``mask_name_malformed``; a slice whose masks were all dropped is
dropped. Masks of filtered classes and of classes missing from the class mapping
(``unknown_label``) give one reject per case and class (slice None), with the count of masks
dropped. Known quirks of the release that
medgrit does not repair: masks listed in ``SAMed2D_v1.json`` but absent from ``masks/``,
inverted optic-disc masks in ``ichallenge_adam_task2``, and ACDC's whole-ventricle class that
overlaps the cavity classes.

Opening reads the two JSON files only; no image or mask is opened, so opening the full release
(4.6M images, 19.7M masks) costs the JSON parse and string work.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache
from itertools import pairwise
from pathlib import Path
from typing import ClassVar

import numpy as np

from medgrit.adapters.sources.image_folder import read_planar_image
from medgrit.adapters.sources.label_files import read_label_file
from medgrit.adapters.sources.masks import read_mask
from medgrit.adapters.sources.samed2d_index import (
    CLASS_MAPPING_JSON,
    INDEX_JSON,
    SaMed2dSlice,
    dataset_labels,
    find_index,
    group_volumes,
    label_filter_reason,
    modalities_of,
    parse_image_name,
    read_class_mapping,
)
from medgrit.core.cases import Case, LoadedCase, PlanarImage, Source, SourceError, UnreadableImage
from medgrit.core.fsnames import escape_name
from medgrit.core.label_names import checked_dataset_name
from medgrit.core.regions import label_dtype
from medgrit.core.text import readable_labels
from medgrit.core.vocab import MODALITIES

__all__ = [
    "SaMed2dCase",
    "SaMed2dReader",
    "open_samed2d",
    "read_case",
]

RELEASE_NAME = "SA-Med2D-20M"
_MASK_TAIL = re.compile(r"(\d+)_(\d+)")


# --------------------------------------------------------------------------- cases


@dataclass(frozen=True, kw_only=True)
class SaMed2dCase(Case):
    """The slices of one SA-Med2D-20M volume.

    Attributes:
        index: the ``SAMed2D_v1.json`` that lists the volume (the class mapping lies next to it).
        name: the volume's file-name prefix, ``{modality_sub}--{dataset}--{case}``.
        masks_dir: the release's ``masks/`` folder.
        slices: the slices, sorted by axis (x, y, z, 2D), then slice number.
    """

    format: ClassVar[str] = "samed2d"

    index: str
    name: str
    masks_dir: str
    slices: tuple[SaMed2dSlice, ...]

    @property
    def reference(self) -> str:
        return self.name

    @property
    def message_paths(self) -> tuple[str, ...]:
        return (self.index, os.path.join(self.masks_dir, self.name))

    @property
    def content_files(self) -> tuple[str, ...]:
        return tuple(path for item in self.slices for path in (item.image, *item.masks))


def open_samed2d(spec: str, root: Path, modality: str | None = None, key: bytes = b"") -> Source:
    """Open an unpacked SA-Med2D-20M release (or a subset with the same layout).

    Reads ``SAMed2D_v1.json`` and the class mapping, parses file names and groups slices into
    volumes; no image or mask file is opened.

    Args:
        spec: the source spec (``samed2d:PATH``).
        root: the ``SAMed2Dv1`` folder.
        modality: modality key for file-name prefixes medgrit does not know.
        key: unused (the release holds no identifiers to pseudonymise).

    Raises:
        SourceError: a missing or malformed JSON file, an image name that does not follow the
            release's pattern, a dataset missing from the class mapping, or an unknown
            modality prefix without ``--modality``.
    """
    if modality is not None and modality not in MODALITIES:
        raise SourceError(f"unknown modality {modality!r}; use one of {', '.join(MODALITIES)}")
    index_path, data_root = find_index(root)
    index = read_label_file(index_path)
    if not isinstance(index, dict) or not index:
        raise SourceError(
            f"malformed {INDEX_JSON} at {index_path}: expected a non-empty object mapping "
            "image path -> list of mask paths"
        )
    mapping = read_class_mapping(index_path.with_name(CLASS_MAPPING_JSON))
    volumes = group_volumes(index, index_path, data_root)
    datasets = sorted({dataset for dataset, _, _ in volumes})
    missing = [d for d in datasets if d not in mapping]
    if missing:
        raise SourceError(
            f"{CLASS_MAPPING_JSON} has no classes for dataset(s) {', '.join(missing)}; "
            "use the mapping file of the same release"
        )
    for dataset in datasets:
        checked_dataset_name(dataset, f"an image name in {escape_name(str(index_path))}")
    written_of = {d: dataset_labels(mapping[d]) for d in datasets}
    labels_of = {d: readable_labels(w) for d, w in written_of.items()}
    modality_of = modalities_of({sub for _, _, sub in volumes}, modality, index_path)
    masks_dir = str(data_root / "masks")
    cases = []
    for dataset, case, sub in sorted(volumes):
        slices = sorted(volumes[(dataset, case, sub)], key=lambda s: s[:2])
        for before, after in pairwise(slices):
            if before[:2] == after[:2]:
                raise SourceError(
                    f"malformed {INDEX_JSON} at {index_path}: two images of {sub}--{dataset}--"
                    f"{case} have slice {after[1]} of one plane (zero padding differs?)"
                )
        cases.append(
            SaMed2dCase(
                source=spec,
                dataset=escape_name(dataset),
                case=f"{case}--{sub}",
                modality=modality_of[sub],
                labels=labels_of[dataset],
                written_labels=written_of[dataset],
                patient=case,
                index=str(index_path),
                name=f"{sub}--{dataset}--{case}",
                masks_dir=masks_dir,
                slices=tuple(found for _, _, found in slices),
            )
        )
    modalities = sorted(set(modality_of.values()))
    source_modality = modalities[0] if len(modalities) == 1 else "mixed"
    # Label ids are per dataset: a release of several datasets has no single label table.
    source_labels = labels_of[datasets[0]] if len(datasets) == 1 else ()
    return Source(
        spec, "samed2d", str(root), RELEASE_NAME, source_modality, source_labels, tuple(cases)
    )


# --------------------------------------------------------------------------- loading


@lru_cache(maxsize=8)
def _class_names(mapping_path: str) -> dict[str, dict[int, str]]:
    return read_class_mapping(Path(mapping_path))


def _mask_class(mask_path: str, image_stem: str) -> tuple[int, int] | None:
    """(class index, instance) from ``{image stem}--{class}_{instance}.png``, or None."""
    name = mask_path.rsplit("/", 1)[-1]
    if not name.endswith(".png"):
        return None
    stem = name[:-4]
    head, sep, tail = stem.rpartition("--")
    match = _MASK_TAIL.fullmatch(tail)
    if not sep or match is None or head != image_stem:
        return None
    return int(match.group(1)), int(match.group(2))


def read_case(case: SaMed2dCase) -> LoadedCase:
    """Read the slices and masks of one SA-Med2D-20M volume (see the module docstring).

    Raises:
        UnreadableImage: ``case_empty`` when the case lists no slice, ``class_mapping_missing``
            when the class mapping next to ``SAMed2D_v1.json`` cannot be read.
    """
    if not case.slices:
        raise UnreadableImage("case_empty", f"case {case.case} lists no slice")
    usable = dict(case.labels)
    dtype = label_dtype(max(usable, default=0))
    rejects: list[tuple[str, str, int | None]] = []
    dropped: Counter[int] = Counter()  # masks of classes medgrit does not use, by label id
    images: list[PlanarImage] = []
    for found in case.slices:
        image_path, mask_paths = found.image, found.masks
        parsed = parse_image_name(image_path)
        if parsed is None:  # only a hand-made case gets here: open_samed2d checked every name
            raise UnreadableImage("image_unreadable", f"not an SA-Med2D-20M name: {image_path}")
        index = parsed.slice_index
        where = f"{parsed.plane} slice {index}"
        try:
            pixels = read_planar_image(image_path)
        except UnreadableImage as exc:
            rejects.append((exc.reason, f"{where}: {exc.detail}", index))
            continue
        if pixels.dtype != np.uint8:
            detail = f"{where}: {Path(image_path).name} is not 8-bit as the release's PNGs are"
            rejects.append(("image_unreadable", detail, index))
            continue
        shape = pixels.shape[:2]
        image_stem = image_path.rsplit("/", 1)[-1][:-4]
        classes = []
        for mask_path in mask_paths:
            found = _mask_class(mask_path, image_stem)
            if found is None:
                name = mask_path.rsplit("/", 1)[-1]
                detail = f"{where}: {name} does not end in --{{class}}_{{instance}}.png"
                rejects.append(("mask_name_malformed", detail, index))
                continue
            label_id = found[0] + 1
            if label_id in usable:
                classes.append((found, mask_path))
            else:
                dropped[label_id] += 1
        label_map = np.zeros(shape, dtype=dtype)
        painted = 0
        for (class_index, _), mask_path in sorted(classes):
            try:
                mask = read_mask(mask_path, binary=True)
            except UnreadableImage as exc:
                rejects.append((exc.reason, f"{where}: {exc.detail}", index))
                continue
            if mask.shape != shape:
                name = mask_path.rsplit("/", 1)[-1]
                detail = f"{where}: {name} is {mask.shape}, the image {shape}"
                rejects.append(("mask_shape_mismatch", detail, index))
                continue
            label_map[mask > 0] = class_index + 1
            painted += 1
        if mask_paths and not painted:
            continue  # every mask was dropped; the rejects above and below say why
        images.append(PlanarImage(index, pixels, label_map, parsed.plane))

    if dropped:
        rejects.extend(_dropped_class_rejects(case, dropped))
    return LoadedCase(case.modality, "display", images=tuple(images), rejects=tuple(rejects))


def _dropped_class_rejects(
    case: SaMed2dCase, dropped: Counter[int]
) -> list[tuple[str, str, int | None]]:
    """One reject per class medgrit does not use, with the count of masks dropped."""
    mapping_path = str(Path(case.index).with_name(CLASS_MAPPING_JSON))
    try:
        classes = _class_names(mapping_path).get(case.dataset, {})
    except SourceError as exc:
        raise UnreadableImage("class_mapping_missing", str(exc)) from exc
    out: list[tuple[str, str, int | None]] = []
    for label_id in sorted(dropped):
        raw = classes.get(label_id)
        count = dropped[label_id]
        if raw is None:
            detail = (
                f"class {label_id - 1:04d} is not in {CLASS_MAPPING_JSON} for {case.dataset}: "
                f"{count} mask(s) dropped"
            )
            out.append(("unknown_label", detail, None))
        else:
            reason = label_filter_reason(raw) or "unknown_label"
            detail = f"{raw!r} (class {label_id - 1:04d}): {count} mask(s) dropped"
            out.append((reason, detail, None))
    return out


def estimate_images(case: SaMed2dCase, plane: str) -> int:
    """The slices the release lists for the case."""
    return len(case.slices)


class SaMed2dReader:
    """The reader of ``samed2d:PATH`` sources: an SA-Med2D-20M release's volumes."""

    format: ClassVar[str] = SaMed2dCase.format
    open_source = staticmethod(open_samed2d)
    read_case = staticmethod(read_case)
    estimate_images = staticmethod(estimate_images)
