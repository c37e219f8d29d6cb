"""The report's charts, drawn with matplotlib's Agg backend into PNG bytes.

Agg is chosen inside :func:`_pyplot`, when a chart is first drawn, never when medgrit is
imported: a program that imports medgrit keeps whatever backend it chose. Sizes and positions
are in ``bbox_1000`` units (0-999 across the image, see ``medgrit.core.report_stats``).
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np

from medgrit.core.report_stats import QWEN_SCALE, BoxMeasures, linear_bins

_DPI = 100


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig: Any) -> bytes:
    plt = _pyplot()
    buffer = io.BytesIO()
    # No metadata: the same dataset gives the same bytes (no matplotlib version or date in them).
    fig.savefig(buffer, format="png", dpi=_DPI, metadata={"Software": None})
    plt.close(fig)
    return buffer.getvalue()


def label_bar_chart(labels: dict[str, int], top: int = 40) -> bytes:
    """Horizontal bars of the ``top`` most frequent labels (the table lists all of them)."""
    plt = _pyplot()
    items = list(labels.items())[:top]
    height = max(2.0, 0.28 * len(items) + 1.0)
    fig, ax = plt.subplots(figsize=(8, height))
    if items:
        names = [name for name, _ in items][::-1]
        counts = [count for _, count in items][::-1]
        ax.barh(range(len(items)), counts, color="#4c72b0")
        # Labels are drawn as plain text, not mathtext: a '$' in a label name stays a '$'.
        ax.set_yticks(range(len(items)), names, fontsize=8)
        for tick in ax.get_yticklabels():
            tick.set_usetex(False)
            tick.set_parse_math(False)
    else:
        ax.text(0.5, 0.5, "no regions", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("regions")
    fig.tight_layout()
    return _png(fig)


def box_size_histograms(measures: BoxMeasures) -> bytes:
    """Histograms of box widths, heights and areas, in thousandths of the image."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(11, 3))
    panels = (
        (measures.widths, linear_bins(QWEN_SCALE), "width (0-1000)"),
        (measures.heights, linear_bins(QWEN_SCALE), "height (0-1000)"),
        (measures.areas / 1e4, linear_bins(100), "area (% of image)"),
    )
    for ax, (values, bins, title) in zip(axes, panels, strict=True):
        ax.hist(values, bins=bins, color="#55a868")
        ax.set_xlabel(title)
        ax.set_ylabel("regions")
    fig.tight_layout()
    return _png(fig)


def centre_heatmap(counts: np.ndarray) -> bytes:
    """A 2D histogram of box centres over the image (top of the image at the top)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(4.6, 4))
    shown = ax.imshow(counts, cmap="viridis", origin="upper", extent=(0, QWEN_SCALE, QWEN_SCALE, 0))
    ax.set_xlabel("centre x (0-1000)")
    ax.set_ylabel("centre y (0-1000)")
    fig.colorbar(shown, ax=ax, label="regions")
    fig.tight_layout()
    return _png(fig)
