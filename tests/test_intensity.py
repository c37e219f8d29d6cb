"""Mapping of volume intensities to 8-bit display values: CT windows and MR/PET percentiles."""

from __future__ import annotations

import numpy as np
import pytest

from medgrit.core.intensity import (
    SOFT_TISSUE_WINDOW,
    percentile_bounds,
    to_uint8,
    window_bounds,
)


def test_soft_tissue_window_bounds():
    assert window_bounds(*SOFT_TISSUE_WINDOW) == (-160.0, 240.0)


def test_window_bounds_are_centred_on_the_level():
    assert window_bounds(-600.0, 1500.0) == (-1350.0, 150.0)


@pytest.mark.parametrize("width", [0.0, -10.0])
def test_window_width_must_be_positive(width):
    with pytest.raises(ValueError, match="width"):
        window_bounds(40.0, width)


def test_percentile_bounds_ignore_zero_background():
    volume = np.zeros((10, 10, 10), np.float32)
    volume[0, 0, :] = np.arange(1, 11)  # 10 foreground voxels among 1000

    assert percentile_bounds(volume, 0.0, 100.0) == (1.0, 10.0)
    assert percentile_bounds(volume, 50.0, 100.0) == (5.5, 10.0)


def test_percentile_bounds_keep_negative_values():
    volume = np.array([0.0, 0.0, -4.0, 6.0])

    assert percentile_bounds(volume, 0.0, 100.0) == (-4.0, 6.0)


def test_percentile_bounds_of_an_empty_volume():
    assert percentile_bounds(np.zeros((4, 4)), 0.5, 99.5) == (0.0, 1.0)


def test_percentile_bounds_of_a_constant_volume_are_not_degenerate():
    low, high = percentile_bounds(np.full((4, 4), 7.0), 0.5, 99.5)

    assert (low, high) == (7.0, 8.0)


@pytest.mark.parametrize(("low", "high"), [(-1.0, 50.0), (50.0, 50.0), (60.0, 40.0), (0.0, 101.0)])
def test_percentile_bounds_reject_bad_percentiles(low, high):
    with pytest.raises(ValueError, match="percentiles"):
        percentile_bounds(np.arange(10.0), low, high)


def test_to_uint8_maps_bounds_to_0_and_255_linearly():
    out = to_uint8(np.array([-160.0, 40.0, 240.0]), (-160.0, 240.0))

    assert out.dtype == np.uint8
    assert out.tolist() == [0, 128, 255]


def test_to_uint8_clips_outside_the_bounds():
    out = to_uint8(np.array([-1000.0, -161.0, 241.0, 3000.0]), window_bounds(40.0, 400.0))

    assert out.tolist() == [0, 0, 255, 255]


def test_to_uint8_keeps_shape_and_accepts_integer_input():
    values = np.arange(-2, 4, dtype=np.int16).reshape(2, 3)

    out = to_uint8(values, (0.0, 1.0))

    assert out.shape == (2, 3)
    assert out.tolist() == [[0, 0, 0], [255, 255, 255]]


def test_to_uint8_is_monotone():
    values = np.linspace(-500.0, 500.0, 1001)

    out = to_uint8(values, window_bounds(40.0, 400.0))

    assert (np.diff(out.astype(int)) >= 0).all()
    assert out[0] == 0 and out[-1] == 255
