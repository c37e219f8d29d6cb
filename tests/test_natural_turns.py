"""The verifier on turns written in free prose by writers who did not read it
(``benchmarks/data``, see ``medgrit_testing.natural_turns``): honest turns are kept, lies are not.
Each set was written by another writer, from the facts of other images; the thresholds hold for
all of them together (MIA, one long text naming every region, keeps the fewest)."""

from __future__ import annotations

import collections
from pathlib import Path

import pytest

from medgrit.core.lexicon import lexicon_for
from medgrit.core.verify import ImageTruth, check_turn
from medgrit_testing.natural_turns import load_turns

DATA = Path(__file__).resolve().parents[1] / "benchmarks" / "data"
SETS = ("", "_b", "_c", "_d", "_e", "_f")


def verdicts(name: str) -> list[tuple[str, str | None, str | None]]:
    """(task, lie class, reject reason) of every turn of a file."""
    turns = load_turns(DATA / name)
    lexicon = lexicon_for(frozenset(r.label for t in turns for r in t.regions))
    out = []
    for t in turns:
        failure = check_turn(t.qa, ImageTruth(t.regions, t.image, lexicon))
        out.append((t.qa.task, t.lie, failure.reason if failure else None))
    return out


def test_honest_natural_turns_are_kept():
    found = [v for suffix in SETS for v in verdicts(f"natural_honest{suffix}.json")]
    by_task = collections.defaultdict(list)
    for task, _, reason in found:
        by_task[task].append(reason is None)

    assert len(by_task) == 4 and len(found) >= 800
    assert sum(reason is None for _, _, reason in found) / len(found) >= 0.975
    for task, kept in by_task.items():
        assert sum(kept) / len(kept) >= (0.93 if task == "MIA" else 0.97), task


@pytest.mark.parametrize("suffix", SETS)
def test_no_natural_lie_is_kept(suffix):
    found = verdicts(f"natural_lies{suffix}.json")

    assert len({lie for _, lie, _ in found}) >= 12
    assert [(task, lie) for task, lie, reason in found if reason is None] == []
