"""``medgrit evaluate``: BiRD's Med-GRIT scores on prediction files whose scores are known."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from medgrit.adapters.evaluation.captions import CaptionScorer
from medgrit.adapters.evaluation.predictions import (
    Prediction,
    PredictionFileError,
    read_predictions,
)
from medgrit.adapters.evaluation.report import score_task
from medgrit.core.metrics import (
    box_iou,
    clean_response,
    count_found,
    matched_ious,
    official_mean,
    predicted_boxes,
    present_mean,
    reference_boxes,
    roc_correct,
)


def box(x1: int, y1: int, x2: int, y2: int) -> str:
    return f"<box>({x1},{y1}),({x2},{y2})</box>"


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def line(modality: str, annotation: str, response: str, n: int = 0, **extra: str) -> dict:
    return {
        "id": f"{modality}_00--Dataset--case{n}--z_{n:04d}",
        "image": f"{modality}_00/case{n}.png",
        "question": "?",
        "annotation": annotation,
        "response": response,
        **extra,
    }


def scored(tmp_path: Path, task: str, rows: list[dict], scorer=None):
    preds = read_predictions(write_jsonl(tmp_path / "p.jsonl", rows))
    return score_task(task, preds, scorer)


@pytest.fixture(scope="module")
def captions() -> Iterator[CaptionScorer]:
    """One real pycocoevalcap scorer (one METEOR Java process) for the module."""
    with CaptionScorer() as scorer:
        yield scorer


# --- clean-up -------------------------------------------------------------------------------


def test_clean_up_cuts_at_im_end_and_keeps_the_first_inner_line() -> None:
    assert clean_response("Left kidney.<|im_end|>\nAssistant: more") == "Left kidney."
    assert clean_response("intro\nthe liver\nrest\n") == "the liver"
    assert clean_response("  Lesion<|endoftext|><|endoftext|> ") == "Lesion"
    assert clean_response("<|im_end|>\nspleen") == "spleen"


# --- VG -------------------------------------------------------------------------------------


def test_perfect_boxes_score_recall_one_and_empty_answers_zero(tmp_path: Path) -> None:
    ref = "<ref>liver</ref>" + box(10, 20, 300, 400)
    perfect = scored(tmp_path, "VG", [line("ct", ref, ref, 0), line("mr", ref, ref, 1)])
    assert perfect.per_modality["ct"]["recall@0.5"] == 1.0
    assert perfect.per_modality["ct"]["hungarian_mean_iou"] == 1.0
    empty = scored(tmp_path, "VG", [line("ct", ref, "", 0)])
    assert empty.per_modality["ct"] == {
        "recall@0.5": 0.0,
        "hungarian_acc@0.25": 0.0,
        "hungarian_acc@0.5": 0.0,
        "hungarian_acc@0.75": 0.0,
        "hungarian_mean_iou": 0.0,
    }


def test_one_pixel_decides_iou_around_one_half() -> None:
    ref = reference_boxes(box(0, 0, 300, 100))
    # Shifted by d: IoU = (300 - d) / (300 + d): d=99 -> 0.5038, 100 -> 0.5, 101 -> 0.4963.
    for d, expected, found in ((99, 201 / 399, 1), (100, 0.5, 0), (101, 199 / 401, 0)):
        pred = predicted_boxes(box(d, 0, 300 + d, 100))
        assert box_iou(ref, pred)[0, 0] == pytest.approx(expected)
        assert count_found(ref, pred) == found
    # Inside the reference: IoU = h / 100.
    square = reference_boxes(box(0, 0, 100, 100))
    assert count_found(square, predicted_boxes(box(0, 0, 100, 51)))
    assert not count_found(square, predicted_boxes(box(0, 0, 100, 50)))


def test_bare_coordinates_are_read_when_the_answer_has_no_box_tags() -> None:
    pred = predicted_boxes("The liver is at (10,20),(300,400).")
    assert pred.tolist() == [[10, 20, 300, 400]]
    # With tags present, the bare pattern is not used.
    assert len(predicted_boxes(box(1, 1, 5, 5) + " and (10,20),(300,400)")) == 1


def test_any_predicted_box_may_find_a_reference(tmp_path: Path) -> None:
    ann = box(0, 0, 100, 100) + box(500, 500, 600, 600)
    resp = box(700, 700, 800, 800) + box(0, 0, 100, 100) + box(501, 500, 600, 600)
    report = scored(tmp_path, "VG", [line("ct", ann, resp)])
    assert report.per_modality["ct"]["recall@0.5"] == 1.0


def test_recall_is_per_box_and_references_without_boxes_are_skipped(tmp_path: Path) -> None:
    rows = [
        line("ct", box(0, 0, 100, 100) + box(200, 200, 300, 300), box(0, 0, 100, 100), 0),
        line("ct", box(0, 0, 100, 100), box(0, 0, 100, 100), 1),
        line("ct", "no box here", box(0, 0, 10, 10), 2),
        line("fundus", "no box either", "", 3),
    ]
    report = scored(tmp_path, "VG", rows)
    assert report.per_modality["ct"]["recall@0.5"] == pytest.approx(2 / 3)  # per box, not 3/4
    assert report.samples == {"ct": 2}
    assert report.skipped == 2
    assert "fundus" not in report.per_modality


def test_hungarian_matching_is_stricter_than_any_match() -> None:
    refs = reference_boxes(box(0, 0, 100, 100) + box(0, 0, 100, 90))
    pred = predicted_boxes(box(0, 0, 100, 95))
    assert count_found(refs, pred) == 2
    ious = matched_ious(refs, pred)
    assert sorted(ious.tolist()) == pytest.approx([0.0, 0.95])
    apart = reference_boxes(box(0, 0, 100, 100) + box(500, 500, 600, 600))
    assert matched_ious(apart, predicted_boxes(box(0, 0, 100, 100))).tolist() == [1.0, 0.0]


def test_hungarian_figures_in_the_report(tmp_path: Path) -> None:
    ann = box(0, 0, 100, 100) + box(0, 0, 100, 90)
    report = scored(tmp_path, "VG", [line("x", ann, box(0, 0, 100, 95))])
    s = report.per_modality["x"]
    assert s["recall@0.5"] == 1.0
    assert s["hungarian_acc@0.5"] == 0.5
    assert s["hungarian_acc@0.75"] == 0.5
    assert s["hungarian_mean_iou"] == pytest.approx(0.95 / 2)


def test_a_malformed_reference_box_names_its_line(tmp_path: Path) -> None:
    with pytest.raises(PredictionFileError, match="line 2"):
        scored(
            tmp_path, "VG", [line("ct", box(0, 0, 1, 1), ""), line("ct", "<box>(1,2)</box>", "")]
        )


# --- ROC ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("annotation", "response", "correct"),
    [
        ("left kidney", "The left kidneys", True),
        ("Left Kidney", "this is the LEFT KIDNEY.", True),
        ("left kidney", "kidney, left side", True),
        ("left kidney", "the right kidney", False),
        ("liver", "", False),
        ("kidney", "kid", False),
    ],
)
def test_roc_token_substring_rule(annotation: str, response: str, correct: bool) -> None:
    assert roc_correct(annotation, response) is correct


def test_roc_means_over_eight_keys_and_over_present(tmp_path: Path) -> None:
    rows = [
        line("ct", "liver", "The liver.<|im_end|>", 0),
        line("ct", "spleen", "liver", 1),
        line("mr", "left kidney", "left kidneys", 2),
    ]
    report = scored(tmp_path, "ROC", rows)
    assert report.per_modality == {"ct": {"accuracy": 0.5}, "mr": {"accuracy": 1.0}}
    means = report.means()
    assert means["official_mean"]["accuracy"] == pytest.approx(1.5 / 8)
    assert means["present_mean"]["accuracy"] == pytest.approx(0.75)
    assert official_mean({}) == 0.0 and present_mean({}) == 0.0


# --- RC / MIA with the real pycocoevalcap -----------------------------------------------------


def test_identical_captions_score_bleu_one_and_empty_ones_zero(
    tmp_path: Path, captions: CaptionScorer
) -> None:
    texts = [
        "the left kidney is small and lies low",
        "a large lesion in the liver",
        "the spleen is normal in size",
    ]
    same = [line("ct", t, t + ".<|im_end|>\nignored", i) for i, t in enumerate(texts)]
    report = scored(tmp_path, "RC", same, captions.score)
    s = report.per_modality["ct"]
    assert s["Bleu_1"] == pytest.approx(1.0, abs=1e-6)
    assert s["Bleu_4"] == pytest.approx(1.0, abs=1e-6)
    assert s["METEOR"] == pytest.approx(1.0, abs=1e-6)
    assert s["ROUGE_L"] == pytest.approx(1.0)
    assert s["CIDEr"] > 0
    empty = scored(
        tmp_path, "MIA", [line("pet", t, "", i) for i, t in enumerate(texts)], captions.score
    )
    assert set(empty.per_modality["pet"].values()) == {0.0}
    assert empty.means()["official_mean"]["Bleu_1"] == 0.0


# --- reading --------------------------------------------------------------------------------


def test_modality_comes_from_the_id_or_birds_image_path(tmp_path: Path) -> None:
    rows = [
        {"id": 7, "image": "endoscopy_3/a.png", "annotation": "a", "response": "a"},
        {"id": "xray_00--D--c--z_0001", "image": "?", "annotation": "a", "response": "a"},
        {"id": "1", "image": "images/CT_00--D--c--z_0000.png", "annotation": "a", "response": "a"},
    ]
    preds = read_predictions(write_jsonl(tmp_path / "p.jsonl", rows))
    assert [p.modality for p in preds] == ["endoscopy", "x", "ct"]


def test_reading_errors_name_the_line(tmp_path: Path) -> None:
    good = json.dumps(line("ct", "a", "a"))
    for text, message in (
        (good + "\n{not json\n", "line 2: not valid JSON"),
        (good + "\n" + json.dumps({"id": "brain_1", "annotation": "", "response": ""}), "line 2"),
        (json.dumps(line("ct", "a", "a", task="XX")), "line 1: unknown task"),
        (json.dumps({"id": "ct_1", "response": ""}), "line 1: needs a text field 'annotation'"),
        (json.dumps(line("pet", " ", "x", task="RC")), "line 1: an RC line needs an annotation"),
        ("[" * 100_000, "line 1: nested too deeply"),
    ):
        path = tmp_path / "bad.jsonl"
        path.write_text(text)
        with pytest.raises(PredictionFileError, match=message):
            read_predictions(path)


def test_prediction_records_are_frozen() -> None:
    p = Prediction(1, "ct_1", "ct", None, "a", "b")
    with pytest.raises(AttributeError):
        p.response = "c"  # type: ignore[misc]


# --- CLI ------------------------------------------------------------------------------------


def test_cli_prints_the_table_and_writes_json(tmp_path: Path, medgrit_offline) -> None:
    rows = [
        line("ct", "left kidney", "The left kidneys.<|im_end|>", 0),
        line("mr", "liver", "spleen", 1),
        line("mr", "liver", "liver", 2, task="VG"),  # another task: left out under --task ROC
    ]
    src = write_jsonl(tmp_path / "pred.jsonl", rows)
    out = tmp_path / "out.json"
    done = medgrit_offline("evaluate", str(src), "--task", "ROC", "--json", str(out))
    assert done.returncode == 0, done.stderr
    assert "mean/8" in done.stdout and "mean/present" in done.stdout
    assert "(absent)" in done.stdout
    data = json.loads(out.read_text())["tasks"]["ROC"]
    assert data["per_modality"] == {"ct": {"accuracy": 1.0}, "mr": {"accuracy": 0.0}}
    assert data["official_mean"]["accuracy"] == pytest.approx(1 / 8)
    assert data["present_mean"]["accuracy"] == pytest.approx(0.5)
    assert data["samples"]["fundus"] == 0


def test_cli_infers_tasks_per_line(tmp_path: Path, medgrit_offline) -> None:
    rows = [
        line("ct", "liver", "liver", 0, task="ROC"),
        line("ct", box(0, 0, 10, 10), box(0, 0, 10, 10), 1, task="vg"),
    ]
    out = tmp_path / "o.json"
    done = medgrit_offline(
        "evaluate", str(write_jsonl(tmp_path / "p.jsonl", rows)), "--json", str(out)
    )
    assert done.returncode == 0, done.stderr
    assert set(json.loads(out.read_text())["tasks"]) == {"VG", "ROC"}


def test_cli_user_errors_are_one_line_with_exit_2(tmp_path: Path, medgrit_offline) -> None:
    src = write_jsonl(tmp_path / "p.jsonl", [line("ct", "a", "a"), line("ct", "b", "b")])
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(line("ct", "a", "a")) + "\n{oops\n")
    cases = (
        (("evaluate", str(tmp_path / "missing.jsonl"), "--task", "VG"), "no such predictions"),
        (("evaluate", str(bad), "--task", "ROC"), "line 2"),
        (("evaluate", str(src), "--task", "XYZ"), "unknown task"),
        (("evaluate", str(src)), "line 1: no task field"),
    )
    for args, message in cases:
        done = medgrit_offline(*args)
        assert done.returncode == 2, done.stderr
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and message in lines[0], done.stderr


def test_a_reference_box_that_is_not_finite_is_refused() -> None:
    from medgrit.core.metrics import reference_boxes

    with pytest.raises(ValueError, match="not four finite numbers"):
        reference_boxes("<ref>a</ref><box>(1,2),(3,inf)</box>")


def test_cli_checks_the_json_path_before_scoring(tmp_path: Path, medgrit_offline) -> None:
    src = write_jsonl(tmp_path / "p.jsonl", [line("ct", "liver", "liver", 0, task="ROC")])
    a_file = tmp_path / "a-file"
    a_file.write_text("mine")
    cases = (
        (tmp_path / "missing" / "s.json", "the folder"),
        (a_file / "s.json", "which is a file"),
        (tmp_path, "is a folder"),
        (Path("/proc/s.json"), "the folder /proc is not writable"),
    )
    for target, words in cases:
        done = medgrit_offline("evaluate", str(src), "--json", str(target))
        assert done.returncode == 2, done.stderr
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and f"--json {target}" in lines[0] and words in lines[0], lines
        assert done.stdout == ""  # nothing was scored
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file", "p.jsonl"]
