"""The PNG writer: standard files that read back to the same pixels, the same bytes each time."""

from __future__ import annotations

import io
import zlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from PIL import Image

from medgrit.adapters.store.png import encode_png

shapes = st.one_of(
    st.tuples(st.integers(1, 40), st.integers(1, 40)),
    st.tuples(st.integers(1, 40), st.integers(1, 40), st.just(3)),
)


@settings(max_examples=200, deadline=None)
@given(arrays(np.uint8, shapes))
def test_pillow_reads_back_the_same_pixels(pixels: np.ndarray) -> None:
    data = encode_png(pixels)
    with Image.open(io.BytesIO(data)) as image:
        image.verify()  # checks the chunks' CRCs
    with Image.open(io.BytesIO(data)) as image:
        assert image.mode == ("L" if pixels.ndim == 2 else "RGB")
        assert np.array_equal(np.asarray(image), pixels)
    assert encode_png(pixels) == data  # deterministic


def test_a_real_photograph_round_trips_at_about_pillows_size() -> None:
    from skimage import data as samples

    photo = np.ascontiguousarray(samples.astronaut())
    ours = encode_png(photo)
    buffer = io.BytesIO()
    Image.fromarray(photo).save(buffer, format="PNG", compress_level=1)
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(ours))), photo)
    assert len(ours) < 1.15 * len(buffer.getvalue())
    zlib.decompress(ours[ours.index(b"IDAT") + 4 : ours.index(b"IEND") - 8])


@pytest.mark.parametrize(
    "bad", [np.zeros((4, 4), np.uint16), np.zeros((4, 4, 4), np.uint8), np.zeros((0, 4), np.uint8)]
)
def test_other_arrays_are_refused(bad: np.ndarray) -> None:
    with pytest.raises(ValueError):
        encode_png(bad)
