"""What a turn says: its text read as claims about the image's regions (pure).

A turn's question and answer are read one text at a time into:

- **mentions**, in order: each ``<ref>X</ref>``, each structure named in plain words (a label,
  a synonym, a broader word such as "lesion", a finding or anatomy word, or a body part such as
  "abdomen": a *context* mention, see :class:`Mention`), and each bare ``<box>`` (one in a
  clause that names nothing). A box is *bound* to the latest name or ``<ref>`` before it in the
  same clause, else to the first one after it, so ``The <ref>liver</ref> is here: <box>..</box>``,
  ``<ref>liver</ref><box>..</box><box>..</box>`` and ``<box>..</box> contains the liver`` all give
  the liver its boxes; ``<box>..</box> (left kidney)`` gives the box to the name in brackets.
  "The patient's left kidney" names the left kidney; "the left and right lungs" names both.
- **attributes**: the words that state a fact: position (the 3x3 grid phrases of
  :func:`medgrit.core.text.position_word`, "lower middle"; a row such as "upper part"; a column
  such as "centre", "left side of the image", "right of the midline"), size (tiny, small,
  medium, large, "very small" = tiny), the patient's side ("the patient's left"), a lone
  "left"/"right" (ambiguous: image or patient?; "the left side" is the image's in a clause that
  speaks of the image's sides), modality (an open list: CT, MRI, OCT, mammogram ...), plane,
  sequence words (T2, FLAIR, contrast-enhanced: true of an image of that sequence), appearance,
  diagnosis or measurement (surface, hyperdense, irregular, normal, mm: no fact records them),
  and **relations** to another mention ("below the liver", "within the liver", "adjacent to",
  "larger than", "to the left of": :mod:`medgrit.core.relations`).

A region attribute describes the mention it stands right before ("the small <ref>liver</ref>"),
else the latest mention before it in its part of the clause, else the first one after it; in a
clause that names nothing, the latest mention of the clauses before ("The liver is large. It lies
in the center."), else the turn's regions. A clause is split into parts where a conjunction or a
comma comes before a new name ("the body <box> is large and the liver <box> is small"); names
joined by "and" with no attribute of their own share the attributes that follow ("the liver and
the spleen are large"). Context mentions take no attributes and no boxes. A relation relates its
part's subject to the mention right after it.

Clauses end at ``.``, ``;``, ``!`` or ``?`` before a space, and at line ends; commas and colons do
not end them. Words that say what kind of image it is (``CT``, ``fundus``, ``axial``) and the words
of the text's own frame (``region``, ``image``, ``center`` ...) are never read as structure names,
even where a label is spelled so; inside a ``<ref>`` they are.

Structure names come from a :class:`medgrit.core.lexicon.Lexicon`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache
from typing import NamedTuple

from medgrit.core.claim_attach import Attribute, attach_all
from medgrit.core.claim_phrases import (
    CONJUNCTIONS,
    FRAME_WORDS,
    IMAGE_FRAME_KINDS,
    IMAGE_KINDS,
    NEGATIONS,
    PHRASE_STARTS,
    PHRASES,
    RELATION_FILLERS,
)
from medgrit.core.lexicon import SIDES, SPELLINGS, Lexicon, normalize_word, split_side, words_of
from medgrit.core.terms import (
    ANOTHER_WORDS,
    APPEARANCE_PREFIXES,
    APPEARANCE_SUFFIXES,
    MORE_WORDS,
)
from medgrit.core.vocab import RejectReason

Box = tuple[int, int, int, int]

__all__ = ["Attribute", "Box", "Mention", "TextClaims", "TurnClaims", "read_claims", "read_text"]

_TOKENS = re.compile(
    r"<ref>(?P<ref>[^<]*)</ref>"
    r"|<box>\((?P<x0>-?[0-9]{1,6}),(?P<y0>-?[0-9]{1,6})\),"
    r"\((?P<x1>-?[0-9]{1,6}),(?P<y1>-?[0-9]{1,6})\)</box>"
    r"|(?P<brk>[.;!?](?=\s|$)|\n)"
    r"|(?P<punct>[(),\[\]\"/])",
    re.S,
)
_BOX_THEN_NAME = re.compile(r"(<box>\([^<]{3,40}\)</box>)\s*\(\s*([^(),;<>]{1,60}?)\s*\)")
_PLAIN_WORDS = re.compile(r"[^\W_]+")
_POSSESSIVE = re.compile(r"['\u2019]s\b")
_BRITISH = re.compile("|".join(b for b, _ in SPELLINGS))
_ARTICLES = frozenset({"the", "a", "an"})
# Words that may stand between an attribute and the name it qualifies ("small and round liver").
_BOX_SLOT = "#box"
_NOTED = ANOTHER_WORDS | MORE_WORDS | FRAME_WORDS
_ONE = frozenset({"one", "ones"})


class Mention(NamedTuple):
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
        context: a body part ("abdomen", "retina"), named by no label of the build: it refers to
            no region and takes no attribute or box.
        generic: a word for any finding ("lesion") that names the image's findings: its clause
            does not say it is another one ("also", "another", "with ... next to it").
        more: written as one more of its kind ("a second polyp", "the other lung").
    """

    kind: str
    base: tuple[str, ...]
    side: str | None
    known: bool
    boxes: tuple[Box, ...]
    text: str
    clause: int
    context: bool = False
    generic: bool = False
    more: bool = False
    position: int = 0  # its slot in the text (names written together share one)


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


def _count_malformed(text: str, boxes: int, refs: int) -> RejectReason | None:
    # Unclosed or stray tags count too (an answer cut off inside a box).
    if max(text.count("<box>"), text.count("</box>")) != boxes:
        return "malformed_box"
    if max(text.count("<ref>"), text.count("</ref>")) != refs:
        return "malformed_ref"
    return None


def _names_after_boxes(text: str, lexicon: Lexicon) -> str:
    """``<box>..</box> (left kidney)`` written as ``left kidney <box>..</box>``, where the words
    in brackets are one structure name (other brackets, "(medium, center)", stay)."""

    def swap(found: re.Match) -> str:
        words = words_of(found.group(2))
        while words and words[0] in _ARTICLES:
            words = words[1:]
        if lexicon.canonical(words) is None:
            return found.group(0)
        return f" {found.group(2)} {found.group(1)}"

    return _BOX_THEN_NAME.sub(swap, text) if "</box> (" in text or "</box>(" in text else text


@dataclass
class _Reading:
    """What one text's reading has collected so far."""

    lexicon: Lexicon
    mentions: list[dict]
    attributes: list[dict]
    slots: list[str]  # per position: a plain word, a punctuation mark or a marker ("#", "#box")
    boxes: list[Box]
    framed: set[int] = field(default_factory=set)  # clauses that speak of the image's sides
    another: set[int] = field(default_factory=set)  # clauses that say "also", "another" ...
    more: bool = False  # whether a word of MORE_WORDS was read
    clause_starts: list[int] = field(default_factory=lambda: [0])  # the first slot of each
    clause: int = 0
    last: int | None = None  # the clause's latest ref/name mention
    bare: list[int] | None = None  # the clause's bare boxes that no name precedes

    def add_named(self, mention: dict) -> None:
        """Add a ref or name mention; the bare boxes before it in its clause become its own
        ("<box> contains the liver"). A context mention takes none and binds no box."""
        if mention["context"]:
            self.mentions.append(mention)
            return
        if self.bare:
            first = self.bare[0]
            taken = [b for m in self.mentions[first:] for b in m["boxes"]]
            mention["boxes"] = taken + mention["boxes"]
            del self.mentions[first:]
            self.bare = []
        self.mentions.append(mention)
        self.last = len(self.mentions) - 1

    def add_box(self, box: Box) -> None:
        self.boxes.append(box)
        if self.last is not None:
            self.mentions[self.last]["boxes"].append(box)
        else:
            self.bare = [*(self.bare or []), len(self.mentions)]
            self.mentions.append(self.mention("box", (), None, True, [box], "<box>"))
        self.slots.append(_BOX_SLOT)

    def mention(
        self,
        kind: str,
        base: tuple[str, ...],
        side: str | None,
        known: bool,
        boxes: list[Box],
        text: str,
    ) -> dict:
        lexicon = self.lexicon
        context = (
            known
            and base in lexicon.context
            and base not in lexicon.labels
            and base not in lexicon.broader
        )
        return {
            "kind": kind, "base": base, "side": side, "known": known, "boxes": boxes,
            "text": text, "clause": self.clause, "position": len(self.slots), "context": context,
        }  # fmt: skip

    def end_clause(self) -> None:
        self.clause += 1
        self.last = None
        self.bare = []
        self.clause_starts.append(len(self.slots))


def read_text(text: str, lexicon: Lexicon) -> TextClaims:
    """The mentions and attributes of one text (see the module docstring)."""
    text = _names_after_boxes(text, lexicon)
    reading = _Reading(lexicon, [], [], [], [])
    run: list[str] = []  # the words since the last tag or clause end
    n_refs = 0
    empty_ref = False
    at = 0

    lower = text.lower()
    if len(lower) != len(text):  # a character whose lower case is longer: segment by segment
        lower = ""
    apostrophe = "'" in text or "\u2019" in text
    british = _BRITISH.search(lower or text.lower()) is not None

    def words_until(end: int) -> None:
        # Plain words between tags: one findall, spellings fixed only where a British stem is.
        segment = lower[at:end] if lower else text[at:end].lower()
        if apostrophe:
            segment = _POSSESSIVE.sub("", segment)
        found = _PLAIN_WORDS.findall(segment)
        run.extend(map(normalize_word, found) if british else found)

    for m in _TOKENS.finditer(text):
        kind = m.lastgroup
        words_until(m.start())
        at = m.end()
        if run:
            _read_words(run, reading)
            run.clear()
        if kind == "punct":
            reading.slots.append(m.group())
        elif kind == "brk":
            reading.end_clause()
        elif kind == "ref":
            n_refs += 1
            if not _read_ref(m.group("ref"), reading):
                empty_ref = True
            reading.slots.append("#")
        else:  # a box (the last group of its alternative)
            box: Box = (
                int(m.group("x0")),
                int(m.group("y0")),
                int(m.group("x1")),
                int(m.group("y1")),
            )
            reading.add_box(box)
    words_until(len(text))
    if run:
        _read_words(run, reading)
    boxes = tuple(reading.boxes)
    malformed = _count_malformed(text, len(boxes), n_refs) or (
        "malformed_ref" if empty_ref else None
    )
    frozen = tuple(
        Mention(
            m["kind"],
            m["base"],
            m["side"],
            m["known"],
            tuple(m["boxes"]),
            m["text"],
            m["clause"],
            m["context"],
            m["base"] in lexicon.generic and m["clause"] not in reading.another,
            reading.more
            and _one_more(reading.slots, m["position"], reading.clause_starts[m["clause"]]),
            m["position"],
        )
        for m in reading.mentions
    )
    attached = _attach_all(reading)
    return TextClaims(frozen, attached, boxes, malformed)


def _read_ref(phrase: str, reading: _Reading) -> bool:
    """Add the mention of one ``<ref>PHRASE</ref>``, named as the lexicon knows it (leading
    articles dropped). Returns False when the phrase has no words."""
    ref_words = words_of(phrase)
    has_words = bool(ref_words)
    while ref_words and ref_words[0] in _ARTICLES:
        ref_words = ref_words[1:]
    found = reading.lexicon.canonical(ref_words)
    base, side = found if found else split_side(ref_words)
    named = reading.mention("ref", base, side, found is not None, [], f"<ref>{phrase}</ref>")
    named["context"] = False  # a <ref> grounds a region
    reading.add_named(named)
    return has_words


def _sided_names(run: list[str], k: int, lexicon: Lexicon) -> tuple[int, list] | None:
    """Names with a side written apart from them at ``run[k]``: "patient left kidney" (the
    patient's left kidney) and "left and (the) right kidney(s)". (length, [(base, side)...])."""
    word = run[k]
    if word == "patient" and k + 2 < len(run) and run[k + 1] in SIDES:
        n, base, side = lexicon.match(run, k + 2)
        if n and side is None:
            return 2 + n, [(base, run[k + 1])]
    if word in SIDES and k + 3 < len(run) and run[k + 1] == "and":
        j = k + 3 if run[k + 2] == "the" else k + 2
        if j < len(run) and run[j] in SIDES and run[j] != word and j + 1 < len(run):
            n, base, side = lexicon.match(run, j + 1)
            if n and side is None:
                return j + 1 + n - k, [(base, word), (base, run[j])]
    if word not in SIDES and k + 2 < len(run) and run[k + 1] == "and":  # "grey and white matter"
        n, base, side = lexicon.match(run, k + 2)
        found = lexicon.canonical((word, *run[k + 3 : k + 2 + n])) if n > 1 else None
        if found is not None and side is None and found[1] is None:
            return 2 + n, [(found[0], None), (base, None)]
    return None


def _read_words(run: list[str], reading: _Reading) -> None:
    """Names and attribute phrases of a run of words, longest first, names before phrases."""
    lexicon = reading.lexicon
    starts = lexicon.starts
    slots = reading.slots
    k = 0
    end = len(run)
    while k < end:
        word = run[k]
        following = run[k + 1] if k + 1 < end else None
        if word == "patient" or following == "and" or (word in SIDES and following in _ONE):
            n = _read_special(run, k, reading)
            if n:
                k += n
                continue
        if word in starts or (word in SIDES and following is not None):
            n, base, side = lexicon.match(run, k)
            if n:
                text = " ".join(run[k : k + n])
                if side is not None:
                    _side_of_part(reading, base, side)
                reading.add_named(reading.mention("name", base, side, True, [], text))
                slots.append("#")
                k += n
                continue
        sizes = PHRASE_STARTS.get(word)
        if sizes is not None:
            n = _read_phrase(run, k, sizes, reading)
            if n:
                k += n
                continue
        if word in _NOTED:
            _note(word, reading)
        if _is_appearance(word):
            reading.attributes.append(  # "photopenic", "hypoattenuating": no fact says so
                {"kind": "unsupported", "value": word, "text": word,
                 "position": len(slots), "clause": reading.clause}
            )  # fmt: skip
            slots.append("#")
            k += 1
            continue
        slots.append(word)
        k += 1


@lru_cache(maxsize=1 << 16)
def _is_appearance(word: str) -> bool:
    """Whether a plain word states appearance by its form ("photopenic", "hypoattenuating")."""
    return word.startswith(APPEARANCE_PREFIXES) or word.endswith(APPEARANCE_SUFFIXES)


def _read_special(run: list[str], k: int, reading: _Reading) -> int:
    """Names whose side or structure is written apart from them at ``run[k]`` ("the patient's
    left kidney", "left and right lungs", "grey and white matter", "the left one"): the words
    read, 0 when none."""
    word = run[k]
    sided = _sided_names(run, k, reading.lexicon)
    if sided is not None:
        n, names = sided
        for base, side in names:
            text = " ".join(run[k : k + n])
            reading.add_named(reading.mention("name", base, side, True, [], text))
        reading.slots.append("#")
        return n
    if word in SIDES and k + 1 < len(run) and run[k + 1] in _ONE:
        latest = _latest_name(reading)  # "the left one": of the structure just named
        if latest is not None:
            text = " ".join(run[k : k + 2])
            reading.add_named(reading.mention("name", latest, word, True, [], text))
            reading.slots.append("#")
            return 2
    return 0


def _read_phrase(run: list[str], k: int, sizes: tuple[int, ...], reading: _Reading) -> int:
    """The longest attribute phrase at ``run[k]``, added to the reading: the words read, 0 when
    none."""
    for size in sizes:
        phrase = PHRASES.get(tuple(run[k : k + size])) if k + size <= len(run) else None
        if phrase is None or not _takes(phrase, reading):
            continue
        if phrase[0] in IMAGE_FRAME_KINDS:
            reading.framed.add(reading.clause)
            reading.framed.add(-1)  # the text speaks of the image's sides
        elif not FRAME_WORDS.isdisjoint(run[k : k + size]):
            reading.framed.add(reading.clause)  # "this fundus image": of the image
        if phrase[0] == "relation":
            reading.bare = []  # "<box> lies below the liver": the box is not the liver's
        start = max(reading.clause_starts[-1], len(reading.slots) - 6)
        reading.attributes.append(
            {
                "kind": phrase[0],
                "value": phrase[1],
                "text": " ".join(run[k : k + size]),
                "position": len(reading.slots),
                "clause": reading.clause,
                "negated": not NEGATIONS.isdisjoint(reading.slots[start:]),
            }
        )
        reading.slots.append("#")
        return size
    return 0


def _note(word: str, reading: _Reading) -> None:
    """Remember a plain word that changes how the text is read: one of the image's frame
    ("image": its sides are the image's), "also"/"another", "a second"."""
    if word in FRAME_WORDS:
        reading.framed.add(reading.clause)
    if word in ANOTHER_WORDS:
        reading.another.add(reading.clause)
    if word in MORE_WORDS:
        reading.more = True


def _side_of_part(reading: _Reading, base: tuple[str, ...], side: str) -> None:
    """ "The white matter of the right hemisphere": a sided broader word or body part after
    "of the" / "in the" gives its side to the name right before it."""
    lexicon = reading.lexicon
    if base not in lexicon.broader and base not in lexicon.context:
        return
    slots = reading.slots
    k = len(slots) - 1
    while k >= 0 and slots[k] in _ARTICLES:
        k -= 1
    if k < 1 or slots[k] not in ("of", "in"):
        return
    for m in reversed(reading.mentions):
        if m["position"] == k - 1 and m["side"] is None and m["kind"] == "name":
            m["side"] = side
        if m["position"] < k - 1:
            return


def _one_more(slots: list[str], position: int, clause_start: int) -> bool:
    """Whether a name at slot ``position`` is written as one more of its kind: a word of
    :data:`MORE_WORDS` among the three words before it in its clause ("a second polyp")."""
    return any(w in MORE_WORDS for w in slots[max(clause_start, position - 3) : position])


def _latest_name(reading: _Reading) -> tuple[str, ...] | None:
    """The structure of the latest name read (for "the left one")."""
    for m in reversed(reading.mentions):
        if m["kind"] != "box" and not m["context"] and m["known"]:
            return m["base"]
    return None


def _takes(phrase: tuple[str, str], reading: _Reading) -> bool:
    """Whether a phrase states its claim here: "contains" right after a bare box binds the box
    ("<box> contains the liver"), it relates nothing."""
    if phrase == ("relation", "contains") and reading.bare and reading.slots[-1:] == [_BOX_SLOT]:
        return False
    return True


def _attach_all(reading: _Reading) -> tuple[Attribute, ...]:
    """Every attribute with the mentions it describes (see the module docstring)."""
    return attach_all(
        reading.mentions,
        reading.attributes,
        reading.slots,
        reading.framed,
        CONJUNCTIONS,
        RELATION_FILLERS,
        IMAGE_KINDS,
    )


@lru_cache(maxsize=1 << 14)
def _read_cached(text: str, lexicon: Lexicon) -> TextClaims:
    return read_text(text, lexicon)  # questions repeat ("Describe this medical image.")


def read_claims(question: str, answer: str, lexicon: Lexicon) -> TurnClaims:
    """The claims of a turn's question and answer."""
    return TurnClaims(_read_cached(question, lexicon), _read_cached(answer, lexicon))
