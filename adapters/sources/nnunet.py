"""The nnU-Net v2 raw and Medical Segmentation Decathlon layouts of NIfTI sources.

Opening a source reads its ``dataset.json`` and lists its cases; it does not read any image.
Problems a user must fix (a missing folder, a malformed dataset.json) raise :class:`SourceError`
with a one-line message. Problems with single cases (a missing image file) surface later as
reject rows.

nnU-Net v2: ``dataset.json`` with ``channel_names`` {"0": "CT"}, ``labels`` {name: id},
``file_ending``; images ``imagesTr/{case}_{XXXX}{ending}``, labels ``labelsTr/{case}{ending}``.
MSD: ``dataset.json`` with ``modality`` {"0": "CT"}, ``labels`` {id: name} and a ``training`` list
of {"image": "./imagesTr/x.nii.gz", "label": "./labelsTr/x.nii.gz"}; multi-channel images are 4D.
Either may give ``synonyms`` {label name: [synonym, ...]}
(``medgrit.adapters.sources.label_files.read_synonyms``).
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from medgrit.adapters.sources import nifti
from medgrit.adapters.sources.label_files import SYNONYMS, read_label_file, read_synonyms
from medgrit.adapters.sources.nifti import NiftiCase
from medgrit.core.cases import Source, SourceError
from medgrit.core.fsnames import escape_name
from medgrit.core.label_names import check_label_map, checked_dataset_name
from medgrit.core.text import readable_labels

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
    data = read_label_file(path)
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


def _labels(pairs: list[tuple[object, object]], path: Path) -> tuple[tuple[int, str], ...]:
    """(id, name as written) pairs of a label list, by id, background left out.

    Raises:
        SourceError: what :func:`medgrit.core.label_names.check_label_map` refuses.
    """
    names = check_label_map(pairs, f"malformed dataset.json at {escape_name(str(path))}")
    return tuple(sorted(names.items()))


def _dataset_name(meta: dict, root: Path, path: Path) -> str:
    """The dataset's name: its ``name`` in dataset.json, else the folder's name."""
    name = meta.get("name") or root.name
    if not isinstance(name, str):
        raise SourceError(f"malformed dataset.json at {path}: 'name' must be text")
    return checked_dataset_name(name, escape_name(str(path)))


def _nifti_case(
    spec: str,
    dataset: str,
    case: str,
    image: Path,
    label: Path,
    modality: str,
    written: tuple[tuple[int, str], ...],
    labels: tuple[tuple[int, str], ...],
    synonyms: tuple[tuple[str, str], ...],
) -> NiftiCase:
    return NiftiCase(
        source=spec,
        dataset=dataset,
        case=case,
        image=str(image),
        label=str(label),
        modality=modality,
        labels=labels,
        written_labels=written,
        synonyms=synonyms,
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
            pairs.append((value, name))
    mod = _modality(
        meta.get("channel_names", meta.get("modality")), meta_path, "channel_names", modality
    )
    ending = meta.get("file_ending", ".nii.gz")
    if ending not in NIFTI_ENDINGS:
        raise SourceError(f"file_ending {ending!r} in {meta_path} is not supported; use NIfTI")
    labels_dir = root / "labelsTr"
    if not labels_dir.is_dir():
        raise SourceError(f"no labelsTr folder in {root}: not an nnU-Net raw dataset")
    dataset = _dataset_name(meta, root, meta_path)
    written = _labels(pairs, meta_path)
    labels = readable_labels(written)
    synonyms = read_synonyms(meta.get(SYNONYMS), written, escape_name(str(meta_path)))
    cases = []
    for label_file in sorted(labels_dir.glob(f"*{ending}")):
        case = label_file.name[: -len(ending)]
        image = root / "imagesTr" / f"{case}_0000{ending}"
        cases.append(
            _nifti_case(spec, dataset, case, image, label_file, mod, written, labels, synonyms)
        )
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
    mod = _modality(meta.get("modality"), meta_path, "modality", modality)
    dataset = _dataset_name(meta, root, meta_path)
    written = _labels(list(raw_labels.items()), meta_path)
    labels = readable_labels(written)
    synonyms = read_synonyms(meta.get(SYNONYMS), written, escape_name(str(meta_path)))
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
        cases.append(_nifti_case(spec, dataset, case, image, label, mod, written, labels, synonyms))
    cases.sort(key=lambda c: c.case)
    return Source(spec, "msd", str(root), dataset, mod, labels, tuple(cases))


class NnunetReader:
    """The reader of ``nnunet:PATH`` sources: an nnU-Net v2 raw dataset's NIfTI cases."""

    format: ClassVar[str] = NiftiCase.format
    open_source = staticmethod(open_nnunet)
    read_case = staticmethod(nifti.read_case)
    estimate_images = staticmethod(nifti.estimate_images)


class MsdReader(NnunetReader):
    """The reader of ``msd:PATH`` sources: a Decathlon task's NIfTI cases."""

    open_source = staticmethod(open_msd)
