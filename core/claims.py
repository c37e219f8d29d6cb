"""What a turn says: its text read as claims about the image's regions (pure).

A turn's question and answer are read one text at a time into:

- **mentions**, in order: each ``<ref>X</ref>``, each structure named in plain words, and each bare
  ``<box>`` (one in a clause that names nothing). A box is *bound* to the latest name or
  ``<ref>`` before it in the same clause, else to the first one after it, so
  ``The <ref>liver</ref> is here: <box>..</box>``, ``<ref>liver</ref><box>..</box><box>..</box>``
  and ``<box>..</box> contains the liver`` all give the liver its boxes.
- **attributes**: the words that state a fact: position (the 3x3 grid phrases of
  :func:`medgrit.core.text.position_word`, a row such as "upper part", a column such as "centre"
  or "left side of the image"), size (tiny, small, medium, large), the patient's side ("the
  patient's left"), a lone "left"/"right" (ambiguous: image or patient?), modality (CT, MRI,
  X-ray ...) and plane (axial, coronal, sagittal). A region attribute belongs to the mention it
  stands right before ("the small <ref>liver</ref>"), else to the latest mention before it in the
  clause, else to the first one after it; in a clause that names nothing, to the latest mention
  of the clauses before ("The liver is large. It lies in the center."), else to the turn.

Clauses end at ``.``, ``;``, ``!`` or ``?`` before a space, and at line ends; commas and colons do
not end them. Words that say what kind of image it is (``CT``, ``fundus``, ``axial``) and the words
of the text's own frame (``region``, ``image``, ``center`` ...) are never read as structure names,
even where a label is spelled so; inside a ``<ref>`` they are.

Structure names come from a :class:`medgrit.core.lexicon.Lexicon`.
"""

from __future__ import annotations

import bisect
import re
from dataclasses import dataclass
from functools import lru_cache

from medgrit.core.lexicon import (
    SIDES,
    SPELLINGS,
    Lexicon,
    normalize_word,
    split_side,
    words_of,
)
from medgrit.core.vocab import RejectReason

Box = tuple[int, int, int, int]

_TOKENS = re.compile(
    r"<ref>(?P<ref>[^<]*)</ref>"
    r"|<box>\((?P<x0>-?[0-9]{1,6}),(?P<y0>-?[0-9]{1,6})\),"
    r"\((?P<x1>-?[0-9]{1,6}),(?P<y1>-?[0-9]{1,6})\)</box>"
    r"|(?P<brk>[.;!?](?=\s|$)|\n)"
    r"|(?P<punct>[(),\[\]\"/])",
    re.S,
)
_PLAIN_WORDS = re.compile(r"[^\W_]+")
_POSSESSIVE = re.compile(r"['\u2019]s\b")
_BRITISH = re.compile("|".join(b for b, _ in SPELLINGS))
_ARTICLES = frozenset({"the", "a", "an"})
# Words that may stand between an attribute and the name it qualifies ("small and round liver").
_BEFORE_NAME = frozenset({"the", "a", "an", "and", "of", "sized"})


@dataclass(frozen=True, slots=True)
class Mention:
    """A structure the text refers to.

    Attributes:
        kind: ``ref`` (``<ref>X</ref>``), ``name`` (plain words) or ``box`` (a bare box).
        base: canonical words of the structure (empty for a bare box); for a ``ref`` whose text
            is no known name, the words of that text.
        side: ``left``/``right`` when the name carries one.
        known: whether ``base`` is a structure name of the lexicon.
        boxes: the boxes bound to it (a bare box: itself).
        text: the words as written (for reject details).
        clause: index of its clause within its text.
    """

    kind: str
    base: tuple[str, ...]
    side: str | None
    known: bool
    boxes: tuple[Box, ...]
    text: str
    clause: int


@dataclass(frozen=True, slots=True)
class Attribute:
    """A stated fact: ``kind`` is position, row, column, size, side, ambiguous_side, modality or
    plane; ``mention`` is the index of the mention it describes (None: the turn's)."""

    kind: str
    value: str
    text: str
    mention: int | None


@dataclass(frozen=True, slots=True)
class TextClaims:
    """The claims of one text (a question or an answer)."""

    mentions: tuple[Mention, ...]
    attributes: tuple[Attribute, ...]
    boxes: tuple[Box, ...]
    # "malformed_box" or "malformed_ref" (also an empty <ref></ref>)
    malformed: RejectReason | None


@dataclass(frozen=True, slots=True)
class TurnClaims:
    """The claims of a turn."""

    question: TextClaims
    answer: TextClaims


def _phrases() -> dict[tuple[str, ...], tuple[str, str]]:
    rows = {"upper": "upper", "top": "upper", "middle": "middle", "lower": "lower"}
    rows["bottom"] = "lower"
    out: dict[tuple[str, ...], tuple[str, str]] = {}
    for word, row in rows.items():
        for col in ("left", "center", "right"):
            if row == "middle" and col == "center":
                value = "center"
            elif col == "center":
                value = f"{row} center"
            else:
                value = f"{row} {col}"
            out[(word, col)] = ("position", value)
        if row != "middle":
            for part in ("part", "half", "portion", "region", "area", "third"):
                out[(word, part)] = ("row", row)
            out[(word, "of", "the", "image")] = ("row", row)
    out[("center",)] = ("column", "center")
    out[("central",)] = ("column", "center")
    out[("middle",)] = ("row", "middle")
    for side in SIDES:
        out[("patient", side)] = ("side", side)
        out[("patient", side, "side")] = ("side", side)
        out[(side, "side", "of", "the", "patient")] = ("side", side)
        out[("image", side)] = ("column", side)
        out[(side, "of", "the", "image")] = ("column", side)
        for part in ("side", "half", "part", "portion"):
            out[(side, part, "of", "the", "image")] = ("column", side)
        out[(side,)] = ("ambiguous_side", side)
    for word in ("tiny", "small", "medium", "large"):
        out[(word,)] = ("size", word)
    out[("big",)] = ("size", "large")
    out[("huge",)] = ("size", "large")
    modalities = {
        "ct": "ct", "computed tomography": "ct", "mri": "mr", "mr": "mr",
        "magnetic resonance": "mr", "x ray": "xray", "xray": "xray", "radiograph": "xray",
        "radiography": "xray", "pet": "pet", "endoscopy": "endoscopy", "endoscopic": "endoscopy",
        "colonoscopy": "endoscopy", "dermoscopy": "dermoscopy", "dermoscopic": "dermoscopy",
        "dermatoscopy": "dermoscopy", "fundus": "fundus", "fundoscopy": "fundus",
        "funduscopy": "fundus", "ultrasound": "ultrasound", "sonography": "ultrasound",
        "ultrasonography": "ultrasound", "sonographic": "ultrasound",
    }  # fmt: skip
    for text, key in modalities.items():
        out[tuple(text.split())] = ("modality", key)
    for text, plane in (("axial", "axial"), ("transverse", "axial"), ("transaxial", "axial")):
        out[(text,)] = ("plane", plane)
    out[("coronal",)] = ("plane", "coronal")
    out[("sagittal",)] = ("plane", "sagittal")
    return out


PHRASES: dict[tuple[str, ...], tuple[str, str]] = _phrases()
_PHRASE_STARTS: dict[str, tuple[int, ...]] = {
    w: tuple(sorted({len(p) for p in PHRASES if p[0] == w}, reverse=True))
    for w in {p[0] for p in PHRASES}
}


def _count_malformed(text: str, boxes: int, refs: int) -> RejectReason | None:
    # Unclosed or stray tags count too (an answer cut off inside a box).
    if max(text.count("<box>"), text.count("</box>")) != boxes:
        return "malformed_box"
    if max(text.count("<ref>"), text.count("</ref>")) != refs:
        return "malformed_ref"
    return None


def read_text(text: str, lexicon: Lexicon) -> TextClaims:
    """The mentions and attributes of one text (see the module docstring)."""
    mentions: list[dict] = []
    attributes: list[tuple[str, str, str, int, int]] = []  # kind, value, text, slot, clause
    boxes: list[Box] = []
    slots: list[str] = []  # per position: a plain word, or "#" (tag, name, phrase, punctuation)
    run: list[str] = []  # the words since the last tag or clause end
    # The clause, its latest ref/name mention, and its bare boxes that no name precedes.
    state: dict = {"clause": 0, "last": None, "bare": []}
    n_refs = 0
    empty_ref = False

    def flush() -> None:
        if run:
            _read_words(run, lexicon, state, mentions, attributes, slots)
            run.clear()

    def words_until(end: int) -> None:
        # Plain words between tags: one findall, spellings fixed only where a British stem is.
        segment = _POSSESSIVE.sub("", text[state["at"] : end].lower())
        found = _PLAIN_WORDS.findall(segment)
        run.extend(map(normalize_word, found) if _BRITISH.search(segment) else found)

    state["at"] = 0
    for m in _TOKENS.finditer(text):
        kind = m.lastgroup
        words_until(m.start())
        state["at"] = m.end()
        flush()
        if kind == "punct":
            slots.append("#")
        elif kind == "brk":
            state["clause"] += 1
            state["last"] = None
            state["bare"] = []
        elif kind == "ref":
            n_refs += 1
            if not _read_ref(m.group("ref"), lexicon, mentions, state, len(slots)):
                empty_ref = True
            slots.append("#")
        else:  # a box (the last group of its alternative)
            box: Box = (
                int(m.group("x0")),
                int(m.group("y0")),
                int(m.group("x1")),
                int(m.group("y1")),
            )
            boxes.append(box)
            _read_box(box, mentions, state, len(slots))
            slots.append("#")
    words_until(len(text))
    flush()
    malformed = _count_malformed(text, len(boxes), n_refs) or (
        "malformed_ref" if empty_ref else None
    )
    frozen = tuple(
        Mention(
            m["kind"], m["base"], m["side"], m["known"], tuple(m["boxes"]), m["text"], m["clause"]
        )
        for m in mentions
    )
    index = _MentionIndex.of(mentions, slots)
    attached = tuple(
        Attribute(kind, value, words_text, _attach(kind, pos, clause_of, index))
        for kind, value, words_text, pos, clause_of in attributes
    )
    return TextClaims(frozen, attached, tuple(boxes), malformed)


def _read_ref(
    phrase: str, lexicon: Lexicon, mentions: list[dict], state: dict, position: int
) -> bool:
    """Add the mention of one ``<ref>PHRASE</ref>`` at slot ``position``, named as the lexicon
    knows it (leading articles dropped). Returns False when the phrase has no words."""
    ref_words = words_of(phrase)
    has_words = bool(ref_words)
    while ref_words and ref_words[0] in _ARTICLES:
        ref_words = ref_words[1:]
    found = lexicon.canonical(ref_words)
    base, side = found if found else split_side(ref_words)
    named = _mention(
        "ref", base, side, found is not None, [], f"<ref>{phrase}</ref>", state["clause"], position
    )
    _add_named(mentions, state, named)
    return has_words


def _read_box(box: Box, mentions: list[dict], state: dict, position: int) -> None:
    """A box belongs to the latest ref or name mention of its clause; before any, it is a bare
    box mention (which the next name in the clause takes over: see :func:`_add_named`)."""
    if state["last"] is not None:
        mentions[state["last"]]["boxes"].append(box)
    else:
        state["bare"].append(len(mentions))
        mentions.append(_mention("box", (), None, True, [box], "<box>", state["clause"], position))


def _read_words(
    run: list[str],
    lexicon: Lexicon,
    state: dict,
    mentions: list[dict],
    attributes: list[tuple[str, str, str, int, int]],
    slots: list[str],
) -> None:
    """Names and attribute phrases of a run of words, longest first, names before phrases."""
    clause = state["clause"]
    k = 0
    while k < len(run):
        word = run[k]
        if word in lexicon.starts or (word in SIDES and k + 1 < len(run)):
            n, base, side = lexicon.match(run, k)
            if n:
                text_words = " ".join(run[k : k + n])
                _add_named(
                    mentions,
                    state,
                    _mention("name", base, side, True, [], text_words, clause, len(slots)),
                )
                slots.append("#")
                k += n
                continue
        for size in _PHRASE_STARTS.get(word, ()):
            phrase = PHRASES.get(tuple(run[k : k + size])) if k + size <= len(run) else None
            if phrase is not None:
                attributes.append((*phrase, " ".join(run[k : k + size]), len(slots), clause))
                slots.append("#")
                k += size
                break
        else:
            slots.append(word)
            k += 1


def _add_named(mentions: list[dict], state: dict, mention: dict) -> None:
    """Add a ref or name mention; the bare boxes before it in its clause become its own
    ("<box> contains the liver")."""
    if state["bare"]:
        first = state["bare"][0]
        mention["boxes"] = [b for m in mentions[first:] for b in m["boxes"]] + mention["boxes"]
        del mentions[first:]
        state["bare"] = []
    mentions.append(mention)
    state["last"] = len(mentions) - 1


def _mention(
    kind: str,
    base: tuple[str, ...],
    side: str | None,
    known: bool,
    boxes: list[Box],
    text: str,
    clause: int,
    position: int,
) -> dict:
    return {
        "kind": kind, "base": base, "side": side, "known": known, "boxes": boxes, "text": text,
        "clause": clause, "position": position,
    }  # fmt: skip


_IMAGE_KINDS = frozenset({"modality", "plane", "ambiguous_side"})


def _attach(kind: str, position: int, clause: int, index: _MentionIndex) -> int | None:
    """The mention a region attribute describes (see the module docstring)."""
    if kind in _IMAGE_KINDS:
        return None
    positions, ids = index.by_clause.get(clause, ((), ()))
    at = bisect.bisect_left(positions, position)
    if at < len(ids) and all(w in _BEFORE_NAME for w in index.slots[position + 1 : positions[at]]):
        return ids[at]  # "the small <ref>liver</ref>", "a large and round left kidney"
    if at > 0:
        return ids[at - 1]
    if ids:
        return ids[0]
    before = bisect.bisect_left(index.clauses, clause)  # the latest mention of earlier clauses
    return index.last_of[index.clauses[before - 1]] if before else None


@dataclass(frozen=True, slots=True)
class _MentionIndex:
    """Mentions by clause, for attaching attributes in O(log n)."""

    by_clause: dict[int, tuple[list[int], list[int]]]  # clause -> (positions, mention indices)
    clauses: list[int]  # clauses with a mention, ascending
    last_of: dict[int, int]  # clause -> its last mention
    slots: list[str]

    @classmethod
    def of(cls, mentions: list[dict], slots: list[str]) -> _MentionIndex:
        by_clause: dict[int, tuple[list[int], list[int]]] = {}
        for i, m in enumerate(mentions):
            positions, ids = by_clause.setdefault(m["clause"], ([], []))
            positions.append(m["position"])
            ids.append(i)
        clauses = sorted(by_clause)
        return cls(by_clause, clauses, {c: by_clause[c][1][-1] for c in clauses}, slots)


@lru_cache(maxsize=1 << 14)
def _read_cached(text: str, lexicon: Lexicon) -> TextClaims:
    return read_text(text, lexicon)  # questions repeat ("Describe this medical image.")


def read_claims(question: str, answer: str, lexicon: Lexicon) -> TurnClaims:
    """The claims of a turn's question and answer."""
    return TurnClaims(_read_cached(question, lexicon), _read_cached(answer, lexicon))
