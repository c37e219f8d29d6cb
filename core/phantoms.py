"""Synthetic phantoms of the demo: plausible images with labelled structures, from a seed.

All functions are pure (numpy and scipy only) and deterministic for a seed. 2D phantoms return
``(pixels, labels)`` in display orientation, shape (H, W) or (H, W, 3), with ``labels`` a uint8
label map whose ids are listed in the matching ``*_LABELS`` dict. The PET phantom is a canonical
RAS+ volume (axis 0 toward the patient's right) in SUV units. None of this is patient data.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

ENDOSCOPY_LABELS = {1: "polyp"}
DERMOSCOPY_LABELS = {1: "skin lesion"}
FUNDUS_LABELS = {1: "optic disc", 2: "macula"}
XRAY_LABELS = {1: "right lung", 2: "left lung", 3: "heart"}
ULTRASOUND_LABELS = {1: "cyst"}
PET_LABELS = {1: "liver", 2: "kidney_right", 3: "kidney_left", 4: "bladder", 5: "lesion"}


def _grid(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[:height, :width].astype(np.float32)
    return yy, xx


def _blob(
    shape: tuple[int, int],
    centre: tuple[float, float],
    radii: tuple[float, float],
    rng: np.random.Generator,
    roughness: float = 0.15,
) -> np.ndarray:
    """An ellipse whose radius wobbles with a few low harmonics (irregular border)."""
    yy, xx = _grid(*shape)
    dy, dx = (yy - centre[0]) / radii[0], (xx - centre[1]) / radii[1]
    angle, radius = np.arctan2(dy, dx), np.hypot(dy, dx)
    wobble = np.ones_like(angle)
    for k in (2, 3, 5):
        wobble += roughness / k * np.sin(k * angle + rng.uniform(0, 2 * np.pi))
    return radius <= wobble


def _rgb(channels: list[np.ndarray]) -> np.ndarray:
    return np.clip(np.stack(channels, axis=-1), 0, 255).astype(np.uint8)


def endoscopy_phantom(seed: int, size: int = 384) -> tuple[np.ndarray, np.ndarray]:
    """A colonoscopy-like RGB frame: mucosa with folds, a dark lumen and one polyp."""
    rng = np.random.default_rng(seed)
    yy, xx = _grid(size, size)
    lumen = (size * rng.uniform(0.35, 0.65), size * rng.uniform(0.35, 0.65))
    dist = np.hypot(yy - lumen[0], xx - lumen[1]) / size
    shade = np.clip(dist * 2.2, 0.15, 1.0)
    folds = 0.85 + 0.15 * np.sin(dist * rng.uniform(28, 40))
    base = shade * folds
    labels = np.zeros((size, size), np.uint8)
    angle = rng.uniform(0, 2 * np.pi)
    centre = (lumen[0] + np.sin(angle) * size * 0.28, lumen[1] + np.cos(angle) * size * 0.28)
    centre = (float(np.clip(centre[0], 70, size - 70)), float(np.clip(centre[1], 70, size - 70)))
    radius = rng.uniform(28, 55)
    polyp = _blob((size, size), centre, (radius, radius * rng.uniform(0.8, 1.2)), rng)
    labels[polyp] = 1
    red = 175 * base + 40 * polyp
    green = 80 * base + 25 * polyp
    blue = 70 * base + 10 * polyp
    img = np.stack([red, green, blue], axis=-1)
    highlights = _blob(
        (size, size),
        (centre[0] - radius * 0.3, centre[1] - radius * 0.2),
        (radius * 0.12, radius * 0.2),
        rng,
        0.3,
    )
    img[highlights] = 245
    img = ndimage.gaussian_filter(img, sigma=(1.2, 1.2, 0)) + rng.normal(0, 4, img.shape)
    return _rgb([img[..., c] for c in range(3)]), labels


def dermoscopy_phantom(seed: int, size: int = 384) -> tuple[np.ndarray, np.ndarray]:
    """A dermoscopy-like RGB image: skin, a pigmented lesion, a few hairs, a dark field edge."""
    rng = np.random.default_rng(seed)
    yy, xx = _grid(size, size)
    centre = (size * rng.uniform(0.4, 0.6), size * rng.uniform(0.4, 0.6))
    radius = size * rng.uniform(0.15, 0.25)
    lesion = _blob((size, size), centre, (radius, radius * rng.uniform(0.75, 1.25)), rng, 0.35)
    core = ndimage.binary_erosion(lesion, iterations=int(radius * 0.35))
    skin = np.array([214.0, 168.0, 140.0])
    img = np.broadcast_to(skin, (size, size, 3)).copy()
    img[lesion] = [128, 82, 55]
    img[core] = [84, 52, 36]
    for _ in range(int(rng.integers(3, 7))):  # hairs: thin dark curves
        y0, slope, bend = rng.uniform(0, size), rng.uniform(-1, 1), rng.uniform(-4e-3, 4e-3)
        line = np.abs(yy - (y0 + slope * xx + bend * (xx - size / 2) ** 2)) < 1.2
        img[line] = [45, 30, 25]
    field = np.hypot(yy - size / 2, xx - size / 2) > size * 0.49
    img[field] *= 0.15
    img = ndimage.gaussian_filter(img, sigma=(0.8, 0.8, 0)) + rng.normal(0, 5, img.shape)
    labels = lesion.astype(np.uint8)
    return _rgb([img[..., c] for c in range(3)]), labels


def fundus_phantom(seed: int, size: int = 384) -> tuple[np.ndarray, np.ndarray]:
    """A fundus-photograph-like RGB image: orange retina, optic disc, macula, vessels."""
    rng = np.random.default_rng(seed)
    yy, xx = _grid(size, size)
    centre = size / 2
    inside = np.hypot(yy - centre, xx - centre) < size * 0.47
    side = 1 if rng.random() < 0.5 else -1  # right or left eye: disc on the nasal side
    disc_c = (centre + rng.uniform(-15, 15), centre + side * size * 0.22)
    disc_r = size * rng.uniform(0.065, 0.08)
    macula_c = (centre + rng.uniform(-10, 10), centre - side * size * 0.08)
    disc = _blob((size, size), disc_c, (disc_r * 1.1, disc_r), rng, 0.05)
    macula = _blob((size, size), macula_c, (disc_r * 1.1, disc_r * 1.1), rng, 0.05)
    radial = np.hypot(yy - centre, xx - centre) / (size * 0.47)
    img = np.zeros((size, size, 3))
    img[..., 0] = 205 - 60 * radial
    img[..., 1] = 90 - 35 * radial
    img[..., 2] = 35 - 15 * radial
    img[macula] *= 0.7
    for _ in range(6):  # vessels: gently curving arcs leaving the disc
        angle = rng.uniform(0, 2 * np.pi)
        curve = rng.uniform(-0.004, 0.004)
        t = np.linspace(0, size * 0.5, 600)
        py = disc_c[0] + np.sin(angle) * t + curve * t**2
        px = disc_c[1] + np.cos(angle) * t
        ok = (py >= 0) & (py < size) & (px >= 0) & (px < size)
        vessel = np.zeros((size, size), bool)
        vessel[py[ok].astype(int), px[ok].astype(int)] = True
        vessel = ndimage.binary_dilation(vessel, iterations=1)
        img[vessel] = img[vessel] * 0.55
    img[disc] = [245, 205, 130]
    img[~inside] = 0
    img = ndimage.gaussian_filter(img, sigma=(1.0, 1.0, 0)) + rng.normal(0, 3, img.shape)
    img[~inside] = 0
    labels = np.zeros((size, size), np.uint8)
    labels[macula & inside] = 2
    labels[disc & inside] = 1
    return _rgb([img[..., c] for c in range(3)]), labels


def optic_disc_mask(rgb: np.ndarray) -> np.ndarray:
    """A rough optic-disc mask of a real fundus photograph: its largest very bright blob."""
    brightness = ndimage.gaussian_filter(rgb.astype(np.float32).mean(axis=-1), 4)
    inside = brightness > 10
    threshold = np.percentile(brightness[inside], 99.3)
    bright = brightness >= threshold
    components, n = ndimage.label(bright)
    if n == 0:
        return bright
    sizes = np.bincount(components.ravel())[1:]
    disc = components == (1 + int(np.argmax(sizes)))
    return ndimage.binary_fill_holes(ndimage.binary_closing(disc, iterations=5))


def chest_xray_phantom(seed: int, size: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """A PA chest-radiograph-like image (attenuation, bright = dense): lungs, heart, spine, ribs.

    PA convention: the patient's right is on the image's left, so the heart (left of the
    midline in the patient) lies right of the image centre.
    """
    rng = np.random.default_rng(seed)
    yy, xx = _grid(size, size)
    s = rng.uniform(0.95, 1.05)
    body = ((yy - size * 0.55) / (size * 0.48)) ** 2 + ((xx - size / 2) / (size * 0.45 * s)) ** 2
    img = np.where(body <= 1, 0.55, 0.05)
    right_lung = _blob(
        (size, size), (size * 0.47, size * 0.32), (size * 0.26, size * 0.12 * s), rng, 0.06
    )
    left_lung = _blob(
        (size, size), (size * 0.45, size * 0.68), (size * 0.25, size * 0.11 * s), rng, 0.06
    )
    heart = _blob((size, size), (size * 0.6, size * 0.56), (size * 0.13, size * 0.14), rng, 0.05)
    img = np.where(right_lung | left_lung, 0.18, img)
    img = np.where(heart, 0.62, img)
    spine = np.abs(xx - size / 2) < size * 0.035
    img = np.where(spine & (body <= 1), 0.8, img)
    for k in range(8):  # ribs: faint bright arcs over the lungs
        rib = np.abs(yy - (size * (0.26 + 0.055 * k) + 0.0009 * (xx - size / 2) ** 2)) < 3
        img = np.where(rib & (right_lung | left_lung), img + 0.12, img)
    img = ndimage.gaussian_filter(img, 2.0) + rng.normal(0, 0.015, img.shape)
    labels = np.zeros((size, size), np.uint8)
    labels[right_lung & ~heart] = 1
    labels[left_lung & ~heart] = 2
    labels[heart] = 3
    return np.clip(img * 4000, 0, 4095).astype(np.uint16), labels


def ultrasound_phantom(
    seed: int, height: int = 400, width: int = 480
) -> tuple[np.ndarray, np.ndarray]:
    """A B-mode-like image: speckle in a sector, one hypoechoic cyst with posterior enhancement."""
    rng = np.random.default_rng(seed)
    yy, xx = _grid(height, width)
    apex = (-40.0, width / 2)
    radius = np.hypot(yy - apex[0], xx - apex[1])
    angle = np.arctan2(xx - apex[1], yy - apex[0])
    sector = (np.abs(angle) < 0.6) & (radius < height * 1.05)
    speckle = rng.rayleigh(1.0, (height, width))
    tissue = ndimage.gaussian_filter(speckle, 1.0) * 70 * np.exp(-yy / (height * 2.5))
    centre = (height * rng.uniform(0.4, 0.6), width / 2 + rng.uniform(-60, 60))
    cyst = _blob((height, width), centre, (rng.uniform(35, 55), rng.uniform(45, 70)), rng, 0.08)
    cyst &= sector
    shadow = (np.abs(xx - centre[1]) < 40) & (yy > centre[0] + 40)
    tissue = np.where(shadow, tissue * 1.4, tissue)
    tissue = np.where(cyst, tissue * 0.12, tissue)
    img = np.where(sector, tissue, 0)
    return np.clip(img, 0, 255).astype(np.uint8), cyst.astype(np.uint8)


def pet_phantom(
    seed: int, shape: tuple[int, int, int] = (96, 96, 64)
) -> tuple[np.ndarray, np.ndarray]:
    """A whole-body-like FDG PET volume in SUV, canonical RAS+, and its labels.

    Liver and right kidney sit at larger x (the patient's right); the bladder is low, one hot
    lesion sits in the left chest.
    """
    rng = np.random.default_rng(seed)
    nx, ny, nz = shape
    grids = np.ogrid[:nx, :ny, :nz]

    def ellipsoid(centre: tuple[float, float, float], radii: tuple[float, float, float]):
        return sum(((g - c) / r) ** 2 for g, c, r in zip(grids, centre, radii, strict=True)) <= 1

    cx, cy = nx / 2, ny / 2
    body = ellipsoid((cx, cy, nz / 2), (nx * 0.4, ny * 0.28, nz * 4))
    suv = np.where(body, 0.7, 0.02).astype(np.float32)
    labels = np.zeros(shape, np.uint8)
    organs = [
        (1, (cx + nx * 0.16, cy + 2, nz * 0.55), (nx * 0.15, ny * 0.14, nz * 0.12), 2.4),
        (2, (cx + nx * 0.12, cy - ny * 0.12, nz * 0.4), (nx * 0.05, ny * 0.07, nz * 0.08), 4.0),
        (3, (cx - nx * 0.12, cy - ny * 0.12, nz * 0.42), (nx * 0.05, ny * 0.07, nz * 0.08), 4.0),
        (4, (cx, cy + ny * 0.05, nz * 0.12), (nx * 0.07, ny * 0.06, nz * 0.06), 14.0),
        (5, (cx - nx * 0.14 + rng.uniform(-2, 2), cy + 4, nz * 0.78), (4.0, 4.0, 3.0), 7.5),
    ]
    for label, centre, radii, value in organs:
        mask = ellipsoid(centre, radii) & body
        labels[mask] = label
        suv[mask] = value
    suv = ndimage.gaussian_filter(suv, 1.2)
    suv *= rng.gamma(40.0, 1 / 40.0, shape).astype(np.float32)
    return suv.astype(np.float32), labels
