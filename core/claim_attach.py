"""Which mentions each attribute of a text describes (pure; :mod:`medgrit.core.claims` reads the
text, this module attaches what it read).

A text's reading is its mentions and attribute phrases (dicts with their slot ``position`` and
``clause``) and its slots (per position: a plain word, a punctuation mark or a marker). The rules
are those of :mod:`medgrit.core.claims`' docstring; in short:

- a clause's *parts* start at names that follow a conjunction or a comma; a part that states
  nothing ("the liver" in "the liver and the spleen are large") lends its last name to the next
  part's attributes;
- an attribute describes the name it stands right before, else the latest name before it in its
  part (else in its clause), else the first name after it that is no relation's other end, else
  the latest name of the clauses before, else the turn's regions;
- a relation relates its subject (found the same way, skipping the other ends of relations
  stated before it) to the mention right after it ("below the liver"), or to the latest name
  before it for a pronoun ("smaller than it", "to its left"); followed by a position phrase
  ("within its left half") it relates nothing.
"""

from __future__ import annotations

import bisect
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import NamedTuple

ARTICLES = frozenset({"the", "a", "an"})
_PLURAL_PRONOUNS = frozenset({"both", "each", "all"})
_JOINED_FILLERS = frozenset(
    {"the", "a", "an", "both", "each", "all", "two", "to", "with", "of", "from"}
)
# Words for a part of a structure that may follow its name ("the left grey matter focus").
_PART_NOUNS = frozenset({"focus", "portion", "part", "region", "piece", "fragment", "area"})
# Words between a part's conjunction and its name ("and in the middle right the left lung").
_PART_WORDS = frozenset({"in", "on", "at", "to", "of", "is", "are", "lies", "lie", "sits", "with"})
# Words that may stand between an attribute and the name it qualifies ("small and round liver").
BEFORE_NAME = frozenset({"the", "a", "an", "and", "of", "sized"})
PRONOUNS = frozenset({"it", "them", "its", "their"})
ENCLOSING = frozenset({"contains", "inside", "in"})
COPULAS = frozenset({"is", "are", "represents", "represent"})
RELATIVES = frozenset({"which", "that", "whose", "where", "itself"})
CONTINUING = frozenset({"and", "but", "while", "whilst", "yet", "with"})
# Words that say a predicate is about several names ("the liver and the spleen are large").
PLURAL_VERBS = frozenset({"are", "both", "each", "lie", "sit", "appear", "show", "have"})


class Attribute(NamedTuple):
    """A stated fact: ``kind`` is position, row, column, half, size, side, ambiguous_side,
    modality, plane, sequence, unsupported or relation; ``mentions`` are the mentions it
    describes (empty: the turn's regions); ``target`` is the mention a relation relates them to
    (None: nothing the text names), ``also`` the names joined to it by "and"."""

    kind: str
    value: str
    text: str
    mentions: tuple[int, ...]
    target: int | None = None
    also: tuple[int, ...] = ()
    negated: bool = False  # "not in the centre", "rather than", "neither ... nor"

    @property
    def mention(self) -> int | None:
        """The first mention it describes (None: the turn's)."""
        return self.mentions[0] if self.mentions else None


def attach_all(
    mentions: list[dict],
    attributes: list[dict],
    slots: list[str],
    framed: set[int],
    conjunctions: frozenset[str],
    fillers: frozenset[str],
    image_kinds: frozenset[str],
) -> tuple[Attribute, ...]:
    """Every attribute of a text with the mentions it describes.

    Args:
        mentions: the text's mentions (kind, clause, position, context ...), in order.
        attributes: the attribute phrases (kind, value, text, position, clause).
        slots: the text's slots.
        framed: the clauses that speak of the image's sides ("of the image", "midline"); -1
            when the text says "of the image" or "midline" anywhere.
        conjunctions: words before a name that start a new part of its clause.
        fillers: words that may stand between a relation phrase and its other end.
        image_kinds: attribute kinds about the image, not a region.
    """
    if not attributes and (not mentions or COPULAS.isdisjoint(slots)):
        return ()
    index = _Index.of(mentions, attributes, slots, conjunctions)
    out: list[Attribute | None] = [None] * len(attributes)
    found: dict[int, int | None] = {}  # relation phrase -> its other end (pronouns later)
    for n, a in enumerate(attributes):
        if a["kind"].startswith("relation"):
            found[n] = index.target_after(a, fillers)
    ends = {t for t in found.values() if t is not None and t >= 0}
    ends |= {j for t in list(ends) for j in index.joined_after(t)}
    targets: list[tuple[int, int]] = []  # (relation position, its other end), in order
    for n, target in found.items():
        a = attributes[n]
        if target == -3:  # "above the lungs and adjacent to both": the ends before
            target = targets[-1][1] if targets else None
        if target == -5:  # "X and Y, adjacent to each other": X to Y
            other = index.pronoun(a["position"], a["clause"], set())
            first = index.pronoun(
                a["position"], a["clause"], {other} if other is not None else set()
            )
            if other is not None and first is not None:
                out[n] = Attribute("relation", a["value"], a["text"], (first,), other)
                targets.append((a["position"], other))
            continue
        pronoun = target == -2
        if (
            target == -1
            or (
                target is None and a["value"] in ENCLOSING  # "it contains one labelled structure"
            )
            or (
                a["kind"] == "relation_soft"
                and (
                    target is None
                    or pronoun
                    or mentions[target]["context"]
                    or mentions[target]["kind"] == "box"
                )
            )
        ):
            continue  # "within its left half", "in the abdomen", "in <box>": no relation
        also = index.joined_after(target) if target is not None and target >= 0 else ()
        if found[n] == -3 and targets:  # every end of the relation before
            also = tuple(t for p, t in targets if p == targets[-1][0] and t != target)
        before = targets + [(a["position"], t) for t in also]
        subject = index.subject_of(
            a["position"], a["clause"], None if pronoun else target, before, ends
        )
        if pronoun:  # "smaller than it": the latest name before that is not the subject
            target = index.pronoun(a["position"], a["clause"], set(subject))
            also = index.joined_after(target) if target is not None else ()
            if a["value"] == "between" and target is not None:  # "between them": two names
                before = index.pronoun(a["position"], a["clause"], {*subject, target})
                also = (*also, before) if before is not None else also
        for t in (target, *also):
            if t is not None:
                targets.append((a["position"], t))
        if target is not None:  # "contains a tiny portion of the white matter": its size
            for p in range(a["position"] + 1, mentions[target]["position"]):
                if index.phrase_slots.get(p) == "size":
                    index.size_of[p] = target
        out[n] = Attribute(
            "relation", a["value"], a["text"], subject, target, also, a.get("negated", False)
        )
        for t in (target, *also):
            if t is not None and a["position"] < mentions[t]["position"]:
                index.end_subjects[t] = subject  # a pronoun's end came before: not a new end
    ends |= {t for _, t in targets}
    index.join(attributes, ends)
    if not COPULAS.isdisjoint(slots):
        out.extend(_identities(index, ends))
    for n, a in enumerate(attributes):
        kind = a["kind"]
        if kind.startswith("relation"):
            continue
        if kind in ("side_word", "ambiguous_side"):  # the image's where the clause says so
            kind = "half" if a["clause"] in framed or -1 in framed else "ambiguous_side"
        negated = a.get("negated", False)
        if kind in image_kinds:
            out[n] = Attribute(kind, a["value"], a["text"], (), None, (), negated)
        else:
            described = index.described(a["position"], a["clause"], ends)
            out[n] = Attribute(kind, a["value"], a["text"], described, None, (), negated)
    if "respectively" in slots:
        _respectively(out)
    return tuple(a for a in out if a is not None)


def _respectively(out: list[Attribute | None]) -> None:
    """ "The right lung and the left lung occupy the middle left and middle right respectively":
    attributes of one kind that describe the same joined names, as many as they, go to each in
    turn."""
    groups: dict[tuple, list[int]] = {}
    for n, a in enumerate(out):
        if a is not None and a.kind != "relation" and len(a.mentions) > 1:
            groups.setdefault((a.kind, a.mentions), []).append(n)
    for (_, mentions), found in groups.items():
        if len(found) == len(mentions):
            for n, m in zip(found, mentions, strict=True):
                out[n] = out[n]._replace(mentions=(m,))  # type: ignore[union-attr]


def _identities(index: _Index, ends: set[int]) -> tuple[Attribute, ...]:
    """ "X is the Y": a name without boxes right after "is"/"are" (articles apart) must be the
    structure its part's subject is ("the kidney <box> is the patient's right kidney")."""
    out = []
    for i, m in enumerate(index.mentions):
        if m["kind"] == "box" or m["context"] or m["boxes"] or i in ends:
            continue
        k = m["position"] - 1
        while k >= 0 and index.slots[k] in ARTICLES:
            k -= 1
        if k < 0 or index.slots[k] not in COPULAS:
            continue
        subject = index.subject_of(m["position"], m["clause"], i, [], ends)
        subject = tuple(j for j in subject if index.mentions[j]["position"] < m["position"])
        if subject:
            out.append(Attribute("relation", "same", m["text"], subject, i))
    return out


def after_conjunction(slots: list[str], position: int, conjunctions: frozenset[str]) -> bool:
    """Whether a name at slot ``position`` follows a conjunction or a comma (articles apart):
    it starts a new part of its clause."""
    k = position - 1
    while k >= 0 and slots[k] in ARTICLES:
        k -= 1
    return k >= 0 and (slots[k] in conjunctions or slots[k] == ",")


def conjunction_at(
    slots: list[str], position: int, conjunctions: frozenset[str], phrases: Mapping[int, str]
) -> int | None:
    """The slot of the conjunction or comma that starts the part of a name at ``position``,
    over articles, prepositions and attribute phrases ("..., and in the middle right the left
    lung"; "..., and inside the right grey matter the right white matter"), or None when no
    conjunction starts it."""
    k = position - 1
    while k >= 0 and (slots[k] in ARTICLES or slots[k] in _PART_WORDS or k in phrases):
        k -= 1
    if k >= 0 and (slots[k] in conjunctions or slots[k] == ","):
        return k
    return None


@dataclass
class _Index:
    """The mentions of a text by clause and part of a clause."""

    mentions: list[dict]
    slots: list[str]
    conjunctions: frozenset[str]
    part_of: list[int]  # per mention: its part (numbered across the text)
    joined: dict[int, tuple[int, ...]]  # name mention -> the names that share its attributes
    phrase_slots: dict[int, str]  # the slots of attribute phrases, with their kinds
    by_clause: dict[int, list[int]]  # clause -> its mentions that are no body part, in order
    at_slot: dict[int, int]  # slot -> the first mention there
    starts: dict[int, list[int]]  # clause -> the slots of its mentions that are no body part
    # relation end -> its subject
    end_subjects: dict[int, tuple[int, ...]] = field(default_factory=dict)
    size_of: dict[int, int] = field(default_factory=dict)  # size phrase -> relation end

    @classmethod
    def of(
        cls, mentions: list[dict], attributes: list[dict], slots: list[str], conj: frozenset[str]
    ) -> _Index:
        phrases = {a["position"]: a["kind"] for a in attributes}
        part_of: list[int] = []
        begins: list[int] = []  # per mention: the slot its part begins at
        part, clause = -1, -1
        for m in mentions:
            start = None if m["context"] else conjunction_at(slots, m["position"], conj, phrases)
            if m["clause"] != clause:
                clause, part = m["clause"], part + 1
            elif start is not None:
                part += 1
            part_of.append(part)
            begins.append(m["position"] if start is None else start)
        by_clause: dict[int, list[int]] = {}
        starts: dict[int, list[int]] = {}
        at_slot: dict[int, int] = {}
        for i, m in enumerate(mentions):
            at_slot.setdefault(m["position"], i)
            if not m["context"]:
                by_clause.setdefault(m["clause"], []).append(i)
                # A part begins at its conjunction: "..., and in the middle right the left lung"
                starts.setdefault(m["clause"], []).append(begins[i])
        index = cls(mentions, slots, conj, part_of, {}, phrases, by_clause, at_slot, starts)
        return index

    def join(self, attributes: list[dict], ends: set[int]) -> None:
        """Which names share the attributes that follow them: those of the parts before that
        state nothing, joined to a part whose predicate is about several names ("the liver and
        the spleen are large"). Relations' other ends join nothing."""
        if len(set(self.part_of)) == len(self.by_clause):
            return  # one part per clause: no names share attributes across parts
        mentions, part_of = self.mentions, self.part_of
        stated = set()
        for a in attributes:  # a phrase before a clause's first name is that name's part's
            part = self.part_at(a["position"], a["clause"])
            first = self.by_clause.get(a["clause"])
            stated.add(part if part is not None or not first else part_of[first[0]])
        relations = sorted(a["position"] for a in attributes if a["kind"].startswith("relation"))
        plural = self._plural_parts(relations)
        names = [
            i for i, m in enumerate(mentions)
            if not m["context"] and m["kind"] != "box" and i not in ends
        ]  # fmt: skip
        waiting: list[int] = []  # the last names of the parts before that state nothing
        for n, i in enumerate(names):
            self.joined[i] = (*waiting, i) if part_of[i] in plural else (i,)
            nxt = names[n + 1] if n + 1 < len(names) else None
            if nxt is not None and part_of[nxt] == part_of[i]:
                continue
            if (
                nxt is not None
                and mentions[nxt]["clause"] == mentions[i]["clause"]
                and part_of[i] not in stated
            ):
                waiting.append(i)
            else:
                waiting = []

    def _plural_parts(self, relations: list[int]) -> set[int]:
        """The parts whose words before any relation say their predicate is about several
        names ("are", "both"; not "below both lungs")."""
        out = set()
        starts = sorted({(m["position"], self.part_of[i]) for i, m in enumerate(self.mentions)})
        for n, (start, part) in enumerate(starts):
            end = starts[n + 1][0] if n + 1 < len(starts) else len(self.slots)
            at = bisect.bisect_left(relations, start)
            if at < len(relations) and relations[at] < end:
                end = relations[at]
            if not PLURAL_VERBS.isdisjoint(self.slots[start:end]):
                out.add(part)
        return out

    def _clause(self, clause: int, skip: set[int] | frozenset[int] = frozenset()) -> list[int]:
        own = self.by_clause.get(clause, [])
        return [i for i in own if i not in skip] if skip else own

    def part_at(self, position: int, clause: int) -> int | None:
        """The part of its clause a slot lies in (None: before the clause's first name)."""
        at = bisect.bisect_right(self.starts.get(clause, ()), position)
        return self.part_of[self.by_clause[clause][at - 1]] if at else None

    def _earlier(self, clause: int) -> tuple[int, ...]:
        """The latest name of the clauses before that is no relation's other end ("The spleen
        lies within the body. It is small.")."""
        for i in range(len(self.mentions) - 1, -1, -1):
            m = self.mentions[i]
            if m["clause"] < clause and not m["context"] and m["kind"] != "box":
                if i not in self.end_subjects:
                    return (i,)
        return ()

    def _before(
        self, position: int, clause: int, skip: set[int], whole_clause: bool = False
    ) -> tuple[int, ...]:
        """The latest name before ``position`` in its part of the clause (``whole_clause``:
        else in the clause), with the names joined to it."""
        part = self.part_at(position, clause)
        before = [i for i in self._clause(clause, skip) if self.mentions[i]["position"] < position]
        own = [i for i in before if self.part_of[i] == part]
        if own or (before and whole_clause):
            last = (own or before)[-1]
            return tuple(j for j in self.joined.get(last, (last,)) if j not in skip)
        return ()

    def described(self, position: int, clause: int, ends: set[int]) -> tuple[int, ...]:
        """The mentions an attribute at ``position`` describes (``ends``: relations' other
        ends, which an attribute after them does not describe)."""
        if position in self.size_of:
            return (self.size_of[position],)  # "contains a tiny portion of the white matter"
        own = self.by_clause.get(clause)
        if own is not None and len(own) == 1 and own[0] not in ends:
            return (own[0],)  # the clause names one structure: "the liver (large, center)"
        after = [i for i in self._clause(clause) if self.mentions[i]["position"] > position]
        if after:
            start = self.mentions[after[0]]["position"]
            between = self.slots[position + 1 : start]
            if all(w in BEFORE_NAME for w in between) and not after_conjunction(
                self.slots, start, self.conjunctions
            ):
                return (after[0],)  # "the small <ref>liver</ref>", "a large left kidney"
        own = self._before(position, clause, set())
        if own and own[-1] in self.end_subjects and self._inverted(own[-1]):
            # "Below the lungs, in the lower centre, sits the spine": the spine's position
            return self.end_subjects[own[-1]]
        if own and own[-1] in self.end_subjects and self._goes_on(own[-1], position):
            # "lies above the spine and is small": the subject is small, not the spine
            return self.end_subjects[own[-1]] or self._earlier(clause)
        if own:
            return own
        later = [i for i in after if i not in ends]
        return tuple(later[:1]) or self._earlier(clause)

    def _inverted(self, end: int) -> bool:
        """Whether a relation's subject comes after its other end ("Below the lungs sits the
        spine")."""
        subject = self.end_subjects[end]
        at = self.mentions[end]["position"]
        return bool(subject) and all(self.mentions[j]["position"] > at for j in subject)

    def _goes_on(self, end: int, position: int) -> bool:
        """Whether the words from a relation's other end to an attribute go on about the
        relation's subject ("above the spine and is small"), not about that end ("above the
        spine, which is small")."""
        between = self.slots[self.mentions[end]["position"] + 1 : position]
        while between[:1] == ["#box"]:
            between = between[1:]
        if between[:1] == [","] and between[1:2] in (["a"], ["an"]):
            return False  # "contains the spine, a small structure ... with its centre ..."
        going = next((k for k, w in enumerate(between) if w in CONTINUING), None)
        relative = next((k for k, w in enumerate(between) if w in RELATIVES), None)
        return going is not None and (relative is None or going < relative)

    def _relative(self, end: int, position: int) -> bool:
        """Whether the words from a relation's other end to a phrase are a relative clause
        about that end ("the spine, which is below the liver")."""
        between = self.slots[self.mentions[end]["position"] + 1 : position]
        return not RELATIVES.isdisjoint(between) and CONTINUING.isdisjoint(between)

    def target_after(self, phrase: dict, fillers: frozenset[str]) -> int | None:
        """The other end of a relation phrase: the mention right after it (only ``fillers``
        between), the latest name before it for a pronoun, None when nothing it can relate to
        follows, -1 when a position phrase follows ("within its left half"), -2 for a pronoun
        (resolved once the subject is known: :meth:`pronoun`)."""
        position = phrase["position"]
        if not PRONOUNS.isdisjoint(phrase["text"].split()):  # "to its left"
            return -2
        k = position + 1
        plural = False
        while k < len(self.slots):
            if self.slots[k] in fillers or self.phrase_slots.get(k) == "size":  # "a small lesion"
                plural = plural or self.slots[k] in _PLURAL_PRONOUNS
                k += 1
            elif self.slots[k] in ("and", "or") and str(self.phrase_slots.get(k + 1)).startswith(
                "relation"
            ):
                k += 2  # "adjacent to and above the heart": the heart is both phrases' end
            else:
                break
        if k in self.at_slot:
            return self.at_slot[k]
        if tuple(self.slots[k - 1 : k + 1]) in (("each", "other"), ("one", "another")):
            return -5  # "adjacent to each other": the two names before
        if plural:
            return -3  # "adjacent to both": the other ends of the relation before
        if k in self.phrase_slots:
            return -1
        if k < len(self.slots) and self.slots[k] in PRONOUNS:
            return -2
        return None

    def joined_after(self, target: int) -> tuple[int, ...]:
        """The names joined to a relation's other end by "and" or a comma ("below the right
        and left lungs", "smaller than the liver and the spleen")."""
        at = self.at_slot[self.mentions[target]["position"]]
        out = [i for i in self._at(self.mentions[target]["position"]) if i != target]
        last = max([target, at, *out])
        while True:
            k = self.mentions[last]["position"] + 1
            while k < len(self.slots) and self.slots[k] in _PART_NOUNS:
                k += 1
            if k >= len(self.slots) or self.slots[k] not in ("and", ","):
                return tuple(out)
            k += 1
            while k < len(self.slots) and (
                self.slots[k] in _JOINED_FILLERS or self.phrase_slots.get(k) == "size"
            ):
                k += 1  # "above the spleen and both kidneys"
            found = self._at(k)
            if not found:
                return tuple(out)
            out.extend(found)
            last = max(found)

    def _at(self, slot: int) -> list[int]:
        """The mentions at a slot (two for "the left and right lungs")."""
        first = self.at_slot.get(slot)
        if first is None:
            return []
        out = [first]
        while first + len(out) < len(self.mentions) and (
            self.mentions[first + len(out)]["position"] == slot
        ):
            out.append(first + len(out))
        return out

    def pronoun(self, position: int, clause: int, subject: set[int]) -> int | None:
        """What "it" or "them" after a relation stands for: the latest name before
        ``position`` in its clause that is not the relation's subject, else the subject of the
        clauses before ("Below it lies the kidney")."""
        for i in range(len(self.mentions) - 1, -1, -1):
            m = self.mentions[i]
            if (m["clause"] < clause or m["position"] < position) and m["clause"] <= clause:
                if not m["context"] and m["kind"] != "box" and i not in subject:
                    if m["clause"] == clause:
                        return i
                    earlier = self._earlier(clause)
                    return earlier[0] if earlier and earlier[0] not in subject else i
        return None

    def subject_of(
        self,
        position: int,
        clause: int,
        target: int | None,
        before: list[tuple[int, int]],
        ends: set[int],
    ) -> tuple[int, ...]:
        """The mentions a relation at ``position`` relates: the latest before it in its part
        (not its target, nor the other end of a relation before it; that end itself after
        "which"), else the first name after it in its part that is no relation's other end
        ("and inside the right grey matter the right white matter"), else the latest before it
        in its clause, else the first after it in its clause, else the latest name of the
        clauses before."""
        earlier_ends = {t for _, t in before}
        own_target = {target} if target is not None else set()
        last = self._before(position, clause, own_target, whole_clause=True)
        if last and last[-1] in earlier_ends and self._relative(last[-1], position):
            return last[-1:]  # "contains the spine, a small structure that is below the liver"
        skip = earlier_ends | own_target
        found = self._before(position, clause, skip)
        if found:
            return found
        part = self.part_at(position, clause)
        later = [
            i
            for i in self._clause(clause, skip | ends)
            if self.mentions[i]["position"] > position and self.mentions[i]["kind"] != "box"
        ]
        in_part = [i for i in later if self.part_of[i] == part]
        if in_part:
            return (in_part[0],)
        found = self._before(position, clause, skip, whole_clause=True)
        if found:
            return found
        if later:
            return (later[0],)
        earlier = self._earlier(clause)
        return earlier if earlier and earlier[0] != target else ()
