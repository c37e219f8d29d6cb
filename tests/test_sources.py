"""Source layouts: nnU-Net v2 raw and MSD dataset.json parsing, and the errors a user must fix."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from catalogue import EIGHT_MODALITIES

from medgrit.adapters.source_specs import open_sources
from medgrit.adapters.sources import SourceError
from medgrit.adapters.sources.nnunet import modality_from_channel, open_msd, open_nnunet


def _nnunet(root: Path, meta: dict, cases: list[str]) -> Path:
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    (root / "dataset.json").write_text(json.dumps(meta))
    for case in cases:
        (root / "imagesTr" / f"{case}_0000.nii.gz").write_bytes(b"")
        (root / "labelsTr" / f"{case}.nii.gz").write_bytes(b"")
    return root


def test_nnunet_layout_lists_cases_in_order_with_readable_labels(tmp_path: Path) -> None:
    meta = {
        "channel_names": {"0": "CT"},
        "labels": {"background": 0, "kidney_left": 1, "liver": 2, "whole": [1, 2]},
        "file_ending": ".nii.gz",
    }
    root = _nnunet(tmp_path / "Dataset007_Abd", meta, ["b_002", "a_001"])
    source = open_nnunet("nnunet:x", root)
    assert source.modality == "ct"
    assert source.dataset == "Dataset007_Abd"
    assert source.labels == ((1, "left kidney"), (2, "liver"), (3, "whole"))
    assert source.cases[0].label_groups == ((1, (1,)), (2, (2,)), (3, (1, 2)))
    assert [c.case for c in source.cases] == ["a_001", "b_002"]
    assert source.cases[0].image.endswith("imagesTr/a_001_0000.nii.gz")


def test_msd_layout_reads_training_list(tmp_path: Path) -> None:
    root = tmp_path / "Task03_Liver"
    root.mkdir()
    meta = {
        "name": "Liver",
        "modality": {"0": "CT"},
        "labels": {"0": "background", "1": "liver", "2": "cancer"},
        "training": [
            {"image": f"./imagesTr/liver_{i}.nii.gz", "label": f"./labelsTr/liver_{i}.nii.gz"}
            for i in (1, 0)
        ],
    }
    (root / "dataset.json").write_text(json.dumps(meta))
    source = open_msd("msd:x", root)
    assert source.dataset == "Liver"
    assert [c.case for c in source.cases] == ["liver_0", "liver_1"]
    assert dict(source.labels) == {1: "liver", 2: "cancer"}


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("CT", "ct"),
        ("T2", "mr"),
        ("FLAIR", "mr"),
        ("ADC", "mr"),
        ("MRI", "mr"),
        ("PET", "pet"),
        ("zscore", None),
        ("noNorm", None),
    ],
)
def test_modality_from_channel(name: str, expected: str | None) -> None:
    assert modality_from_channel(name) == expected


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "malformed dataset.json"),
        ("[1, 2]", "expected a JSON object"),
        (json.dumps({"channel_names": {"0": "CT"}}), "'labels' must map name -> id"),
        (json.dumps({"channel_names": {"0": "CT"}, "labels": {"a": "x"}}), "label 'a' has id"),
        (
            json.dumps({"channel_names": {"0": "zscore"}, "labels": {"a": 1}}),
            "cannot tell the modality",
        ),
    ],
)
def test_malformed_nnunet_dataset_json_is_one_clear_error(
    tmp_path: Path, content: str, message: str
) -> None:
    root = _nnunet(tmp_path / "D", {}, [])
    (root / "dataset.json").write_text(content)
    with pytest.raises(SourceError, match=message) as info:
        open_nnunet("nnunet:x", root)
    assert "\n" not in str(info.value)


def test_modality_override_resolves_unknown_channel(tmp_path: Path) -> None:
    root = _nnunet(tmp_path / "D", {"channel_names": {"0": "zscore"}, "labels": {"a": 1}}, ["c"])
    assert open_nnunet("nnunet:x", root, modality="mr").modality == "mr"


def test_every_source_kind_has_a_reader_of_its_format() -> None:
    from medgrit.adapters.sources.registry import READERS
    from medgrit.schemas.sources import SOURCE_KINDS

    assert list(READERS) == list(SOURCE_KINDS)
    for kind, entry in SOURCE_KINDS.items():
        reader = READERS[kind]
        assert reader.format == entry.format, kind
        for method in ("open_source", "read_case", "estimate_images"):
            assert callable(getattr(reader(), method)), (kind, method)


def test_open_sources_user_errors(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="does not exist"):
        open_sources([f"nnunet:{tmp_path / 'nope'}"])
    with pytest.raises(SourceError, match="unknown source kind 'zip'"):
        open_sources(["zip:/data"])
    with pytest.raises(SourceError, match="needs a path"):
        open_sources(["msd:"])
    with pytest.raises(SourceError, match=r"no dataset\.json"):
        open_sources([f"msd:{tmp_path}"])


def test_demo_expands_to_all_eight_modalities(demo_dir: Path) -> None:
    sources = open_sources(["demo"], demo_dir=demo_dir)
    assert [(s.kind, s.modality) for s in sources[:2]] == [("msd", "mr"), ("nnunet", "ct")]
    modalities = {case.modality for s in sources for case in s.cases}
    assert modalities == EIGHT_MODALITIES
    ct_labels = {name for _, name in sources[1].labels}
    assert {"body", "lungs", "liver", "spleen", "left kidney", "right kidney", "spine"} == ct_labels
    synthetic = {
        s.dataset for s in sources if s.dataset not in ("MNI152BrainMR", "RetinaPhotograph")
    }
    assert all("Synthetic" in name for name in synthetic)
