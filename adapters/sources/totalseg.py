"""TotalSegmentator's layouts: its published datasets, and its output next to an image.

Layout of a ``totalseg:PATH`` source, PATH being a dataset root that holds case folders, or one
case folder::

    PATH/meta.csv                            optional; ';'-separated, with image_id and split
    PATH/{case}/ct.nii.gz                    the image (mri.nii.gz for MR, or one other NIfTI)
    PATH/{case}/segmentations/{class}.nii.gz one binary mask per class (``kidney_left``), or
    PATH/{case}/segmentations.nii.gz         one multilabel file (voxel value = class id)

- A folder is a case folder when it holds ``segmentations/`` or ``segmentations.nii[.gz]``.
  PATH is one case when it is a case folder; else each case folder directly in PATH is a case,
  named by its folder (other folders and hidden ones are not part of the source).
- The image is ``ct.nii.gz`` (modality ``ct``) or ``mri.nii.gz`` (``mr``), else the one other
  ``.nii.gz`` / ``.nii`` file at the case folder's top level, whose modality ``--modality``
  gives.
- The dataset is named after PATH; a single case folder after the folder holding it, so that
  a case keeps its name (and id) whether it is opened alone or with its dataset.
- ``meta.csv`` (TotalSegmentator's, read only for its ``image_id`` and ``split`` columns) puts a
  case it lists as ``test`` in the test split and one listed as ``train`` or ``val`` in the
  train split (``Case.split``); cases it does not list, and a single case folder, are split
  as medgrit splits any case.
- Labels: one label map for the source, named at opening from file names and headers (no voxel
  is read). Per-class masks take the class ids of TotalSegmentator's class map of their
  modality (``total`` for CT, ``total_mr`` for MR: ``medgrit.adapters.sources.totalseg_labels``)
  when every mask name of the source is in it, else the sorted mask names numbered 1..n. A
  multilabel file's ids are named by the label table TotalSegmentator writes into its header,
  else by the class map of its modality. Cases that name one id otherwise are refused.

Loaded cases: the image as :class:`~medgrit.adapters.sources.nifti.NiftiReader` reads it
(canonical RAS+ float32, CT in HU, other modalities by percentile) and an (X, Y, Z) label
volume on the same canonical grid, uint8 (uint16 when an id passes 255). Per-class masks are
each read once, in their stored dtype (``medgrit.adapters.sources.nifti_masks``), and painted
into one volume on the stored grid, which is then reoriented once; a voxel belongs to a mask
where its value is above 0, and masks are painted in ascending class id, so where masks overlap
the higher class id wins. Every mask must lie on the image's grid (its shape, and its affine
within 1e-3 mm). A mask that is gone (``mask_missing``), unreadable (``mask_unreadable``) or
off the grid (``mask_shape_mismatch``) makes the whole case a reject: without it, its structure
would read as background. (A class another case of the source has a mask for and this one has
none is absent from it: the text never says a structure is absent.) Negative or non-finite
values in a signed or float mask are ``negative_label`` / ``non_finite_label``. Problems a user
must fix (no case folder, two images in one, an image whose modality nothing names, a malformed
meta.csv or label table) raise ``SourceError``.
"""

from __future__ import annotations

import csv
import io
import os
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import nibabel as nib
import numpy as np
from nibabel.filebasedimages import ImageFileError

from medgrit.adapters.sources.nifti import NiftiReader, slices_along
from medgrit.adapters.sources.nifti_masks import AFFINE_TOLERANCE, read_grid_mask
from medgrit.adapters.sources.totalseg_labels import (
    CLASS_MAP_OF_MODALITY,
    class_map,
    header_label_map,
)
from medgrit.core.cases import Case, LoadedCase, Source, SourceError, UnreadableImage, Volume
from medgrit.core.failures import fails_the_shard
from medgrit.core.fsnames import escape_name, library_message
from medgrit.core.label_names import check_label_map, checked_dataset_name
from medgrit.core.regions import label_dtype
from medgrit.core.text import readable_labels

__all__ = [
    "ClassMaskFile",
    "MultilabelFile",
    "TotalSegCase",
    "TotalSegReader",
    "estimate_images",
    "open_totalseg",
    "read_case",
    "read_splits",
]

IMAGE_MODALITIES: dict[str, str] = {"ct.nii.gz": "ct", "mri.nii.gz": "mr"}
MULTILABEL_NAMES: tuple[str, ...] = ("segmentations.nii.gz", "segmentations.nii")
MASKS_DIR = "segmentations"
META_CSV = "meta.csv"
NIFTI_ENDINGS: tuple[str, ...] = (".nii.gz", ".nii")
# meta.csv's splits: its validation cases are training data here (medgrit holds out test only).
_SPLITS = {"train": "train", "val": "train", "test": "test"}
_NIFTI_ERRORS = (OSError, EOFError, ValueError, zlib.error, ImageFileError)


@dataclass(frozen=True)
class ClassMaskFile:
    """One per-class mask of a case: a binary NIfTI file and the class id it paints."""

    label: int
    path: str


@dataclass(frozen=True)
class MultilabelFile:
    """A case's multilabel NIfTI file: its voxel values are class ids."""

    path: str


@dataclass(frozen=True, kw_only=True)
class TotalSegCase(Case):
    """A TotalSegmentator case folder.

    Attributes:
        image: the image file.
        segmentations: its multilabel file, or its per-class masks in ascending class id.
    """

    format: ClassVar[str] = "totalseg"

    image: str
    segmentations: MultilabelFile | tuple[ClassMaskFile, ...]

    @property
    def message_paths(self) -> tuple[str, ...]:
        return (self.image, os.path.join(os.path.dirname(self.image), MASKS_DIR))

    @property
    def content_files(self) -> tuple[str, ...]:
        if isinstance(self.segmentations, MultilabelFile):
            return (self.image, self.segmentations.path)
        return (self.image, *(mask.path for mask in self.segmentations))


# --------------------------------------------------------------------------- discovery


@dataclass(frozen=True)
class _Listed:
    """A case folder as listed: its image and modality, and its masks by class name or its
    multilabel file with the label table of its header (None: the header has none)."""

    name: str
    image: Path
    modality: str
    masks: dict[str, Path] | None = None
    multilabel: Path | None = None
    table: dict[int, str] | None = None


def _is_case_folder(folder: Path) -> bool:
    return (folder / MASKS_DIR).is_dir() or any((folder / n).is_file() for n in MULTILABEL_NAMES)


def _nifti_stem(name: str) -> str | None:
    return next((name[: -len(e)] for e in NIFTI_ENDINGS if name.endswith(e)), None)


def _image_of(folder: Path, override: str | None) -> tuple[Path, str]:
    """The image of a case folder and its modality."""
    shown = escape_name(str(folder))
    named = [n for n in IMAGE_MODALITIES if (folder / n).is_file()]
    if len(named) > 1:
        raise SourceError(f"{shown} holds both ct.nii.gz and mri.nii.gz: keep one image per case")
    if named:
        return folder / named[0], IMAGE_MODALITIES[named[0]]
    with os.scandir(folder) as entries:
        others = sorted(
            entry.name
            for entry in entries
            if not entry.name.startswith(".")
            and entry.name not in MULTILABEL_NAMES
            and _nifti_stem(entry.name) is not None
            and entry.is_file()
        )
    if len(others) != 1:
        found = f"{len(others)} NIfTI images ({', '.join(map(escape_name, others[:3]))})"
        raise SourceError(
            f"{shown} holds {found if others else 'no NIfTI image'}; keep one image per case "
            "(ct.nii.gz, mri.nii.gz or one other .nii.gz)"
        )
    image = folder / others[0]
    if override is None:
        raise SourceError(
            f"cannot tell the modality of {escape_name(str(image))} (not ct.nii.gz or "
            "mri.nii.gz); pass --modality"
        )
    return image, override


def _list_masks(folder: Path) -> dict[str, Path]:
    """Class name -> mask file of a ``segmentations/`` folder (no recursion, no hidden files)."""
    masks: dict[str, Path] = {}
    with os.scandir(folder) as entries:
        for entry in entries:
            stem = _nifti_stem(entry.name)
            if stem is None or entry.name.startswith(".") or entry.is_dir():
                continue
            if stem in masks:
                raise SourceError(
                    f"{escape_name(str(folder))} holds two masks of {escape_name(stem)!r} "
                    "(.nii and .nii.gz): keep one"
                )
            masks[stem] = folder / entry.name
    return masks


def _header_table(path: Path) -> dict[int, str] | None:
    """The label table of a multilabel file's header; None when it has none or cannot be
    read now (reading the case then rejects it)."""
    try:
        header = nib.load(str(path)).header
    except _NIFTI_ERRORS as exc:
        if fails_the_shard(exc):
            raise
        return None
    return header_label_map(header, escape_name(str(path)))


def _list_case(folder: Path, override: str | None) -> _Listed:
    image, modality = _image_of(folder, override)
    multilabel = [folder / n for n in MULTILABEL_NAMES if (folder / n).is_file()]
    has_masks = (folder / MASKS_DIR).is_dir()
    if len(multilabel) + has_masks > 1:
        found = [*(p.name for p in multilabel), *([f"{MASKS_DIR}/"] if has_masks else [])]
        raise SourceError(
            f"{escape_name(str(folder))} holds {' and '.join(found)}: keep one segmentation"
        )
    if has_masks:
        return _Listed(folder.name, image, modality, masks=_list_masks(folder / MASKS_DIR))
    table = _header_table(multilabel[0])
    return _Listed(folder.name, image, modality, multilabel=multilabel[0], table=table)


def read_splits(path: Path) -> dict[str, str]:
    """Case -> ``train`` or ``test`` from a TotalSegmentator ``meta.csv`` (``;``-separated);
    only its ``image_id`` and ``split`` columns are read. Empty when there is no such file.

    Raises:
        SourceError: a file without those columns, or with a split other than train, val
            or test, or that gives one case two splits.
    """
    if not path.is_file():
        return {}
    shown = escape_name(str(path))
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise SourceError(f"{shown} is not UTF-8 text; save it as UTF-8") from None
    rows = csv.reader(io.StringIO(text), delimiter=";")
    columns = [c.strip() for c in next(rows, [])]
    if "image_id" not in columns or "split" not in columns:
        raise SourceError(
            f"{shown} needs the columns image_id and split, ';'-separated, as TotalSegmentator's "
            "meta.csv has them"
        )
    at_id, at_split = columns.index("image_id"), columns.index("split")
    splits: dict[str, str] = {}
    for line, row in enumerate(rows, start=2):
        if not any(cell.strip() for cell in row):
            continue
        if len(row) <= max(at_id, at_split):
            raise SourceError(f"{shown} line {line} has fewer columns than its header")
        case, split = row[at_id].strip(), row[at_split].strip().lower()
        if split not in _SPLITS:
            raise SourceError(
                f"{shown} line {line}: split {escape_name(split)!r}; use train, val or test"
            )
        if splits.setdefault(case, _SPLITS[split]) != _SPLITS[split]:
            raise SourceError(f"{shown} gives case {escape_name(case)!r} two splits; keep one")
    return splits


def _class_ids(names: set[str], modalities: set[str]) -> dict[str, int]:
    """Class name -> id of the per-class masks' names: TotalSegmentator's ids when a class map
    of their modalities holds every name, else the sorted names numbered 1..n. The ids come
    from the bundled class maps, whatever TotalSegmentator is installed: the files name their
    classes, so a dataset's label map stays the same from machine to machine."""
    for modality in sorted(modalities):
        task = CLASS_MAP_OF_MODALITY.get(modality)
        ids = {name: i for i, name in class_map(task, installed=False).items()} if task else {}
        if names <= ids.keys():
            return {name: ids[name] for name in sorted(names)}
    return {name: i for i, name in enumerate(sorted(names), start=1)}


def _multilabel_table(case: _Listed) -> dict[int, str]:
    if case.table is not None:
        return case.table
    task = CLASS_MAP_OF_MODALITY.get(case.modality)
    if task is None:
        raise SourceError(
            f"{escape_name(str(case.multilabel))} has no label table in its header, and "
            f"TotalSegmentator's class maps name CT and MR classes, not {case.modality}; "
            "write the table with TotalSegmentator or use a segmentations/ folder"
        )
    return class_map(task)


def _label_map(
    listed: list[_Listed], where: str
) -> tuple[dict[str, int], tuple[tuple[int, str], ...]]:
    """The per-class masks' class ids by name, and the source's label map (id, name as
    written), by id.

    Raises:
        SourceError: two cases that name one id otherwise, or what
            :func:`medgrit.core.label_names.check_label_map` refuses.
    """
    per_class = [case for case in listed if case.masks is not None]
    names = {name for case in per_class for name in case.masks or {}}
    ids = _class_ids(names, {case.modality for case in per_class}) if names else {}
    named: dict[int, tuple[str, str]] = {i: (name, f"{MASKS_DIR}/") for name, i in ids.items()}
    for case in listed:
        if case.masks is not None:
            continue
        for label_id, name in _multilabel_table(case).items():
            first = named.setdefault(label_id, (name, case.name))
            if first[0] != name:
                raise SourceError(
                    f"{where}: label {label_id} is {first[0]!r} in {escape_name(first[1])} and "
                    f"{name!r} in {escape_name(case.name)}; give the cases one label map"
                )
    pairs = sorted((i, name) for i, (name, _) in named.items())
    checked = check_label_map(pairs, where) if pairs else {}
    return ids, tuple(sorted(checked.items()))


def _segmentations(
    case: _Listed, ids: dict[str, int]
) -> MultilabelFile | tuple[ClassMaskFile, ...]:
    """A listed case's multilabel file, or its masks with their class ids, ascending."""
    if case.masks is None:
        return MultilabelFile(str(case.multilabel))
    masks = (ClassMaskFile(ids[name], str(path)) for name, path in case.masks.items())
    return tuple(sorted(masks, key=lambda mask: mask.label))


def open_totalseg(spec: str, root: Path, modality: str | None = None, key: bytes = b"") -> Source:
    """Open a TotalSegmentator dataset root or case folder: list its case folders and their
    files, and read ``meta.csv`` and multilabel files' headers (no voxel is read).

    Args:
        spec: the source spec (``totalseg:PATH``).
        root: the folder.
        modality: the modality of images not named ct.nii.gz or mri.nii.gz.
        key: unused (the layout holds no identifiers to pseudonymise).

    Raises:
        SourceError: see the module docstring.
    """
    shown = escape_name(str(root))
    splits: dict[str, str] = {}
    if _is_case_folder(root):
        folders, name = [root], root.parent.name or root.name
    else:
        with os.scandir(root) as entries:
            found = [Path(e.path) for e in entries if not e.name.startswith(".") and e.is_dir()]
        folders = sorted((f for f in found if _is_case_folder(f)), key=lambda f: f.name)
        if not folders:
            raise SourceError(
                f"no TotalSegmentator case in {shown}: expected case folders holding ct.nii.gz "
                "(or mri.nii.gz) and segmentations/ or segmentations.nii.gz"
            )
        splits, name = read_splits(root / META_CSV), root.name
    dataset = checked_dataset_name(name, shown)
    listed = [_list_case(folder, modality) for folder in folders]
    ids, written = _label_map(listed, shown)
    labels = readable_labels(written)
    cases = [
        TotalSegCase(
            source=spec,
            dataset=dataset,
            case=case.name,
            modality=case.modality,
            labels=labels,
            written_labels=written,
            split=splits.get(case.name, ""),
            image=str(case.image),
            segmentations=_segmentations(case, ids),
        )
        for case in listed
    ]
    modalities = sorted({case.modality for case in listed})
    source_modality = modalities[0] if len(modalities) == 1 else "mixed"
    return Source(spec, "totalseg", str(root), dataset, source_modality, labels, tuple(cases))


# --------------------------------------------------------------------------- loading


def _painted_labels(case: TotalSegCase, masks: tuple[ClassMaskFile, ...], image: Volume) -> Volume:
    """The per-class masks painted, in ascending class id (higher ids win where masks overlap),
    into one label volume on the canonical grid of ``image`` (read from ``case.image``)."""
    if not masks:
        raise UnreadableImage("mask_missing", f"{MASKS_DIR}/ of case {case.case} holds no mask")
    try:
        header = nib.load(case.image)  # the header only: the grid the masks are stored on
    except _NIFTI_ERRORS as exc:
        if fails_the_shard(exc):
            raise
        raise UnreadableImage("nifti_unreadable", library_message(exc, Path(case.image))) from exc
    shape = tuple(int(n) for n in header.shape[:3])
    # Fortran order, as NIfTI stores voxels: painting then walks both arrays in memory order.
    volume = np.zeros(shape, dtype=label_dtype(max(mask.label for mask in masks)), order="F")
    for mask in sorted(masks, key=lambda m: m.label):
        shown = f"{MASKS_DIR}/{escape_name(Path(mask.path).name)}"
        voxels = read_grid_mask(mask.path, shape, header.affine, shown)
        if voxels.dtype.kind in "fi":  # TotalSegmentator's are uint8: no pass for those
            _check_mask_values(voxels, shown)
        np.copyto(volume, volume.dtype.type(mask.label), where=voxels > 0)
    # The image's reorientation, so the labels land on its canonical grid.
    canonical = nib.as_closest_canonical(nib.Nifti1Image(volume, header.affine))
    return Volume(np.asanyarray(canonical.dataobj), image.spacing, image.affine)


def _check_mask_values(voxels: np.ndarray, shown: str) -> None:
    """Refuse a signed or float mask whose values say nothing of where its structure is.

    Raises:
        UnreadableImage: ``non_finite_label`` (NaN or infinite values) or ``negative_label``.
    """
    if voxels.dtype.kind == "f" and not np.isfinite(voxels).all():
        raise UnreadableImage("non_finite_label", f"{shown} holds NaN or infinite values")
    if voxels.min(initial=0) < 0:
        raise UnreadableImage("negative_label", f"{shown} holds negative values")


def read_case(case: TotalSegCase) -> LoadedCase:
    """Read a case's image and its masks into canonical volumes (see the module docstring).

    Raises:
        UnreadableImage: the image's or a mask's reason (see the module docstring and
            :class:`~medgrit.adapters.sources.nifti.NiftiReader`).
    """
    reader = NiftiReader()
    image = reader.read(case.image)
    if isinstance(case.segmentations, MultilabelFile):
        labels = reader.read(case.segmentations.path, as_labels=True)
        same_shape = labels.data.shape == image.data.shape
        if same_shape and float(np.abs(labels.affine - image.affine).max()) > AFFINE_TOLERANCE:
            name = escape_name(Path(case.segmentations.path).name)
            raise UnreadableImage(
                "mask_shape_mismatch", f"{name}: its affine differs from the image's"
            )
    else:
        labels = _painted_labels(case, case.segmentations, image)
    intensity = "hu" if case.modality == "ct" else "percentile"
    return LoadedCase(case.modality, intensity, volume=image, label_volume=labels)


def estimate_images(case: TotalSegCase, plane: str) -> int:
    """Slices of the image along ``plane``, from its header (no voxel is read)."""
    return slices_along(case.image, plane)


class TotalSegReader:
    """The reader of ``totalseg:PATH`` sources: TotalSegmentator datasets and outputs."""

    format: ClassVar[str] = TotalSegCase.format
    open_source = staticmethod(open_totalseg)
    read_case = staticmethod(read_case)
    estimate_images = staticmethod(estimate_images)
