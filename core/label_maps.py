"""Label maps as the pipeline takes them: whole, non-negative ids in the smallest unsigned dtype.

Labels are never altered: a value that is not a whole label id is refused with a reject reason,
not rounded.
"""

from __future__ import annotations

import numpy as np

from medgrit.core.cases import UnreadableImage
from medgrit.core.regions import label_dtype

# Labels within this distance of an integer are that integer (float label maps written by
# resampling tools); farther ones are fractional and rejected, never rounded.
LABEL_TOLERANCE = 1e-3


def as_label_array(data: np.ndarray, name: str = "label map") -> np.ndarray:
    """Labels in the smallest unsigned dtype that holds them, never altered.

    Float labels are accepted only when every value is a whole number (within
    ``LABEL_TOLERANCE``); nothing is rounded away or cast silently.

    Raises:
        UnreadableImage: ``complex_label``, ``non_finite_label`` (NaN or infinite values),
            ``fractional_label``, ``negative_label``, ``unsupported_dtype`` or
            ``unsupported_shape`` (ids past 2**32).
    """
    kind = data.dtype.kind
    if kind == "c":
        raise UnreadableImage("complex_label", f"{name} holds complex labels")
    if kind == "b":
        data = data.astype(np.uint8)
    elif kind == "f":
        data = _whole_labels(data, name)
    elif kind not in "iu":
        raise UnreadableImage("unsupported_dtype", f"{name} holds {data.dtype} values, not labels")
    if data.size and data.min() < 0:
        raise UnreadableImage("negative_label", f"{name} holds negative values")
    try:
        dtype = label_dtype(int(data.max(initial=0)))
    except ValueError as exc:
        raise UnreadableImage("unsupported_shape", str(exc)) from None
    return data.astype(dtype, copy=False)


def _whole_labels(data: np.ndarray, name: str) -> np.ndarray:
    """Float labels as int64, checked slab by slab (bounded extra memory on large maps)."""
    out = np.empty(data.shape, dtype=np.int64)
    flat_in, flat_out = data.reshape(-1), out.reshape(-1)
    step = 1 << 22
    for start in range(0, flat_in.size, step):
        block = flat_in[start : start + step]
        finite = np.isfinite(block)
        if not finite.all():
            bad = int(block.size - np.count_nonzero(finite))
            raise UnreadableImage(
                "non_finite_label", f"{name} holds NaN or infinite labels ({bad}+ voxels)"
            )
        whole = np.rint(block)
        off = np.abs(block - whole) > LABEL_TOLERANCE
        if off.any():
            example = float(block[np.argmax(off)])
            raise UnreadableImage(
                "fractional_label",
                f"{name} holds fractional labels (e.g. {example:g}); labels must be whole numbers",
            )
        if whole.size and np.abs(whole).max() > np.iinfo(np.uint32).max:
            raise UnreadableImage("unsupported_shape", f"{name} holds label ids past 2**32")
        flat_out[start : start + step] = whole.astype(np.int64)
    return out
