"""The sources a user names, opened in order: ``KIND:PATH`` specs and the bundled demo.

``demo`` (the demo under ``$MEDGRIT_DEMO_DIR`` or the user cache) and ``demo:PATH`` are written
on first use (``medgrit.adapters.synthetic.demo``) and expand, in place, into the ``KIND:PATH``
sources of the demo's datasets, each opened with the modality its own metadata gives. Every other
spec is opened by its kind's reader (``medgrit.adapters.sources``).
"""

from __future__ import annotations

from pathlib import Path

from medgrit.adapters.sources import (
    Source,
    SourceError,
    check_distinct,
    open_source,
    parse_source_spec,
)
from medgrit.adapters.synthetic.demo import default_demo_dir, demo_source_specs, ensure_demo_data
from medgrit.core.fsnames import escape_name


def open_sources(
    specs: list[str],
    demo_dir: Path | None = None,
    modality: str | None = None,
    key: bytes = b"",
) -> list[Source]:
    """Open every source spec, in order (``demo`` expands to the bundled demo sources).

    Args:
        specs: ``KIND:PATH`` strings, or ``demo`` / ``demo:PATH``.
        demo_dir: where the demo lives (default: the user cache).
        modality: modality for sources whose metadata does not say.
        key: pseudonymisation key for sources that hash identifiers while listing (DICOM).

    Raises:
        SourceError: on the first source a user must fix.
    """
    out: list[Source] = []
    for spec in specs:
        kind, path = parse_source_spec(spec)
        if kind == "demo":
            root = Path(path) if path else (demo_dir or default_demo_dir())
            out.extend(open_demo_sources(root, key))
        else:
            out.append(open_source(spec, modality, key))
    check_distinct(out)
    return out


def open_demo_sources(root: Path, key: bytes = b"") -> list[Source]:
    """The demo's sources under ``root``, written there first if they are not there yet.

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
    return [open_source(spec, None, key) for spec in demo_source_specs(root)]
