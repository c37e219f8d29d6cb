"""Display orientation of slices of canonical RAS+ volumes, slice selection and square pixels."""

from __future__ import annotations

import numpy as np
import pytest

from medgrit.core.slicing import (
    display_slice,
    display_spacing,
    foreground_slices,
    select_slices,
    slice_count,
    square_pixels,
)

# RAS+ volume of shape (x=3, y=4, z=5): axis 0 toward patient Right, 1 Anterior, 2 Superior.
SHAPE = (3, 4, 5)
VOLUME = np.arange(np.prod(SHAPE)).reshape(SHAPE)


def marker_volume() -> np.ndarray:
    """Hundreds mark the patient's right (x = 2), tens anterior (y = 3), ones superior (z = 4)."""
    v = np.zeros(SHAPE, int)
    v[2, :, :] += 100
    v[:, 3, :] += 10
    v[:, :, 4] += 1
    return v


def test_axial_slice_puts_patient_right_on_image_left_and_anterior_on_top():
    s = display_slice(marker_volume(), "axial", 0)

    assert s.shape == (4, 3)  # rows: y, columns: x
    assert (s[:, 0] // 100 == 1).all() and (s[:, 1:] // 100 == 0).all()
    assert (s[0, :] // 10 % 10 == 1).all() and (s[1:, :] // 10 % 10 == 0).all()


def test_axial_slice_maps_every_voxel():
    s = display_slice(VOLUME, "axial", 2)

    for row in range(4):
        for col in range(3):
            assert s[row, col] == VOLUME[2 - col, 3 - row, 2]


def test_coronal_slice_puts_superior_on_top_and_patient_right_on_image_left():
    s = display_slice(marker_volume(), "coronal", 0)

    assert s.shape == (5, 3)  # rows: z, columns: x
    assert (s[0, :] % 10 == 1).all() and (s[1:, :] % 10 == 0).all()
    assert (s[:, 0] // 100 == 1).all() and (s[:, 1:] // 100 == 0).all()


def test_coronal_slice_maps_every_voxel():
    s = display_slice(VOLUME, "coronal", 1)

    for row in range(5):
        for col in range(3):
            assert s[row, col] == VOLUME[2 - col, 1, 4 - row]


def test_sagittal_slice_puts_superior_on_top_and_anterior_on_the_left():
    s = display_slice(marker_volume(), "sagittal", 0)

    assert s.shape == (5, 4)  # rows: z, columns: y
    assert (s[0, :] % 10 == 1).all() and (s[1:, :] % 10 == 0).all()
    assert (s[:, 0] // 10 % 10 == 1).all() and (s[:, 1:] // 10 % 10 == 0).all()


def test_sagittal_slice_maps_every_voxel():
    s = display_slice(VOLUME, "sagittal", 2)

    for row in range(5):
        for col in range(4):
            assert s[row, col] == VOLUME[2, 3 - col, 4 - row]


def test_unknown_plane_is_rejected():
    with pytest.raises(ValueError, match="plane"):
        display_slice(VOLUME, "oblique", 0)  # type: ignore[arg-type]


@pytest.mark.parametrize(("plane", "count"), [("axial", 5), ("coronal", 4), ("sagittal", 3)])
def test_slice_count_follows_the_fixed_axis(plane, count):
    assert slice_count(SHAPE, plane) == count


@pytest.mark.parametrize(
    ("plane", "expected"),
    [("axial", (0.8, 0.7)), ("coronal", (2.5, 0.7)), ("sagittal", (2.5, 0.8))],
)
def test_display_spacing_is_row_then_column(plane, expected):
    assert display_spacing((0.7, 0.8, 2.5), plane) == expected


def test_display_spacing_matches_the_displayed_axes():
    # A slice's row spacing belongs to the axis along its rows.
    volume = np.zeros((2, 3, 4))
    spacing = (0.7, 0.8, 2.5)
    for plane in ("axial", "coronal", "sagittal"):
        rows, cols = display_slice(volume, plane, 0).shape
        axis_of = {2: 0.7, 3: 0.8, 4: 2.5}
        assert display_spacing(spacing, plane) == (axis_of[rows], axis_of[cols])


def test_foreground_slices_lists_slices_with_labels():
    labels = np.zeros(SHAPE, np.uint8)
    labels[1, 2, 3] = 1
    labels[0, 0, 1] = 4

    assert foreground_slices(labels, "axial").tolist() == [1, 3]
    assert foreground_slices(labels, "coronal").tolist() == [0, 2]
    assert foreground_slices(labels, "sagittal").tolist() == [0, 1]


def test_foreground_slices_of_an_empty_volume_is_empty():
    assert foreground_slices(np.zeros(SHAPE, np.uint8), "axial").size == 0


def test_select_slices_takes_every_stride_th_index():
    assert select_slices(np.arange(10), stride=3).tolist() == [0, 3, 6, 9]
    assert select_slices(np.array([2, 5, 7, 11, 12]), stride=2).tolist() == [2, 7, 12]


def test_select_slices_cap_takes_the_centre_of_equal_runs():
    assert select_slices(np.arange(10, 20), cap=4).tolist() == [11, 13, 16, 18]
    assert select_slices(np.arange(101), cap=5).tolist() == [10, 30, 50, 70, 90]
    assert select_slices(np.arange(7), cap=1).tolist() == [3]


def test_select_slices_applies_stride_before_cap():
    assert select_slices(np.arange(20), stride=2, cap=4).tolist() == [2, 6, 12, 16]


def test_select_slices_cap_above_count_keeps_everything():
    assert select_slices(np.arange(5), cap=10).tolist() == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("cap", [1, 2, 3, 7, 9])
def test_select_slices_cap_gives_exactly_cap_distinct_sorted_indices(cap):
    out = select_slices(np.arange(10, 30), cap=cap)

    assert out.size == cap
    assert np.all(np.diff(out) > 0)
    assert 10 <= out[0] and out[-1] <= 29


def test_select_slices_zero_cap_gives_nothing():
    assert select_slices(np.arange(5), cap=0).size == 0


def test_select_slices_rejects_stride_below_one():
    with pytest.raises(ValueError, match="stride"):
        select_slices(np.arange(5), stride=0)


def test_square_pixels_grows_the_coarse_row_axis():
    image = np.arange(12, dtype=np.float32).reshape(3, 4)
    labels = np.array([[0, 1, 1, 2]] * 3, np.uint8)

    new_image, new_labels = square_pixels(image, labels, (2.0, 1.0))

    assert new_image.shape == new_labels.shape == (6, 4)
    assert new_labels.dtype == np.uint8
    np.testing.assert_array_equal(new_labels, np.array([[0, 1, 1, 2]] * 6, np.uint8))


def test_square_pixels_grows_the_coarse_column_axis():
    image = np.zeros((4, 5), np.float32)
    labels = np.zeros((4, 5), np.int16)
    labels[:, 2] = 7

    new_image, new_labels = square_pixels(image, labels, (0.5, 1.5))

    assert new_image.shape == new_labels.shape == (4, 15)
    assert new_labels.dtype == np.int16
    np.testing.assert_array_equal(np.unique(new_labels), [0, 7])
    np.testing.assert_array_equal(new_labels[:, 6:9], 7)  # column 2 becomes columns 6..8


def test_square_pixels_labels_are_nearest_neighbour_values():
    rng = np.random.default_rng(0)
    labels = rng.choice(np.array([0, 3, 300], np.int32), size=(7, 9))
    image = rng.normal(size=(7, 9)).astype(np.float32)

    _, new_labels = square_pixels(image, labels, (3.0, 1.2))

    assert new_labels.dtype == np.int32
    assert set(np.unique(new_labels)) <= {0, 3, 300}


def test_square_pixels_interpolates_the_image_within_its_range():
    image = np.array([[0.0, 100.0], [0.0, 100.0]], np.float32)

    new_image, _ = square_pixels(image, np.zeros((2, 2), np.uint8), (1.0, 2.0))

    assert new_image.shape == (2, 4)
    assert new_image.min() >= 0.0 and new_image.max() <= 100.0
    assert (np.diff(new_image, axis=1) >= 0).all()


def test_square_pixels_leaves_nearly_square_pixels_alone():
    image = np.ones((3, 4), np.float32)
    labels = np.ones((3, 4), np.uint8)

    new_image, new_labels = square_pixels(image, labels, (1.0, 1.005))

    assert new_image is image and new_labels is labels


def test_foreground_slices_can_require_a_minimum_of_labelled_pixels():
    labels = np.zeros((4, 4, 3), np.uint8)
    labels[0, 0, 0] = 1
    labels[:2, :2, 2] = 1
    assert foreground_slices(labels, "axial", min_pixels=4).tolist() == [2]
