"""Label names as words: one normaliser for every source, the name as written kept beside it,
and a user's own words for any label through ``--label-names``."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pyarrow.parquet as pq
import pytest
from pydantic import ValidationError

from medgrit.adapters.sources import SourceError
from medgrit.adapters.sources.nnunet import open_nnunet
from medgrit.core.label_names import renamed_sources
from medgrit.schemas.config import BuildConfig

LABELS = {"background": 0, "kidney_left": 1, "GTVp": 2, "vertebrae_L1": 3}


def _dataset(root: Path, cases: int = 1) -> Path:
    """A tiny CT dataset in nnU-Net layout: three labels side by side on every slice."""
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    meta = {"channel_names": {"0": "CT"}, "labels": LABELS, "file_ending": ".nii.gz"}
    (root / "dataset.json").write_text(json.dumps(meta))
    rng = np.random.default_rng(3)
    for n in range(cases):
        image = rng.normal(40, 30, (48, 48, 3)).astype(np.int16)
        labels = np.zeros((48, 48, 3), np.uint8)
        labels[4:16, 4:16] = 1
        labels[20:34, 18:30] = 2
        labels[36:46, 30:44] = 3
        nib.save(nib.Nifti1Image(image, np.eye(4)), root / "imagesTr" / f"c{n}_0000.nii.gz")
        nib.save(nib.Nifti1Image(labels, np.eye(4)), root / "labelsTr" / f"c{n}.nii.gz")
    return root


def test_names_read_as_words_and_a_users_words_replace_them(tmp_path: Path) -> None:
    source = open_nnunet("nnunet:x", _dataset(tmp_path / "Dataset010_Words"))
    assert source.labels == ((1, "left kidney"), (2, "GTVp"), (3, "L1 vertebra"))
    assert source.cases[0].written_labels == ((1, "kidney_left"), (2, "GTVp"), (3, "vertebrae_L1"))

    (renamed,) = renamed_sources([source], {"GTVp": "primary tumor volume"})
    case = renamed.cases[0]
    assert case.labels == ((1, "left kidney"), (2, "primary tumor volume"), (3, "L1 vertebra"))
    assert case.written_labels == source.cases[0].written_labels
    assert renamed.labels == case.labels

    with pytest.raises(SourceError, match="'GTVn' is the written name of no label"):
        renamed_sources([source], {"GTVn": "nodal tumor volume"})
    with pytest.raises(SourceError, match="would read as 'left kidney'"):
        renamed_sources([source], {"GTVp": "left kidney"})


def test_a_users_words_follow_the_label_name_rules() -> None:
    config = BuildConfig(out="x", label_names={" GTVp ": "primary  tumor"})
    assert config.label_names == {"GTVp": "primary tumor"}
    for bad in ({"GTVp": "<|im_start|>"}, {"GTVp": "  "}, {"": "tumor"}):
        with pytest.raises(ValidationError):
            BuildConfig(out="x", label_names=bad)


def test_a_build_keeps_the_written_name_and_uses_the_users_words(tmp_path: Path, medgrit) -> None:
    source = _dataset(tmp_path / "Dataset010_Words")
    words = tmp_path / "names.json"
    words.write_text(json.dumps({"GTVp": "primary tumor volume"}))
    out = tmp_path / "out"

    done = medgrit("build", f"nnunet:{source}", "--out", str(out), "--label-names", str(words))
    assert done.returncode == 0, done.stderr

    regions = pq.read_table(out / "regions").to_pylist()
    pairs = {(r["label"], r["source_label"]) for r in regions}
    assert pairs == {
        ("left kidney", "kidney_left"),
        ("primary tumor volume", "GTVp"),
        ("L1 vertebra", "vertebrae_L1"),
    }
    assert {r["laterality"] for r in regions if r["label"] == "left kidney"} == {"left"}
    images = pq.read_table(out / "images", columns=["sequence"]).to_pylist()
    assert images and all(row["sequence"] is None for row in images)
    (recorded,) = json.loads((out / "dataset.json").read_text())["sources"]
    maps = recorded["label_maps"]["Dataset010_Words"]
    words_of = recorded["label_words"]["Dataset010_Words"]
    assert (maps["2"], words_of["2"]) == ("GTVp", "primary tumor volume")
    assert (maps["3"], words_of["3"]) == ("vertebrae_L1", "L1 vertebra")
    assert medgrit("validate", str(out)).returncode == 0

    words.write_text(json.dumps({"GTVp": ["not", "words"]}))
    refused = medgrit("build", f"nnunet:{source}", "--out", str(out), "--label-names", str(words))
    assert refused.returncode == 2
    assert len(refused.stderr.strip().splitlines()) == 1
    assert "maps each name" in refused.stderr
