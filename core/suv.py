"""PET standardised uptake value (SUVbw) from a few header values.

The values come as a plain mapping of DICOM keywords to their text (the DICOM adapter extracts
it; an absent or empty attribute is ``""``): ``Units``, ``PatientWeight`` (kg),
``DecayCorrection``, ``SeriesDate``, ``SeriesTime``, ``AcquisitionDate``, ``AcquisitionTime``
and, from the first item of RadiopharmaceuticalInformationSequence, ``RadionuclideTotalDose``
(Bq), ``RadionuclideHalfLife`` (s), ``RadiopharmaceuticalStartDateTime`` and
``RadiopharmaceuticalStartTime``. Dates are ``YYYYMMDD``, times ``HHMMSS.FFFFFF`` (minutes,
seconds and fraction optional).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import date

__all__ = ["SUV_KEYWORDS", "suv_factor"]

# The keywords ``suv_factor`` reads.
SUV_KEYWORDS: tuple[str, ...] = (
    "Units",
    "PatientWeight",
    "DecayCorrection",
    "SeriesDate",
    "SeriesTime",
    "AcquisitionDate",
    "AcquisitionTime",
    "RadionuclideTotalDose",
    "RadionuclideHalfLife",
    "RadiopharmaceuticalStartDateTime",
    "RadiopharmaceuticalStartTime",
)


def _seconds(text: str) -> float | None:
    match = re.fullmatch(r"\s*(\d{2})(\d{2})?(\d{2})?(\.\d+)?\s*", text or "")
    if not match:
        return None
    hours, minutes, secs, frac = match.groups()
    return int(hours) * 3600 + int(minutes or 0) * 60 + int(secs or 0) + float(frac or 0)


def _day(text: str) -> int | None:
    match = re.fullmatch(r"\s*(\d{4})(\d{2})(\d{2})\s*", text or "")
    if not match:
        return None
    try:
        return date(*(int(g) for g in match.groups())).toordinal()
    except ValueError:
        return None


def suv_factor(tags: Mapping[str, str]) -> float | None:
    """Factor turning a PET series' rescaled values (Bq/ml) into SUVbw, or None if the values
    do not allow it.

    SUVbw = activity concentration [Bq/ml] * weight [g] / decayed dose [Bq]. With
    DecayCorrection START the dose decays from the injection to the series start (SeriesTime,
    else AcquisitionTime; over midnight when only times are known); with ADMIN it does not
    decay. Units GML are SUVbw already (factor 1). Malformed values give None.
    """
    try:
        return _suv_factor(tags)
    except (ValueError, TypeError, AttributeError, IndexError, OverflowError):
        return None


def _suv_factor(tags: Mapping[str, str]) -> float | None:
    def text(keyword: str) -> str:
        return tags.get(keyword, "") or ""

    units = text("Units").upper()
    if units == "GML":
        return 1.0
    if units != "BQML":
        return None
    weight = float(text("PatientWeight") or 0)
    dose = float(text("RadionuclideTotalDose") or 0)
    half_life = float(text("RadionuclideHalfLife") or 0)
    if weight <= 0 or dose <= 0 or half_life <= 0:
        return None
    correction = text("DecayCorrection").upper()
    if correction == "ADMIN":
        return weight * 1000.0 / dose
    if correction != "START":
        return None
    start_dt = text("RadiopharmaceuticalStartDateTime")
    start_day = _day(start_dt[:8]) if len(start_dt) >= 8 else None
    start = _seconds(start_dt[8:]) if start_day is not None else None
    if start is None:
        start = _seconds(text("RadiopharmaceuticalStartTime"))
    series = _seconds(text("SeriesTime")) or _seconds(text("AcquisitionTime"))
    if start is None or series is None:
        return None
    series_day = _day(text("SeriesDate") or text("AcquisitionDate"))
    if start_day is not None and series_day is not None:
        elapsed = (series_day - start_day) * 86400.0 + series - start
        if elapsed < 0:
            return None
    else:
        elapsed = series - start
        if elapsed < 0:
            elapsed += 86400.0
    decayed = dose * 2.0 ** (-elapsed / half_life)
    return weight * 1000.0 / decayed
