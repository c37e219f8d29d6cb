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

Region-based labels (nnU-Net's BraTS layout): ``"labels": {"background": 0, "whole tumor":
[1, 2, 3], "tumor core": [2, 3], "enhancing tumor": [3]}`` with ``"regions_class_order": [1, 2,
3]``. Once any label is a list, every label but the background is a region: the stored values
it lists (a plain id ``v`` is the region ``[v]``), whose union is its pixels; regions may
overlap and nest. A region's label id is the entry of ``regions_class_order`` at its place
among the labels, or without that list its place counted from 1 (``Case.label_groups``).

Channels: a dataset of two or more channels (``channel_names`` or ``modality`` {"0": "T1",
"1": "FLAIR"}) lists one case per channel: ``{case}_{XXXX}`` (nnU-Net's channel file; the
channel of a Decathlon 4D image), whose patient is ``{case}`` so every channel of a case lands
in one split. Each channel's modality is the one its name gives, else the dataset's; an MR
channel's name, as written, is its ``Case.sequence``. A single-channel dataset lists ``{case}``
alone, with no sequence.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import ClassVar, NamedTuple

from medgrit.adapters.sources import nifti
from medgrit.adapters.sources.label_files import SYNONYMS, read_label_file, read_synonyms
from medgrit.adapters.sources.nifti import NiftiCase
from medgrit.core.cases import Source, SourceError
from medgrit.core.fsnames import escape_name
from medgrit.core.label_names import (
    check_label_map,
    checked_dataset_name,
    label_id_of,
    label_name_problem,
)
from medgrit.core.text import readable_label_name, readable_labels

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


class _Labels(NamedTuple):
    """A dataset's labels as its cases carry them (see ``medgrit.core.cases.Case``)."""

    written: tuple[tuple[int, str], ...]
    readable: tuple[tuple[int, str], ...]
    synonyms: tuple[tuple[str, str], ...]
    groups: tuple[tuple[int, tuple[int, ...]], ...]


def _stored_values(name: str, value: object, where: str) -> tuple[int, ...]:
    """The stored values a region-based label covers: a plain id or a list of ids.

    Raises:
        SourceError: an empty list, an entry that is not a canonical id, the background (0)
            or a value given twice.
    """
    entries = value if isinstance(value, list) else [value]
    values = [label_id_of(v) for v in entries]
    if not values or any(v is None or v == 0 for v in values) or len(set(values)) < len(values):
        raise SourceError(
            f"{where}: region {name!r} must list distinct label values 1..2**31-1 (such as "
            f"[2, 3]), not {value!r}"
        )
    return tuple(sorted(v for v in values if v is not None))


def _region_ids(order: object, count: int, where: str) -> list[int]:
    """The label id of each of ``count`` regions: ``regions_class_order`` when given, else
    1..count.

    Raises:
        SourceError: a ``regions_class_order`` that is not one distinct non-zero canonical id
            per region.
    """
    if order is None:
        return list(range(1, count + 1))
    ids = [label_id_of(v) for v in order] if isinstance(order, list) else []
    if len(ids) != count or any(i is None or i == 0 for i in ids) or len(set(ids)) < count:
        raise SourceError(
            f"{where}: 'regions_class_order' must give one distinct label id 1..2**31-1 per "
            f"region ({count} regions, in the order of 'labels'), not {order!r}"
        )
    return [i for i in ids if i is not None]


def _label_pairs(
    raw_labels: dict, order: object, where: str
) -> tuple[list[tuple[object, object]], tuple[tuple[int, tuple[int, ...]], ...]]:
    """(id, name) pairs of an nnU-Net label list and, when any label is a list, the regions'
    stored values by id (see the module docstring).

    Raises:
        SourceError: a label whose id is neither an integer nor a list, or a malformed region
            or ``regions_class_order``.
    """
    for name, value in raw_labels.items():
        if isinstance(value, bool) or not isinstance(value, int | list):
            raise SourceError(f"{where}: label {name!r} has id {value!r}")
    # nnU-Net's "ignore" label marks voxels nobody annotated: no structure, and no region of
    # ``regions_class_order``. Its voxels are values no label names (``unknown_label``).
    raw_labels = {n: v for n, v in raw_labels.items() if n.strip().casefold() != "ignore"}
    if not any(isinstance(v, list) for v in raw_labels.values()):
        return [(value, name) for name, value in raw_labels.items()], ()
    background = [(0, n) for n, v in raw_labels.items() if v == 0]
    regions = [(n, v) for n, v in raw_labels.items() if v != 0]
    ids = _region_ids(order, len(regions), where)
    groups: dict[tuple[int, ...], str] = {}
    pairs: list[tuple[object, object]] = list(background)
    by_id = []
    for (name, value), region_id in zip(regions, ids, strict=True):
        values = _stored_values(name, value, where)
        if values in groups:
            raise SourceError(
                f"{where}: regions {groups[values]!r} and {name!r} cover the same values "
                f"{list(values)}; keep one"
            )
        groups[values] = name
        pairs.append((region_id, name))
        by_id.append((region_id, values))
    return pairs, tuple(sorted(by_id))


class _Channel(NamedTuple):
    """One channel of a multi-channel dataset: its index, modality and MR sequence."""

    index: int
    modality: str
    sequence: str


# nnU-Net's normalisation schemes, which ``channel_names`` may give in place of a name.
_SCHEMES = frozenset({"ct", "nonorm", "zscore", "rescale_to_0_1", "rgb_to_0_1"})


def _channels(channels: object, modality: str, where: str) -> tuple[_Channel, ...]:
    """The channels of a dataset of two or more, by index (empty for one channel or none).

    Raises:
        SourceError: a key that is no channel number or a name that is not usable text.
    """
    if not isinstance(channels, dict) or len(channels) < 2:
        return ()
    out = []
    for key, name in channels.items():
        index = label_id_of(key)
        if index is None:
            raise SourceError(f'{where}: channel {key!r} must be a channel number ("0", "1")')
        if not isinstance(name, str):
            raise SourceError(f"{where}: channel {key!r} needs a name as text, not {name!r}")
        written = name.strip()
        own = modality_from_channel(written) or modality
        sequence = written if own == "mr" and written.lower() not in _SCHEMES else ""
        problem = label_name_problem(sequence) if sequence else None
        if problem:
            raise SourceError(f"{where}: the name of channel {key!r} ({name!r}) {problem}")
        out.append(_Channel(index, own, sequence))
    return tuple(sorted(out))


def _per_channel(
    case: NiftiCase, channels: tuple[_Channel, ...], image_of: dict[int, Path] | None = None
) -> list[NiftiCase]:
    """One case per channel (``{case}_{XXXX}``; the case itself for a single channel): the
    channel's file in ``image_of``, else the channel of the case's 4D image."""
    if not channels:
        return [case]
    # A channel named like one of the labels ("GTVp") names no sequence: the text would call
    # the image by a structure's name.
    label_words = {name.casefold() for _, name in case.labels}
    named = {c.index: readable_label_name(c.sequence).casefold() in label_words for c in channels}
    return [
        replace(
            case,
            case=f"{case.case}_{c.index:04d}",
            patient=case.case,
            modality=c.modality,
            sequence="" if named[c.index] else c.sequence,
            **({"image": str(image_of[c.index])} if image_of is not None else {"channel": c.index}),
        )
        for c in channels
    ]


def _dataset_name(meta: dict, root: Path, path: Path) -> str:
    """The dataset's name: its ``name`` in dataset.json, else the folder's name."""
    name = meta.get("name") or root.name
    if not isinstance(name, str):
        raise SourceError(f"malformed dataset.json at {path}: 'name' must be text")
    return checked_dataset_name(name, escape_name(str(path)))


def _nifti_case(
    spec: str, dataset: str, case: str, image: Path, label: Path, modality: str, labels: _Labels
) -> NiftiCase:
    return NiftiCase(
        source=spec,
        dataset=dataset,
        case=case,
        image=str(image),
        label=str(label),
        modality=modality,
        labels=labels.readable,
        written_labels=labels.written,
        synonyms=labels.synonyms,
        label_groups=labels.groups,
    )


def _read_labels(
    pairs: list[tuple[object, object]],
    groups: tuple[tuple[int, tuple[int, ...]], ...],
    meta: dict,
    path: Path,
) -> _Labels:
    written = _labels(pairs, path)
    synonyms = read_synonyms(meta.get(SYNONYMS), written, escape_name(str(path)))
    return _Labels(written, readable_labels(written), synonyms, groups)


def open_nnunet(spec: str, root: Path, modality: str | None = None, key: bytes = b"") -> Source:
    """Open an nnU-Net v2 raw dataset folder (see the module docstring).

    Raises:
        SourceError: a missing folder or dataset.json, or a dataset.json a user must fix.
    """
    meta_path = root / "dataset.json"
    meta = _load_json(meta_path)
    where = f"malformed dataset.json at {escape_name(str(meta_path))}"
    raw_labels = meta.get("labels")
    if not isinstance(raw_labels, dict) or not raw_labels:
        raise SourceError(f"malformed dataset.json at {meta_path}: 'labels' must map name -> id")
    pairs, groups = _label_pairs(raw_labels, meta.get("regions_class_order"), where)
    channel_names = meta.get("channel_names", meta.get("modality"))
    mod = _modality(channel_names, meta_path, "channel_names", modality)
    ending = meta.get("file_ending", ".nii.gz")
    if ending not in NIFTI_ENDINGS:
        raise SourceError(f"file_ending {ending!r} in {meta_path} is not supported; use NIfTI")
    labels_dir = root / "labelsTr"
    if not labels_dir.is_dir():
        raise SourceError(f"no labelsTr folder in {root}: not an nnU-Net raw dataset")
    dataset = _dataset_name(meta, root, meta_path)
    labels = _read_labels(pairs, groups, meta, meta_path)
    channels = _channels(channel_names, mod, where)
    cases = []
    for label_file in sorted(labels_dir.glob(f"*{ending}")):
        case = label_file.name[: -len(ending)]
        image = root / "imagesTr" / f"{case}_0000{ending}"
        files = {c.index: root / "imagesTr" / f"{case}_{c.index:04d}{ending}" for c in channels}
        found = _nifti_case(spec, dataset, case, image, label_file, mod, labels)
        cases.extend(_per_channel(found, channels, files))
    return Source(spec, "nnunet", str(root), dataset, mod, labels.readable, tuple(cases))


def open_msd(spec: str, root: Path, modality: str | None = None, key: bytes = b"") -> Source:
    """Open a Medical Segmentation Decathlon task folder (see the module docstring).

    Raises:
        SourceError: a missing dataset.json, or one a user must fix.
    """
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
    labels = _read_labels(list(raw_labels.items()), (), meta, meta_path)
    channels = _channels(
        meta.get("modality"), mod, f"malformed dataset.json at {escape_name(str(meta_path))}"
    )
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
        cases.extend(
            _per_channel(_nifti_case(spec, dataset, case, image, label, mod, labels), channels)
        )
    cases.sort(key=lambda c: c.case)
    return Source(spec, "msd", str(root), dataset, mod, labels.readable, tuple(cases))


class NnunetReader:
    """The reader of ``nnunet:PATH`` sources: an nnU-Net v2 raw dataset's NIfTI cases."""

    format: ClassVar[str] = NiftiCase.format
    open_source = staticmethod(open_nnunet)
    read_case = staticmethod(nifti.read_case)
    estimate_images = staticmethod(nifti.estimate_images)


class MsdReader(NnunetReader):
    """The reader of ``msd:PATH`` sources: a Decathlon task's NIfTI cases."""

    open_source = staticmethod(open_msd)
