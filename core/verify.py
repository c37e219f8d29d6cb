"""Checks every QA turn against the regions of its image before anything is written.

A turn is read into claims (``medgrit.core.claims``) and kept only when every one holds. Each
failure is a stable snake_case reason stored in reject rows, checked in this order:

- the turn itself: ``unknown_task``, ``empty_text`` (a blank question or answer),
  ``stray_markup`` (a tag other than ``<ref>``/``<box>``, such as a chat-template special token
  ``<|im_start|>`` or Qwen-VL's ``<img>``, or a control or bidi-override character: text that
  would act on the model's training format), ``no_region``, ``unknown_region_id`` (a region id
  of no region of the image);
- tags: ``malformed_box``, ``malformed_ref`` (cut off, unclosed, not ``<box>(x1,y1),(x2,y2)</box>``)
  and ``unknown_box`` (a box that is no region's ``bbox_1000``);
- names: ``invented_structure`` (a structure the image has no region of, named in words or in a
  ``<ref>``, whatever the task; also "a second polyp" where it has one), ``wrong_body_region`` (a
  body part the image's structures and modality do not imply: "the chest" where the only
  structure is the bladder), ``laterality_mismatch`` (a sided name, ``right kidney``, whose
  structure the image has only on the other side or without a side), ``ref_box_mismatch`` (a box
  after ``<ref>X</ref>`` or after the name X is not a box, merged or instance, of a region X);
- the asked region: ``question_box_missing`` (an ROC or RC question gives no box),
  ``question_box_mismatch`` (a question box is not the box of a region in ``region_ids``),
  ``ambiguous_box`` (an ROC or RC question's box is the box of regions of two labels, as nested
  regions may be: "the tumor core" and "the enhancing tumor" would both answer it),
  ``roc_label_missing`` / ``rc_label_missing`` (the answer does not name the asked region's label
  or a synonym of it; an RC answer may give its box instead), ``ambiguous_name`` (a broader word
  that fits two labels, "the lesion" of a cyst and a polyp), ``other_structure_named`` (an ROC
  or RC answer names another structure of the image outside a relation), ``vg_box_missing`` (a
  VG answer gives no box), ``vg_wrong_structure`` (a structure the VG question names is not
  the one the answer names);
- ``region_ids_mismatch``: a region id the text does not refer to, or a name or box the text refers
  to that is not among ``region_ids`` (body parts and the other ends of relations apart);
- facts: ``wrong_position``, ``wrong_size``, ``wrong_side`` (an attribute word that is not its
  region's own; "the right half of the image" and "right of the midline" hold of a box centre
  right of the middle), ``ambiguous_side`` (a lone "left"/"right": of the image or of the
  patient?), ``wrong_relation`` (a relation the boxes and masks do not bear out, see
  :mod:`medgrit.core.relations`, or one no fact records: "anterior to"), ``wrong_modality``,
  ``wrong_plane`` (words that disagree with the image; a 2D image has no plane),
  ``unknown_sequence`` (a sequence, contrast, phase or window word that is not true of the
  image's recorded sequence, :mod:`medgrit.core.sequences`: "T2-weighted" of a FLAIR image,
  "contrast-enhanced" of a T2 one; any such word where none or an unknown one is recorded) and
  ``unsupported_finding`` (appearance, diagnosis or measurement: "ulcerated", "hyperdense",
  "irregular margins", "normal", "5 mm");
- with :class:`TextRules` (an LLM's text): ``question_too_long``, ``answer_too_short``,
  ``answer_too_long`` and ``copied_instructions`` (a run of ``copy_words`` words copied from the
  generator's instructions).

A failure carries the words that broke the rule (:class:`Failure`), for the reject row's detail.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import NamedTuple

from medgrit.core.claims import Attribute, Mention, TextClaims, read_claims
from medgrit.core.generation import QA, ImageFacts, RegionFacts
from medgrit.core.image_truth import ENCLOSING, ImageTruth, holds, lies_between, lies_in
from medgrit.core.lexicon import lexicon_for
from medgrit.core.relations import RELATIONS, relation_holds
from medgrit.core.text import format_box
from medgrit.core.vocab import TASKS, RejectReason

_WORD = re.compile(r"[a-z0-9]+")
# A tag-like run (``<|``, ``<img``, ``</x``) that is not one of the four tags the text may use,
# and the characters that act on text without showing: C0/C1 controls but tab and line breaks,
# and bidi embeddings, overrides and isolates.
_STRAY_TAG = re.compile(r"<(?!/?(?:ref|box)>)[|/A-Za-z!?]")
_HIDDEN = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def stray_markup(text: str) -> str | None:
    """The first tag or hidden character of ``text`` the training text must not carry, or None.

    ``<`` before a digit, a space or ``=`` ("under <5 mm") is plain text."""
    found = _STRAY_TAG.search(text) or _HIDDEN.search(text)
    if found is None:
        return None
    if found.re is _HIDDEN:
        return f"U+{ord(found.group()):04X}"
    return text[found.start() : found.start() + 20]


def word_shingles(text: str, size: int) -> frozenset[tuple[str, ...]]:
    """All runs of ``size`` consecutive lower-case words of ``text``."""
    words = _WORD.findall(text.lower())
    return frozenset(tuple(words[i : i + size]) for i in range(len(words) - size + 1))


@dataclass(frozen=True)
class TextRules:
    """Bounds for generated text (an LLM's answers; templates need none).

    Attributes:
        max_question_chars: longest question allowed.
        min_answer_chars: shortest answer allowed.
        max_answer_chars: longest answer allowed.
        copy_words: a run of this many words shared with the instructions counts as copied.
        instruction_shingles: word runs of the instructions (see :func:`word_shingles`).
    """

    max_question_chars: int = 600
    min_answer_chars: int = 2
    max_answer_chars: int = 2000
    copy_words: int = 8
    instruction_shingles: frozenset[tuple[str, ...]] = field(default_factory=frozenset)

    @classmethod
    def for_instructions(cls, instructions: str, copy_words: int = 8) -> TextRules:
        """Rules that flag answers copying ``copy_words`` words in a row from ``instructions``."""
        return cls(
            copy_words=copy_words, instruction_shingles=word_shingles(instructions, copy_words)
        )


@dataclass(frozen=True)
class Failure:
    """Why a turn fails: the reason code and the words that broke the rule."""

    reason: RejectReason
    evidence: str = ""

    def __str__(self) -> str:
        return f"{self.reason} ({self.evidence})" if self.evidence else self.reason


def check_text(qa: QA, rules: TextRules) -> RejectReason | None:
    """The reason a turn's text breaks ``rules``, or None."""
    if len(qa.question) > rules.max_question_chars:
        return "question_too_long"
    if len(qa.answer.strip()) < rules.min_answer_chars:
        return "answer_too_short"
    if len(qa.answer) > rules.max_answer_chars:
        return "answer_too_long"
    if rules.instruction_shingles and not rules.instruction_shingles.isdisjoint(
        word_shingles(f"{qa.question} {qa.answer}", rules.copy_words)
    ):
        return "copied_instructions"
    return None


def _twin_named(truth: ImageTruth, claims: TextClaims, m: Mention) -> set[str]:
    """The regions of the other name of a pair written together ("left and right lungs")."""
    return {
        rid
        for t in claims.mentions
        if t is not m and t.clause == m.clause and t.position == m.position and t.base == m.base
        for rid in truth.named(t)
    }


def _referents(
    truth: ImageTruth, claims: TextClaims
) -> tuple[list[set[str]], set[int], Failure | None]:
    """The regions each mention refers to, the mentions that name a body part the image shows
    (no region), or the first name or box that is untrue."""
    out: list[set[str]] = []
    context: set[int] = set()
    for i, m in enumerate(claims.mentions):
        if m.kind == "box":
            out.append(set(truth.by_box[m.boxes[0]]))
            continue
        named = truth.named(m) if m.known and not m.context else set()
        if not named and m.known and m.base in truth.lexicon.context and not m.boxes:
            if truth.lexicon.context[m.base] not in truth.body_regions:
                return out, context, Failure("wrong_body_region", m.text)
            context.add(i)
            out.append(set())
            continue
        if not named:
            if m.known and m.side and truth.same_structure(m):
                return out, context, Failure("laterality_mismatch", m.text)
            return out, context, Failure("invented_structure", m.text)
        if m.more and len({tuple(truth.regions[r].facts.bbox_1000) for r in named}) < 2:
            return out, context, Failure("invented_structure", m.text)  # "a second polyp"
        if not m.boxes:
            out.append(named)
            continue
        # "the left and right lungs <box> <box>": the boxes of either
        named |= _twin_named(truth, claims, m)
        bound: set[str] = set()
        for box in m.boxes:
            hit = named.intersection(truth.by_box[box])
            if not hit:
                return out, context, Failure("ref_box_mismatch", f"{m.text}{format_box(box)}")
            bound |= hit
        out.append(bound)
    return out, context, None


_WRONG: dict[str, RejectReason] = {
    "position": "wrong_position",
    "row": "wrong_position",
    "column": "wrong_position",
    "half": "wrong_position",
    "size": "wrong_size",
    "side": "wrong_side",
}
_IMAGE_WORDS: dict[str, RejectReason] = {
    "ambiguous_side": "ambiguous_side",
    "unsupported": "unsupported_finding",
}

# The asked region's label is missing from an answer of this task.
_LABEL_MISSING: dict[str, RejectReason] = {"ROC": "roc_label_missing", "RC": "rc_label_missing"}


class _Read(NamedTuple):
    """One text of a turn as the checks see it: its claims, what each mention refers to, and
    the mentions exempt from the asked-region rules (body parts, the other end of a relation)."""

    claims: TextClaims
    referents: list[set[str]]
    exempt: frozenset[int]


def _described(text: _Read, mention: int, asked: set[str]) -> set[str]:
    # A name stands for the region of it the turn asks about ("the lesion" of two lesions).
    found = text.referents[mention]
    return found & asked or found


def _check_relation(truth: ImageTruth, text: _Read, a: Attribute, asked: set[str]) -> bool:
    if a.target is None or (a.value not in RELATIONS and a.value not in ("in", "same", "between")):
        return False
    if a.target in text.exempt and not text.referents[a.target]:
        return True  # a body part: "the polyp in the colon"
    if a.value in ("in", "inside") and text.claims.mentions[a.target].kind == "box":
        return True  # "the object inside <box>": the box says where, it relates nothing
    if a.value == "between":  # "between the two lungs", "between the liver and the spleen"
        ends = set().union(*(text.referents[t] for t in (a.target, *a.also)))
        groups = [_described(text, m, asked) for m in a.mentions] or [asked]
        return all(
            any(
                lies_between(truth.regions[s].facts, [truth.regions[o].facts for o in ends])
                for s in g
            )
            for g in groups
            if g
        )
    if a.also:  # "below the right and left lungs": below each
        return all(
            _check_relation(truth, text, a._replace(target=t, also=()), asked)
            for t in (a.target, *a.also)
        )
    others = text.referents[a.target]
    if a.value in ENCLOSING and (
        not a.mentions or any(others & text.referents[m] for m in a.mentions)
    ):
        return True  # "the image contains a cyst", "<box> encloses the lungs": naming, not relating
    if a.value == "same":  # "the kidney <box> is the left kidney": one structure
        return all(others & text.referents[m] for m in a.mentions if text.referents[m])
    subjects = [_described(text, m, asked) for m in a.mentions] or [asked]
    holds = partial(lies_in, truth) if a.value == "in" else partial(relation_holds, a.value)
    return all(
        any(
            holds(truth.regions[s].facts, truth.regions[o].facts)
            for s in group
            for o in others
            if s != o
        )
        for group in subjects
        if group
    )


def _check_attributes(truth: ImageTruth, text: _Read, asked: set[str]) -> Failure | None:
    image = truth.image
    for a in text.claims.attributes:
        if a.kind == "adverb" or (a.negated and a.kind == "ambiguous_side"):
            continue
        if a.kind in _IMAGE_WORDS:
            return Failure(_IMAGE_WORDS[a.kind], a.text)
        if a.kind == "modality":
            if image is not None and (a.value == image.modality) == a.negated:
                return Failure("wrong_modality", a.text)
            continue
        if a.kind == "sequence":  # unlike modality words, none holds unless the facts say so
            true_words = truth.sequence_words
            if true_words is None or (a.value in true_words) == a.negated:
                return Failure("unknown_sequence", a.text)
            continue
        if a.kind == "plane":
            if image is not None and (a.value == image.plane) == a.negated:
                return Failure("wrong_plane", a.text)
            continue
        if a.kind == "relation":
            if a.negated and a.target is not None and a.value in RELATIONS:
                if _check_relation(truth, text, a, asked):  # "not above the liver"
                    return Failure("wrong_relation", a.text)
            elif not _check_relation(truth, text, a, asked):
                return Failure("wrong_relation", a.text)
            continue
        groups = [_described(text, m, asked) for m in a.mentions] or [asked]
        for targets in groups:
            if not targets:
                continue
            held = any(holds(a.kind, a.value, truth.regions[r]) for r in targets)
            if held == a.negated:  # "not in the centre" must not hold
                return Failure(_WRONG[a.kind], a.text)
    return None


def _sides_stated(text: _Read) -> dict[int, str]:
    """The patient's side the text gives a name apart from it ("the grey matter of the
    patient's left side"), by mention."""
    return {m: a.value for a in text.claims.attributes if a.kind == "side" for m in a.mentions}


def _on_side(truth: ImageTruth, refs: set[str], side: str | None) -> set[str]:
    """``refs`` on the patient's ``side`` (all of them when no side is given or none is on it:
    the side is then checked as a claim)."""
    if side is None:
        return refs
    return {r for r in refs if truth.regions[r].side == side} or refs


def _check_label(qa: QA, truth: ImageTruth, answer: _Read, asked: set[str]) -> Failure | None:
    """An ROC or RC answer names the asked region's label (a synonym will do) and nothing else
    but body parts and the other ends of its relations."""
    mentions, refs = answer.claims.mentions, answer.referents
    gives_box = qa.task == "RC" and any(
        m.kind == "box" and asked & r for m, r in zip(mentions, refs, strict=True)
    )
    own = truth.labels_of(asked)
    naming = [i for i, m in enumerate(mentions) if m.kind != "box" and asked & refs[i]]
    sided = _sides_stated(answer)
    if (
        not any(truth.labels_of(_on_side(truth, refs[i], sided.get(i))) == own for i in naming)
        and not gives_box
    ):
        for i, m in enumerate(mentions):
            if i in answer.exempt:
                continue
            if m.kind != "box" and m.side and truth.same_structure(m) & asked:
                return Failure("laterality_mismatch", m.text)
        for i in naming:  # "the lesion" of a cyst and a polyp; not "the kidney" of one side
            if len(truth.labels_of(refs[i])) > 1 and not truth.same_structure(mentions[i]):
                return Failure("ambiguous_name", mentions[i].text)
        return Failure(_LABEL_MISSING[qa.task])
    for i, m in enumerate(mentions):
        if i not in answer.exempt and not asked & refs[i]:
            return Failure("other_structure_named", m.text)
    return None


def _check_asked(qa: QA, truth: ImageTruth, question: _Read, answer: _Read) -> Failure | None:
    """Task rules: the question's boxes and the answer's names against the asked regions."""
    asked = set(qa.region_ids)
    for box in question.claims.boxes:
        if not asked.intersection(truth.by_box[box]):
            return Failure("question_box_mismatch", format_box(box))
    if qa.task in ("ROC", "RC"):
        if not question.claims.boxes:
            return Failure("question_box_missing")
        for box in question.claims.boxes:
            if len(truth.labels_of(truth.by_box[box])) > 1:
                return Failure("ambiguous_box", format_box(box))
        boxed = {rid for box in question.claims.boxes for rid in truth.by_box[box]}
        for rid in qa.region_ids:
            if rid not in boxed:  # the asked regions are those of the question's boxes
                return Failure("region_ids_mismatch", f"region id {rid} is not the question's box")
        failure = _check_label(qa, truth, answer, asked)
        if failure:
            return failure
    if qa.task == "VG":
        if not answer.claims.boxes:
            return Failure("vg_box_missing")
        given = truth.labels_of(
            rid
            for i, m in enumerate(answer.claims.mentions)
            if m.kind != "box" and i not in answer.exempt
            for rid in answer.referents[i]
        )
        sided = _sides_stated(question)
        for i, m in enumerate(question.claims.mentions):
            if m.kind != "box" and i not in question.exempt:
                asked_for = _on_side(truth, question.referents[i], sided.get(i))
                if not truth.labels_of(asked_for) <= given:
                    return Failure("vg_wrong_structure", m.text)
    referred: set[str] = set()
    for text in (question, answer):
        for i, (m, r) in enumerate(zip(text.claims.mentions, text.referents, strict=True)):
            if i in text.exempt:
                referred |= asked & r  # "lies in the liver": the liver is referred to
                continue
            if not asked & r:
                return Failure("region_ids_mismatch", m.text if m.kind != "box" else "<box>")
            referred |= r
    missing = sorted(asked - referred)
    if missing:
        return Failure("region_ids_mismatch", f"region id {missing[0]} is not referred to")
    return None


_LENGTH_REASONS: frozenset[RejectReason] = frozenset(
    {"question_too_long", "answer_too_short", "answer_too_long"}
)


def check_turn(qa: QA, truth: ImageTruth, rules: TextRules | None = None) -> Failure | None:
    """Why ``qa`` is untrue of its image (see the module docstring), or None when every claim
    holds.

    Args:
        qa: the turn.
        truth: the turn's image (:class:`ImageTruth`).
        rules: length and copying rules for generated text (none for templates).
    """
    if qa.task not in TASKS:
        return Failure("unknown_task", qa.task)
    if not qa.question.strip() or not qa.answer.strip():
        return Failure("empty_text")
    markup = stray_markup(qa.question) or stray_markup(qa.answer)
    if markup:
        return Failure("stray_markup", markup)
    if not qa.region_ids:
        return Failure("no_region")
    for rid in qa.region_ids:
        if rid not in truth.regions:
            return Failure("unknown_region_id", rid)
    if rules is not None:  # bounded text before it is read
        reason = check_text(qa, rules)
        if reason in _LENGTH_REASONS:
            return Failure(reason)
    claims = read_claims(qa.question, qa.answer, truth.lexicon)
    texts = (claims.question, claims.answer)
    for text in texts:
        if text.malformed:
            return Failure(text.malformed)
        for box in text.boxes:
            if box not in truth.by_box:
                return Failure("unknown_box", format_box(box))
    read: list[_Read] = []
    for text in texts:
        referents, context, failure = _referents(truth, text)
        if failure:
            return failure
        ends = {t for a in text.attributes if a.kind == "relation" for t in (a.target, *a.also)}
        read.append(_Read(text, referents, frozenset(context | (ends - {None}))))
    failure = _check_asked(qa, truth, read[0], read[1])
    if failure:
        return failure
    asked = set(qa.region_ids)
    for text in read:
        failure = _check_attributes(truth, text, asked)
        if failure:
            return failure
    if rules is not None:
        reason = check_text(qa, rules)
        if reason:
            return Failure(reason)
    return None


def verify_qa(
    qa: QA,
    regions: Mapping[str, RegionFacts],
    rules: TextRules | None = None,
    *,
    image: ImageFacts | None = None,
    vocabulary: Iterable[str] = (),
) -> str | None:
    """The reason ``qa`` fails, or None when it passes (one turn; :class:`ImageTruth` and
    :func:`check_turn` check many turns of an image without rereading its regions).

    Args:
        qa: the turn.
        regions: all regions of the turn's image, by region id.
        rules: length and copying rules for generated text (none for templates).
        image: the image's facts, for its modality, plane and sequence words.
        vocabulary: the build's label names (structure names a text may use).
    """
    truth = ImageTruth(regions.values(), image, lexicon_for(frozenset(vocabulary)))
    failure = check_turn(qa, truth, rules)
    return failure.reason if failure else None
