"""The sources a user names, opened in order: ``KIND:PATH`` specs and the bundled demo.

``demo`` (the demo under ``$MEDGRIT_DEMO_DIR`` or the user cache) and ``demo:PATH`` are written
on first use (``medgrit.adapters.synthetic.demo``) and expand, in place, into the ``KIND:PATH``
sources of the demo's datasets, each opened with the modality its own metadata gives. Every other
spec is opened by its kind's reader (``medgrit.adapters.sources``).

A source that gives each channel of a multi-channel image as its own case (nnU-Net's
``{case}_{XXXX}`` files, the volumes of an MSD 4D image; BraTS: FLAIR, T1w, T1Gd, T2w), each with
its ``sequence``, may be narrowed to some channels (:func:`select_channels`): by name as the source
writes it, any case, or by index.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from pathlib import Path

from medgrit.adapters.runtime import progress
from medgrit.adapters.sources import (
    Source,
    SourceError,
    check_distinct,
    open_source,
    parse_source_spec,
)
from medgrit.adapters.sources.nifti import NiftiCase
from medgrit.adapters.synthetic.demo import default_demo_dir, demo_source_specs, ensure_demo_data
from medgrit.core.cases import Case
from medgrit.core.fsnames import escape_name
from medgrit.core.sequences import known_sequence

# nnU-Net's image file of one channel: ``{case}_{XXXX}{file_ending}``.
_CHANNEL_FILE = re.compile(r"_([0-9]{4})\.[^_]+$")


def open_sources(
    specs: list[str],
    demo_dir: Path | None = None,
    modality: str | None = None,
    key: bytes = b"",
    channels: Sequence[str] | None = None,
) -> list[Source]:
    """Open every source spec, in order (``demo`` expands to the bundled demo sources).

    Args:
        specs: ``KIND:PATH`` strings, or ``demo`` / ``demo:PATH``.
        demo_dir: where the demo lives (default: the user cache).
        modality: modality for sources whose metadata does not say.
        key: pseudonymisation key for sources that hash identifiers while listing (DICOM).
        channels: keep only these channels of multi-channel sources (:func:`select_channels`);
            None: every channel.

    Raises:
        SourceError: on the first source a user must fix, or channels that select nothing.
    """
    listed: list[tuple[str, str | None]] = []  # each source's spec and modality, demo expanded
    for spec in specs:
        kind, path = parse_source_spec(spec)
        if kind == "demo":
            root = Path(path) if path else (demo_dir or default_demo_dir())
            listed += [(demo, None) for demo in written_demo_specs(root)]
        else:
            listed.append((spec, modality))
    progress.phase(f"reading {len(listed)} source{'s' if len(listed) != 1 else ''}")
    out = [open_source(spec, given, key) for spec, given in listed]
    check_distinct(out)
    return out if channels is None else select_channels(out, channels)


def channel_index(case: Case) -> int | None:
    """The index of the channel a case's image is: the volume an MSD case keeps of its 4D
    image (``NiftiCase.channel``), or the ``_XXXX`` of an nnU-Net image file
    (``BraTS_001_0003.nii.gz``: 3); None for a case of another kind."""
    if not isinstance(case, NiftiCase):
        return None
    if parse_source_spec(case.source)[0] == "msd":
        return case.channel
    found = _CHANNEL_FILE.search(Path(case.image).name)
    return int(found.group(1)) if found else None


def _channels_of(source: Source) -> list[tuple[int | None, str]]:
    """The channels a source's cases show, (index, name as written), by index: those of its
    cases that name their sequence or are one channel of a multi-channel image (a CT and PET
    pair names no sequence)."""
    found = {
        (channel_index(c), c.sequence)
        for c in source.cases
        if c.sequence or channel_index(c) is not None
    }
    return sorted(found, key=lambda c: (c[0] is None, c[0] or 0, c[1].casefold()))


def _shown(channels: list[tuple[int | None, str]]) -> str:
    return ", ".join(
        escape_name(n) if i is None else f"{i} {escape_name(n)}".strip() for i, n in channels
    )


def _lists(given: str, index: int | None, name: str) -> bool:
    """Whether a listed channel (a name, any case, or an index) is the channel (index, name):
    names match as written or as the sequence they name (``T1Gd`` lists ``T1ce``)."""
    if name and name.casefold() == given.casefold():
        return True
    kind = known_sequence(name) if name else None
    if kind is not None and kind == known_sequence(given):
        return True
    return index is not None and given.isascii() and given.isdigit() and index == int(given)


def select_channels(sources: list[Source], channels: Sequence[str]) -> list[Source]:
    """The sources with only the cases of the listed channels where a source has several.

    A case is kept when its sequence (any case) or its channel index (:func:`channel_index`)
    is listed; a source whose cases name fewer than two channels is kept whole.

    Raises:
        SourceError: a listed channel that no multi-channel source has (the message names the
            channels they have), or a multi-channel source none of whose channels is listed.
    """
    found = [(s, _channels_of(s)) for s in sources]
    offered = [(s, has) for s, has in found if len(has) > 1]
    for given in channels:
        if any(_lists(given, i, n) for _, has in offered for i, n in has):
            continue
        if not offered:
            raise SourceError(
                f"--channels {given!r}: no source gives several channels to choose from; "
                "leave --channels out"
            )
        there = "; ".join(f"{escape_name(s.spec)} ({_shown(has)})" for s, has in offered)
        raise SourceError(
            f"--channels: no source has a channel {given!r}; give names or indices of the "
            f"channels there are: {there}"
        )
    out: list[Source] = []
    for source, has in found:
        if len(has) < 2:
            out.append(source)
            continue
        kept = tuple(
            c
            for c in source.cases
            if any(_lists(g, channel_index(c), c.sequence) for g in channels)
        )
        if not kept:
            raise SourceError(
                f"--channels {','.join(channels)} keeps no case of {escape_name(source.spec)}, "
                f"whose channels are {_shown(has)}; list one of them too, or leave that source out"
            )
        out.append(dataclasses.replace(source, cases=kept))
    return out


def written_demo_specs(root: Path) -> list[str]:
    """The specs of the demo's sources under ``root``, written there first if they are not
    there yet.

    Raises:
        SourceError: ``root`` holds something other than the demo.
    """
    try:
        ensure_demo_data(root)
    except FileExistsError:
        raise SourceError(
            f"the demo folder {escape_name(str(root))} holds something else; point "
            "$MEDGRIT_DEMO_DIR (or demo:PATH) at a new folder"
        ) from None
    return demo_source_specs(root)
