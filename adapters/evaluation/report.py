"""The evaluation report: per-task, per-modality scores and both means, as a table and as JSON.

VG: Recall@0.5 and the Hungarian figures of ``medgrit.core.metrics.BoxTally``. ROC: accuracy
under BiRD's token-substring rule. RC and MIA: the caption metrics of ``CaptionScorer``.
Every response is cleaned with ``clean_response`` first. Each metric is computed per modality
and then averaged with equal weight, both over BiRD's eight keys (``official_mean``, absent
modalities count 0) and over the modalities present (``present_mean``).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from medgrit.adapters.evaluation.predictions import Prediction, PredictionFileError
from medgrit.core.metrics import (
    MODALITIES,
    BoxTally,
    clean_response,
    official_mean,
    predicted_boxes,
    present_mean,
    reference_boxes,
    roc_correct,
)

CaptionScore = Callable[[Sequence[str], Sequence[str]], dict[str, float]]


@dataclass(frozen=True)
class TaskReport:
    """One task's scores: ``per_modality[modality][metric]`` for the modalities present."""

    task: str
    samples: dict[str, int]
    per_modality: dict[str, dict[str, float]]
    skipped: int

    def metrics(self) -> list[str]:
        """The metric names, in the order of the table."""
        first = next(iter(self.per_modality.values()), {})
        return list(first)

    def means(self) -> dict[str, dict[str, float]]:
        """``{"official_mean": {metric: v}, "present_mean": {metric: v}}``."""
        columns = {m: {k: s[m] for k, s in self.per_modality.items()} for m in self.metrics()}
        return {
            "official_mean": {m: official_mean(c) for m, c in columns.items()},
            "present_mean": {m: present_mean(c) for m, c in columns.items()},
        }

    def to_json(self) -> dict:
        """The report as JSON-ready data (every modality key, absent ones with 0 samples)."""
        return {
            "task": self.task,
            "samples": {m: self.samples.get(m, 0) for m in MODALITIES},
            "skipped_without_reference_boxes": self.skipped,
            "per_modality": self.per_modality,
            **self.means(),
        }

    def render(self) -> str:
        """A plain-text table: one row per modality (absent ones marked), then both means."""
        metrics = self.metrics()
        head = f"{'modality':<12}{'n':>7}" + "".join(f"{m:>20}" for m in metrics)
        lines = [f"{self.task}", head]
        for key in MODALITIES:
            scores = self.per_modality.get(key)
            if scores is None:
                lines.append(f"{key:<12}{0:>7}" + "".join(f"{'(absent)':>20}" for _ in metrics))
            else:
                lines.append(
                    f"{key:<12}{self.samples[key]:>7}"
                    + "".join(f"{scores[m]:>20.4f}" for m in metrics)
                )
        for name, values in self.means().items():
            label = "mean/8" if name == "official_mean" else "mean/present"
            lines.append(f"{label:<12}{'':>7}" + "".join(f"{values[m]:>20.4f}" for m in metrics))
        if self.skipped:
            lines.append(f"({self.skipped} answers without reference boxes skipped)")
        return "\n".join(lines)


def _by_modality(predictions: Sequence[Prediction]) -> dict[str, list[Prediction]]:
    groups: dict[str, list[Prediction]] = defaultdict(list)
    for p in predictions:
        groups[p.modality].append(p)
    return {m: groups[m] for m in MODALITIES if m in groups}


def score_grounding(predictions: Sequence[Prediction]) -> TaskReport:
    """VG scores per modality (see ``BoxTally.scores``).

    Raises:
        PredictionFileError: a reference box that is not four numbers (names the line).
    """
    tallies: dict[str, BoxTally] = defaultdict(BoxTally)
    for p in predictions:
        try:
            refs = reference_boxes(p.annotation)
        except ValueError as exc:
            raise PredictionFileError(f"line {p.line}: {exc}") from None
        tallies[p.modality] = tallies[p.modality].add(
            refs, predicted_boxes(clean_response(p.response))
        )
    # A modality whose references all lack boxes has nothing to score: it is absent.
    present = {m: t for m, t in tallies.items() if t.samples}
    return TaskReport(
        task="VG",
        samples={m: t.samples for m, t in present.items()},
        per_modality={m: present[m].scores() for m in MODALITIES if m in present},
        skipped=sum(t.skipped for t in tallies.values()),
    )


def score_classification(predictions: Sequence[Prediction]) -> TaskReport:
    """ROC accuracy per modality: the share of answers correct under ``roc_correct``."""
    per_modality, samples = {}, {}
    for modality, group in _by_modality(predictions).items():
        right = sum(roc_correct(p.annotation, clean_response(p.response)) for p in group)
        per_modality[modality] = {"accuracy": right / len(group)}
        samples[modality] = len(group)
    return TaskReport("ROC", samples, per_modality, skipped=0)


def score_captions(
    task: str, predictions: Sequence[Prediction], caption_score: CaptionScore
) -> TaskReport:
    """RC or MIA caption metrics per modality, each modality scored as its own corpus."""
    per_modality, samples = {}, {}
    for modality, group in _by_modality(predictions).items():
        per_modality[modality] = caption_score(
            [p.annotation for p in group], [clean_response(p.response) for p in group]
        )
        samples[modality] = len(group)
    return TaskReport(task, samples, per_modality, skipped=0)


def score_task(
    task: str, predictions: Sequence[Prediction], caption_score: CaptionScore | None
) -> TaskReport:
    """Dispatch to the task's scorer; ``caption_score`` is needed for RC and MIA only."""
    if task == "VG":
        return score_grounding(predictions)
    if task == "ROC":
        return score_classification(predictions)
    if caption_score is None:
        raise ValueError(f"{task} needs a caption scorer")
    return score_captions(task, predictions, caption_score)
