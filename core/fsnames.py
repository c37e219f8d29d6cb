"""File names as text: any bytes a file system allows are carried as such and shown escaped.

Python decodes name bytes that are not UTF-8 to lone surrogates (PEP 383, ``surrogateescape``).
Such a string opens the same file again, but it cannot be encoded as UTF-8, so it cannot go into
Parquet, JSON read by other tools, log records or a hash as it is. Paths stay raw wherever a file
is opened; :func:`name_bytes` is what hashes take and :func:`escape_name` what people and tables
see (``bad\\xff.png``).
"""

from __future__ import annotations

from pathlib import Path


def name_bytes(text: str) -> bytes:
    """The bytes a name stands for (the file system's own bytes for undecodable names)."""
    try:
        return text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # surrogates that did not come from a file system
        return text.encode("utf-8", "surrogatepass")


def escape_name(text: str) -> str:
    """``text`` as valid UTF-8: bytes that are not UTF-8 become ``\\xNN`` escapes."""
    return name_bytes(text).decode("utf-8", "backslashreplace")


def is_clean(text: str) -> bool:
    """Whether ``text`` encodes as UTF-8 unchanged (no undecodable bytes in it)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


# Portable form of a name for JSON consumers that refuse lone surrogates (Prefect's API, other
# tools reading dataset.json): each undecodable byte 0xNN (surrogate U+DC80..U+DCFF) maps to a
# code point of the last private-use plane (U+10FF80..U+10FFFF), one to one and back. Real
# names do not use those code points, so clean names pass through unchanged.
_SURROGATE_LOW, _SURROGATE_HIGH = 0xDC80, 0xDCFF
_PORTABLE_BASE = 0x10FF80 - _SURROGATE_LOW


def to_portable(text: str) -> str:
    """``text`` with undecodable name bytes mapped to private-use code points (valid UTF-8)."""
    if is_clean(text):
        return text
    return "".join(
        chr(ord(c) + _PORTABLE_BASE) if _SURROGATE_LOW <= ord(c) <= _SURROGATE_HIGH else c
        for c in text
    )


def from_portable(text: str) -> str:
    """The inverse of :func:`to_portable`: the name as the file system knows it."""
    low, high = _SURROGATE_LOW + _PORTABLE_BASE, _SURROGATE_HIGH + _PORTABLE_BASE
    if not any(low <= ord(c) <= high for c in text):
        return text
    return "".join(chr(ord(c) - _PORTABLE_BASE) if low <= ord(c) <= high else c for c in text)


def library_message(exc: BaseException, path: Path) -> str:
    """What a library said about ``path``, with the file's folders left out and names escaped
    (reject rows name the file, not where the user keeps it)."""
    text = str(exc)
    for spelled in {str(path), str(path.absolute()), str(path.resolve())}:
        text = text.replace(spelled, path.name)
    return escape_name(text)
