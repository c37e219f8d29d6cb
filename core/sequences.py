"""The words for an image's MR sequence (pure): the phrase the text names it by, and the sequence
words of :data:`medgrit.core.terms.SEQUENCE_WORDS` that are true of it.

A source names a channel as it likes ("FLAIR", "T2-FLAIR", "T1Gd", "t1ce", "T1-Gd", "T2w", "ADC",
"hbv"); a name is known by its letters and digits, case, spaces and punctuation aside ("T1-Gd"
and "t1gd" are one name). Known sequences:

=============  ===============================  ===========================================
sequence       phrase                           names
=============  ===============================  ===========================================
T1             T1-weighted                      T1, T1w, T1WI, T1-weighted
T1 native      T1-weighted                      T1pre, T1native, T1-precontrast
T1 + contrast  contrast-enhanced T1-weighted    T1Gd, T1ce, T1c, T1post, T1-Gd, T1+C, T1CE
T2             T2-weighted                      T2, T2w, T2WI, T2-weighted
FLAIR          FLAIR                            FLAIR, T2-FLAIR, T2w-FLAIR
ADC            ADC                              ADC, ADC map
DWI            diffusion-weighted               DWI, DW, hbv (a high b-value image)
PD             proton density                   PD, PDw, PD-weighted
SWI            susceptibility-weighted          SWI
STIR           STIR                             STIR
=============  ===============================  ===========================================

A plain "T1" says nothing of contrast: no contrast word is true of it. A name that holds any
character but letters, digits, separators and "+" ("T2*", a sequence of its own) is not known.
A name medgrit does not know is written as it is, when it could name a label
(:func:`medgrit.core.label_names.label_name_problem`), holds a letter and reads as no claim and
no structure ("MPRAGE", "DCE"); otherwise, and for the names nnU-Net gives its intensity schemes
(``noNorm``, ``zscore``, ...), the text names no sequence. No sequence word is true of an
unknown sequence.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

from medgrit.core.claims import read_text
from medgrit.core.label_names import label_name_problem, normalise_label_name
from medgrit.core.lexicon import lexicon_for, words_of

__all__ = ["KINDS", "SequenceKind", "known_sequence", "sequence_phrase", "sequence_true_words"]


@dataclass(frozen=True)
class SequenceKind:
    """A known sequence: the phrase the text names it by and the sequence words true of it."""

    phrase: str
    true_words: frozenset[str]


_T1 = ("t1", "t1 weighted", "t1w")
# Each known sequence: its phrase and the sequence words true of it.
_WORDS: dict[str, tuple[str, tuple[str, ...]]] = {
    "t1": ("T1-weighted", _T1),
    "t1pre": ("T1-weighted", (*_T1, "non contrast", "noncontrast", "unenhanced", "pre contrast",
                              "precontrast")),
    "t1gd": ("contrast-enhanced T1-weighted",
             (*_T1, "contrast enhanced", "post contrast", "postcontrast", "gadolinium",
              "gadolinium enhanced", "post gadolinium", "t1 contrast", "t1 contrast enhanced",
              "t1 post contrast", "t1ce", "t1gd", "t1c", "t1 gd", "t1 ce", "t1 c", "t1post")),
    "t2": ("T2-weighted", ("t2", "t2 weighted", "t2w")),
    "flair": ("FLAIR", ("flair", "t2 flair", "inversion recovery")),
    "adc": ("ADC", ("adc", "apparent diffusion coefficient")),
    "dwi": ("diffusion-weighted", ("dwi", "diffusion weighted")),
    "pd": ("proton density", ("proton density", "pd weighted")),
    "swi": ("susceptibility-weighted", ("swi", "susceptibility weighted")),
    "stir": ("STIR", ("stir", "inversion recovery", "fat suppressed")),
}  # fmt: skip
KINDS: dict[str, SequenceKind] = {
    kind: SequenceKind(phrase, frozenset(words)) for kind, (phrase, words) in _WORDS.items()
}

# Each name a source may give a known sequence, as its letters and digits in lower case.
_NAMES: dict[str, tuple[str, ...]] = {
    "t1": ("t1", "t1w", "t1wi", "t1weighted"),
    "t1pre": ("t1pre", "t1precontrast", "t1native", "t1wpre"),
    "t1gd": ("t1gd", "t1ce", "t1c", "t1post", "t1postcontrast", "t1contrast", "t1gad",
             "t1wgd", "t1wce", "t1wc", "t1wpost", "t1cgd", "cet1", "cet1w", "t1contrastenhanced"),
    "t2": ("t2", "t2w", "t2wi", "t2weighted"),
    "flair": ("flair", "t2flair", "t2wflair", "flairt2"),
    "adc": ("adc", "adcmap"),
    "dwi": ("dwi", "dw", "hbv", "diffusionweighted"),
    "pd": ("pd", "pdw", "pdwi", "pdweighted", "protondensity"),
    "swi": ("swi", "susceptibilityweighted"),
    "stir": ("stir",),
}  # fmt: skip
_KIND_OF: dict[str, str] = {name: kind for kind, names in _NAMES.items() for name in names}

# nnU-Net v2 reads a channel's name as its intensity normalisation; these name no sequence.
_SCHEMES = frozenset({"nonorm", "zscore", "rescaleto01", "rgbto01"})


def _key(name: str) -> str:
    return "".join(words_of(name))


# Characters a known sequence's name may hold besides letters and digits: separators, and the
# plus of "T1+C". Any other ("T2*", a different sequence than T2) makes the name unknown.
_OTHER_CHARACTERS = re.compile(r"[^\w\s.+-]")


def known_sequence(name: str) -> str | None:
    """The key in :data:`KINDS` of the sequence a source's name gives (``"T1-Gd"`` ->
    ``"t1gd"``), or None when medgrit does not know it."""
    if _OTHER_CHARACTERS.search(name):
        return None
    return _KIND_OF.get(_key(name))


@lru_cache(maxsize=256)
def sequence_phrase(name: str) -> str:
    """The words the text names an image's sequence by ("T1Gd" -> "contrast-enhanced
    T1-weighted", "t2w" -> "T2-weighted"); an unknown name as written, when it may be (see the
    module docstring); "" when the text names no sequence (no name, or one it may not use)."""
    kind = known_sequence(name)
    if kind is not None:
        return KINDS[kind].phrase
    written = normalise_label_name(name)
    if (
        len(written) < 2
        or not any(c.isalpha() for c in written)
        or label_name_problem(written) is not None
        or _key(written) in _SCHEMES
    ):
        return ""
    claims = read_text(written, lexicon_for(frozenset()))
    if claims.mentions or claims.attributes or claims.boxes or claims.malformed:
        return ""  # "CT", "T2 axial", "venous phase": the text would state what no fact says
    return written


def sequence_true_words(name: str) -> frozenset[str]:
    """The sequence words (as :data:`medgrit.core.terms.SEQUENCE_WORDS` writes them) true of an
    image of the sequence ``name``: empty for an unknown sequence or none."""
    kind = known_sequence(name)
    return KINDS[kind].true_words if kind is not None else frozenset()
