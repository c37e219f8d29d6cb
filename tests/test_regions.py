"""Box conventions of ``medgrit.core.regions``: half-open pixel boxes, instances and merged rows."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from scipy import ndimage

from medgrit.core.regions import extract_regions, to_bbox_1000

EIGHT_CONNECTED = np.ones((3, 3), dtype=int)


def rows_of(label_map: np.ndarray, min_area: int = 1) -> list[tuple[int, int, tuple, int]]:
    """The region table as (label_id, instance, bbox, area) tuples, in table order."""
    t = extract_regions(label_map, min_area=min_area).regions
    return [
        (int(t.label_id[i]), int(t.instance[i]), tuple(int(v) for v in t.bbox[i]), int(t.area[i]))
        for i in range(len(t))
    ]


# --- hand-made maps -------------------------------------------------------------------------------


def test_single_pixel_box_is_half_open_x_then_y():
    m = np.zeros((5, 7), np.uint8)
    m[3, 5] = 1  # row 3, column 5

    assert rows_of(m) == [(1, 0, (5, 3, 6, 4), 1)]


def test_box_of_a_rectangle_spans_columns_then_rows():
    m = np.zeros((6, 8), np.uint8)
    m[1:4, 2:7] = 9  # rows 1..3, columns 2..6

    assert rows_of(m) == [(9, 0, (2, 1, 7, 4), 15)]


def test_touching_different_labels_stay_separate():
    m = np.zeros((4, 4), np.uint8)
    m[1, 1] = 3
    m[1, 2] = 4  # edge neighbour of a different label
    m[2, 3] = 4

    assert rows_of(m) == [(3, 0, (1, 1, 2, 2), 1), (4, 0, (2, 1, 4, 3), 2)]


def test_diagonal_pixels_of_one_label_are_one_instance():
    m = np.zeros((3, 3), np.uint8)
    m[0, 0] = m[1, 1] = m[2, 2] = 1

    assert rows_of(m) == [(1, 0, (0, 0, 3, 3), 3)]


def test_label_with_two_blobs_has_merged_row_then_instances_by_x0():
    m = np.zeros((6, 10), np.uint8)
    m[0:2, 7:9] = 2  # right blob, top: 4 px
    m[4:6, 1:4] = 2  # left blob, bottom: 6 px

    assert rows_of(m) == [
        (2, 0, (1, 0, 9, 6), 10),
        (2, 1, (1, 4, 4, 6), 6),
        (2, 2, (7, 0, 9, 2), 4),
    ]


def test_instances_with_equal_x0_are_ordered_by_y0():
    m = np.zeros((7, 3), np.uint8)
    m[5, 1] = 1
    m[1, 1] = 1

    assert [(r[1], r[2]) for r in rows_of(m)] == [
        (0, (1, 1, 2, 6)),
        (1, (1, 1, 2, 2)),
        (2, (1, 5, 2, 6)),
    ]


def test_rows_are_sorted_by_label():
    m = np.zeros((3, 6), np.uint8)
    m[0, 0] = 7
    m[2, 5] = 2
    m[0, 3] = 5

    assert [r[0] for r in rows_of(m)] == [2, 5, 7]


def test_min_area_drops_small_instances_and_reports_them():
    m = np.zeros((8, 8), np.uint8)
    m[0:3, 0:3] = 1  # 9 px, kept
    m[6, 6] = 1  # 1 px, dropped: label 1 is left with one instance, so no instance rows
    m[4, 0:2] = 2  # 2 px, dropped: label 2 vanishes

    result = extract_regions(m, min_area=3)

    assert rows_of(m, min_area=3) == [(1, 0, (0, 0, 3, 3), 9)]
    dropped = sorted(
        zip(result.dropped_label_id.tolist(), result.dropped_area.tolist(), strict=True)
    )
    assert dropped == [(1, 1), (2, 2)]


def test_min_area_dropping_everything_gives_empty_table():
    m = np.zeros((4, 4), np.uint8)
    m[0, 0] = 1

    result = extract_regions(m, min_area=2)

    assert len(result.regions) == 0
    assert result.regions.bbox.shape == (0, 4)
    assert result.dropped_label_id.tolist() == [1]
    assert result.dropped_area.tolist() == [1]


def test_background_only_map_gives_empty_result():
    result = extract_regions(np.zeros((5, 5), np.uint8))

    assert len(result.regions) == 0
    assert result.regions.bbox.shape == (0, 4)
    assert result.dropped_label_id.size == 0


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int16, np.int32, np.int64, np.uint32])
def test_integer_dtypes_give_the_same_regions(dtype):
    m = np.zeros((4, 6), dtype)
    m[0, 0:2] = 1
    m[3, 5] = 100

    assert rows_of(m) == [(1, 0, (0, 0, 2, 1), 2), (100, 0, (5, 3, 6, 4), 1)]


@pytest.mark.parametrize("dtype", [np.int32, np.int64, np.uint32])
def test_label_values_above_uint8_and_uint16_are_kept(dtype):
    m = np.zeros((3, 5), dtype)
    m[0, 0] = 300
    m[0, 1] = 70_000  # touches 300 but is another label
    m[2, 4] = 300

    assert rows_of(m) == [
        (300, 0, (0, 0, 5, 3), 2),
        (300, 1, (0, 0, 1, 1), 1),
        (300, 2, (4, 2, 5, 3), 1),
        (70_000, 0, (1, 0, 2, 1), 1),
    ]


def test_input_map_is_not_modified():
    m = np.zeros((4, 4), np.int64)
    m[1, 1] = 70_000
    before = m.copy()

    extract_regions(m)

    np.testing.assert_array_equal(m, before)
    assert m.dtype == np.int64


@pytest.mark.parametrize(
    ("label_map", "message"),
    [
        (np.zeros((2, 3, 4), np.uint8), "2D"),
        (np.zeros(5, np.uint8), "2D"),
        (np.zeros((3, 3), np.float32), "integers"),
        (np.zeros((3, 3), bool), "integers"),
        (np.array([[0, -1], [2, 0]], np.int32), "negative"),
    ],
)
def test_invalid_label_maps_raise(label_map, message):
    with pytest.raises(ValueError, match=message):
        extract_regions(label_map)


# --- properties -----------------------------------------------------------------------------------

label_maps = arrays(
    dtype=np.uint8,
    shape=st.tuples(st.integers(1, 12), st.integers(1, 12)),
    elements=st.integers(0, 3),
)


def merged_rows(label_map: np.ndarray) -> dict[int, tuple[tuple, int]]:
    return {lab: (box, area) for lab, inst, box, area in rows_of(label_map) if inst == 0}


@settings(max_examples=100, deadline=None)
@given(label_maps)
def test_merged_box_covers_every_pixel_of_its_label(m):
    merged = merged_rows(m)

    assert set(merged) == set(np.unique(m[m != 0]).tolist())
    for lab, ((x0, y0, x1, y1), _) in merged.items():
        ys, xs = np.nonzero(m == lab)
        assert (x0 <= xs).all() and (xs < x1).all()
        assert (y0 <= ys).all() and (ys < y1).all()


@settings(max_examples=100, deadline=None)
@given(label_maps)
def test_every_box_is_tight(m):
    for lab, _, (x0, y0, x1, y1), _ in rows_of(m):
        inside = m[y0:y1, x0:x1] == lab
        assert inside[0, :].any() and inside[-1, :].any()  # top and bottom edges
        assert inside[:, 0].any() and inside[:, -1].any()  # left and right edges


@settings(max_examples=100, deadline=None)
@given(label_maps)
def test_areas_add_up_to_the_pixel_count_of_each_label(m):
    rows = rows_of(m)

    for lab in np.unique(m[m != 0]).tolist():
        count = int((m == lab).sum())
        merged_area = [a for lb, inst, _, a in rows if lb == lab and inst == 0]
        instance_areas = [a for lb, inst, _, a in rows if lb == lab and inst > 0]
        assert merged_area == [count]
        if instance_areas:
            assert sum(instance_areas) == count


@settings(max_examples=100, deadline=None)
@given(label_maps)
def test_instances_are_the_8_connected_components_of_each_label(m):
    rows = rows_of(m)

    for lab in np.unique(m[m != 0]).tolist():
        components, n = ndimage.label(m == lab, structure=EIGHT_CONNECTED)
        expected = sorted(
            (s[1].start, s[0].start, s[1].stop, s[0].stop) for s in ndimage.find_objects(components)
        )
        instances = [(inst, box) for lb, inst, box, _ in rows if lb == lab and inst > 0]
        if n == 1:
            assert instances == []
        else:
            assert instances == list(enumerate(expected, start=1))


@settings(max_examples=75, deadline=None)
@given(
    label_maps,
    st.integers(0, 9),
    st.integers(0, 9),
    st.integers(0, 9),
    st.integers(0, 9),
)
def test_shifting_the_map_shifts_every_box(m, top, left, bottom, right):
    shifted = np.pad(m, ((top, bottom), (left, right)))

    expected = [
        (lab, inst, (x0 + left, y0 + top, x1 + left, y1 + top), area)
        for lab, inst, (x0, y0, x1, y1), area in rows_of(m)
    ]
    assert rows_of(shifted) == expected


# Offsets that still fit the dtype once added to labels 1..3.
wide_dtypes_and_offsets = st.tuples(
    st.sampled_from([np.int32, np.int64, np.uint32]), st.sampled_from([256, 1_000, 65_536, 100_000])
) | st.tuples(st.just(np.uint16), st.sampled_from([256, 1_000, 60_000]))


@settings(max_examples=50, deadline=None)
@given(label_maps, wide_dtypes_and_offsets)
def test_wide_label_values_give_the_same_boxes_as_small_ones(m, dtype_and_offset):
    dtype, offset = dtype_and_offset
    wide = np.where(m != 0, m.astype(np.int64) + offset, 0).astype(dtype)

    expected = [(lab + offset, inst, box, area) for lab, inst, box, area in rows_of(m)]
    assert rows_of(wide) == expected


@settings(max_examples=75, deadline=None)
@given(label_maps, st.integers(1, 6))
def test_min_area_splits_instances_into_kept_and_dropped(m, min_area):
    result = extract_regions(m, min_area=min_area)
    t = result.regions

    assert (t.area >= min_area).all()
    assert (result.dropped_area < min_area).all()
    for lab in np.unique(m[m != 0]).tolist():
        kept = t.area[(t.label_id == lab) & (t.instance == 0)].sum()
        dropped = result.dropped_area[result.dropped_label_id == lab].sum()
        assert kept + dropped == (m == lab).sum()


# --- Qwen-VL 0-999 boxes --------------------------------------------------------------------------


def test_full_image_box_maps_to_0_and_999():
    out = to_bbox_1000(np.array([0, 0, 640, 480]), width=640, height=480)

    assert out.tolist() == [0, 0, 999, 999]


def test_bbox_1000_is_floor_of_the_relative_coordinate():
    boxes = np.array([[128, 0, 384, 512], [1, 1, 2, 2]])

    out = to_bbox_1000(boxes, width=512, height=512)

    assert out.tolist() == [[250, 0, 750, 999], [1, 1, 3, 3]]
    assert out.dtype == np.int64


def test_bbox_1000_uses_width_for_x_and_height_for_y():
    out = to_bbox_1000(np.array([10, 10, 20, 20]), width=100, height=20)

    assert out.tolist() == [100, 500, 200, 999]


@settings(max_examples=100, deadline=None)
@given(st.data(), st.integers(1, 4096), st.integers(1, 4096))
def test_bbox_1000_is_in_range_and_monotone(data, width, height):
    xs = sorted(data.draw(st.lists(st.integers(0, width), min_size=2, max_size=2)))
    ys = sorted(data.draw(st.lists(st.integers(0, height), min_size=2, max_size=2)))
    box = np.array([xs[0], ys[0], xs[1], ys[1]])

    out = to_bbox_1000(box, width, height)

    assert ((out >= 0) & (out <= 999)).all()
    assert out[0] <= out[2] and out[1] <= out[3]
    # A larger pixel coordinate never maps to a smaller text coordinate.
    bigger = to_bbox_1000(np.minimum(box + 1, [width, height, width, height]), width, height)
    assert (bigger >= out).all()


def test_read_only_maps_are_accepted() -> None:
    label_map = np.zeros((6, 6), np.uint8)
    label_map[1:3, 2:5] = 4
    label_map.flags.writeable = False
    table = extract_regions(label_map).regions
    assert table.bbox.tolist() == [[2, 1, 5, 3]]
