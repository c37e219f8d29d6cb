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
  ``<ref>``, whatever the task), ``laterality_mismatch`` (a sided name, ``right kidney``, whose
  structure the image has only on the other side or without a side), ``ref_box_mismatch`` (a box
  after ``<ref>X</ref>`` or after the name X is not a box, merged or instance, of a region X);
- the asked region: ``question_box_missing`` (an ROC or RC question gives no box),
  ``question_box_mismatch`` (a question box is not the box of a region in ``region_ids``),
  ``roc_label_missing`` / ``rc_label_missing`` (the answer does not name the asked region's label;
  an RC answer may give its box instead), ``other_structure_named`` (an ROC or RC answer names
  another structure of the image), ``vg_box_missing`` (a VG answer gives no box),
  ``vg_wrong_structure`` (a structure the VG question names is not the one the answer names);
- ``region_ids_mismatch``: a region id the text does not refer to, or a name or box the text refers
  to that is not among ``region_ids``;
- facts: ``wrong_position``, ``wrong_size``, ``wrong_side`` (an attribute word that is not its
  region's own), ``ambiguous_side`` (a lone "left"/"right": of the image or of the patient?),
  ``wrong_modality``, ``wrong_plane`` (words that disagree with the image; a 2D image has no plane);
- with :class:`TextRules` (an LLM's text): ``question_too_long``, ``answer_too_short``,
  ``answer_too_long`` and ``copied_instructions`` (a run of ``copy_words`` words copied from the
  generator's instructions).

A failure carries the words that broke the rule (:class:`Failure`), for the reject row's detail.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from medgrit.core.claims import Box, Mention, TextClaims, read_claims
from medgrit.core.generation import QA, ImageFacts, RegionFacts
from medgrit.core.lexicon import Lexicon, lexicon_for, split_side, words_of
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


_ROW = {"upper": "upper", "middle": "middle", "lower": "lower"}


def _row_and_column(position: str) -> tuple[str, str]:
    """(row, column) of a grid position word: ``upper left`` -> ``("upper", "left")``."""
    if position == "center":
        return "middle", "center"
    row, _, col = position.partition(" ")
    return row, col


@dataclass(frozen=True)
class _Region:
    facts: RegionFacts
    base: tuple[str, ...]
    side: str | None
    words: frozenset[str]


class ImageTruth:
    """What is true of one image: its regions (by id and by box), modality and plane, and the
    lexicon its texts are read with.

    Args:
        regions: all regions of the image.
        image: the image's facts (modality and plane words are checked only when given).
        lexicon: structure names of the build; the image's own labels are added.
    """

    def __init__(
        self,
        regions: Iterable[RegionFacts],
        image: ImageFacts | None = None,
        lexicon: Lexicon | None = None,
    ) -> None:
        facts = list(regions)
        base_lexicon = lexicon if lexicon is not None else lexicon_for(frozenset())
        self.lexicon = base_lexicon.with_names(r.label for r in facts)
        self.image = image
        self.regions: dict[str, _Region] = {}
        self.by_box: dict[Box, list[str]] = {}
        for r in facts:
            found = self.lexicon.canonical(words_of(r.label))
            base, side = found if found else split_side(words_of(r.label))
            words = frozenset(self.lexicon.surfaces.get((w,), (w,))[0] for w in base)
            self.regions[r.region_id] = _Region(r, base, side, words)
            self.by_box.setdefault(tuple(r.bbox_1000), []).append(r.region_id)  # type: ignore[arg-type]

    def named(self, mention: Mention, exact: bool = False) -> set[str]:
        """Regions a name refers to: those whose label it is (same structure and side); when it
        is no label of the image, those of the same structure on any side (it names none) and,
        for a finding word, those whose label holds it. ``exact``: only the label itself."""
        own = {
            rid
            for rid, r in self.regions.items()
            if r.base == mention.base and r.side == mention.side
        }
        if own or exact:
            return own
        out = set()
        for rid, r in self.regions.items():
            if mention.side not in (None, r.side):
                continue
            if r.base == mention.base or (
                len(mention.base) == 1
                and mention.base[0] in self.lexicon.findings
                and not r.words.isdisjoint(self.lexicon.finding_kin[mention.base[0]])
            ):
                out.add(rid)
        return out

    def same_structure(self, mention: Mention) -> set[str]:
        """Regions of the named structure on any side (to tell a wrong side from an invention)."""
        return {rid for rid, r in self.regions.items() if r.base == mention.base}


def _referents(truth: ImageTruth, claims: TextClaims) -> tuple[list[set[str]], Failure | None]:
    """The regions each mention refers to, or the first name or box that is untrue."""
    out: list[set[str]] = []
    for m in claims.mentions:
        if m.kind == "box":
            out.append(set(truth.by_box[m.boxes[0]]))
            continue
        named = truth.named(m) if m.known else set()
        if not named:
            if m.known and m.side and truth.same_structure(m):
                return out, Failure("laterality_mismatch", m.text)
            return out, Failure("invented_structure", m.text)
        if not m.boxes:
            out.append(named)
            continue
        bound: set[str] = set()
        for box in m.boxes:
            hit = named.intersection(truth.by_box[box])
            if not hit:
                return out, Failure("ref_box_mismatch", f"{m.text}{format_box(box)}")
            bound |= hit
        out.append(bound)
    return out, None


def _holds(kind: str, value: str, region: _Region) -> bool:
    r = region.facts
    if kind == "position":
        return r.position == value
    row, col = _row_and_column(r.position)
    if kind == "row":
        return row == value
    if kind == "column":
        return col == value
    if kind == "size":
        return r.size == value
    return region.side == value  # side


_WRONG: dict[str, RejectReason] = {
    "position": "wrong_position",
    "row": "wrong_position",
    "column": "wrong_position",
    "size": "wrong_size",
    "side": "wrong_side",
}

# The asked region's label is missing from an answer of this task.
_LABEL_MISSING: dict[str, RejectReason] = {"ROC": "roc_label_missing", "RC": "rc_label_missing"}


def _check_attributes(
    truth: ImageTruth, claims: TextClaims, referents: list[set[str]], asked: set[str]
) -> Failure | None:
    image = truth.image
    for a in claims.attributes:
        if a.kind == "ambiguous_side":
            return Failure("ambiguous_side", a.text)
        if a.kind == "modality":
            if image is not None and a.value != image.modality:
                return Failure("wrong_modality", a.text)
            continue
        if a.kind == "plane":
            if image is not None and a.value != image.plane:
                return Failure("wrong_plane", a.text)
            continue
        # A name stands for the region of it the turn asks about ("the lesion" of two lesions).
        targets = (
            (referents[a.mention] & asked or referents[a.mention])
            if a.mention is not None
            else asked
        )
        if not any(_holds(a.kind, a.value, truth.regions[rid]) for rid in targets):
            return Failure(_WRONG[a.kind], a.text)
    return None


def _names_label(truth: ImageTruth, claims: TextClaims, asked: set[str]) -> bool:
    return any(
        m.kind != "box" and m.known and truth.named(m, exact=True) & asked for m in claims.mentions
    )


def _check_asked(
    qa: QA, truth: ImageTruth, turn: tuple[TextClaims, TextClaims], refs: tuple[list, list]
) -> Failure | None:
    """Task rules: the question's boxes and the answer's names against the asked regions."""
    question, answer = turn
    q_refs, a_refs = refs
    asked = set(qa.region_ids)
    for box in question.boxes:
        if not asked.intersection(truth.by_box[box]):
            return Failure("question_box_mismatch", format_box(box))
    if qa.task in ("ROC", "RC"):
        if not question.boxes:
            return Failure("question_box_missing")
        boxed = {rid for box in question.boxes for rid in truth.by_box[box]}
        for rid in qa.region_ids:
            if rid not in boxed:  # the asked regions are those of the question's boxes
                return Failure("region_ids_mismatch", f"region id {rid} is not the question's box")
        gives_box = qa.task == "RC" and any(
            m.kind == "box" and asked & r for m, r in zip(answer.mentions, a_refs, strict=True)
        )
        if not _names_label(truth, answer, asked) and not gives_box:
            for m in answer.mentions:
                if m.kind != "box" and m.side and truth.same_structure(m) & asked:
                    return Failure("laterality_mismatch", m.text)
            return Failure(_LABEL_MISSING[qa.task])
        for m, r in zip(answer.mentions, a_refs, strict=True):
            if not asked & r:
                return Failure("other_structure_named", m.text)
    if qa.task == "VG":
        if not answer.boxes:
            return Failure("vg_box_missing")
        given = {(m.base, m.side) for m in answer.mentions if m.kind != "box"}
        for m in question.mentions:
            if m.kind != "box" and (m.base, m.side) not in given:
                same = {(b, s) for b, s in given if b == m.base}
                if m.side is None and same:
                    continue  # "Where are the kidneys?" answered with each side
                return Failure("vg_wrong_structure", m.text)
    referred: set[str] = set()
    for claims, found in ((question, q_refs), (answer, a_refs)):
        for m, r in zip(claims.mentions, found, strict=True):
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
    found = []
    for text in texts:
        referents, failure = _referents(truth, text)
        if failure:
            return failure
        found.append(referents)
    failure = _check_asked(qa, truth, texts, (found[0], found[1]))
    if failure:
        return failure
    asked = set(qa.region_ids)
    for text, referents in zip(texts, found, strict=True):
        failure = _check_attributes(truth, text, referents, asked)
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
        image: the image's facts, for its modality and plane words.
        vocabulary: the build's label names (structure names a text may use).
    """
    truth = ImageTruth(regions.values(), image, lexicon_for(frozenset(vocabulary)))
    failure = check_turn(qa, truth, rules)
    return failure.reason if failure else None
