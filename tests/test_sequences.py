"""MR sequences: the words the text names them by, the sequence words true of each, the turns
the verifier keeps, the template and LLM text of images with and without one, and ``--channels``.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from typer.testing import CliRunner

from medgrit.adapters.llm.generator import LLMGenerator
from medgrit.adapters.planning import SourceListing
from medgrit.adapters.source_specs import channel_index, open_sources, select_channels
from medgrit.adapters.sources.nifti import NiftiCase
from medgrit.adapters.store.bookkeeping import content_config
from medgrit.adapters.text.templates import TemplateGenerator, view_variables
from medgrit.cli import app
from medgrit.core.cases import Source, SourceError
from medgrit.core.generation import QA, ImageFacts, RegionFacts
from medgrit.core.sequences import sequence_phrase, sequence_true_words
from medgrit.core.terms import SEQUENCE_WORDS
from medgrit.core.verify import verify_qa
from medgrit.schemas.config import BuildConfig, LLMConfig

# The phrase each source name is written as, by hand.
PHRASES = {
    "T1": "T1-weighted",
    "T1w": "T1-weighted",
    "T1Gd": "contrast-enhanced T1-weighted",
    "t1ce": "contrast-enhanced T1-weighted",
    "t1c": "contrast-enhanced T1-weighted",
    "T1post": "contrast-enhanced T1-weighted",
    "T1-Gd": "contrast-enhanced T1-weighted",
    "T2": "T2-weighted",
    "T2w": "T2-weighted",
    "FLAIR": "FLAIR",
    "T2-FLAIR": "FLAIR",
    "flair": "FLAIR",
    "ADC": "ADC",
    "DWI": "diffusion-weighted",
    "hbv": "diffusion-weighted",
    "PD": "proton density",
    "SWI": "susceptibility-weighted",
    "MPRAGE": "MPRAGE",  # unknown, written as it is
    "": "",
    "CT": "",  # a modality, not a sequence
    "zscore": "",  # nnU-Net's normalisation scheme
    "T2 axial": "",  # would state a plane
    "venous phase": "",
    "bad<name>": "",  # markup
    "R": "",  # one letter
}

# Sequence words true of each sequence (a subset check: these at least).
TRUE = {
    "T1Gd": {"t1", "t1 weighted", "t1w", "contrast enhanced", "post contrast", "postcontrast",
             "gadolinium"},
    "T1": {"t1", "t1 weighted", "t1w"},
    "T1pre": {"t1", "t1 weighted", "non contrast", "noncontrast", "unenhanced"},
    "T2w": {"t2", "t2 weighted", "t2w"},
    "FLAIR": {"flair"},
    "ADC": {"adc"},
    "hbv": {"dwi", "diffusion weighted"},
    "PD": {"proton density"},
    "SWI": {"swi", "susceptibility weighted"},
}  # fmt: skip
# ... and some that are not.
FALSE = {
    "T1Gd": {"non contrast", "unenhanced", "t2", "flair"},
    # A plain T1 says nothing of contrast: neither kind of contrast word holds.
    "T1": {"contrast enhanced", "gadolinium", "t2", "non contrast", "unenhanced"},
    "T2*": {"t2", "t2 weighted"},  # T2* is a sequence of its own
    "T2w": {"t1", "flair", "contrast enhanced"},
    "FLAIR": {"t2 weighted", "t1", "adc"},
}

EDEMA = RegionFacts("e", "edema", 1, 0, (100, 100, 300, 300), 900, "upper left", "small")
TUMOR = RegionFacts("t", "enhancing tumor", 2, 0, (500, 500, 700, 700), 900, "lower right", "small")
REGIONS = {"e": EDEMA, "t": TUMOR}
VOCABULARY = ("edema", "enhancing tumor")


def _image(sequence: str, image_id: str = "img", plane: str = "axial") -> ImageFacts:
    return ImageFacts(image_id, "mr", plane, 64, 64, sequence)


def _vg(question: str, region: RegionFacts = EDEMA) -> QA:
    x0, y0, x1, y1 = region.bbox_1000
    answer = f"<ref>{region.label}</ref><box>({x0},{y0}),({x1},{y1})</box>"
    return QA("VG", question, answer, (region.region_id,))


def _verdict(question: str, sequence: str | None, region: RegionFacts = EDEMA) -> str | None:
    image = None if sequence is None else _image(sequence)
    return verify_qa(_vg(question, region), REGIONS, image=image, vocabulary=VOCABULARY)


def test_sequence_names_give_their_phrase_and_true_words() -> None:
    assert {name: sequence_phrase(name) for name in PHRASES} == PHRASES
    for name, words in TRUE.items():
        assert words <= sequence_true_words(name), name
    for name, words in FALSE.items():
        assert not words & sequence_true_words(name), name
    assert sequence_true_words("MPRAGE") == sequence_true_words("") == frozenset()
    assert all(set(sequence_true_words(name)) <= set(SEQUENCE_WORDS) for name in PHRASES)


# The phrase of each known sequence in a turn, checked on an image of each: it holds only of
# its own sequence, and "T1-weighted" of a contrast-enhanced T1 image too.
KNOWN = ("T1", "T1Gd", "T2w", "FLAIR", "ADC", "hbv", "PD", "SWI", "STIR")


def test_each_phrase_holds_of_its_own_sequence_only() -> None:
    for said in KNOWN:
        question = f"Where is the edema in this {sequence_phrase(said)} MRI image?"
        for shown in KNOWN:
            holds = said == shown or (said, shown) == ("T1", "T1Gd")
            expected = None if holds else "unknown_sequence"
            assert _verdict(question, shown) == expected, (said, shown)
        for unknown in ("", "MPRAGE", None):  # none recorded, unknown, no image facts
            assert _verdict(question, unknown) == "unknown_sequence", (said, unknown)


@pytest.mark.parametrize(
    ("question", "region", "passes_on"),
    [
        ("Where is the enhancing tumor in this T2-weighted MRI slice?", TUMOR, {"T2w"}),
        ("Where is the enhancing tumor in this contrast-enhanced T1-weighted MRI slice?", TUMOR,
         {"T1Gd"}),
        ("Where is the enhancing tumor?", TUMOR, {"", "T1Gd", "T2w", "FLAIR"}),
        ("Where is the edema in this contrast-enhanced image?", EDEMA, {"T1Gd"}),
        ("Where is the edema in this T1 post-contrast image?", EDEMA, {"T1Gd"}),
        ("Where is the edema in this T1 contrast-enhanced image?", EDEMA, {"T1Gd"}),
        ("Where is the edema on this T1ce image?", EDEMA, {"T1Gd"}),
        ("Where is the edema on this non-contrast T1 image?", EDEMA, set()),
        ("Where is the edema on this T2-FLAIR image?", EDEMA, {"FLAIR"}),
        ("Where is the edema? This is not a FLAIR image.", EDEMA, {"T1Gd", "T2w"}),
        ("Where is the edema in this MPRAGE MRI image?", EDEMA, {"", "T1Gd", "T2w", "FLAIR"}),
        ("Where is the edema with contrast enhancement?", EDEMA, set()),  # appearance
    ],
)  # fmt: skip
def test_sequence_words_in_turns(question: str, region: RegionFacts, passes_on: set) -> None:
    for sequence in ("", "T1Gd", "T2w", "FLAIR"):
        verdict = _verdict(question, sequence, region)
        assert (verdict is None) == (sequence in passes_on), (sequence, verdict)


def test_template_text_names_the_sequence_and_is_unchanged_without_one() -> None:
    assert view_variables("mr", "axial") == {
        "modality": "MRI", "view": "axial MRI", "frame": "slice",
        "plane_phrase": " in the axial plane",
    }  # fmt: skip
    assert view_variables("mr", "2d", "FLAIR") == {
        "modality": "FLAIR MRI", "view": "FLAIR MRI", "frame": "image", "plane_phrase": "",
    }  # fmt: skip
    assert view_variables("mr", "axial", "T2w")["view"] == "axial T2-weighted MRI"
    assert view_variables("mr", "axial", "zscore") == view_variables("mr", "axial")
    generator = TemplateGenerator(seed=3)
    regions = [EDEMA, TUMOR]
    named = 0
    texts: list[str] = []
    for k in range(24):
        plain = generator.generate(_image("", f"img{k}", "axial" if k % 2 else "2d"), regions)
        for sequence, phrase in (("FLAIR", "FLAIR"), ("t1ce", "contrast-enhanced T1-weighted")):
            image = _image(sequence, f"img{k}", "axial" if k % 2 else "2d")
            turns = generator.generate(image, regions)
            for with_sequence, without in zip(turns, plain, strict=True):
                text = f"{with_sequence.question} {with_sequence.answer}"
                named += f"{phrase} MRI" in text
                texts.append(text)
                # "a FLAIR MRI", "an MRI": the article follows the first word
                for article, plain_article in (("a ", "an "), ("A ", "An "), ("", "")):
                    text = text.replace(f"{article}{phrase} MRI", f"{plain_article}MRI")
                assert text == f"{without.question} {without.answer}"
                assert verify_qa(with_sequence, REGIONS, image=image, vocabulary=VOCABULARY) is None
    assert named > 10
    assert any("This is a FLAIR MRI image." in text for text in texts)
    assert any("In this axial FLAIR MRI slice," in text for text in texts)
    assert any("A contrast-enhanced T1-weighted MRI image in the axial plane" in t for t in texts)


def test_llm_facts_and_system_prompt_give_a_sequence_only_where_there_is_one(
    tmp_path: Path,
) -> None:
    config = LLMConfig(model="m", base_url="http://127.0.0.1:9", response_format="json_schema")
    generator = LLMGenerator(config, "k", tmp_path)
    plain = generator._item(_image(""), [EDEMA, TUMOR])
    flair = generator._item(_image("T1Gd"), [EDEMA, TUMOR])
    facts = json.loads(flair.facts_json)
    assert list(facts)[:4] == ["modality", "view", "sequence", "regions"]
    assert (facts["modality"], facts["view"]) == ("MRI", "axial MRI")
    assert facts["sequence"] == "contrast-enhanced T1-weighted"
    assert "sequence" not in json.loads(plain.facts_json)
    assert plain.facts_json == flair.facts_json.replace(
        ',"sequence":"contrast-enhanced T1-weighted"', ""
    )
    system_plain = generator.request_for(plain, 0).messages[0]["content"]
    system_sequence = generator.request_for(flair, 0).messages[0]["content"]
    assert system_plain == generator.system_prompt and "Sequence" not in system_plain
    added = [line for line in system_sequence.splitlines() if line not in system_plain]
    assert len(added) == 1 and added[0].startswith("- Sequence: name it only as")


def _nnunet(root: Path, cases: int = 2) -> Path:
    """A BraTS-like nnU-Net folder: four MR channels per case, 8x8x2 volumes."""
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    meta = {
        "channel_names": {"0": "FLAIR", "1": "T1w", "2": "t1gd", "3": "T2w"},
        "labels": {"background": 0, "edema": 1},
        "file_ending": ".nii.gz",
        "numTraining": cases,
    }
    (root / "dataset.json").write_text(json.dumps(meta))
    label = np.zeros((8, 8, 2), np.uint8)
    label[2:5, 2:5, :] = 1
    for c in range(cases):
        nib.save(nib.Nifti1Image(label, np.eye(4)), root / "labelsTr" / f"BraTS_{c:03d}.nii.gz")
        for i in range(4):
            pixels = np.full((8, 8, 2), i, np.float32)
            path = root / "imagesTr" / f"BraTS_{c:03d}_{i:04d}.nii.gz"
            nib.save(nib.Nifti1Image(pixels, np.eye(4)), path)
    return root


def _msd_case(case: str, channel: int, sequence: str) -> NiftiCase:
    return NiftiCase(
        source="msd:/data/Task01_BrainTumour",
        dataset="BrainTumour",
        case=f"{case}_{channel:04d}",
        modality="mr",
        patient=case,
        sequence=sequence,
        image=f"/data/Task01_BrainTumour/imagesTr/{case}.nii.gz",
        label=f"/data/Task01_BrainTumour/labelsTr/{case}.nii.gz",
        channel=channel,
    )


def test_channels_select_cases_of_multi_channel_sources(tmp_path: Path) -> None:
    spec = f"nnunet:{_nnunet(tmp_path / 'Dataset001_BraTS')}"
    (every,) = open_sources([spec])
    assert [(c.case, c.sequence, channel_index(c)) for c in every.cases[:4]] == [
        ("BraTS_000_0000", "FLAIR", 0),
        ("BraTS_000_0001", "T1w", 1),
        ("BraTS_000_0002", "t1gd", 2),
        ("BraTS_000_0003", "T2w", 3),
    ]
    (chosen,) = open_sources([spec], channels=["flair", "3"])
    assert [c.case for c in chosen.cases] == [
        "BraTS_000_0000", "BraTS_000_0003", "BraTS_001_0000", "BraTS_001_0003",
    ]  # fmt: skip
    with pytest.raises(SourceError) as bad:
        open_sources([spec], channels=["FLAIR", "PD"])
    message = str(bad.value)
    assert "'PD'" in message and "0 FLAIR, 1 T1w, 2 t1gd, 3 T2w" in message
    assert "\n" not in message

    # MSD cases keep a channel of their 4D image; a single-channel source is kept whole.
    msd_cases = tuple(_msd_case("BRATS_001", i, s) for i, s in enumerate(("FLAIR", "T1w", "t1gd")))
    root = "/data/Task01_BrainTumour"
    msd = Source(f"msd:{root}", "msd", root, "BrainTumour", "mr", (), msd_cases)
    ct_case = NiftiCase(source="nnunet:/ct", dataset="Liver", case="liver_0", modality="ct",
                        image="/ct/imagesTr/liver_0_0000.nii.gz", label="/ct/l.nii.gz")  # fmt: skip
    ct = Source("nnunet:/ct", "nnunet", "/ct", "Liver", "ct", (), (ct_case,))
    assert channel_index(msd.cases[2]) == 2 and channel_index(ct_case) == 0
    kept_msd, kept_ct = select_channels([msd, ct], ["T1GD"])
    assert [c.case for c in kept_msd.cases] == ["BRATS_001_0002"] and kept_ct == ct
    with pytest.raises(SourceError, match="keeps no case of msd:/data/Task01_BrainTumour, wh"):
        select_channels([every, msd], ["T2w"])  # the MSD task has no T2w
    (kept,) = select_channels([every], ["T1GD"])
    assert {c.sequence for c in kept.cases} == {"t1gd"}
    (kept,) = select_channels([every], ["T1ce"])  # another name of the same sequence
    assert {c.sequence for c in kept.cases} == {"t1gd"}
    with pytest.raises(SourceError, match="no source gives several channels"):
        select_channels([ct], ["0"])


def test_channels_setting_is_recorded_only_when_given_and_keys_listings() -> None:
    every = BuildConfig(out="/tmp/x")
    some = BuildConfig.model_validate({"out": "/tmp/x", "channels": [" FLAIR", "0"]})
    assert some.channels == ["0", "FLAIR"]  # a set, recorded one way
    assert "channels" not in every.model_dump(mode="json")
    assert some.model_dump(mode="json")["channels"] == ["0", "FLAIR"]
    assert content_config(every.model_dump(mode="json")) != content_config(
        some.model_dump(mode="json")
    )
    listing = SourceListing(some, b"k", [])
    assert listing.sources_for(some, b"k") == [] and listing.sources_for(every, b"k") is None
    with pytest.raises(ValueError, match=r"e\.g\. FLAIR,T1Gd"):
        BuildConfig(out="/tmp/x", channels=["FLAIR", " "])


def test_cli_takes_channels(tmp_path: Path) -> None:
    runner = CliRunner()
    shown = runner.invoke(app, ["build", "--help"], env={"COLUMNS": "200"})
    assert shown.exit_code == 0 and "--channels" in shown.output
    key = ["--key-file", str(tmp_path / "key")]
    out = tmp_path / "out"
    empty = runner.invoke(app, ["build", "--channels", ",", "--out", str(out), *key])
    assert empty.exit_code == 2 and "channels: give channel names or indices" in empty.output
    spec = f"nnunet:{_nnunet(tmp_path / 'Dataset001_BraTS', cases=1)}"
    wrong = runner.invoke(app, ["build", spec, "--channels", "PD", "--out", str(out), *key])
    assert wrong.exit_code == 2 and "no source has a channel 'PD'" in wrong.output
    assert not out.exists() and not (tmp_path / "key").exists()
