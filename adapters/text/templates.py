"""Jinja templates of ``prompts/`` and the template generator that renders planned turns.

Templates load from the installed ``medgrit.prompts`` package with ``StrictUndefined``, so a
missing variable is an error, never an empty string. Each template exports two lists,
``questions`` and ``answers``; a turn's variants index into them, so every template has the same
number of phrasings whatever its variables (a plural label or several boxes change the words of
a phrasing, never how many there are).

The text is written to pass every rule of :mod:`medgrit.core.verify` by construction: it names only
the labels it is given (always the exact label text, never re-inflected), states position, size,
side, modality, plane and sequence only through its variables (the sequence inside ``modality`` and
``view``: "FLAIR MRI"), and says "left"/"right" only inside a label, a grid phrase or "the
patient's left/right". An RC turn may state one relation of its region to another
(``medgrit.core.relations``: the first by priority, "within the liver"), which names that other
region's label.
"""

from __future__ import annotations

import hashlib
from functools import cached_property, lru_cache

import jinja2

from medgrit.core.generation import (
    QA,
    Generated,
    ImageFacts,
    RegionFacts,
    TurnPlan,
    plan_conversation,
)
from medgrit.core.ids import derive_seed
from medgrit.core.relations import first_relation_phrase
from medgrit.core.sequences import sequence_phrase
from medgrit.core.text import MODALITY_NAMES, format_box, laterality_of

TEMPLATE_FILES: dict[str, str] = {"VG": "vg.j2", "ROC": "roc.j2", "RC": "rc.j2", "MIA": "mia.j2"}


def make_environment() -> jinja2.Environment:
    """The Jinja environment over the packaged ``medgrit.prompts`` templates."""
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("medgrit.prompts", ""),
        undefined=jinja2.StrictUndefined,
        autoescape=False,
        keep_trailing_newline=False,
    )
    env.filters["with_article"] = with_article
    env.filters["capitalize_first"] = lambda text: text[:1].upper() + text[1:]
    env.filters["number_word"] = number_word
    env.tests["plural"] = is_plural
    return env


@lru_cache(maxsize=1)
def shared_environment() -> jinja2.Environment:
    """One :func:`make_environment` for this process's generators: each template is compiled
    once, not once per shard (compiling took more time than a shard's rendering)."""
    return make_environment()


def template_hashes(names: list[str]) -> dict[str, str]:
    """sha256 of the source of each named template in ``prompts/``."""
    env = make_environment()
    return {
        name: hashlib.sha256(env.loader.get_source(env, name)[0].encode()).hexdigest()  # type: ignore[union-attr]
        for name in sorted(names)
    }


def combined_hash(hashes: dict[str, str]) -> str:
    """One sha256 over several template hashes."""
    return hashlib.sha256(
        "".join(f"{k}:{v}\n" for k, v in sorted(hashes.items())).encode()
    ).hexdigest()


# Words that start with a vowel letter but a consonant sound ("a uterus", "a one-sided"), and
# the reverse ("an hour").
_CONSONANT_SOUND = ("uni", "use", "usu", "ure", "uri", "uro", "ute", "eu", "one")
_VOWEL_SOUND = ("hour", "honest", "heir")
_SAID_AS_WORDS = frozenset({"PET", "SPECT", "FLAIR", "STIR"})  # acronyms not spelled out


def with_article(phrase: str) -> str:
    """``phrase`` preceded by "a" or "an", by how it sounds: "an MRI", "an X-ray", "an axial CT",
    "an upper left", "a CT", "a PET", "a small", "a uterus"."""
    word = phrase.split(" ", 1)[0]
    lower = word.lower()
    if len(word) > 1 and word.isupper():  # an acronym, said letter by letter ("PET" is a word)
        vowel_sound = word[0] in "AEFHILMNORSX" and word not in _SAID_AS_WORDS
    elif lower.startswith("x-"):
        vowel_sound = True
    elif lower.startswith(_VOWEL_SOUND):
        vowel_sound = True
    else:
        vowel_sound = lower[:1] in "aeiou" and not lower.startswith(_CONSONANT_SOUND)
    return f"{'an' if vowel_sound else 'a'} {phrase}"


# Plurals that do not end in "s", and singular names that do, as the last word of a label.
IRREGULAR_PLURALS: frozenset[str] = frozenset(
    {
        "vertebrae", "teeth", "feet", "bronchi", "bronchioli", "alveoli", "ganglia", "nuclei",
        "menisci", "glomeruli", "sulci", "gyri", "thalami", "hippocampi", "villi", "cilia",
        "fimbriae", "bursae", "conchae", "pleurae", "trabeculae", "papillae", "corpora",
        "foramina", "labia", "atria", "septa", "crura", "ilia", "ischia", "viscera", "genitalia",
        "adnexa", "femora", "lumina", "haustra", "nevi", "naevi", "calculi", "thrombi", "emboli",
    }
)  # fmt: skip
SINGULARS_IN_S: frozenset[str] = frozenset(
    {
        "pons", "lens", "glans", "mons", "deferens", "biceps", "triceps", "quadriceps",
        "ascites", "caries", "series", "species", "herpes", "diabetes", "facies", "cns", "pns",
    }
)  # fmt: skip
_SINGULAR_ENDINGS = ("ss", "us", "is", "as", "os")


def is_plural(label: str) -> bool:
    """Whether a label names several things, so the text says "are"/"they" for it.

    The head noun decides: the last word before "of" ("islets of langerhans", "head of
    pancreas"), skipping words with digits ("vertebrae L1-L5"). It is plural when it ends in "s"
    but not "ss", "us", "is", "as" or "os" ("lungs", but "pancreas", "pelvis", "uterus",
    "iris"), or is an irregular plural ("vertebrae", "teeth", "bronchi"); "X and Y" is plural.
    The label itself is never changed.
    """
    words = label.lower().split()
    if "and" in words[1:-1]:
        return True
    if "of" in words[1:]:
        words = words[: words.index("of", 1)]
    words = [w for w in words if not any(c.isdigit() for c in w)]
    if not words:
        return False
    head = words[-1].strip(".,;:()[]'\"")
    if head in IRREGULAR_PLURALS:
        return True
    if head in SINGULARS_IN_S:
        return False
    return head.endswith("s") and not head.endswith(_SINGULAR_ENDINGS)


_NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def number_word(count: int) -> str:
    """A count as a person writes it in running text: "two" ... "nine", then digits ("12")."""
    return _NUMBER_WORDS[count] if 0 <= count < len(_NUMBER_WORDS) else str(count)


def view_variables(modality: str, plane: str, sequence: str = "") -> dict[str, str]:
    """Template variables that name the kind of image (``2d`` images have no plane words); the
    image's ``sequence`` comes before its modality ("FLAIR MRI", "axial T2-weighted MRI") where
    the text may name it (:func:`medgrit.core.sequences.sequence_phrase`)."""
    phrase = sequence_phrase(sequence) if sequence else ""
    name = f"{phrase} {MODALITY_NAMES[modality]}" if phrase else MODALITY_NAMES[modality]
    if plane == "2d":
        return {"modality": name, "view": name, "frame": "image", "plane_phrase": ""}
    return {
        "modality": name,
        "view": f"{plane} {name}",
        "frame": "slice",
        "plane_phrase": f" in the {plane} plane",
    }


def render_phrasings(env: jinja2.Environment, task: str, **variables: object) -> tuple[list, list]:
    """All question and answer phrasings of ``task`` for the given variables."""
    module = env.get_template(TEMPLATE_FILES[task]).make_module(vars=variables)
    return list(module.questions), list(module.answers)  # type: ignore[attr-defined]


def render_relation_answers(env: jinja2.Environment, **variables: object) -> list[str]:
    """The RC phrasings that state the region's relation (empty without one)."""
    module = env.get_template(TEMPLATE_FILES["RC"]).make_module(vars=variables)
    return list(module.relation_answers)  # type: ignore[attr-defined]


RELATION_SHARE = 3
_MARK = "\ue000"  # (a private-use character) around a box's number in a cached rendering
_RENDERED_MAX = 100_000  # cached renderings kept by a generator
"""One RC turn in this many, of a region with a relation, states it (drawn apart from the
other phrasings, so every other turn reads as before)."""


def _holds_mark(value: object) -> bool:
    if isinstance(value, str):
        return _MARK in value
    if isinstance(value, dict):
        return any(_holds_mark(v) for v in value.values())
    if isinstance(value, list):
        return any(_holds_mark(v) for v in value)
    return False


class TemplateGenerator:
    """The default generator: conversations from templates, no network.

    Args:
        seed: build seed; each image combines it with its id.
        max_region_turns: region-level turns per conversation (after the MIA turn).
    """

    name = "template"

    def __init__(self, seed: int = 0, max_region_turns: int = 3) -> None:
        self.seed = seed
        self.max_region_turns = max_region_turns
        self.env = shared_environment()
        self._rendered: dict[tuple, tuple[list, list]] = {}

    text_rules = None  # templates are checked by the golden tests, not by length rules

    @cached_property
    def template_hashes(self) -> dict[str, str]:
        """sha256 of each template's source, by file name."""
        return template_hashes(list(TEMPLATE_FILES.values()))

    @cached_property
    def template_hash(self) -> str:
        """One sha256 over all template hashes (stored on each conversation row)."""
        return combined_hash(self.template_hashes)

    @cached_property
    def variants(self) -> dict[str, tuple[int, int]]:
        """Number of question and answer phrasings per task."""
        sample = {
            "label": "x",
            "boxes": ["b"],
            "box": "b",
            **view_variables("ct", "axial"),
            "position": "center",
            "size": "small",
            "side": None,
            "relation": None,
            "regions": [{"label": "x", "box": "b", "position": "center", "size": "small"}],
        }
        out = {}
        for task in TEMPLATE_FILES:
            q, a = render_phrasings(self.env, task, **sample)
            out[task] = (len(q), len(a))
        return out

    def generate_all(self, items: list[tuple[ImageFacts, list[RegionFacts]]]) -> list[Generated]:
        """Conversations for many images (no network: one after the other)."""
        return [Generated(turns=tuple(self.generate(image, regions))) for image, regions in items]

    def generate(self, image: ImageFacts, regions: list[RegionFacts]) -> list[QA]:
        """One conversation for an image, as QA turns (empty when it has no regions)."""
        plans = plan_conversation(
            image, regions, self.seed, self.variants, max_region_turns=self.max_region_turns
        )
        by_id = {r.region_id: r for r in regions}
        return [self.render_turn(image, plan, by_id) for plan in plans]

    def render_turn(self, image: ImageFacts, plan: TurnPlan, by_id: dict[str, RegionFacts]) -> QA:
        """Render one planned turn to a question and an answer."""
        refs = [by_id[rid] for rid in plan.region_ids]
        common = view_variables(image.modality, image.plane, image.sequence)
        if plan.task == "MIA":
            listed = [
                {
                    "label": r.label,
                    "box": format_box(r.bbox_1000),
                    "position": r.position,
                    "size": r.size,
                }
                for r in refs
            ]
            variables = {**common, "regions": listed}
        elif plan.task == "VG":
            variables = {
                **common,
                "label": refs[0].label,
                "boxes": [format_box(r.bbox_1000) for r in refs],
            }
        else:
            r = refs[0]
            variables = {
                **common,
                "label": r.label,
                "box": format_box(r.bbox_1000),
                "position": r.position,
                "size": r.size,
                "side": laterality_of(r.label),
                "relation": None,
            }
        question, answer = self._phrasings(
            plan.task, variables, plan.question_variant, plan.answer_variant
        )
        if plan.task == "RC" and self._states_relation(image, plan):
            relation = first_relation_phrase(refs[0], list(by_id.values()))
            if relation:
                variables["relation"] = relation
                answer = render_relation_answers(self.env, **variables)[0]
        return QA(
            task=plan.task,
            question=question,
            answer=answer,
            region_ids=plan.region_ids,
        )

    def _phrasings(self, task: str, variables: dict, question: int, answer: int) -> tuple[str, str]:
        """The ``question``-th and ``answer``-th of :func:`render_phrasings` of ``task``,
        rendered once for all turns that differ only in their boxes: the templates only join
        boxes into the text, so a turn's phrasings are those of a rendering with numbered marks
        for its boxes, the marks then replaced."""
        boxes: list[str] = []

        def mark(box: str) -> str:
            boxes.append(box)
            return f"{_MARK}{len(boxes) - 1}{_MARK}"

        shown = dict(variables)
        if "box" in shown:
            shown["box"] = mark(shown["box"])
        if "boxes" in shown:
            shown["boxes"] = [mark(box) for box in shown["boxes"]]
        if "regions" in shown:
            shown["regions"] = [{**r, "box": mark(r["box"])} for r in shown["regions"]]
        if _holds_mark(variables):  # (a label with the mark in it) rendered as it is
            questions, answers = render_phrasings(self.env, task, **variables)
            return questions[question], answers[answer]
        key = (task, repr(sorted(shown.items())))
        rendered = self._rendered.get(key)
        if rendered is None:
            if len(self._rendered) >= _RENDERED_MAX:
                self._rendered.clear()
            rendered = self._rendered[key] = render_phrasings(self.env, task, **shown)

        def unmark(text: str) -> str:
            parts = text.split(_MARK)
            parts[1::2] = [boxes[int(i)] for i in parts[1::2]]
            return "".join(parts)

        return unmark(rendered[0][question]), unmark(rendered[1][answer])

    def _states_relation(self, image: ImageFacts, plan: TurnPlan) -> bool:
        """Whether an RC turn states its region's relation: one in :data:`RELATION_SHARE`, by
        a seed of its own (the conversation's draws are left as they are)."""
        key = f"{image.image_id}:{plan.region_ids[0]}:relation"
        return derive_seed(self.seed, key) % RELATION_SHARE == 0
