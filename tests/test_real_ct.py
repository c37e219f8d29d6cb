"""A real head CT (Debian's invesalius-examples, Cranium.inv3) through the DICOM path.

Cranium.inv3 is an InVesalius project: a tar archive holding ``matrix.dat`` (int16 HU voxels,
shape (slices, rows, columns) in DICOM image order), its spacing in ``main.plist``, and
threshold masks (``mask_0``: bone, ``mask_1``: soft tissue and bone) of shape + 1 per axis whose
first plane, row and column are flags. The tests write it as a DICOM CT series with a SEG, then
read it back and build a dataset from it.
"""

from __future__ import annotations

import plistlib
import tarfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from medgrit.adapters.sources.dicom import open_dicom, read_case
from medgrit.adapters.synthetic.dicom_writer import write_seg, write_series

CRANIUM = Path("/usr/share/doc/invesalius-examples/examples/Cranium.inv3")


def _member(archive: tarfile.TarFile, name: str) -> bytes:
    member = next(m for m in archive.getmembers() if m.name.endswith("/" + name))
    handle = archive.extractfile(member)
    assert handle is not None
    return handle.read()


@pytest.fixture(scope="module")
def cranium() -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]]:
    """(HU volume, labels 1 soft tissue / 2 bone, spacing), canonical RAS+ order."""
    if not CRANIUM.is_file():
        pytest.fail("Debian's invesalius-examples is missing: apt-get install invesalius-examples")
    with tarfile.open(CRANIUM) as archive:
        meta = plistlib.loads(_member(archive, "main.plist"))
        shape = tuple(meta["matrix"]["shape"])
        hu = np.frombuffer(_member(archive, "matrix.dat"), dtype=np.int16).reshape(shape)
        masks = [
            np.frombuffer(_member(archive, f"mask_{i}.dat"), dtype=np.uint8).reshape(
                tuple(s + 1 for s in shape)
            )[1:, 1:, 1:]
            for i in (0, 1)
        ]
    labels = np.zeros(shape, np.uint8)
    labels[masks[1] > 127] = 1
    labels[masks[0] > 127] = 2
    # DICOM image order: columns run toward the patient's left, rows toward posterior.
    to_ras = lambda a: np.ascontiguousarray(a.transpose(2, 1, 0)[::-1, ::-1, :])  # noqa: E731
    sx, sy, sz = (float(v) for v in meta["spacing"])
    return to_ras(hu).astype(np.float32), to_ras(labels), (sx, sy, sz)


@pytest.fixture(scope="module")
def cranium_dicom(cranium, tmp_path_factory: pytest.TempPathFactory) -> Path:
    hu, labels, spacing = cranium
    root = tmp_path_factory.mktemp("cranium") / "Cranium"
    files = write_series(hu, spacing, root / "ct", modality="CT", seed="cranium")
    write_seg(
        labels, {1: "soft tissue", 2: "bone"}, files, root / "ct" / "seg.dcm", seed="cranium-seg"
    )
    return root


def test_cranium_is_a_real_head_ct(cranium) -> None:
    hu, labels, spacing = cranium
    assert hu.shape == (256, 256, 108) and spacing[2] == 1.5
    assert hu.min() == -1024 and hu.max() > 2000  # air to dense bone and teeth
    assert np.median(hu[labels == 2]) > 500 and abs(np.median(hu[labels == 1])) < 100


def test_cranium_survives_the_dicom_round_trip(cranium, cranium_dicom: Path) -> None:
    hu, labels, spacing = cranium
    source = open_dicom(f"dicom:{cranium_dicom}", cranium_dicom, key=b"k" * 32)
    assert [c.modality for c in source.cases] == ["ct"]
    loaded = read_case(source.cases[0])
    assert loaded.intensity == "hu"
    np.testing.assert_allclose(loaded.volume.data, hu, atol=0.5)
    np.testing.assert_array_equal(loaded.label_volume.data, labels)
    assert loaded.volume.spacing == pytest.approx(spacing)


@pytest.mark.slow
def test_cranium_builds_with_skull_regions(cranium_dicom: Path, medgrit, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = medgrit(
        "build",
        f"dicom:{cranium_dicom}",
        "--out",
        str(out),
        "--max-images",
        "6",
        "--plane",
        "coronal",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    images = pq.read_table(out / "images" / "part-00000.parquet").to_pylist()
    regions = pq.read_table(out / "regions" / "part-00000.parquet").to_pylist()
    assert len(images) == 6 and {i["plane"] for i in images} == {"coronal"}
    bone = [r for r in regions if r["label"] == "bone" and r["instance"] == 0]
    assert len(bone) >= 4  # slices through the face's soft tissue alone may hold none
    widest = max(r["bbox"][2] - r["bbox"][0] for r in bone)
    assert widest > 0.5 * images[0]["width"]  # the skull spans most of the head's width
