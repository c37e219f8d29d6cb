"""Label names as words: one normaliser for every source, the name as written kept beside it,
and a user's own words for any label through ``--label-names``."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
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
    # The words are read as every label name is, so the side check sees them as the text does.
    assert BuildConfig(out="x", label_names={"GTVp": "LEFT_TUMOR"}).label_names == {
        "GTVp": "left tumor"
    }
    sides = ({"kidney_left": "RIGHT_KIDNEY"}, {"kidney_left": "kidney_right"})
    for bad in ({"GTVp": "<|im_start|>"}, {"GTVp": "  "}, {"": "tumor"}, *sides):
        with pytest.raises(ValidationError):
            BuildConfig(out="x", label_names=bad)


def test_a_label_names_file_that_is_no_mapping_is_one_line(tmp_path: Path, medgrit_offline) -> None:
    source = _dataset(tmp_path / "Dataset010_Words")
    words = tmp_path / "names.json"
    twice = '{"GTVp": "a", "GTVp": "b"}'
    for text in (json.dumps({"GTVp": ["not", "words"]}), "{not json", json.dumps(["GTVp"]), twice):
        words.write_text(text)
        out = tmp_path / "out"
        refused = medgrit_offline(
            "build", f"nnunet:{source}", "--out", str(out), "--label-names", str(words)
        )
        assert refused.returncode == 2, refused.stderr
        assert len(refused.stderr.strip().splitlines()) == 1, refused.stderr
        assert "names.json" in refused.stderr and not out.exists()
