"""Image folders: 2D photographs or scans with masks, described by a small ``labels.json``.

Layout of an ``images:PATH`` source (Kvasir-SEG, ISIC, BUSI and the like, once arranged so)::

    PATH/labels.json
    PATH/images/{stem}.{png,jpg,jpeg,tif,tiff,bmp}
    PATH/masks/{stem}.png                      "masks": "label_map"
    PATH/masks/{stem}_{label}.png              "masks": "per_class" (one binary mask per label)

``labels.json``::

    {"modality": "endoscopy", "labels": {"1": "polyp"}, "masks": "per_class",
     "cases": "stem", "name": "Kvasir-SEG"}

- ``modality`` (a key of ``medgrit.core.vocab.MODALITIES``): required unless ``--modality`` is
  given; when both are given, ``labels.json`` wins (the flag is for sources that do not say).
- ``labels``: label id (integer > 0, as a string key) -> name; names go through
  ``readable_label_name``.
- ``masks``: ``label_map`` or ``per_class`` (required).
  - ``label_map``: ``masks/{stem}.{png,tif,tiff,bmp}`` holds label ids (palette PNGs: the palette
    index). When ``labels`` declares a single label, a mask with one non-zero value (0/255 or
    0/1 binary masks) maps that value to the label. A JPEG mask is lossy: it is accepted only
    with a single label and is thresholded at 128.
  - ``per_class``: ``masks/{stem}_{label}.{ext}``, ``label`` being the name as written in
    ``labels`` or its id; binary masks: lossless ones are foreground where > 0, JPEG ones where
    >= 128 (colour masks: the brightest channel). Where masks overlap the higher label id wins.
- ``cases`` (optional): ``stem`` (default: each image is its own case) or a regular expression
  with one group, searched in each stem, whose match is the case (patient): the images of one
  case share its train/test split.
- ``name`` (optional): the dataset name (default: the folder name).
- ``synonyms`` (optional): label name -> other words a text may name it by,
  ``{"polyp": ["polypoid lesion"]}`` (``medgrit.adapters.sources.label_files.read_synonyms``).

Files in ``images/`` with other suffixes, hidden files and subfolders are not part of the source.

Loaded images (``PlanarImage``, plane ``2d``, in the orientation stored, rows top to bottom):
``pixels`` is (H, W) uint8 grey or (H, W, 3) uint8 RGB with intensity ``display`` (RGBA / LA
lose alpha; palette, CMYK and other modes become RGB). 16-bit, 32-bit and float grey images
become (H, W) float32 and the case's intensity is ``percentile``; since the intensity is per
case, the 8-bit images of such a case are then float32 too. ``labels`` is an (H, W) uint8 (or
wider when ids need it) label map on the same grid. ``slice_index`` is the image's position in
its case, images sorted by stem.

Rejects (``LoadedCase.rejects``, one per image): ``mask_missing`` (no mask for the image),
``mask_shape_mismatch`` (mask size differs from the image's), ``mask_unreadable``,
``image_unreadable`` and ``file_missing``. Problems a user must fix (no ``labels.json``, an
unknown modality, malformed JSON, a bad ``cases`` pattern) raise ``SourceError``; ``labels.json``
is read by ``medgrit.adapters.sources.image_folder_labels``.

Cases (:class:`ImageFolderCase`): one per case (stem or ``cases`` match), sorted by case, its
images sorted by stem; each image lists the mask files found for it at opening. The image
reader here (``read_planar_image``) is shared with the SA-Med2D-20M reader; mask files and
``labels`` are read by ``medgrit.adapters.sources.masks``.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np

from medgrit.adapters.sources.image_folder_labels import (
    MASK_MODES,
    case_pattern,
    class_mask_keys,
    config_error,
    modality_of,
    read_labels_json,
)
from medgrit.adapters.sources.label_files import SYNONYMS, read_synonyms
from medgrit.adapters.sources.limits import open_image
from medgrit.adapters.sources.masks import (
    LOSSY_SUFFIXES,
    PIL_ERRORS,
    check_label_names,
    foreground,
    link_problem,
    read_mask,
)
from medgrit.core.cases import Case, LoadedCase, PlanarImage, Source, SourceError, UnreadableImage
from medgrit.core.failures import fails_the_shard
from medgrit.core.fsnames import escape_name, library_message
from medgrit.core.label_names import checked_dataset_name
from medgrit.core.regions import label_dtype
from medgrit.core.text import readable_labels

__all__ = [
    "IMAGE_SUFFIXES",
    "ClassMask",
    "FolderImage",
    "ImageFolderCase",
    "ImageFolderReader",
    "LabelMapMask",
    "open_image_folder",
    "read_case",
    "read_planar_image",
]

IMAGE_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
_HIGH_DEPTH_GREY = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")


# --------------------------------------------------------------------------- reading pixels


def read_planar_image(path: str | Path) -> np.ndarray:
    """Read one 2D image file.

    Returns:
        (H, W) uint8 grey, (H, W, 3) uint8 RGB, or (H, W) float32 for 16-bit, 32-bit and float
        grey images.

    Raises:
        UnreadableImage: ``file_missing``, or ``image_unreadable`` (corrupt, truncated,
            multi-frame).
    """
    path = Path(path)
    name = escape_name(path.name)
    if not path.is_file():
        if path.is_symlink():
            raise UnreadableImage("image_unreadable", f"{name}: {link_problem(path)}")
        if path.exists():  # a folder, a device, a pipe
            raise UnreadableImage("image_unreadable", f"{name} is not a regular file")
        raise UnreadableImage("file_missing", f"no such file: {name}")
    try:
        with open_image(path) as image:
            frames = getattr(image, "n_frames", 1)
            if frames > 1:
                raise UnreadableImage(
                    "image_unreadable", f"{name} has {frames} frames; expected one 2D image"
                )
            image.load()
            mode = image.mode
            if mode in ("L", "RGB"):
                return np.asarray(image)
            if mode in ("1", "LA"):
                return np.asarray(image.convert("L"))
            if mode in _HIGH_DEPTH_GREY:
                return np.asarray(image).astype(np.float32)
            return np.asarray(image.convert("RGB"))
    except PIL_ERRORS as exc:
        if fails_the_shard(exc):
            raise  # the disk or the network, not this file
        raise UnreadableImage("image_unreadable", f"{name}: {library_message(exc, path)}") from exc


# --------------------------------------------------------------------------- cases


@dataclass(frozen=True)
class LabelMapMask:
    """The ``label_map`` mask of an image: one file of label ids."""

    path: str


@dataclass(frozen=True)
class ClassMask:
    """One ``per_class`` mask of an image: a binary file for one label."""

    label: int
    path: str


@dataclass(frozen=True)
class FolderImage:
    """An image of a case and the mask files found for it.

    Attributes:
        path: the image file.
        masks: its label map, or its per-class masks in ascending label id; ``()`` when
            ``masks/`` holds none for it (the image is then rejected as ``mask_missing``).
    """

    path: str
    masks: LabelMapMask | tuple[ClassMask, ...] = ()


@dataclass(frozen=True, kw_only=True)
class ImageFolderCase(Case):
    """The images of one image-folder case, sorted by stem.

    Attributes:
        images: the images and their masks.
        masks_dir: the source's ``masks/`` folder.
    """

    format: ClassVar[str] = "images"

    images: tuple[FolderImage, ...]
    masks_dir: str

    @property
    def message_paths(self) -> tuple[str, ...]:
        first = (self.images[0].path,) if self.images else ()
        return (*first, os.path.join(self.masks_dir, self.case))

    @property
    def content_files(self) -> tuple[str, ...]:
        files: list[str] = []
        for image in self.images:
            files.append(image.path)
            if isinstance(image.masks, LabelMapMask):
                files.append(image.masks.path)
            else:
                files.extend(mask.path for mask in image.masks)
        return tuple(files)


# --------------------------------------------------------------------------- discovery


def _list_files(folder: Path) -> dict[str, str]:
    """Stem -> file name of the image files in ``folder`` (no recursion, no hidden files)."""
    found: dict[str, str] = {}
    with os.scandir(folder) as entries:
        for entry in entries:
            name = entry.name
            stem, suffix = os.path.splitext(name)
            if name.startswith(".") or suffix.lower() not in IMAGE_SUFFIXES:
                continue
            try:
                # A link that cannot be followed (dangling, a loop) is listed, so that loading
                # rejects it with the reason; a folder with an image's name is not an image.
                if not entry.is_file() and not entry.is_symlink():
                    continue
            except OSError:
                pass
            if stem in found:
                first, second = sorted((found[stem], name))
                raise SourceError(
                    f"{escape_name(str(folder))} holds both {escape_name(first)} and "
                    f"{escape_name(second)}: keep one file per stem"
                )
            found[stem] = name
    return found


def _case_of(stem: str, pattern: re.Pattern[str] | None) -> str | None:
    if pattern is None:
        return stem
    match = pattern.search(stem)
    return match.group(1) if match and match.group(1) else None


def open_image_folder(
    spec: str, root: Path, modality: str | None = None, key: bytes = b""
) -> Source:
    """Open an image folder: read ``labels.json`` and list file names (no image is read).

    Args:
        spec: the source spec (``images:PATH``).
        root: the folder.
        modality: modality key used when ``labels.json`` has none.
        key: unused (image folders hold no identifiers to pseudonymise).

    Raises:
        SourceError: a missing or malformed ``labels.json``, an unknown modality, missing
            ``images/`` folder, a ``cases`` pattern that does not match every stem, or two
            files with the same stem.
    """
    path, meta = read_labels_json(root)
    mod = modality_of(meta, path, modality)
    raw_labels = check_label_names(meta.get("labels"), path)
    synonyms = read_synonyms(meta.get(SYNONYMS), raw_labels.items(), escape_name(str(path)))
    mode = meta.get("masks")
    if mode not in MASK_MODES:
        raise config_error(path, f'set "masks" to "label_map" or "per_class" (got {mode!r})')
    pattern = case_pattern(meta, path)
    dataset = meta.get("name") or root.name
    if not isinstance(dataset, str):
        raise config_error(path, '"name" must be a string')
    dataset = checked_dataset_name(dataset, escape_name(str(path)))

    images_dir, masks_dir = root / "images", root / "masks"
    if not images_dir.is_dir():
        raise SourceError(f"no images/ folder in {root}: put the images in {images_dir}")
    images = _list_files(images_dir)
    if not images:
        raise SourceError(f"{images_dir} holds no {'/'.join(IMAGE_SUFFIXES)} files")
    masks = _list_files(masks_dir) if masks_dir.is_dir() else {}

    unmatched = sorted(s for s in images if _case_of(s, pattern) is None)
    if unmatched:
        raise config_error(
            path,
            f'"cases" pattern matches no case in {unmatched[0]!r} '
            f'({len(unmatched)} image(s) in all); fix the pattern or use "stem"',
        )
    mask_keys = class_mask_keys(raw_labels, path) if mode == "per_class" else []
    by_case: dict[str, list[FolderImage]] = {}
    for stem in sorted(images):
        found: LabelMapMask | tuple[ClassMask, ...]
        if mode == "label_map":
            found = LabelMapMask(str(masks_dir / masks[stem])) if stem in masks else ()
        else:
            found = _class_masks(stem, masks, masks_dir, mask_keys)
        case = _case_of(stem, pattern)
        image = FolderImage(str(images_dir / images[stem]), found)
        by_case.setdefault(case, []).append(image)  # type: ignore[arg-type]

    written = tuple(sorted(raw_labels.items()))
    labels = readable_labels(written)
    cases = [
        ImageFolderCase(
            source=spec,
            dataset=dataset,
            case=case,
            modality=mod,
            labels=labels,
            written_labels=written,
            synonyms=synonyms,
            patient=case,
            images=tuple(by_case[case]),
            masks_dir=str(masks_dir),
        )
        for case in sorted(by_case)
    ]
    return Source(spec, "images", str(root), dataset, mod, labels, tuple(cases))


# --------------------------------------------------------------------------- loading


def _class_masks(
    stem: str, masks: dict[str, str], masks_dir: Path, mask_keys: list[tuple[int, str]]
) -> tuple[ClassMask, ...]:
    """The ``per_class`` masks of the image ``stem``: one per label at most, the first found of
    its ``mask_keys`` suffixes."""
    per_class: dict[int, ClassMask] = {}
    for label_id, suffix in mask_keys:
        mask = masks.get(stem + suffix)
        if mask is not None and label_id not in per_class:
            per_class[label_id] = ClassMask(label_id, str(masks_dir / mask))
    return tuple(per_class.values())


def _label_map_from_file(
    path: str, labels: dict[int, str], shape: tuple[int, int], dtype: type
) -> np.ndarray:
    """The label map of a ``label_map`` mask (raises UnreadableImage on a bad mask)."""
    name = escape_name(Path(path).name)
    lossy = path.lower().endswith(LOSSY_SUFFIXES)
    if lossy and len(labels) != 1:
        raise UnreadableImage(
            "mask_unreadable", f"{name}: JPEG masks are lossy; save label maps as PNG"
        )
    mask = read_mask(path, binary=lossy)
    if mask.shape != shape:
        raise UnreadableImage("mask_shape_mismatch", f"{name}: mask {mask.shape} vs image {shape}")
    if len(labels) == 1:
        (only,) = labels
        if lossy:
            return (foreground(mask, path) * only).astype(dtype)
        values = np.unique(mask)
        nonzero = values[values != 0]
        if nonzero.size == 1 and int(nonzero[0]) != only:
            return ((mask != 0) * only).astype(dtype)
    top = max(int(mask.max(initial=0)), *labels)
    return mask.astype(label_dtype(top), copy=False)


def _per_class_map(
    masks: tuple[ClassMask, ...],
    shape: tuple[int, int],
    dtype: type,
    index: int,
    rejects: list[tuple[str, str, int | None]],
) -> np.ndarray | None:
    """Paint binary masks in ascending label id (higher ids win); None if none was usable."""
    label_map = np.zeros(shape, dtype=dtype)
    painted = 0
    for mask_file in sorted(masks, key=lambda m: (m.label, m.path)):
        label_id, path = mask_file.label, mask_file.path
        try:
            mask = read_mask(path, binary=True)
        except UnreadableImage as exc:
            rejects.append((exc.reason, exc.detail, index))
            continue
        if mask.shape != shape:
            detail = f"{escape_name(Path(path).name)}: mask {mask.shape} vs image {shape}"
            rejects.append(("mask_shape_mismatch", detail, index))
            continue
        label_map[foreground(mask, path)] = label_id
        painted += 1
    return label_map if painted else None


def read_case(case: ImageFolderCase) -> LoadedCase:
    """Read the images and masks of one image-folder case (see the module docstring).

    Raises:
        UnreadableImage: ``case_empty`` when the case lists no image.
    """
    if not case.images:
        raise UnreadableImage("case_empty", f"case {case.case} lists no image")
    labels = dict(case.labels)
    dtype = label_dtype(max(labels, default=0))
    rejects: list[tuple[str, str, int | None]] = []
    kept: list[tuple[int, np.ndarray, np.ndarray]] = []
    for index, image in enumerate(case.images):
        name = escape_name(Path(image.path).name)
        if not image.masks:
            rejects.append(("mask_missing", f"{name}: no mask for this image in masks/", index))
            continue
        try:
            pixels = read_planar_image(image.path)
        except UnreadableImage as exc:
            rejects.append((exc.reason, exc.detail, index))
            continue
        shape = pixels.shape[:2]
        if isinstance(image.masks, LabelMapMask):
            try:
                label_map = _label_map_from_file(image.masks.path, labels, shape, dtype)
            except UnreadableImage as exc:
                rejects.append((exc.reason, exc.detail, index))
                continue
        else:
            painted = _per_class_map(image.masks, shape, dtype, index, rejects)
            if painted is None:
                continue
            label_map = painted
        kept.append((index, pixels, label_map))

    high_depth = any(pixels.dtype != np.uint8 for _, pixels, _ in kept)
    intensity = "percentile" if high_depth else "display"
    images = tuple(
        PlanarImage(
            slice_index=index,
            pixels=pixels.astype(np.float32) if high_depth else pixels,
            labels=label_map,
            plane="2d",
        )
        for index, pixels, label_map in kept
    )
    return LoadedCase(case.modality, intensity, images=images, rejects=tuple(rejects))


def estimate_images(case: ImageFolderCase, plane: str) -> int:
    """The images listed for the case."""
    return len(case.images)


class ImageFolderReader:
    """The reader of ``images:PATH`` sources: a folder of 2D images and masks."""

    format: ClassVar[str] = ImageFolderCase.format
    open_source = staticmethod(open_image_folder)
    read_case = staticmethod(read_case)
    estimate_images = staticmethod(estimate_images)
