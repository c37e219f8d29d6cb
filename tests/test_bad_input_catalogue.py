"""The bad input catalogue: one build over four sources (nnU-Net, image folder, DICOM, SA-Med2D)
that mix good cases with one case of every record-level problem the README lists.

The build must complete; every good case is kept; every bad case is exactly one reject row with
its reason; and the README documents every reason that appears.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from catalogue import write_dicom, write_image_folder, write_nnunet, write_samed2d

from medgrit.core.ids import pseudonymise_case

pytestmark = pytest.mark.slow
README = Path(__file__).resolve().parents[1] / "README.md"


def _rows(out: Path, table: str) -> list[dict]:
    return [
        r
        for p in sorted((out / table).glob("part-*.parquet"))
        for r in pq.read_table(p).to_pylist()
    ]


@pytest.fixture(scope="module")
def catalogue(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("catalogue")
    return {
        "root": root,
        "nnunet": write_nnunet(root / "Dataset070_Catalogue"),
        "images": write_image_folder(root / "Kvasir_catalogue"),
        "dicom": write_dicom(root / "CXR_catalogue"),
        "samed2d": write_samed2d(root / "samed"),
    }


@pytest.mark.parametrize("max_images", [None, 500], ids=["all", "max-images"])
def test_every_bad_record_is_one_reject_and_every_good_one_is_kept(
    catalogue: dict, medgrit, tmp_path: Path, max_images: int | None
) -> None:
    root = catalogue["root"]
    out = tmp_path / "out"
    args = [
        f"nnunet:{root / 'Dataset070_Catalogue'}",
        f"images:{root / 'Kvasir_catalogue'}",
        f"dicom:{root / 'CXR_catalogue'}",
        f"samed2d:{root / 'samed'}",
        "--out",
        str(out),
        "--cases-per-shard",
        "100",  # good and bad cases share shards
    ]
    if max_images:
        args += ["--max-images", str(max_images)]
    result = medgrit("build", *args)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    images, rejects = _rows(out, "images"), _rows(out, "rejects")
    key = Path(os.environ["MEDGRIT_KEY_FILE"]).read_bytes()

    for dataset, expected in (
        ("Dataset070_Catalogue", catalogue["nnunet"]),
        ("Kvasir_catalogue", catalogue["images"]),
    ):
        kept_ids = {r["case_id"] for r in images if r["dataset"] == dataset}
        for case in expected:
            assert (pseudonymise_case(dataset, case.case, key) in kept_ids) == case.kept, case
            got = sorted(r["reason"] for r in rejects if r["source"].split("#")[0] == case.source)
            assert got == sorted(case.reasons), case
        assert len(kept_ids) == sum(c.kept for c in expected)

    dicom_rejects = sorted(r["reason"] for r in rejects if r["dataset"] == "CXR_catalogue")
    assert dicom_rejects == catalogue["dicom"]
    assert Counter(r["modality"] for r in images if r["dataset"] == "CXR_catalogue") == {
        "xray": 2,
        "ct": 1,
    }

    samed = [r for r in rejects if r["dataset"] == "AbdomenCT1K"]
    for case in catalogue["samed2d"]:
        got = sorted(r["reason"] for r in samed if r["source"] == case.source)
        assert got == sorted(case.reasons), case
    assert sum(r["dataset"] == "AbdomenCT1K" for r in images) == 5
    assert len(rejects) == sum(
        len(c.reasons) for g in ("nnunet", "images", "samed2d") for c in catalogue[g]
    ) + len(catalogue["dicom"])

    # Reject rows name files, never the folders that hold them.
    assert not [r["detail"] for r in rejects if str(root) in r["detail"]]

    # Each image has its conversation; nothing half-written; the dataset validates.
    assert len(_rows(out, "conversations")) == len(images)
    assert not list(out.rglob("*.tmp-*"))
    check = medgrit("validate", str(out))
    assert check.returncode == 0, check.stdout[-2000:]
    manifest = json.loads((out / "dataset.json").read_text())
    assert manifest["status"] == "complete"
    assert manifest["totals"]["rejects_by_reason"] == dict(
        sorted(Counter(r["reason"] for r in rejects).items())
    )


def _reasons_in_code() -> set[str]:
    """Every reject reason the code can write: its one home, ``medgrit.core.vocab`` (whose
    test in ``test_architecture`` finds every reason the code gives there)."""
    from medgrit.core.vocab import REJECT_REASONS

    return set(REJECT_REASONS)


def test_readme_documents_every_reject_reason(catalogue: dict) -> None:
    reasons = {
        reason
        for group in ("nnunet", "images", "samed2d")
        for case in catalogue[group]
        for reason in case.reasons
    } | set(catalogue["dicom"])
    in_code = _reasons_in_code()
    assert reasons <= in_code and {"unexpected_error", "blank_image", "too_large"} <= in_code
    reasons |= in_code
    table = README.read_text()
    missing = sorted(r for r in reasons if f"`{r}`" not in table)
    assert not missing, f"README's reject table lacks {missing}"
