"""The dataset's fixed words: its tasks, its modality keys and the reasons a reject row gives.

Each vocabulary is a ``Literal`` type (what a type checker and pydantic check values against) and a
tuple of its values in the order tables, exports, reports and ``--help`` list them. The strings are
the values the tables hold (data contract, schema version 1): ``conversations.qa.task`` is a
:data:`Task`, ``images.modality`` a :data:`Modality`, ``rejects.reason`` a :data:`RejectReason`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal, get_args

# VG: visual grounding (name -> box); ROC: referring object classification (box -> name);
# RC: referring captioning (box -> description); MIA: medical image analysis (whole image).
Task = Literal["VG", "ROC", "RC", "MIA"]
TASKS: tuple[Task, ...] = get_args(Task)
RegionTask = Literal["VG", "ROC", "RC"]
"""The tasks that ask about one region (MIA is about the whole image)."""
REGION_TASKS: tuple[RegionTask, ...] = get_args(RegionTask)

Modality = Literal["ct", "mr", "xray", "pet", "endoscopy", "dermoscopy", "fundus", "ultrasound"]
MODALITIES: tuple[Modality, ...] = get_args(Modality)
BIRD_MODALITY: Mapping[Modality, str] = {m: "x" if m == "xray" else m for m in MODALITIES}
"""BiRD's key of each modality (its sample names and score tables spell X-ray ``x``)."""

# Why a case, slice or mask is dropped while it is read (``load`` stage): the file, its header,
# its pixels or its masks cannot be used, or what they hold cannot be labelled.
LoadReason = Literal[
    "file_missing",
    "too_large",
    "nifti_unreadable",
    "dicom_unreadable",
    "image_unreadable",
    "mask_missing",
    "mask_unreadable",
    "mask_frame_missing",
    "mask_name_malformed",
    "mask_shape_mismatch",
    "shape_mismatch",
    "missing_pixel_data",
    "missing_geometry",
    "referenced_series_missing",
    "seg_frame_unmatched",
    "contour_off_slice",
    "inconsistent_orientation",
    "inconsistent_shape",
    "inconsistent_spacing",
    "unsupported_image",
    "unsupported_shape",
    "unsupported_dtype",
    "complex_label",
    "non_finite_label",
    "fractional_label",
    "negative_label",
    "class_mapping_missing",
    "composite_label",
    "generic_label",
    "fragment_label",
    "case_empty",
    "empty_label_map",
    "blank_image",
]
# Why a region is dropped, or an image has none left (``regions`` stage; ``no_regions`` also
# when a volume has no slice with enough labelled pixels).
RegionReason = Literal["below_min_area", "unknown_label", "no_regions"]
# Why the generator gave no turns for an image (``generate`` stage): the LLM endpoint's answer
# was no answer (``llm_`` and the client's error) or not the JSON asked for.
GenerateReason = Literal[
    "llm_bad_request",
    "llm_malformed_response",
    "llm_empty_content",
    "llm_api_error",
    "invalid_json",
]
# Why a turn is dropped (``verify`` stage; ``medgrit.core.verify`` says when each applies).
VerifyReason = Literal[
    "unknown_task",
    "empty_text",
    "stray_markup",
    "no_region",
    "unknown_region_id",
    "malformed_box",
    "malformed_ref",
    "unknown_box",
    "invented_structure",
    "laterality_mismatch",
    "ref_box_mismatch",
    "question_box_missing",
    "question_box_mismatch",
    "ambiguous_box",
    "roc_label_missing",
    "rc_label_missing",
    "other_structure_named",
    "vg_box_missing",
    "vg_wrong_structure",
    "region_ids_mismatch",
    "wrong_position",
    "wrong_size",
    "wrong_side",
    "ambiguous_side",
    "wrong_modality",
    "wrong_plane",
    "wrong_body_region",
    "unknown_sequence",
    "unsupported_finding",
    "wrong_relation",
    "ambiguous_name",
    "question_too_long",
    "answer_too_short",
    "answer_too_long",
    "copied_instructions",
    "empty_conversation",
]
# Any stage: an exception of one record that is no infrastructure failure.
OtherReason = Literal["unexpected_error"]

RejectReason = Literal[LoadReason, RegionReason, GenerateReason, VerifyReason, OtherReason]
"""Every reason a ``rejects`` row may give: stable snake_case, never renamed."""
REJECT_REASONS: tuple[RejectReason, ...] = get_args(RejectReason)
