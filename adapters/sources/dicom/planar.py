"""Single DICOM images with label-map PNGs: one :class:`PlanarImage` per masked frame.

Images keep their stored orientation (``plane="2d"``, rows top to bottom): greyscale as (H, W)
float32 after rescale, MONOCHROME1 reflected within its value range so that dense structures
are bright, intensity ``hu`` for CT and ``percentile`` otherwise; colour (RGB, YBR_FULL,
YBR_FULL_422, YBR_ICT/RCT, PALETTE COLOR) as (H, W, 3) uint8 RGB with intensity ``display``.
Masks are read by ``medgrit.adapters.sources.masks.read_mask_png``. A mask of the wrong size
(``mask_shape_mismatch``), an unreadable mask (``mask_unreadable``) or a mask for a frame the
file lacks (``mask_frame_missing``) drops that image with a ``LoadedCase.rejects`` entry; if no
image is left, the first such reason is raised.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset
from pydicom.pixels import apply_color_lut, convert_color_space

from medgrit.adapters.sources.dicom.cases import DicomPlanarCase
from medgrit.adapters.sources.dicom.files import read_dataset, read_pixels
from medgrit.adapters.sources.masks import read_mask_png
from medgrit.core.cases import LoadedCase, PlanarImage, UnreadableImage

__all__ = ["read_planar"]


def read_planar(case: DicomPlanarCase) -> LoadedCase:
    """Read the masked frames of a single image (call under ``quiet_pydicom``).

    Raises:
        UnreadableImage: ``file_missing``, ``dicom_unreadable``, ``missing_pixel_data`` or
            ``unsupported_image`` for the image; else the first mask's reason when no image is
            left.
    """
    ds = read_dataset(Path(case.image), "image")
    count = int(ds.get("NumberOfFrames", 1) or 1)
    rejects: list[tuple[str, str, int | None]] = []
    images: list[PlanarImage] = []
    intensity = "percentile"
    for masked in case.frames:
        frame = masked.frame
        try:
            if frame >= count:
                raise UnreadableImage("mask_frame_missing", f"the image has {count} frame(s)")
            labels = read_mask_png(Path(masked.mask))
            decoded = read_pixels(ds, "image", index=frame if count > 1 else None)
            pixels, intensity = _display_pixels(ds, decoded, case.modality)
            if labels.shape != pixels.shape[:2]:
                raise UnreadableImage(
                    "mask_shape_mismatch",
                    f"mask {labels.shape[1]}x{labels.shape[0]} vs image "
                    f"{pixels.shape[1]}x{pixels.shape[0]} (width x height)",
                )
        except UnreadableImage as exc:
            if exc.reason in ("missing_pixel_data", "dicom_unreadable", "unsupported_image"):
                raise  # the image itself is unusable, not one mask
            rejects.append((exc.reason, exc.detail, frame))
            continue
        images.append(PlanarImage(slice_index=frame, pixels=pixels, labels=labels, plane="2d"))
    if not images:
        reason, detail, _ = rejects[0] if rejects else ("mask_unreadable", "no mask", None)
        raise UnreadableImage(reason, detail)
    return LoadedCase(
        modality=case.modality,
        intensity=intensity,
        images=tuple(images),
        label_names=case.labels,
        rejects=tuple(rejects),
    )


def _display_pixels(ds: Dataset, frame: np.ndarray, modality: str) -> tuple[np.ndarray, str]:
    """One frame as (H, W) float32 or (H, W, 3) uint8 RGB, and its intensity kind."""
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    stored_top = 2 ** int(ds.get("BitsStored", 8) or 8) - 1
    if photometric == "PALETTE COLOR":
        rgb = apply_color_lut(frame, ds)
        return _to_uint8_rgb(rgb, 255 if rgb.dtype == np.uint8 else 65535), "display"
    if photometric in ("YBR_FULL", "YBR_FULL_422"):
        rgb = convert_color_space(frame, photometric, "RGB")
        return _to_uint8_rgb(rgb, stored_top), "display"
    if photometric in ("RGB", "YBR_ICT", "YBR_RCT"):  # JPEG 2000 decoders return RGB
        return _to_uint8_rgb(frame, stored_top), "display"
    if frame.ndim != 2:
        raise UnreadableImage("unsupported_image", f"photometric {photometric} is not supported")
    slope = float(ds.get("RescaleSlope", 1) or 1)
    intercept = float(ds.get("RescaleIntercept", 0) or 0)
    values = frame.astype(np.float32) * np.float32(slope) + np.float32(intercept)
    if photometric == "MONOCHROME1":
        bits = int(ds.get("BitsStored", ds.get("BitsAllocated", 16)) or 16)
        signed = int(ds.get("PixelRepresentation", 0) or 0) == 1
        low, high = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
        ends = np.array([low, high], dtype=np.float64) * slope + intercept
        values = np.float32(ends.min() + ends.max()) - values
    return values.astype(np.float32), ("hu" if modality == "ct" else "percentile")


def _to_uint8_rgb(rgb: np.ndarray, top: int) -> np.ndarray:
    """(H, W, 3) colour with values in [0, top] as uint8."""
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise UnreadableImage("unsupported_image", f"colour pixels of shape {rgb.shape}")
    if rgb.dtype == np.uint8 and top == 255:
        return np.ascontiguousarray(rgb)
    scaled = np.rint(rgb.astype(np.float64) * (255.0 / top))
    return np.ascontiguousarray(np.clip(scaled, 0, 255).astype(np.uint8))
