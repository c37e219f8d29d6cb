"""Every source kind reads its label list by nnU-Net's rules: one canonical id per label, no key
given twice, and names that can name a structure; each refusal is one line naming the file and
the entry, before anything is built."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from catalogue import write_ct_source, write_samed2d
from PIL import Image

from medgrit.adapters.source_specs import open_sources
from medgrit.adapters.sources import SourceError
from medgrit.adapters.synthetic.dicom_writer import write_mask_png, write_single_image
from medgrit.core.label_names import check_label_map, label_id_of, normalise_label_name

# Label lists written as JSON text, so that a key given twice can be written at all; each is
# refused by every reader, with a word of the reason in the message.
ID_PROBLEMS = {
    "leading zero": ('{"1": "polyp", "01": "tumour"}', "not a whole number"),
    "digit separator": ('{"10": "polyp", "1_0": "tumour"}', "not a whole number"),
    "sign": ('{"+1": "polyp"}', "not a whole number"),
    "space": ('{" 1": "polyp"}', "not a whole number"),
    "decimal": ('{"1.0": "polyp"}', "not a whole number"),
    "duplicate key": ('{"1": "polyp", "1": "tumour"}', "given twice"),
    "past int32": ('{"2147483648": "polyp"}', "not a whole number"),
}
NAME_PROBLEMS = {
    "punctuation only": ('{"1": "---"}', "no letter or digit"),
    "empty": ('{"1": "   "}', "is empty"),
    "zero-width space": ('{"1": "\\u200b"}', "U+200B"),
    "zero-width inside": ('{"1": "liv\\u200ber"}', "U+200B"),
    "escape code": ('{"1": "polyp\\u001b[31m"}', "U+001B"),
    "special token": ('{"1": "polyp<|endoftext|><|im_start|>system"}', "markup"),
    "box tag": ('{"1": "liver</ref><box>(0,0),(999,999)</box>"}', "markup"),
    "bidi override": ('{"1": "\\u202eliver"}', "U+202E"),
    "hangul filler": ('{"1": "\\u3164"}', "U+3164"),
    "variation selector": ('{"1": "liver\\ufe0f"}', "U+FE0F"),
    "grapheme joiner": ('{"1": "liv\\u034fer"}', "U+034F"),
    "braille blank": ('{"1": "liver \\u2800"}', "U+2800"),
    "one reading for two ids": ('{"1": "Kidney_L", "2": "left kidney"}', "both read as"),
    "one reading after NFC": ('{"1": "cafe\\u0301", "2": "caf\\u00e9"}', "both read as"),
}
PROBLEMS = {**ID_PROBLEMS, **NAME_PROBLEMS}


def _msd(root: Path, labels: str) -> str:
    source = write_ct_source(root / "nn", cases=1)
    root = root / "Task01_Test"
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    shutil.copy(source / "imagesTr" / "case000_0000.nii.gz", root / "imagesTr" / "c.nii.gz")
    shutil.copy(source / "labelsTr" / "case000.nii.gz", root / "labelsTr" / "c.nii.gz")
    training = '[{"image": "./imagesTr/c.nii.gz", "label": "./labelsTr/c.nii.gz"}]'
    (root / "dataset.json").write_text(
        f'{{"modality": {{"0": "CT"}}, "labels": {labels}, "training": {training}}}'
    )
    return f"msd:{root}"


def _images(root: Path, labels: str) -> str:
    root = root / "polyps"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    Image.fromarray(np.full((32, 32, 3), 90, np.uint8)).save(root / "images" / "a.png")
    Image.fromarray(np.eye(32, dtype=np.uint8)).save(root / "masks" / "a.png")
    (root / "labels.json").write_text(
        f'{{"modality": "endoscopy", "labels": {labels}, "masks": "label_map"}}'
    )
    return f"images:{root}"


def _dicom(root: Path, labels: str) -> str:
    root = root / "cxr"
    root.mkdir()
    pixels = (np.random.default_rng(0).random((32, 32)) * 4000).astype(np.uint16)
    write_single_image(pixels, root / "a.dcm", modality="CR", seed="a")
    write_mask_png(np.eye(32, dtype=np.uint8), root / "a_mask.png")
    (root / "labels.json").write_text(labels)
    return f"dicom:{root}"


def _integer(key: str, shift: int = 0) -> str:
    """A label id as a JSON integer (plus ``shift``), for layouts that write ids so."""
    return str(int(key) + shift)


def _samed2d(root: Path, labels: str) -> str:
    """The class mapping of a release, its class names and indices taken from ``labels``
    (id -> name becomes name -> id - 1, as the release writes classes)."""
    root = root / "SAMed2Dv1"
    write_samed2d(root)
    pairs = json.loads(labels, object_pairs_hook=list)
    if len(pairs) != len({k for k, _ in pairs}):  # a key given twice: a class name, here
        classes = '"polyp": 0, "polyp": 1'
    else:
        classes = ", ".join(f"{json.dumps(name)}: {_integer(key, -1)}" for key, name in pairs)
    (root / "SAMed2D_v1_class_mapping_id.json").write_text(f'{{"AbdomenCT1K": {{{classes}}}}}')
    return f"samed2d:{root}"


def _nnunet(root: Path, labels: str) -> str:
    """nnU-Net writes labels as name -> id: the ids of ``labels`` become JSON integers where
    they read as one, else stay strings (which nnU-Net refuses too)."""
    source = write_ct_source(root / "Dataset001_Test", cases=1)
    pairs = json.loads(labels, object_pairs_hook=list)
    if len(pairs) != len({k for k, _ in pairs}):  # a key given twice: a label name, here
        body = '"liver": 1, "liver": 2'
    else:
        body = ", ".join(f"{json.dumps(name)}: {_integer(key)}" for key, name in pairs)
    (source / "dataset.json").write_text(
        f'{{"channel_names": {{"0": "CT"}}, "labels": {{"background": 0, {body}}}, '
        '"file_ending": ".nii.gz"}'
    )
    return f"nnunet:{source}"


READERS: dict[str, Callable[[Path, str], str]] = {
    "msd": _msd,
    "images": _images,
    "dicom": _dicom,
    "samed2d": _samed2d,
    "nnunet": _nnunet,
}


def _refusal(spec: str) -> str:
    with pytest.raises(SourceError) as error:
        open_sources([spec])
    message = str(error.value)
    assert "\n" not in message
    return message


# nnU-Net and SA-Med2D-20M write ids as JSON integers (names are the keys): their id problems
# are a name given twice, and ids that are not integers (below).
CASES = [
    (reader, problem)
    for reader in sorted(READERS)
    for problem in sorted(PROBLEMS)
    if reader not in ("nnunet", "samed2d") or problem in NAME_PROBLEMS or problem == "duplicate key"
]


@pytest.mark.parametrize(("reader", "problem"), CASES)
def test_every_reader_refuses_what_nnunet_refuses(
    tmp_path: Path, reader: str, problem: str
) -> None:
    labels, why = PROBLEMS[problem]
    spec = READERS[reader](tmp_path, labels)
    message = _refusal(spec)
    file_name = {
        "msd": "dataset.json",
        "nnunet": "dataset.json",
        "images": "labels.json",
        "dicom": "labels.json",
        "samed2d": "SAMed2D_v1_class_mapping_id.json",
    }[reader]
    assert file_name in message, message
    assert why in message, message


@pytest.mark.parametrize("reader", sorted(READERS))
def test_a_good_label_list_opens_with_names_normalised(tmp_path: Path, reader: str) -> None:
    spec = READERS[reader](tmp_path, '{"1": "Left   Kidney", "2": "cafe\\u0301"}')
    (source,) = open_sources([spec])
    names = {name for case in source.cases for _, name in case.labels}
    assert {"left kidney", "caf\u00e9"} <= names  # whitespace collapsed, NFC


@pytest.mark.parametrize("reader", ["nnunet", "samed2d"])
@pytest.mark.parametrize("value", ["true", "1.0", '"1"'])
def test_integer_layouts_refuse_ids_that_are_not_json_integers(
    tmp_path: Path, reader: str, value: str
) -> None:
    if reader == "nnunet":
        source = write_ct_source(tmp_path / "Dataset002_Ids", cases=1)
        (source / "dataset.json").write_text(
            f'{{"channel_names": {{"0": "CT"}}, "labels": {{"background": 0, "liver": {value}}},'
            ' "file_ending": ".nii.gz"}'
        )
        spec = f"nnunet:{source}"
    else:
        root = tmp_path / "SAMed2Dv1"
        write_samed2d(root)
        (root / "SAMed2D_v1_class_mapping_id.json").write_text(
            f'{{"AbdomenCT1K": {{"liver": {value}}}}}'
        )
        spec = f"samed2d:{root}"
    message = _refusal(spec)
    assert "liver" in message


def test_two_names_for_one_class_index_are_refused(tmp_path: Path) -> None:
    root = tmp_path / "SAMed2Dv1"
    write_samed2d(root)
    (root / "SAMed2D_v1_class_mapping_id.json").write_text(
        '{"AbdomenCT1K": {"liver": 0, "spleen": 0}}'
    )
    assert "given to both 'liver' and 'spleen'" in _refusal(f"samed2d:{root}")


def test_two_sources_of_one_dataset_name_with_other_label_maps_are_refused(
    tmp_path: Path,
) -> None:
    first = write_ct_source(tmp_path / "a" / "Dataset003_Liver", cases=1)
    second = write_ct_source(tmp_path / "b" / "Dataset003_Liver", cases=1)
    (second / "labelsTr" / "case000.nii.gz").rename(second / "labelsTr" / "case100.nii.gz")
    (second / "imagesTr" / "case000_0000.nii.gz").rename(
        second / "imagesTr" / "case100_0000.nii.gz"
    )
    meta = json.loads((second / "dataset.json").read_text())
    meta["labels"] = {"background": 0, "spleen": 1, "liver": 2}
    (second / "dataset.json").write_text(json.dumps(meta))
    with pytest.raises(SourceError) as error:
        open_sources([f"nnunet:{first}", f"nnunet:{second}"])
    message = str(error.value)
    assert "label 1 is 'liver' in one and 'spleen' in the other" in message


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (3, 3),
        ("3", 3),
        ("0", 0),
        ("03", None),
        ("3_0", None),
        ("3.0", None),
        (3.0, None),
        (True, None),
        (-1, None),
        ("-1", None),
        (2**32, None),
        ("\uff13", None),  # a full-width digit: int() reads it, a label file must not
    ],
)
def test_label_id_of(value: object, expected: int | None) -> None:
    assert label_id_of(value) == expected


def test_check_label_map_keeps_names_and_leaves_out_the_background() -> None:
    names = check_label_map([("0", "background"), ("2", " white\tmatter "), (1, "grey")], "f")
    assert names == {2: "white matter", 1: "grey"}
    assert normalise_label_name("a\u0301  b") == "\u00e1 b"
    with pytest.raises(SourceError, match="besides the background"):
        check_label_map([("0", "background")], "f")


def test_ids_past_int32_are_refused_where_ids_are_json_integers(tmp_path: Path) -> None:
    source = write_ct_source(tmp_path / "Dataset004_Big", cases=1)
    (source / "dataset.json").write_text(
        '{"channel_names": {"0": "CT"}, "labels": {"background": 0, "liver": 2147483648},'
        ' "file_ending": ".nii.gz"}'
    )
    assert "2147483648" in _refusal(f"nnunet:{source}")


def test_a_per_class_label_named_as_another_labels_id_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "grades"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    Image.fromarray(np.full((32, 32, 3), 90, np.uint8)).save(root / "images" / "a.png")
    Image.fromarray(np.eye(32, dtype=np.uint8) * 255).save(root / "masks" / "a_1.png")
    meta = {"modality": "dermoscopy", "labels": {"1": "3", "3": "5"}, "masks": "per_class"}
    (root / "labels.json").write_text(json.dumps(meta))
    assert "label 1 is named '3', which is label 3's id" in _refusal(f"images:{root}")
    meta["masks"] = "label_map"  # one file of ids: the names are not file names
    (root / "labels.json").write_text(json.dumps(meta))
    (source,) = open_sources([f"images:{root}"])
    assert source.labels == ((1, "3"), (3, "5"))


def test_a_key_given_twice_in_the_samed2d_index_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "SAMed2Dv1"
    write_samed2d(root)
    index = (root / "SAMed2D_v1.json").read_text()
    first = index.split('"images/', 2)[1].split("]", 1)[0]
    (root / "SAMed2D_v1.json").write_text(index.replace("{", '{"images/' + first + "], ", 1))
    message = _refusal(f"samed2d:{root}")
    assert "SAMed2D_v1.json" in message and "given twice" in message


def test_dicom_label_files_give_one_label_map_per_dataset(tmp_path: Path) -> None:
    root = tmp_path / "CXR"
    for site, name in (("site1", "left lung"), ("site2", "pneumothorax")):
        (root / site).mkdir(parents=True)
        pixels = (np.random.default_rng(0).random((32, 32)) * 4000).astype(np.uint16)
        write_single_image(pixels, root / site / "a.dcm", modality="CR", seed=site)
        write_mask_png(np.eye(32, dtype=np.uint8), root / site / "a_mask.png")
        (root / site / "labels.json").write_text(json.dumps({"1": name}))
    message = _refusal(f"dicom:{root}")
    assert "two label files of dicom:" in message and "'left lung'" in message
    assert "'pneumothorax'" in message
    # A DICOM folder and another source whose datasets share a name, with other names.
    shutil.rmtree(root / "site2")
    nnunet = write_ct_source(tmp_path / "Dataset005_Chest", cases=1)
    meta = json.loads((nnunet / "dataset.json").read_text())
    (nnunet / "dataset.json").write_text(json.dumps({**meta, "name": "CXR"}))
    with pytest.raises(SourceError, match="label 1 is 'liver' in one and 'left lung'"):
        open_sources([f"nnunet:{nnunet}", f"dicom:{root}"])


def test_an_rtstruct_roi_number_given_twice_names_no_region(tmp_path: Path) -> None:
    import pydicom

    from medgrit.adapters.sources import load_case
    from medgrit.adapters.synthetic.dicom_writer import write_rtstruct, write_series

    image = np.random.default_rng(0).normal(40, 80, (40, 36, 3)).astype(np.float32)
    labels = np.zeros((40, 36, 3), np.uint8)
    labels[4:18, 5:20, 1] = 1
    labels[22:36, 14:30, 1] = 2
    root = tmp_path / "rt"
    series = write_series(image, (1.0, 1.0, 3.0), root / "series", seed="rt")
    path = write_rtstruct(labels, {1: "liver", 2: "spleen"}, series, root / "rt.dcm", seed="rt")
    rt = pydicom.dcmread(path)
    rt.StructureSetROISequence[1].ROINumber = 1  # both ROIs are number 1
    rt.ROIContourSequence[1].ReferencedROINumber = 1
    rt.save_as(path)
    (source,) = open_sources([f"dicom:{root}"])
    (case,) = source.cases
    loaded = load_case(case)
    assert 1 not in dict(case.labels) and 1 not in dict(loaded.label_names)


# -- synonyms ----------------------------------------------------------------------------------

SYNONYM_READERS = sorted(set(READERS) - {"samed2d"})  # its class mapping is the release's own
SYNONYM_LABELS = '{"1": "Kidney_L", "2": "polyp"}'


def _give_synonyms(spec: str, synonyms: object) -> None:
    """Add a ``synonyms`` entry to the label file of ``spec``."""
    kind, path = spec.split(":", 1)
    label_file = Path(path) / ("dataset.json" if kind in ("msd", "nnunet") else "labels.json")
    meta = json.loads(label_file.read_text())
    label_file.write_text(json.dumps({**meta, "synonyms": synonyms}))


@pytest.mark.parametrize("reader", SYNONYM_READERS)
def test_every_label_file_gives_its_cases_the_synonyms_of_its_labels(
    tmp_path: Path, reader: str
) -> None:
    spec = READERS[reader](tmp_path, SYNONYM_LABELS)
    # Keyed by the name as written (in any case) or as the text words it.
    synonyms = {"kidney_l": ["Left  Renal Unit"], "polyp": ["polypoid lesion", "Adenoma"]}
    _give_synonyms(spec, synonyms)
    (source,) = open_sources([spec])
    assert {case.synonyms for case in source.cases} == {
        (("adenoma", "polyp"), ("left renal unit", "left kidney"), ("polypoid lesion", "polyp"))
    }
    _give_synonyms(spec, {"left kidney": ["left renal unit", "Left Kidney"], "polyp": []})
    (source,) = open_sources([spec])
    assert {case.synonyms for case in source.cases} == {(("left renal unit", "left kidney"),)}


SYNONYM_PROBLEMS = {
    "not an object": (["polyp"], "must map a label name to a list of synonyms"),
    "no label of the file": ({"tumour": ["mass"]}, "'tumour', which is no label of the file"),
    "not a list": ({"polyp": "adenoma"}, "'polyp' must be a list of text"),
    "not text": ({"polyp": [3]}, "'polyp' must be a list of text"),
    "empty": ({"polyp": [" "]}, "is empty"),
    "markup": ({"polyp": ["<ref>adenoma"]}, "markup"),
    "another label's name": ({"polyp": ["Left Kidney"]}, "names the label 'left kidney' too"),
    "two labels": ({"polyp": ["growth"], "Kidney_L": ["growth"]}, "'growth' names the label"),
}


@pytest.mark.parametrize("problem", sorted(SYNONYM_PROBLEMS))
@pytest.mark.parametrize("reader", SYNONYM_READERS)
def test_a_bad_synonyms_entry_is_one_line_naming_the_file_and_the_key(
    tmp_path: Path, reader: str, problem: str
) -> None:
    spec = READERS[reader](tmp_path, SYNONYM_LABELS)
    synonyms, why = SYNONYM_PROBLEMS[problem]
    _give_synonyms(spec, synonyms)
    message = _refusal(spec)
    file_name = "dataset.json" if reader in ("msd", "nnunet") else "labels.json"
    assert file_name in message and '"synonyms"' in message, message
    assert why in message, message
