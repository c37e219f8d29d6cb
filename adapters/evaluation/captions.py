"""Caption metrics from pycocoevalcap, as COCOEvalCap computes them, with one METEOR process.

BLEU-1..4 (corpus level, ``closest`` reference length), METEOR 1.5 (``-l en -norm``, the
corpus score of its EVAL line), ROUGE-L (mean of per-answer F with beta 1.2) and CIDEr-D
(mean; document frequencies from the references of the same call, so scores depend on the
set of answers scored together: BiRD scores each modality separately, and so does medgrit).
Both texts are lower-cased and tokenised by the Stanford PTB tokenizer with punctuation
removed, as COCOEvalCap does (:func:`ptb_tokenize`, which keeps the tokenizer's notes off the
terminal). SPICE is left out: it needs a separate download.

METEOR runs as a Java subprocess that takes seconds to load its paraphrase table, so one
``CaptionScorer`` keeps one alive for all modalities and tasks; close it (or use it as a
context manager) to end the process.
"""

from __future__ import annotations

import math
import subprocess
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.meteor.meteor import Meteor
from pycocoevalcap.rouge.rouge import Rouge
from pycocoevalcap.tokenizer import ptbtokenizer

CAPTION_METRICS: tuple[str, ...] = (
    "Bleu_1",
    "Bleu_2",
    "Bleu_3",
    "Bleu_4",
    "METEOR",
    "ROUGE_L",
    "CIDEr",
)


def ptb_tokenize(texts: Sequence[str]) -> list[str]:
    """Each text tokenised as COCOEvalCap does: the Stanford PTBTokenizer that pycocoevalcap
    ships (one line per text, ``-preserveLines -lowerCase``), its punctuation tokens removed.
    The tokenizer's note on stderr (``PTBTokenizer tokenized N tokens ...``) is kept, not
    printed: it is read only when Java fails.

    Raises:
        RuntimeError: Java could not run the tokenizer (with its last words on stderr).
    """
    command = [
        "java",
        "-cp",
        ptbtokenizer.STANFORD_CORENLP_3_4_1_JAR,
        "edu.stanford.nlp.process.PTBTokenizer",
        "-preserveLines",
        "-lowerCase",
    ]
    lines = "\n".join(t.replace("\n", " ") for t in texts)
    try:
        done = subprocess.run(
            command,
            cwd=Path(ptbtokenizer.__file__).parent,
            input=lines.encode("utf-8"),
            capture_output=True,
            check=False,
        )
    except OSError as exc:
        raise RuntimeError(f"cannot run the PTB tokenizer (java): {exc.strerror}") from None
    if done.returncode != 0:
        said = done.stderr.decode("utf-8", "replace").strip().splitlines()
        raise RuntimeError(f"the PTB tokenizer failed: {said[-1] if said else done.returncode}")
    punctuation = set(ptbtokenizer.PUNCTUATIONS)
    tokens = done.stdout.decode("utf-8").split("\n")[: len(texts)]
    return [" ".join(w for w in t.rstrip().split(" ") if w not in punctuation) for t in tokens]


class CaptionScorer:
    """pycocoevalcap's scorers, started once; ``score`` may be called many times."""

    def __init__(self) -> None:
        self._meteor: Meteor | None = Meteor()
        self._bleu = Bleu(4)
        self._rouge = Rouge()
        self._cider = Cider()

    def __enter__(self) -> CaptionScorer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """End the METEOR Java process (idempotent)."""
        meteor, self._meteor = self._meteor, None
        if meteor is None:
            return
        process = meteor.meteor_p
        with meteor.lock:
            process.stdin.close()
            process.kill()
            process.wait()
            process.stdout.close()
            process.stderr.close()

    def _tokenize(self, texts: Sequence[str]) -> list[str]:
        # The PTB tokenizer writes one line per text and reads lines back; an empty text would
        # shift the lines after it, so only non-empty texts go through it.
        keep = [i for i, t in enumerate(texts) if t.strip()]
        out = [""] * len(texts)
        if keep:
            tokens = ptb_tokenize([texts[i] for i in keep])
            for i, line in zip(keep, tokens, strict=True):
                out[i] = line
        return out

    def score(self, references: Sequence[str], responses: Sequence[str]) -> dict[str, float]:
        """Scores of ``responses`` against one reference each, as COCOEvalCap computes them.

        An empty response (empty after tokenisation too) scores ROUGE-L 0, the limit of its F
        measure, where pycocoevalcap would divide by zero.

        Raises:
            ValueError: no answers, or different numbers of references and responses.
        """
        if not references or len(references) != len(responses):
            raise ValueError("need one reference per response, and at least one")
        if self._meteor is None:
            raise ValueError("the scorer is closed")
        tokens = self._tokenize([*references, *responses])
        n = len(references)
        gts = {i: [tokens[i]] for i in range(n)}
        res = {i: [tokens[n + i]] for i in range(n)}
        bleu, _ = self._bleu.compute_score(gts, res, verbose=0)
        meteor, _ = self._meteor.compute_score(gts, res)
        rouge = [
            self._rouge.calc_score(res[i], gts[i]) if res[i][0].split() else 0.0 for i in range(n)
        ]
        cider, _ = self._cider.compute_score(gts, res)
        values = [*bleu, meteor, sum(rouge) / n, cider]
        return {
            name: float(v) if math.isfinite(v) else 0.0
            for name, v in zip(CAPTION_METRICS, values, strict=True)
        }
