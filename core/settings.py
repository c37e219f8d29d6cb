"""The build settings the pure logic reads, as protocols.

The pipeline and the planner take any object with these read-only attributes; the build's typed
config (``medgrit.schemas.config.BuildConfig``) has them all, so it is passed as is.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol


class ImageSettings(Protocol):
    """What decides which slices of a case become images, and how their pixels are mapped."""

    @property
    def plane(self) -> str:
        """Slicing plane of volumes: ``axial``, ``coronal`` or ``sagittal``."""
        ...

    @property
    def min_area(self) -> int:
        """Fewest pixels of a region instance (and of a slice's foreground) kept."""
        ...

    @property
    def slice_stride(self) -> int:
        """Every N-th slice with foreground is taken."""
        ...

    @property
    def max_slices_per_case(self) -> int | None:
        """At most this many slices per case, spread evenly."""
        ...

    @property
    def ct_window(self) -> tuple[float, float]:
        """CT window (level, width) in HU."""
        ...

    @property
    def percentiles(self) -> tuple[float, float]:
        """Intensity percentiles mapped to 0 and 255 (MR, PET without SUV, 2D images)."""
        ...

    @property
    def pet_suv_window(self) -> tuple[float, float]:
        """SUV range mapped to 0 and 255."""
        ...

    @property
    def label_names(self) -> Mapping[str, str]:
        """The user's words for labels, by the name their source writes (found while loading
        too: DICOM SEG segments, RTSTRUCT ROIs)."""
        ...


class PlanSettings(Protocol):
    """What decides the split of cases and how they are packed into shards."""

    @property
    def test_fraction(self) -> float:
        """Share of cases held out as ``test``."""
        ...

    @property
    def split_seed(self) -> int:
        """Seed of the case-level train/test split."""
        ...

    @property
    def max_images(self) -> int | None:
        """At most this many images in all."""
        ...

    @property
    def images_per_shard(self) -> int:
        """Target images per shard."""
        ...

    @property
    def cases_per_shard(self) -> int | None:
        """At most this many cases per shard."""
        ...
