"""Segmentation sources on disk: nnU-Net v2 raw and Medical Segmentation Decathlon layouts.

A source spec is ``KIND:PATH``. Opening a source reads its ``dataset.json`` and lists its cases;
it does not read any image. Problems a user must fix (missing path, unknown kind, malformed
dataset.json) raise :class:`SourceError` with a one-line message. Problems with single cases
(a missing image file) surface later as reject rows.

nnU-Net v2: ``dataset.json`` with ``channel_names`` {"0": "CT"}, ``labels`` {name: id},
``file_ending``; images ``imagesTr/{case}_{XXXX}{ending}``, labels ``labelsTr/{case}{ending}``.
MSD: ``dataset.json`` with ``modality`` {"0": "CT"}, ``labels`` {id: name} and a ``training`` list
of {"image": "./imagesTr/x.nii.gz", "label": "./labelsTr/x.nii.gz"}; multi-channel images are 4D.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from medgrit.adapters.sources.nifti import NiftiReader
from medgrit.core.cases import CaseRef, LoadedCase, Source, SourceError
from medgrit.core.fsnames import escape_name
from medgrit.core.text import readable_label_name

__all__ = ["CaseRef", "Source", "SourceError", "load_case", "open_sources"]

NIFTI_ENDINGS = (".nii.gz", ".nii")


def parse_source_spec(spec: str) -> tuple[str, str]:
    """Split ``KIND:PATH`` (``demo`` alone is allowed)."""
    kind, _, path = spec.partition(":")
    return kind, path


def modality_from_channel(name: str) -> str | None:
    """Modality key from an nnU-Net channel name or MSD modality string, or None if unclear."""
    n = name.strip().lower()
    if n in ("ct", "cta", "cect", "nect") or n.startswith("ct"):
        return "ct"
    if n in ("pet", "pt", "suv") or n.startswith("pet"):
        return "pet"
    mr_words = (
        "mr",
        "mri",
        "t1",
        "t2",
        "flair",
        "adc",
        "dwi",
        "pd",
        "swi",
        "bold",
        "hbv",
        "cine",
        "t1w",
        "t2w",
        "t1gd",
        "t1ce",
    )
    if n in mr_words or n.startswith(("mr", "t1", "t2")):
        return "mr"
    return None


def _load_json(path: Path) -> dict:
    if not path.is_file():
        raise SourceError(f"no dataset.json in {path.parent}: is this the dataset's root folder?")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SourceError(
            f"malformed dataset.json at {path}: {exc.msg if hasattr(exc, 'msg') else exc}"
        ) from None
    except (RecursionError, ValueError) as exc:  # nested too deep, integers too long
        raise SourceError(
            f"malformed dataset.json at {path}: {type(exc).__name__}: {str(exc)[:100]}"
        ) from None
    if not isinstance(data, dict):
        raise SourceError(f"malformed dataset.json at {path}: expected a JSON object")
    return data


def _modality(channels: object, path: Path, key: str, override: str | None) -> str:
    """The modality the metadata names; ``override`` fills in only where it names none."""
    if not isinstance(channels, dict) or not channels:
        if override:
            return override
        raise SourceError(f"malformed dataset.json at {path}: '{key}' must map channel -> name")
    first = str(channels.get("0", next(iter(channels.values()))))
    modality = modality_from_channel(first) or override
    if modality is None:
        raise SourceError(
            f"cannot tell the modality of channel {first!r} in {path}; pass --modality ct|mr|pet"
        )
    return modality


MAX_LABEL_ID = 2**32 - 1
MAX_LABEL_NAME = 200


def _labels(pairs: list[tuple[int, str]], path: Path) -> tuple[tuple[int, str], ...]:
    """Readable (id, name) pairs of a label list, background left out.

    Raises:
        SourceError: an id out of range or given twice, or a name that is empty or too long.
    """
    names: dict[int, str] = {}
    for label_id, name in pairs:
        where = f"malformed dataset.json at {escape_name(str(path))}"
        if not 0 <= label_id <= MAX_LABEL_ID:
            raise SourceError(f"{where}: label id {label_id} is outside 0..{MAX_LABEL_ID}")
        if not name.strip() or len(name) > MAX_LABEL_NAME:
            raise SourceError(
                f"{where}: label {label_id} needs a name of 1 to {MAX_LABEL_NAME} characters"
            )
        if label_id in names and label_id != 0:
            raise SourceError(
                f"{where}: label id {label_id} is given to both {escape_name(names[label_id])!r} "
                f"and {escape_name(name)!r}"
            )
        names[label_id] = name
    return tuple(sorted((i, readable_label_name(n)) for i, n in names.items() if i != 0))


def _nifti_case(
    spec: str,
    dataset: str,
    case: str,
    image: Path,
    label: Path,
    modality: str,
    labels: tuple[tuple[int, str], ...],
) -> CaseRef:
    return CaseRef(
        source=spec,
        dataset=dataset,
        case=case,
        format="nifti",
        image_path=str(image),
        label_path=str(label),
        modality=modality,
        labels=labels,
    )


def open_nnunet(spec: str, root: Path, modality: str | None = None) -> Source:
    """Open an nnU-Net v2 raw dataset folder."""
    meta_path = root / "dataset.json"
    meta = _load_json(meta_path)
    raw_labels = meta.get("labels")
    if not isinstance(raw_labels, dict) or not raw_labels:
        raise SourceError(f"malformed dataset.json at {meta_path}: 'labels' must map name -> id")
    pairs = []
    for name, value in raw_labels.items():
        if isinstance(value, bool) or not isinstance(value, int | list):
            raise SourceError(
                f"malformed dataset.json at {meta_path}: label {name!r} has id {value!r}"
            )
        if isinstance(value, int):  # region-based (list) labels overlap: not a label map
            pairs.append((value, str(name)))
    mod = _modality(
        meta.get("channel_names", meta.get("modality")), meta_path, "channel_names", modality
    )
    ending = meta.get("file_ending", ".nii.gz")
    if ending not in NIFTI_ENDINGS:
        raise SourceError(f"file_ending {ending!r} in {meta_path} is not supported; use NIfTI")
    labels_dir = root / "labelsTr"
    if not labels_dir.is_dir():
        raise SourceError(f"no labelsTr folder in {root}: not an nnU-Net raw dataset")
    dataset = escape_name(str(meta.get("name") or root.name))
    labels = _labels(pairs, meta_path)
    cases = []
    for label_file in sorted(labels_dir.glob(f"*{ending}")):
        case = label_file.name[: -len(ending)]
        image = root / "imagesTr" / f"{case}_0000{ending}"
        cases.append(_nifti_case(spec, dataset, case, image, label_file, mod, labels))
    return Source(spec, "nnunet", str(root), dataset, mod, labels, tuple(cases))


def open_msd(spec: str, root: Path, modality: str | None = None) -> Source:
    """Open a Medical Segmentation Decathlon task folder."""
    meta_path = root / "dataset.json"
    meta = _load_json(meta_path)
    raw_labels = meta.get("labels")
    training = meta.get("training")
    if not isinstance(raw_labels, dict) or not raw_labels:
        raise SourceError(f"malformed dataset.json at {meta_path}: 'labels' must map id -> name")
    if not isinstance(training, list):
        raise SourceError(f"malformed dataset.json at {meta_path}: 'training' must be a list")
    try:
        pairs = [(int(k), str(v)) for k, v in raw_labels.items()]
    except ValueError:
        raise SourceError(
            f"malformed dataset.json at {meta_path}: label ids must be integers"
        ) from None
    mod = _modality(meta.get("modality"), meta_path, "modality", modality)
    dataset = escape_name(str(meta.get("name") or root.name))
    labels = _labels(pairs, meta_path)
    cases = []
    for entry in training:
        if not isinstance(entry, dict) or "image" not in entry or "label" not in entry:
            raise SourceError(
                f"malformed dataset.json at {meta_path}: each training entry needs image and label"
            )
        image = (root / str(entry["image"])).resolve()
        label = (root / str(entry["label"])).resolve()
        name = label.name
        case = next((name[: -len(e)] for e in NIFTI_ENDINGS if name.endswith(e)), name)
        cases.append(_nifti_case(spec, dataset, case, image, label, mod, labels))
    cases.sort(key=lambda c: c.case)
    return Source(spec, "msd", str(root), dataset, mod, labels, tuple(cases))


def _demo_sources(root: Path, key: bytes) -> list[Source]:
    from medgrit.adapters.synthetic.demo import demo_source_specs, ensure_demo_data

    try:
        ensure_demo_data(root)
    except FileExistsError:
        raise SourceError(
            f"the demo folder {escape_name(str(root))} holds something else; point "
            "$MEDGRIT_DEMO_DIR (or demo:PATH) at a new folder"
        ) from None
    return [_open_one(spec, None, key) for spec in demo_source_specs(root)]


def _open_one(spec: str, modality: str | None, key: bytes) -> Source:
    kind, path = parse_source_spec(spec)
    if kind not in SOURCE_OPENERS:
        kinds = ", ".join(f"{k}:PATH" for k in SOURCE_OPENERS)
        raise SourceError(f"unknown source kind {kind!r} in {spec!r}; use {kinds} or demo")
    if not path:
        raise SourceError(f"source {spec!r} needs a path: {kind}:PATH")
    root = Path(path).expanduser()
    if not root.exists():
        raise SourceError(f"source path does not exist: {root}")
    if not root.is_dir():
        raise SourceError(f"source path is not a folder: {root}")
    return SOURCE_OPENERS[kind](spec, root.resolve(), modality, key)


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
            from medgrit.adapters.synthetic.demo import default_demo_dir

            root = Path(path) if path else (demo_dir or default_demo_dir())
            out.extend(_demo_sources(root, key))
        else:
            out.append(_open_one(spec, modality, key))
    check_distinct(out)
    return out


def check_distinct(sources: list[Source]) -> None:
    """Refuse sources that overlap: one folder given twice (or through a link), or two
    sources holding a case of the same name in a dataset of the same name, whose ids would
    collide.

    Raises:
        SourceError: naming the sources that overlap.
    """
    roots: dict[str, str] = {}
    for source in sources:
        real = str(Path(source.root).resolve())
        if real in roots:
            raise SourceError(
                f"{escape_name(source.spec)} is the same folder as {escape_name(roots[real])}; "
                "give each source once"
            )
        roots[real] = source.spec
    seen: dict[tuple[str, str], str] = {}
    for source in sources:
        for case in source.cases:
            key = (case.dataset, case.case)
            if key in seen and seen[key] == source.spec:
                raise SourceError(
                    f"{escape_name(source.spec)} lists case {escape_name(case.case)!r} twice; "
                    "give each case once"
                )
            if key in seen:
                raise SourceError(
                    f"{escape_name(seen[key])} and {escape_name(source.spec)} both hold case "
                    f"{escape_name(case.case)!r} of dataset {case.dataset!r} (a copy?); "
                    "give each case once, or name the datasets apart"
                )
            seen[key] = source.spec


def load_nifti_case(ref: CaseRef) -> LoadedCase:
    """Read a NIfTI image/label pair into canonical volumes.

    Raises:
        UnreadableImage: see :class:`medgrit.adapters.sources.nifti.NiftiReader`.
    """
    reader = NiftiReader()
    image = reader.read(ref.image_path, channel=ref.channel)
    labels = reader.read(ref.label_path, as_labels=True)
    intensity = "hu" if ref.modality == "ct" else "percentile"
    return LoadedCase(ref.modality, intensity, volume=image, label_volume=labels)


def _open_dicom(spec: str, root: Path, modality: str | None, key: bytes) -> Source:
    from medgrit.adapters.sources.dicom import open_dicom

    return open_dicom(spec, root, key, modality)


def _open_samed2d(spec: str, root: Path, modality: str | None, key: bytes) -> Source:
    from medgrit.adapters.sources.samed2d import open_samed2d

    return open_samed2d(spec, root, modality)


def _open_images(spec: str, root: Path, modality: str | None, key: bytes) -> Source:
    from medgrit.adapters.sources.image_folder import open_image_folder

    return open_image_folder(spec, root, modality)


SOURCE_OPENERS: dict[str, Callable[[str, Path, str | None, bytes], Source]] = {
    "nnunet": lambda spec, root, modality, key: open_nnunet(spec, root, modality),
    "msd": lambda spec, root, modality, key: open_msd(spec, root, modality),
    "dicom": _open_dicom,
    "samed2d": _open_samed2d,
    "images": _open_images,
}


def _loaders() -> dict[str, Callable[[CaseRef], LoadedCase]]:
    # Imported on use: each format's dependencies load only when a case of it is read.
    from medgrit.adapters.sources.dicom import load_dicom_case
    from medgrit.adapters.sources.image_folder import load_image_folder_case
    from medgrit.adapters.sources.samed2d import load_samed2d_case

    return {
        "nifti": load_nifti_case,
        "dicom": load_dicom_case,
        "samed2d": load_samed2d_case,
        "images": load_image_folder_case,
    }


def load_case(ref: CaseRef) -> LoadedCase:
    """Load one case with the loader its format names.

    Raises:
        UnreadableImage: when the case cannot be read (the pipeline makes it a reject row).
    """
    if ref.format == "nifti":
        return load_nifti_case(ref)
    return _loaders()[ref.format](ref)
