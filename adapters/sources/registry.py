"""The readers of the source kinds: what opens a ``KIND:PATH`` source and reads its cases.

Each source kind has a :class:`Reader` class in its format's module; :data:`READERS` maps a kind
to that class and imports the module on the kind's first look-up, so a format's dependencies
(pydicom, nibabel) load only when a source or case of it is used. The kinds' names, formats and
``--help`` lines are ``medgrit.schemas.sources.SOURCE_KINDS``; a new kind is added there and
here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import ClassVar, Protocol, TypeVar

from medgrit.core.cases import Case, LoadedCase, Source

CaseT = TypeVar("CaseT", bound=Case, contravariant=True)


class Reader(Protocol[CaseT]):
    """How the sources of one kind are listed and their cases read.

    Every kind of one format reads its cases the same way (``format`` names the format, as the
    case type's ``format`` does); kinds of a format differ in how they list a folder's cases.
    """

    format: ClassVar[str]

    def open_source(self, spec: str, root: Path, modality: str | None, key: bytes) -> Source:
        """List the cases of the folder ``root`` (``spec`` as the user typed it), reading
        metadata only; ``modality`` for a source whose metadata does not say, ``key`` to
        pseudonymise identifiers found while listing.

        Raises:
            SourceError: a folder a user must fix.
        """
        ...

    def read_case(self, case: CaseT) -> LoadedCase:
        """Read one case.

        Raises:
            UnreadableImage: the case cannot be read (it becomes a reject row).
        """
        ...

    def estimate_images(self, case: CaseT, plane: str) -> int:
        """The slices or images the case's listing or header holds (no pixel is read)."""
        ...


def _nnunet() -> type[Reader]:
    from medgrit.adapters.sources.nnunet import NnunetReader

    return NnunetReader


def _msd() -> type[Reader]:
    from medgrit.adapters.sources.nnunet import MsdReader

    return MsdReader


def _dicom() -> type[Reader]:
    from medgrit.adapters.sources.dicom import DicomReader

    return DicomReader


def _samed2d() -> type[Reader]:
    from medgrit.adapters.sources.samed2d import SaMed2dReader

    return SaMed2dReader


def _images() -> type[Reader]:
    from medgrit.adapters.sources.image_folder import ImageFolderReader

    return ImageFolderReader


def _totalseg() -> type[Reader]:
    from medgrit.adapters.sources.totalseg import TotalSegReader

    return TotalSegReader


class LazyReaders(Mapping[str, type[Reader]]):
    """Source kind -> its reader class; the class's module is imported on first look-up."""

    def __init__(self, loaders: Mapping[str, Callable[[], type[Reader]]]) -> None:
        self._loaders = dict(loaders)

    def __getitem__(self, kind: str) -> type[Reader]:
        return self._loaders[kind]()

    def __iter__(self) -> Iterator[str]:
        return iter(self._loaders)

    def __len__(self) -> int:
        return len(self._loaders)


READERS: Mapping[str, type[Reader]] = LazyReaders(
    {
        "nnunet": _nnunet,
        "msd": _msd,
        "dicom": _dicom,
        "samed2d": _samed2d,
        "images": _images,
        "totalseg": _totalseg,
    }
)
