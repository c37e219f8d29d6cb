"""End-to-end builds of the DICOM, SA-Med2D-20M and image-folder sources through the CLI, and the
privacy guarantee: no identifying DICOM value reaches the outputs, the logs or Prefect."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pydicom
import pytest
from PIL import Image

from medgrit.adapters.synthetic.demo import CT_LABELS, make_ct_phantom
from medgrit.adapters.synthetic.dicom_writer import (
    write_mask_png,
    write_seg,
    write_series,
    write_single_image,
)
from medgrit.core.phantoms import XRAY_LABELS, chest_xray_phantom
from medgrit.schemas.tables import TABLES

pytestmark = pytest.mark.slow

PHI = {
    "PatientName": "Xqvzor^Zebkulonn",
    "PatientID": "PHI-7319-XQ",
    "PatientBirthDate": "19230517",
    "StudyDate": "20190822",
    "InstitutionName": "Saint Wqxrtzy Infirmary",
    "ReferringPhysicianName": "Vrmqlx^Doctor",
    "AccessionNumber": "ACC99182736",
}
PHI_STRINGS = [
    "Xqvzor",
    "Zebkulonn",
    "PHI-7319-XQ",
    "19230517",
    "20190822",
    "Wqxrtzy",
    "Vrmqlx",
    "ACC99182736",
]


def _rows(out: Path, table: str) -> list[dict]:
    return [
        row
        for part in sorted((out / table).glob("part-*.parquet"))
        for row in pq.read_table(part).to_pylist()
    ]


@pytest.fixture(scope="module")
def dicom_folder(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    """A CT series with SEG, a chest radiograph with a PNG mask, a truncated file and a SEG
    whose series is missing: all of one distinctive synthetic patient."""
    root = tmp_path_factory.mktemp("dicom") / "HospitalExport"
    image, labels = make_ct_phantom(seed=5, shape=(64, 64, 12))
    names = {v: k for k, v in CT_LABELS.items() if v}
    series = write_series(
        image.astype(np.float32),
        (6.0, 6.0, 10.0),
        root / "ct",
        modality="CT",
        patient=PHI,
        seed="phi-ct",
    )
    write_seg(labels, names, series, root / "ct" / "seg.dcm", seed="phi-seg")
    other = write_series(
        image.astype(np.float32),
        (6.0, 6.0, 10.0),
        root / "gone",
        modality="CT",
        patient=PHI,
        seed="phi-gone",
    )
    write_seg(labels, names, other, root / "orphan_seg.dcm", seed="phi-orphan")
    for path in other:
        path.unlink()
    xray, xray_labels = chest_xray_phantom(seed=9)
    write_single_image(
        xray,
        root / "cr" / "chest.dcm",
        modality="CR",
        photometric="MONOCHROME1",
        patient=PHI,
        seed="phi-cr",
    )
    write_mask_png(xray_labels, root / "cr" / "chest_mask.png")
    (root / "cr" / "labels.json").write_text(
        json.dumps({str(k): v for k, v in XRAY_LABELS.items()})
    )
    truncated = root / "cr" / "broken.dcm"
    data = (root / "cr" / "chest.dcm").read_bytes()
    truncated.write_bytes(data[: len(data) // 3])
    write_mask_png(xray_labels, root / "cr" / "broken_mask.png")
    uids = set()
    for path in root.rglob("*.dcm"):
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except Exception:  # noqa: BLE001 - the truncated file
            continue
        for keyword in (
            "StudyInstanceUID",
            "SeriesInstanceUID",
            "SOPInstanceUID",
            "FrameOfReferenceUID",
        ):
            if keyword in ds:
                uids.add(str(ds.data_element(keyword).value))
    return root, sorted(uids)


@pytest.fixture(scope="module")
def dicom_build(dicom_folder, medgrit, tmp_path_factory: pytest.TempPathFactory):
    root, _ = dicom_folder
    out = tmp_path_factory.mktemp("out") / "dicom"
    result = medgrit("build", f"dicom:{root}", "--out", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    return out, result


def test_dicom_build_reads_series_seg_and_single_images(dicom_build) -> None:
    out, _ = dicom_build
    images = _rows(out, "images")
    assert {i["modality"] for i in images} == {"ct", "xray"}
    assert {i["plane"] for i in images if i["modality"] == "xray"} == {"2d"}
    labels = {r["label"] for r in _rows(out, "regions")}
    assert {"liver", "left kidney", "right lung", "heart"} <= labels
    reasons = {r["reason"] for r in _rows(out, "rejects") if r["stage"] == "load"}
    assert "referenced_series_missing" in reasons
    assert reasons & {"dicom_unreadable", "missing_pixel_data"}


def test_no_identifying_value_reaches_outputs_logs_or_prefect(
    dicom_folder, dicom_build, prefect_server: str
) -> None:
    _, uids = dicom_folder
    out, result = dicom_build
    needles = PHI_STRINGS + uids
    assert uids, "the fixture wrote UIDs to look for"
    texts = {"stdout": result.stdout, "stderr": result.stderr}
    for path in out.rglob("*"):
        if path.is_file():
            texts[str(path)] = path.read_bytes().decode("latin-1")
    for table in TABLES:
        texts[f"{table} rows"] = repr(_rows(out, table))

    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    async def server_texts() -> str:
        async with get_client() as client:
            artifacts = await client.read_artifacts()
            logs = await client.read_logs()
            runs = await client.read_flow_runs()
        return (
            repr([a.data for a in artifacts])
            + repr([log.message for log in logs])
            + repr([r.parameters for r in runs])
        )

    with temporary_settings(updates={PREFECT_API_URL: prefect_server}):
        texts["prefect server"] = asyncio.run(server_texts())
    for where, text in texts.items():
        for needle in needles:
            assert needle.lower() not in text.lower(), f"{needle!r} found in {where}"


def _samed2d_release(root: Path) -> Path:
    yy, xx = np.mgrid[:64, :64]
    index = {}
    for case in ("Case_00001", "Case_00002"):
        for z in (10, 11, 12):
            stem = f"ct_00--AbdomenCT1K--{case}--z_{z:04d}"
            Image.fromarray(((xx + yy + z) % 256).astype(np.uint8)).save(
                _mk(root / "images" / f"{stem}.png")
            )
            liver = ((yy - 30) ** 2 + (xx - 20) ** 2 < 100).astype(np.uint8) * 255
            kidney = ((yy - 40) ** 2 + (xx - 48) ** 2 < 36).astype(np.uint8) * 255
            masks = []
            for class_id, mask in ((0, liver), (1, kidney)):
                name = f"masks/{stem}--{class_id:04d}_000.png"
                Image.fromarray(mask).save(_mk(root / name))
                masks.append(name)
            index[f"images/{stem}.png"] = masks
    (root / "SAMed2D_v1.json").write_text(json.dumps(index))
    mapping = {"AbdomenCT1K": {"liver": 0, "kidney_left": 1}}
    (root / "SAMed2D_v1_class_mapping_id.json").write_text(json.dumps(mapping))
    return root


def _mk(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def test_samed2d_release_builds(medgrit, tmp_path: Path) -> None:
    root = _samed2d_release(tmp_path / "SAMed2Dv1")
    out = tmp_path / "out"
    result = medgrit("build", f"samed2d:{root}", "--out", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    images = _rows(out, "images")
    assert len(images) == 6 and {i["plane"] for i in images} == {"axial"}
    assert {i["dataset"] for i in images} == {"AbdomenCT1K"}
    regions = _rows(out, "regions")
    assert {r["label"] for r in regions} == {"liver", "left kidney"}
    # The left kidney sits on the image's right, as the release's radiological slices show it.
    assert all(r["bbox"][0] > 32 for r in regions if r["label"] == "left kidney")
    splits = {}
    for image in images:
        splits.setdefault(image["case_id"], set()).add(image["split"])
    assert len(splits) == 2 and all(len(s) == 1 for s in splits.values())


def test_image_folder_with_a_real_fundus_photograph_builds(medgrit, tmp_path: Path) -> None:
    from skimage import data

    from medgrit.core.phantoms import optic_disc_mask

    root = tmp_path / "Fundus"
    retina = np.asarray(Image.fromarray(data.retina()).resize((256, 256)))
    Image.fromarray(retina).save(_mk(root / "images" / "eye_01.jpg"), quality=95)
    Image.fromarray(optic_disc_mask(retina).astype(np.uint8)).save(
        _mk(root / "masks" / "eye_01.png")
    )
    Image.fromarray(retina[:, ::-1].copy()).save(_mk(root / "images" / "eye_02.png"))
    (root / "labels.json").write_text(
        json.dumps({"modality": "fundus", "labels": {"1": "optic disc"}, "masks": "label_map"})
    )
    out = tmp_path / "out"
    result = medgrit("build", f"images:{root}", "--out", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    images = _rows(out, "images")
    assert [i["modality"] for i in images] == ["fundus"]
    conversation = _rows(out, "conversations")[0]
    assert "fundus image" in conversation["qa"][0]["answer"]
    rejects = _rows(out, "rejects")
    assert [r["reason"] for r in rejects if r["stage"] == "load"] == ["mask_missing"]
