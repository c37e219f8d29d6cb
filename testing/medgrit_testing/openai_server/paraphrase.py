"""Honest answers in fluent clinical prose: the ``paraphrase`` style of the fake provider.

With ``ServerConfig(style="paraphrase")`` an answer is as true of the prompt's image facts
(:class:`medgrit.schemas.llm.ImagePromptFacts`) as a ``plain`` one, but written the way a capable
model writes instruction data, from the phrase bank of this module:

- names: a label or a common synonym of it ("urinary bladder", "optic nerve head", "cardiac
  silhouette" on a radiograph), "the lesion" for the one lesion-like region of an image, and the
  patient's side ("the patient's left kidney", "the kidney on the patient's left side");
- the image: modality and plane words ("an axial CT slice", "an MR image in the coronal plane")
  and the body part its labels or modality imply ("of the brain", "a fundus photograph of the
  retina", "of the skin", "of the pelvis"); none where the labels imply none or several;
- positions as rows, columns or thirds of the image ("in the lower middle of the image"), halves
  only as ``image_side`` gives them ("in the right half of the image"), size words ("very small"
  only for tiny), the region's relations ("lies above the spleen") and coordinated clauses
  ("the liver is large and the spleen is small");
- boxes in varied forms ("the liver at <box>", "<ref>liver</ref><box>", "<box> (liver)").

Every box is a region's own box. Lies (:mod:`.lies`) pass the writers a region's copy with one
fact changed, a name, or the attributes an answer must state.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterable

from medgrit.core.text import format_box, laterality_of, strip_laterality
from medgrit.schemas.llm import ImagePromptFacts, PromptRegion

MAX_MIA_REGIONS = 8
PLANES: tuple[str, ...] = ("axial", "coronal", "sagittal")
SIZE_ORDER: tuple[str, ...] = ("tiny", "small", "medium", "large")
# Common synonyms of a label (without its side word); each names that structure and no other.
SYNONYMS: dict[str, tuple[str, ...]] = {
    "bladder": ("urinary bladder",), "urinary bladder": ("bladder",),
    "polyp": ("polypoid lesion",), "macula": ("macular region",), "cyst": ("cystic lesion",),
    "optic disc": ("optic nerve head", "optic disk"), "optic disk": ("optic disc",),
    "spine": ("vertebral column", "spinal column"), "body": ("body outline", "body contour"),
    "grey matter": ("gray matter",), "gray matter": ("grey matter",),
    "white matter": ("cerebral white matter",), "gallbladder": ("gall bladder",),
    "esophagus": ("oesophagus",), "oesophagus": ("esophagus",),
    "prostate": ("prostate gland",), "brainstem": ("brain stem",),
    "adrenal gland": ("adrenal",), "tumour": ("tumor",), "tumor": ("tumour",),
}  # fmt: skip
# Synonyms that belong to plain radiographs only.
XRAY_SYNONYMS: dict[str, tuple[str, ...]] = {
    "heart": ("cardiac silhouette",), "lungs": ("lung fields",), "lung": ("lung field",),
}  # fmt: skip
LESION_WORDS = frozenset(
    "lesion tumour tumor polyp cyst nodule mass metastasis carcinoma cancer melanoma nevus "
    "naevus neoplasm".split()
)
# Label words that place an image in one body part.
BODY_WORDS: dict[str, frozenset[str]] = {
    part: frozenset(words.split())
    for part, words in (
        ("brain", "matter caudate putamen thalamus hippocampus brainstem cerebellum amygdala "
         "pallidum cortex insula ventricle ventricles cerebral"),
        ("chest", "lung lungs heart trachea esophagus oesophagus sternum rib ribs clavicle"),
        ("abdomen", "liver spleen kidney kidneys pancreas stomach gallbladder duodenum adrenal"),
        ("pelvis", "bladder prostate rectum uterus ovary ovaries"),
    )
}  # fmt: skip
_IMAGE_NOUNS: dict[str, tuple[str, ...]] = {
    "CT": ("CT image", "CT slice", "CT scan", "computed tomography image"),
    "MRI": ("MR image", "MRI slice", "MRI scan", "magnetic resonance image"),
    "PET": ("PET image", "PET slice", "PET scan"), "fundus": ("fundus photograph", "fundus image"),
    "X-ray": ("radiograph", "X-ray image", "plain radiograph"),
    "ultrasound": ("ultrasound image", "sonographic image", "ultrasound scan"),
    "endoscopy": ("endoscopic image", "endoscopy frame", "endoscopic view"),
    "dermoscopy": ("dermoscopic image", "dermoscopy image", "dermatoscopic image"),
}  # fmt: skip
_PLANE_WORDS = {"axial": ("axial", "axial", "transverse")}
_SIZES = {
    "tiny": ("tiny", "very small"), "small": ("small",), "large": ("large",),
    "medium": ("medium-sized", "moderately sized", "mid-sized"),
}  # fmt: skip
_ROWS = {"upper": ("upper", "top"), "middle": ("middle",), "lower": ("lower", "bottom")}
_COLS = ("left", "center", "right")
_RELATION_VERBS: dict[str, tuple[str, ...]] = {
    "above": ("lies above", "sits above", "is located above", "is seen above"),
    "below": ("lies below", "sits below", "is located below", "is seen below"),
    "to the left of": ("lies to the left of", "is located to the left of", "is to the left of"),
    "to the right of": ("lies to the right of", "is located to the right of", "is to the right of"),
    "within": ("lies within", "is inside", "is contained within", "sits within"),
    "inside": ("lies inside", "is within", "is contained within"),
    "adjacent to": ("lies adjacent to", "lies next to", "borders", "is adjacent to"),
    "next to": ("lies next to", "is adjacent to", "borders"),
    "larger than": ("is larger than", "is bigger than"),
    "smaller than": ("is smaller than",), "contains": ("contains", "encloses"),
}  # fmt: skip
# Sentence templates. Fields: {name} a region's name with its article ({Name} capitalised),
# {bare} its name without article, {box}, {boxes}, {where} a position phrase, {image} the image
# phrase ({a} its article, {A} capitalised), {listing}, {said} clauses, {relation} a relation.
_MIA_QUESTIONS = (
    "What does this image show?", "Describe this {image}.", "What can you see in this {image}?",
    "Which structures are outlined in this image, and where are they?",
    "Give an overview of the labelled structures in this image.",
)  # fmt: skip
_MIA_ANSWERS = (
    "This is {a} {image}. It shows {listing}.", "{A} {image} showing {listing}.",
    "This {image} shows {listing}.", "In this {image}, the outlined structures are {listing}.",
    "The image is {a} {image}; the labelled structures are {listing}.",
)  # fmt: skip
_LISTING_ITEMS = ("{name} at {box}", "{name} ({box})", "<ref>{bare}</ref>{box}", "{box} ({bare})")
_VG_QUESTIONS = (
    "Where is {name}?", "Where is {name} in this {image}?", "Locate {name}.",
    "Can you show me {name}?", "Find {name} and give its box.", "Which box outlines {name}?",
)  # fmt: skip
_VG_SHARED_QUESTIONS = ("Where are the {bare} regions in this image?",
                        "Outline every region of the {bare} here.")  # fmt: skip
_VG_ANSWERS = (
    "<ref>{bare}</ref>{box}", "{Name} is at {box}.", "{Name} is located at {box}, {where}.",
    "You can find {name} here: {box}.", "{Name}: {box}.", "{Name} lies {where}, at {box}.",
)  # fmt: skip
_VG_SHARED_ANSWERS = (
    "<ref>{bare}</ref>{boxes}", "Each of these boxes outlines the {bare} or part of it: {listing}.",
    "The {bare} regions are at {listing}.",
)  # fmt: skip
_ROC_QUESTIONS = (
    "What is the structure in {box}?", "What does the box {box} outline?",
    "Which structure lies within {box}?", "Identify the region marked {box}.",
    "What is shown at {box}?", "Name the structure enclosed by {box}.",
)  # fmt: skip
_ROC_ANSWERS = (
    "This is {name}.", "It is {name}.", "The box outlines {name}.", "{Name}.",
    "That region corresponds to {name}.", "This is {name}, {where}.",
)  # fmt: skip
_RC_QUESTIONS = (
    "Describe the region {box}.", "What can you tell me about {box}?",
    "Tell me about the area outlined by {box}.", "Give a short description of the region at {box}.",
    "What is in {box}, and where does it lie?",
)  # fmt: skip
_RC_ANSWERS = (
    "This is {name}. It {said}.", "{Name} {said}.", "The region shows {name}, which {said}.",
    "{Name}, at {box}, {said}.", "This box contains {name}: it {said}.",
)  # fmt: skip
_SIDED_NAMES = ("the {side} {noun}", "the patient's {side} {noun}",
                "the {noun} on the patient's {side} side")  # fmt: skip
_RELATION = re.compile(r"^(?P<head>.+?)\s*\((?P<id>[^()\s]+)\)\s*$")


def cap(text: str) -> str:
    """``text`` with its first character upper-cased (the rest unchanged)."""
    return text[:1].upper() + text[1:]


def article(phrase: str) -> str:
    """``a`` or ``an`` before ``phrase`` as it is spoken ("an MR image", "a CT slice")."""
    spoken_vowel = phrase[:1].lower() in "aeiou" or phrase.startswith(("MR", "X-ray", "FDG"))
    return "an" if spoken_vowel else "a"


def join_words(items: list[str]) -> str:
    """``a``, ``a and b``, ``a, b and c``."""
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} and {items[-1]}"


def _words(label: str) -> set[str]:
    return set(re.findall(r"[a-z]+", label.lower()))


def lesion_like(label: str) -> bool:
    """Whether a label names a lesion-like structure (tumour, polyp, cyst, ...)."""
    return bool(_words(label) & LESION_WORDS)


def synonyms_of(base: str, modality: str) -> tuple[str, ...]:
    """The bank's synonyms of a label without its side word, on an image of ``modality``."""
    extra = XRAY_SYNONYMS.get(base, ()) if modality == "X-ray" else ()
    return SYNONYMS.get(base, ()) + extra


def body_part(facts: ImagePromptFacts) -> str | None:
    """The body part the image shows, as its modality or labels imply it; None when they imply
    none or more than one (abdomen and pelvis together excepted)."""
    if facts.modality in ("fundus", "dermoscopy"):
        return "retina" if facts.modality == "fundus" else "skin"
    words = {w for r in facts.regions for w in _words(strip_laterality(r.label))}
    found = {part for part, known in BODY_WORDS.items() if words & known}
    if found == {"abdomen", "pelvis"}:
        return "abdomen and pelvis"
    return found.pop() if len(found) == 1 else None


def _plane(facts: ImagePromptFacts) -> str | None:
    first = facts.view.split(" ", 1)[0]
    return first if first in PLANES else None


def image_phrase(facts: ImagePromptFacts, rng: random.Random) -> str:
    """The image as a noun phrase without article: modality, plane and body part words."""
    body, plane = body_part(facts), _plane(facts)
    if facts.modality == "X-ray" and body == "chest" and plane is None:
        noun, body = rng.choice(("chest radiograph", "chest X-ray")), None
    elif body == "retina" and rng.random() < 0.4:
        noun, body = "retinal fundus photograph", None
    else:
        noun = rng.choice(_IMAGE_NOUNS.get(facts.modality, (f"{facts.modality} image",)))
    if body:
        noun += (
            rng.choice((f" of the {body}", f" through the {body}")) if plane else f" of the {body}"
        )
    if plane:
        word = rng.choice(_PLANE_WORDS.get(plane, (plane,)))
        noun = rng.choice((f"{word} {noun}", f"{noun} in the {word} plane"))
    return noun


def position_phrase(position: str, rng: random.Random, whole: bool = False) -> str:
    """Where a region lies, from its 3x3 grid cell ("in the lower middle of the image"); with
    ``whole``, never a row or column alone ("in the lower third of the image")."""
    if position == "center":
        return rng.choice(
            ("in the centre of the image", "in the center of the image", "centrally in the image")
        )
    row, _, col = position.partition(" ")
    if row not in _ROWS or col not in _COLS:
        return f"in the {position} part of the image"
    if row == "middle":
        options = [f"in the middle {col} of the image", f"in the {col} third of the image"]
        options[1] += " at mid-height"
        options.append(f"on the {col} side of the image")
    elif col == "center":
        r = rng.choice(_ROWS[row])
        options = [f"in the {r} middle of the image", f"in the {r} centre of the image"]
        options.append(f"in the {row} third of the image")
    else:
        r = rng.choice(_ROWS[row])
        options = [f"in the {r} {col} of the image", f"in the {r} {col} part of the image"]
        options += [f"toward the {r} {col} of the image", f"in the {row} third of the image"]
    return rng.choice(options[:2] if whole else options)


def half_phrase(region: PromptRegion, rng: random.Random) -> str | None:
    """The half of the image holding the region, as ``image_side`` gives it; None where its grid
    column disagrees (facts without an ``image_side`` of their own)."""
    col = region.position.rpartition(" ")[2] if " " in region.position else "center"
    side = region.image_side
    if side in ("left", "right") and col in (side, "center"):
        return rng.choice((f"in the {side} half of the image", f"on the {side} side of the image"))
    if side == "midline" and col == "center":
        return rng.choice(("close to the vertical midline of the image", "near the image midline"))
    return None


def size_adjective(size: str, rng: random.Random) -> str:
    """A size word of the bank for ``size`` ("very small" only for tiny)."""
    return rng.choice(_SIZES.get(size, (size,)))


def noun_for(region: PromptRegion, facts: ImagePromptFacts, rng: random.Random) -> str:
    """The region's structure without side word: its label, a synonym or a broader word."""
    base = strip_laterality(region.label)
    options = [base, *synonyms_of(base, facts.modality)]
    if base != "lesion" and [r for r in facts.regions if lesion_like(r.label)] == [region]:
        options.append("lesion")  # the image's one lesion-like region
    return rng.choice(options)


def _shared_label(region: PromptRegion, facts: ImagePromptFacts) -> bool:
    return sum(r.label == region.label for r in facts.regions) > 1


def region_name(
    region: PromptRegion, facts: ImagePromptFacts, rng: random.Random, inner: bool = False
) -> str:
    """A noun phrase naming the region, article included ("the patient's left kidney"); with
    ``inner`` (inside another phrase), never "the kidney on the patient's left side", whose side
    could be read as the whole phrase's."""
    noun = noun_for(region, facts, rng)
    side = laterality_of(region.label)
    if _shared_label(region, facts):  # one of several regions of its label (a merged one too)
        phrase = f"{side} {noun}" if side else noun
        countable = lesion_like(region.label)
        return f"{article(phrase)} {phrase}" if countable else f"a region of the {phrase}"
    forms = _SIDED_NAMES[:2] if inner else _SIDED_NAMES
    return rng.choice(forms).format(side=side, noun=noun) if side else f"the {noun}"


def bare_name(region: PromptRegion, facts: ImagePromptFacts, rng: random.Random) -> str:
    """The region's name for a ``<ref>`` tag or a parenthesis: label or synonym, side kept."""
    side = laterality_of(region.label)
    noun = noun_for(region, facts, rng)
    return f"{side} {noun}" if side else noun


def relation_parts(relation: str) -> tuple[str, str, str] | None:
    """(preposition, target id, rest) of a relation such as ``"to the left of the liver in the
    image (r0)"`` -> ``("to the left of", "r0", " in the image")``; None when unreadable."""
    match = _RELATION.match(relation.strip())
    if not match:
        return None
    head = match["head"]
    for prep in sorted(_RELATION_VERBS, key=len, reverse=True):
        if head.startswith(prep + " the "):
            rest = head[len(prep) + 1 :]
            return prep, match["id"], rest
    return None


def relation_phrase(relation: str, facts: ImagePromptFacts, rng: random.Random) -> str | None:
    """A verb phrase stating ``relation`` ("lies above the spleen"); None when unreadable."""
    parts = relation_parts(relation)
    by_id = {r.id: r for r in facts.regions}
    if parts is None or parts[1] not in by_id:
        return None
    prep, target_id, rest = parts
    target = by_id[target_id]
    own = f"the {target.label}"
    if not rest.startswith(own):
        return None
    named = own if _shared_label(target, facts) else region_name(target, facts, rng, inner=True)
    return f"{rng.choice(_RELATION_VERBS[prep])} {named}{rest[len(own) :]}"


def _relations(region: PromptRegion, facts: ImagePromptFacts, rng: random.Random) -> list[str]:
    phrases = (relation_phrase(text, facts, rng) for text in region.relations)
    return [p for p in phrases if p]


def _say(templates: tuple[str, ...], rng: random.Random, **fields: str) -> str:
    """One of ``templates`` filled in; ``{Name}`` and ``{A}`` are ``name`` and ``a`` capitalised."""
    if "name" in fields:
        fields["Name"] = cap(fields["name"])
    if "a" in fields:
        fields["A"] = cap(fields["a"])
    return rng.choice(templates).format(**fields)


def mia_question(facts: ImagePromptFacts, rng: random.Random) -> str:
    """An MIA question about the whole image."""
    return _say(_MIA_QUESTIONS, rng, image=image_phrase(facts, rng))


def _listing(regions: list[PromptRegion], facts: ImagePromptFacts, rng: random.Random) -> str:
    """Every region with its box, all in one of the listing forms."""
    form = rng.choice(_LISTING_ITEMS)
    names = [(region_name(r, facts, rng), bare_name(r, facts, rng), r.box) for r in regions]
    return join_words([form.format(name=n, bare=b, box=format_box(x)) for n, b, x in names])


def _mia_extras(
    facts: ImagePromptFacts, listed: list[PromptRegion], rng: random.Random
) -> list[str]:
    """Zero to two more sentences about the listed regions: sizes, a relation or a position."""
    single = [r for r in listed if not _shared_label(r, facts)]
    listed_ids = {r.id for r in listed}
    options = []
    if len(single) >= 2:
        a, b = rng.sample(single, 2)
        options.append(
            f"{cap(region_name(a, facts, rng))} is {size_adjective(a.size, rng)} and "
            f"{region_name(b, facts, rng)} is {size_adjective(b.size, rng)}."
        )
    for r in single:
        for text in r.relations:
            parts = relation_parts(text)
            phrase = relation_phrase(text, facts, rng) if parts else None
            if phrase and parts and parts[1] in listed_ids:
                options.append(f"{cap(region_name(r, facts, rng))} {phrase}.")
    if single:
        r = rng.choice(single)
        where = position_phrase(r.position, rng)
        options.append(f"{cap(region_name(r, facts, rng))} lies {where}.")
    count = min(len(options), rng.choice((0, 1, 1, 2)))
    return rng.sample(options, count)


def mia_text(facts: ImagePromptFacts, listed: list[PromptRegion], rng: random.Random) -> str:
    """An MIA answer: the image, then every listed region with its box, maybe more sentences."""
    image = image_phrase(facts, rng)
    listing = _listing(listed, facts, rng)
    opener = _say(_MIA_ANSWERS, rng, a=article(image), image=image, listing=listing)
    return " ".join([opener, *_mia_extras(facts, listed, rng)])


def vg_question_text(region: PromptRegion, facts: ImagePromptFacts, rng: random.Random) -> str:
    """A VG question asking where the region's structure is."""
    if _shared_label(region, facts):
        return _say(_VG_SHARED_QUESTIONS, rng, bare=bare_name(region, facts, rng))
    name = region_name(region, facts, rng)
    return _say(_VG_QUESTIONS, rng, name=name, image=image_phrase(facts, rng))


def vg_text(same: list[PromptRegion], facts: ImagePromptFacts, rng: random.Random) -> str:
    """A VG answer giving the box of every region in ``same`` (one label's regions)."""
    first = same[0]
    bare = bare_name(first, facts, rng)
    boxes = [format_box(r.box) for r in same]
    if len(same) > 1:
        fields = {"boxes": "".join(boxes), "listing": join_words(boxes)}
        return _say(_VG_SHARED_ANSWERS, rng, bare=bare, **fields)
    where = position_phrase(first.position, rng)
    name = region_name(first, facts, rng)
    return _say(_VG_ANSWERS, rng, name=name, bare=bare, box=boxes[0], where=where)


def roc_question(region: PromptRegion, rng: random.Random) -> str:
    """An ROC question giving the region's box."""
    return _say(_ROC_QUESTIONS, rng, box=format_box(region.box))


def roc_text(
    region: PromptRegion, facts: ImagePromptFacts, rng: random.Random, name: str | None = None
) -> str:
    """An ROC answer naming the region (or calling it ``name``, for lies)."""
    name = name or region_name(region, facts, rng)
    relations = _relations(region, facts, rng)
    templates = (*_ROC_ANSWERS, "This is {name}, which {relation}.") if relations else _ROC_ANSWERS
    where, relation = position_phrase(region.position, rng), rng.choice(relations or [""])
    return _say(templates, rng, name=name, where=where, relation=relation)


def rc_question(region: PromptRegion, rng: random.Random) -> str:
    """An RC question giving the region's box."""
    return _say(_RC_QUESTIONS, rng, box=format_box(region.box))


def _rc_clauses(
    region: PromptRegion,
    facts: ImagePromptFacts,
    rng: random.Random,
    name: str,
    include: Iterable[str],
) -> list[str]:
    """Verb phrases about the region: the ``include`` kinds, then one or two others."""
    adjective = size_adjective(region.size, rng)
    clauses = {"size": rng.choice((f"is {adjective}", f"is {adjective} relative to the image"))}
    verb = rng.choice(("lies", "is located", "sits", "is seen"))
    where = position_phrase(region.position, rng, whole="position" in include)
    clauses["position"] = f"{verb} {where}"
    half = half_phrase(region, rng)
    if half:
        clauses["half"] = f"lies {half}"
    relations = _relations(region, facts, rng)
    if relations:
        clauses["relation"] = rng.choice(relations)
    if region.side and f" {region.side} " not in f" {name} ":
        clauses["side"] = f"is on the patient's {region.side} side"
    forced = [k for k in include if k in clauses]
    optional = [k for k in clauses if k not in forced]
    picked = forced + rng.sample(optional, min(len(optional), rng.choice((1, 2, 2))))
    rng.shuffle(picked)
    return [clauses[k] for k in picked]


def rc_text(
    region: PromptRegion,
    facts: ImagePromptFacts,
    rng: random.Random,
    *,
    name: str | None = None,
    include: Iterable[str] = (),
) -> str:
    """An RC answer describing the region from its facts: ``name`` (default: one of the bank)
    and one to three of size, position, half, relation and side, the ``include`` ones among
    them (a lie passes a region's copy with one fact changed and that fact to include)."""
    if "side" in include and region.side:
        name = name or f"the {region.label}"
    name = name or region_name(region, facts, rng)
    said = join_words(_rc_clauses(region, facts, rng, name, include))
    return _say(_RC_ANSWERS, rng, name=name, said=said, box=format_box(region.box))


def _turn(task: str, question: str, answer: str, regions: list[PromptRegion]) -> dict:
    ids = [r.id for r in regions]
    return {"task": task, "question": question, "answer": answer, "region_ids": ids}


def region_turn(
    task: str, region: PromptRegion, facts: ImagePromptFacts, rng: random.Random
) -> dict:
    """One VG, ROC or RC turn about ``region`` in this style."""
    if task == "VG":
        same = [r for r in facts.regions if r.label == region.label]
        return _turn("VG", vg_question_text(region, facts, rng), vg_text(same, facts, rng), same)
    if task == "ROC":
        return _turn(task, roc_question(region, rng), roc_text(region, facts, rng), [region])
    return _turn(task, rc_question(region, rng), rc_text(region, facts, rng), [region])


def paraphrase_conversation(facts: ImagePromptFacts, turns: int, rng: random.Random) -> list[dict]:
    """A true conversation about ``facts`` in this style: one MIA turn, then ``turns - 1``
    region turns (VG, ROC and RC in turn, over the regions in a shuffled order)."""
    listed = facts.regions[:MAX_MIA_REGIONS]
    out = [_turn("MIA", mia_question(facts, rng), mia_text(facts, listed, rng), listed)]
    order = list(facts.regions)
    rng.shuffle(order)
    start = rng.randrange(3)
    for i in range(turns - 1):
        task = ("VG", "ROC", "RC")[(start + i) % 3]
        out.append(region_turn(task, order[i % len(order)], facts, rng))
    return out
