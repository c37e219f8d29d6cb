"""The nnU-Net v2 raw and Medical Segmentation Decathlon layouts of NIfTI sources.

Opening a source reads its ``dataset.json`` and lists its cases; it does not read any image.
Problems a user must fix (a missing folder, a malformed dataset.json) raise :class:`SourceError`
with a one-line message. Problems with single cases (a missing image file) surface later as
reject rows.

nnU-Net v2: ``dataset.json`` with ``channel_names`` {"0": "CT"}, ``labels`` {name: id},
``file_ending``; images ``imagesTr/{case}_{XXXX}{ending}``, labels ``labelsTr/{case}{ending}``.
MSD: ``dataset.json`` with ``modality`` {"0": "CT"}, ``labels`` {id: name} and a ``training`` list
of {"image": "./imagesTr/x.nii.gz", "label": "./labelsTr/x.nii.gz"}; multi-channel images are 4D.
"""

from __future__ import annotations

import json
from pathlib import Path

from medgrit.adapters.sources.nifti import NiftiCase
from medgrit.core.cases import Source, SourceError
from medgrit.core.fsnames import escape_name
from medgrit.core.text import readable_label_name

NIFTI_ENDINGS = (".nii.gz", ".nii")


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
) -> NiftiCase:
    return NiftiCase(
        source=spec,
        dataset=dataset,
        case=case,
        image=str(image),
        label=str(label),
        modality=modality,
        labels=labels,
    )


def open_nnunet(spec: str, root: Path, modality: str | None = None, key: bytes = b"") -> Source:
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


def open_msd(spec: str, root: Path, modality: str | None = None, key: bytes = b"") -> Source:
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
