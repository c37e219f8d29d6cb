"""The report's rejects: how many rows each reason dropped, what the reason means, and examples.

An example shows the row's image with its regions' boxes (the gallery's drawing) when the dataset
holds the image; for a rejected turn, the turn as its row records it (number, task and answer: the
rejects table keeps no question) and the words that broke the rule, marked (``<mark>``) where
they occur in the answer; for any other row, its detail (a record-level row of an unreadable case
has no image: its detail only). Text from the data is shown as
:func:`~medgrit.core.markdown.printable_text` of itself (control and bidi characters visible)
and HTML-escaped.

Elements, for readers and tests: the table ``rejects`` (reason, count, share of all rejects,
meaning); then per reason with examples, most frequent first, a ``section.reject-reason`` with
``data-reason``, holding ``div.reject-example`` blocks (``data-reason``, ``data-stage``, and
``data-reject-image`` naming the image when one is shown) with an ``img.reject-image``, a
``table.turn`` (``td.answer``, ``td.words``) or a ``p.detail``.
"""

from __future__ import annotations

from collections.abc import Mapping
from html import escape

from medgrit.adapters.report.gallery import draw_regions
from medgrit.adapters.report.markup import img_tag, table
from medgrit.adapters.report.reader import RejectExample
from medgrit.core.markdown import printable_text
from medgrit.core.report_stats import find_words, parse_turn_detail, ranked

PICTURE_SIZE = 256
"""Longest side of an example's picture, in pixels (the gallery's are larger)."""

_LOAD = {
    "file_missing": "A file the case lists does not exist.",
    "too_large": "The image declares more voxels or pixels than medgrit reads.",
    "nifti_unreadable": "A NIfTI file cannot be read: truncated, corrupt or not a regular file.",
    "dicom_unreadable": "A DICOM file cannot be parsed, or is no object medgrit reads.",
    "image_unreadable": "An image file cannot be decoded.",
    "mask_missing": "The case has no mask file.",
    "mask_unreadable": "A mask cannot be read or holds no usable label map.",
    "mask_frame_missing": "A mask has fewer frames than the image it labels.",
    "mask_name_malformed": "A mask's file name does not follow its source's naming.",
    "mask_shape_mismatch": "A mask's shape or geometry differs from its image's.",
    "shape_mismatch": "An image and its label map differ in shape.",
    "missing_pixel_data": "A DICOM object has no pixel data.",
    "missing_geometry": "Slices lack the position, orientation or spacing that stacks them.",
    "referenced_series_missing": "The series a DICOM mask refers to is not in the source.",
    "seg_frame_unmatched": "DICOM SEG frames that match no slice of their series.",
    "contour_off_slice": "RT-STRUCT contours that lie on no slice of their series.",
    "inconsistent_orientation": "The slices of a series differ in orientation.",
    "inconsistent_shape": "The slices of a series differ in size.",
    "inconsistent_spacing": "The slices of a series differ in pixel spacing.",
    "unsupported_image": "An image kind medgrit does not read (a colour series, a photometric).",
    "unsupported_shape": "An image of dimensions medgrit does not read, or without the channel.",
    "unsupported_dtype": "Intensities of a type medgrit does not read (RGB, complex).",
    "complex_label": "A label map stored as complex numbers.",
    "non_finite_label": "A label map holding NaN or infinite values.",
    "fractional_label": "A label map holding values that are not whole numbers.",
    "negative_label": "A label map holding negative values.",
    "class_mapping_missing": "The source gives no names for its label values.",
    "composite_label": "A class uniting others (union_...): its parts are used instead.",
    "generic_label": "A class name too generic to name a structure.",
    "fragment_label": "A class name that is only a side (left, right).",
    "case_empty": "A case that lists no slice or image.",
    "empty_label_map": "A label map or slice with no foreground.",
    "blank_image": "An image whose pixels all have one value after intensity mapping.",
}
_REGIONS = {
    "below_min_area": "A region smaller than the build's minimum area, in pixels.",
    "unknown_label": "A label value the source gives no name to.",
    "no_regions": "An image or volume with no region left after filtering.",
}
_GENERATE = {
    "llm_bad_request": "The LLM endpoint refused the image's request as invalid.",
    "llm_malformed_response": "The LLM endpoint's reply was no readable chat completion.",
    "llm_empty_content": "The LLM endpoint replied without text.",
    "llm_api_error": "The LLM endpoint answered the image's request with an error.",
    "invalid_json": "The LLM's answer was no JSON object of the asked shape (detail: its text).",
}
_VERIFY = {
    "unknown_task": "A turn whose task is none of VG, ROC, RC and MIA.",
    "empty_text": "A blank question or answer.",
    "stray_markup": "A tag other than <ref> and <box>, or a control or bidi character.",
    "no_region": "A turn that lists no region.",
    "unknown_region_id": "A region id of no region of the image.",
    "malformed_box": "A <box> cut off or not written (x1,y1),(x2,y2).",
    "malformed_ref": "A <ref> cut off or not closed.",
    "unknown_box": "A box that is no region's bbox_1000.",
    "invented_structure": "A structure named that the image has no region of.",
    "laterality_mismatch": "A sided name whose structure the image has only on the other side.",
    "ref_box_mismatch": "A box after a name that is no box of a region of that name.",
    "question_box_missing": "An ROC or RC question without a box.",
    "question_box_mismatch": "A question's box that is no box of the regions it lists.",
    "ambiguous_box": "An ROC or RC question's box that is the box of two labels' regions.",
    "roc_label_missing": "An ROC answer that does not name the asked region.",
    "rc_label_missing": "An RC answer that names neither the asked region nor its box.",
    "other_structure_named": "An ROC or RC answer naming another structure outside a relation.",
    "vg_box_missing": "A VG answer without a box.",
    "vg_wrong_structure": "A VG answer about another structure than its question's.",
    "region_ids_mismatch": "The regions the text refers to are not the turn's region ids.",
    "wrong_position": "A position word that is not the region's own.",
    "wrong_size": "A size word that is not the region's own.",
    "wrong_side": "A side word that is not the region's own.",
    "ambiguous_side": "A lone left or right: of the image, or of the patient?",
    "wrong_modality": "Words of another modality than the image's.",
    "wrong_plane": "Words of another plane than the image's (a 2D image has none).",
    "wrong_body_region": "A body part the image's structures and modality do not imply.",
    "unknown_sequence": "A sequence, contrast or phase word not true of the image's sequence.",
    "unsupported_finding": "An appearance, diagnosis or measurement masks cannot support.",
    "wrong_relation": "A relation between regions that their boxes and masks do not bear out.",
    "ambiguous_name": "A broader word that fits two labels of the image.",
    "question_too_long": "A question longer than the generator's limit.",
    "answer_too_short": "An answer shorter than the generator's limit.",
    "answer_too_long": "An answer longer than the generator's limit.",
    "copied_instructions": "A run of words copied from the generator's instructions.",
    "empty_conversation": "An image none of whose turns passed: it is dropped.",
}
REASON_MEANINGS: Mapping[str, str] = {
    **_LOAD,
    **_REGIONS,
    **_GENERATE,
    **_VERIFY,
    "unexpected_error": "An error reading or generating one record; the build went on.",
}
"""One line per reject reason of :data:`medgrit.core.vocab.REJECT_REASONS`."""


def _marked(text: str, words: str) -> str:
    """``text`` escaped, with each place ``words`` occur in it inside ``<mark>``."""
    out, at = [], 0
    for start, end in find_words(text, words):
        out.append(f"{escape(text[at:start])}<mark>{escape(text[start:end])}</mark>")
        at = end
    return "".join(out) + escape(text[at:])


def _turn_html(example: RejectExample) -> str:
    turn = parse_turn_detail(example.detail) if example.row.stage == "verify" else None
    if turn is None:
        return f'<p class="detail">{escape(printable_text(example.detail))}</p>'
    answer = printable_text(turn.answer)
    words = printable_text(turn.words) if turn.words else ""
    if not words:
        shown = '<td class="words none">none recorded: the rule is about what is missing</td>'
    elif find_words(answer, words):
        shown = f'<td class="words"><mark>{escape(words)}</mark></td>'
    else:
        shown = (
            f'<td class="words"><mark>{escape(words)}</mark> (not in the recorded answer: in '
            "the question, or past its first 200 characters)</td>"
        )
    return (
        f'<table class="turn"><tr><th>turn</th><td>{turn.number} '
        f"({escape(printable_text(turn.task))})</td></tr>"
        f'<tr><th>answer</th><td class="answer">{_marked(answer, words)}</td></tr>'
        f"<tr><th>broke the rule</th>{shown}</tr></table>"
    )


def _example_html(example: RejectExample, drawn: dict[str, bytes]) -> str:
    """One example; ``drawn`` holds the pictures drawn so far, by image id (an image that is
    the example of several reasons is drawn once)."""
    row = example.row
    where = [f"stage {row.stage}"]
    for part in (row.modality, row.dataset):
        if part:
            where.append(part)
    if row.case_id:
        where.append(f"case {row.case_id}")
    if row.image_id:
        where.append(f"image {row.image_id}")
    meta = " · ".join(escape(printable_text(w)) for w in where)
    picture = image_attr = ""
    if example.png is not None:
        image_id = row.image_id or ""
        if image_id not in drawn:
            drawn[image_id] = draw_regions(example.png, example.regions, PICTURE_SIZE)
        picture = img_tag(drawn[image_id], f"image {row.image_id}", "reject-image")
        image_attr = f' data-reject-image="{escape(row.image_id or "")}"'
    return (
        f'<div class="reject-example" data-reason="{escape(row.reason)}" '
        f'data-stage="{escape(row.stage)}"{image_attr}>{picture}'
        f'<div><p class="meta">{meta}</p>{_turn_html(example)}</div></div>'
    )


def rejects_html(counts: Mapping[str, int], examples: Mapping[str, list[RejectExample]]) -> str:
    """The rejects part of the page: the table by reason, then each reason's examples.

    Args:
        counts: reject rows per reason.
        examples: example rows per reason
            (:func:`~medgrit.adapters.report.reader.read_reject_examples`).
    """
    total = sum(counts.values())
    if not total:
        return "<p>no rejects</p>"
    order = ranked(counts)
    rows: list[list[object]] = [
        [reason, n, f"{100 * n / total:.1f}%", REASON_MEANINGS.get(reason, "(no description)")]
        for reason, n in order.items()
    ]
    parts = [table("rejects", ["reason", "count", "share", "meaning"], rows)]
    shown = [reason for reason in order if examples.get(reason)]
    if shown:
        parts.append(
            '<p class="meta">Examples per reason, spread over datasets and modalities. A '
            "rejected turn is recorded with its answer (up to 200 characters), not its "
            "question; file and case names in a detail show as [file] and [case].</p>"
        )
    drawn: dict[str, bytes] = {}
    for reason in shown:
        share = f"{100 * order[reason] / total:.1f}%"
        meaning = REASON_MEANINGS.get(reason, "(no description)")
        blocks = "".join(_example_html(e, drawn) for e in examples[reason])
        parts.append(
            f'<section class="reject-reason" data-reason="{escape(reason)}">'
            f"<h3>{escape(reason)} · {order[reason]} ({share})</h3>"
            f'<p class="meta">{escape(meaning)}</p>{blocks}</section>'
        )
    return "\n".join(parts)
