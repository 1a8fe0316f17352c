"""The reader contract: a random-access source of jets, read in chunks so files larger than memory stream."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol, runtime_checkable

from hepfm.data.jets import JetChunk


@runtime_checkable
class JetSource(Protocol):
    """One file (or in-memory block) of jets.

    ``read(start, stop)`` returns jets ``[start, stop)`` as a :class:`JetChunk`; readers keep no more
    than that chunk in memory. ``format`` is the registry name of the detected format.
    """

    path: Path
    format: str
    class_names: tuple[str, ...]
    has_labels: bool

    def __len__(self) -> int: ...

    def read(self, start: int, stop: int) -> JetChunk: ...


class ArraySource:
    """A :class:`JetSource` over a JetChunk already in memory (tests, generated data before writing)."""

    format = "memory"

    def __init__(self, chunk: JetChunk, path: str | Path = "<memory>") -> None:
        self.chunk = chunk
        self.path = Path(path)
        self.class_names = chunk.class_names
        self.has_labels = chunk.label is not None

    def __len__(self) -> int:
        return len(self.chunk)

    def read(self, start: int, stop: int) -> JetChunk:
        return self.chunk.take(slice(start, stop))
