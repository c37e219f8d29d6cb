"""A simulated SA-Med2D-20M listing of any size, for planning and bookkeeping at scale.

:func:`simulated_source` is a ``samed2d:`` source of ``n_images`` images whose cases are made
as they are read, never listed at once and backed by no file: a listing of 25 million images
costs a few bytes, and reading a case about a microsecond. Its cases mix datasets as
``medgrit.adapters.synthetic.samed2d`` does (five 2D-at-source datasets of one image per case,
CT volumes of 12 slices and MR volumes of 8: 25 images per 7 cases, so 25 million images are 7
million cases), with the datasets, modalities and labels of the release
:func:`~medgrit.adapters.synthetic.samed2d.write_samed2d_release` writes (cases numbered with
eight digits: ``case_00000012--ct_00``).

Planning reads what a listing shows (names, labels, slice counts) and fingerprints the files of
each case; these cases have no files (:attr:`SimulatedCase.content_files` is empty), so their
fingerprints hash their metadata only. They cannot be built: their slices name no file.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import overload

from medgrit.adapters.sources.samed2d import RELEASE_NAME, SaMed2dCase
from medgrit.adapters.sources.samed2d_index import SaMed2dSlice, modality_of_prefix
from medgrit.adapters.synthetic.samed2d import DATASETS
from medgrit.core.cases import Source
from medgrit.core.text import readable_labels

__all__ = ["SimulatedCase", "SimulatedCases", "simulated_source"]

_CYCLE_IMAGES = sum(slices or 1 for *_, slices in DATASETS)
"""Images of one case of each dataset, in order (the cases cycle through the datasets)."""


@dataclass(frozen=True, kw_only=True)
class SimulatedCase(SaMed2dCase):
    """An SA-Med2D-20M volume of a simulated listing: its slices name no file."""

    @property
    def content_files(self) -> tuple[str, ...]:
        return ()


class SimulatedCases(Sequence[SaMed2dCase]):
    """The cases of a simulated listing of ``n_images`` images, made as they are read (case
    ``i`` is the same whenever it is read; cases of one dataset share their label objects, as
    a source's listing does)."""

    def __init__(self, n_images: int, spec: str) -> None:
        if n_images < 0:
            raise ValueError("n_images must be >= 0")
        self.n_images = n_images
        full, rest = divmod(n_images, _CYCLE_IMAGES)
        extra = 0  # cases of the last, partial cycle
        for *_, slices in DATASETS:
            if rest <= 0:
                break
            rest -= slices or 1
            extra += 1
        self._len = full * len(DATASETS) + extra
        self._templates = [_template(spec, d) for d in DATASETS]
        self._slices: dict[int, tuple[SaMed2dSlice, ...]] = {}

    def __len__(self) -> int:
        return self._len

    @overload
    def __getitem__(self, i: int) -> SaMed2dCase: ...

    @overload
    def __getitem__(self, i: slice) -> list[SaMed2dCase]: ...

    def __getitem__(self, i: int | slice):  # type: ignore[override]
        if isinstance(i, slice):
            return [self._case(j) for j in range(*i.indices(self._len))]
        if i < 0:
            i += self._len
        if not 0 <= i < self._len:
            raise IndexError("case index out of range")
        return self._case(i)

    def __iter__(self) -> Iterator[SaMed2dCase]:
        for i in range(self._len):
            yield self._case(i)

    def _case(self, i: int) -> SaMed2dCase:
        cycle, k = divmod(i, len(DATASETS))
        template, sub, dataset, slices = self._templates[k]
        count = 1 if slices == 0 else slices
        if i == self._len - 1 and slices:  # the last volume holds what is left
            before = cycle * _CYCLE_IMAGES + sum(s or 1 for *_, s in DATASETS[:k])
            count = min(slices, self.n_images - before)
        patient = f"case_{i:08d}"
        # Made without __init__'s checks (a frozen dataclass sets each field through
        # object.__setattr__): the fields are those of the template, checked once.
        case = object.__new__(SimulatedCase)
        case.__dict__.update(template)
        case.__dict__.update(
            case=f"{patient}--{sub}",
            patient=patient,
            name=f"{sub}--{dataset}--{patient}",
            slices=self._slices_of(count),
        )
        return case

    def _slices_of(self, count: int) -> tuple[SaMed2dSlice, ...]:
        found = self._slices.get(count)
        if found is None:
            found = self._slices[count] = tuple(SaMed2dSlice("", ()) for _ in range(count))
        return found


def _template(spec: str, dataset: tuple[str, str, tuple[str, ...], int]) -> tuple:
    """The fields every case of one simulated dataset shares (a checked case's ``__dict__``),
    with its sub-modality, name and slices per case."""
    sub, name, classes, slices = dataset
    written = tuple((i + 1, c) for i, c in enumerate(classes))
    example = SimulatedCase(
        source=spec,
        dataset=name,
        case="",
        modality=modality_of_prefix(sub) or "ct",
        labels=readable_labels(written),
        written_labels=written,
        index="",
        name="",
        masks_dir="",
        slices=(),
    )
    return dict(example.__dict__), sub, name, slices


def simulated_source(n_images: int, spec: str = "samed2d:/simulated") -> Source:
    """A ``samed2d:`` source of ``n_images`` simulated images (see the module docstring).

    Raises:
        ValueError: ``n_images`` is negative.
    """
    cases: Sequence = SimulatedCases(n_images, spec)  # read as the tuple a listing has
    return Source(spec, "samed2d", spec.partition(":")[2], RELEASE_NAME, "mixed", (), cases)
