"""The reader contract: a random-access source of jets, read in chunks so files larger than memory stream."""

from __future__ import annotations

import inspect
from collections.abc import Collection
from pathlib import Path
from typing import Protocol, runtime_checkable

from hepfm.data.jets import JetChunk


@runtime_checkable
class JetSource(Protocol):
    """One file (or in-memory block) of jets.

    ``read(start, stop)`` returns jets ``[start, stop)`` as a :class:`JetChunk`; readers keep no more
    than that chunk in memory. ``format`` is the registry name of the detected format.

    The built-in sources also accept ``read(start, stop, fields, jet_fields)``: the per-particle
    (``JetChunk.particles``) and per-jet (``JetChunk.jets``) fields to read, None meaning all of
    them, names the source lacks being ignored; four-momenta, mask and labels are always read. The
    loaders pass a feature set's :attr:`~hepfm.data.features.FeatureSet.requires` and no per-jet
    fields, so a file's other datasets/branches are never decompressed. Sources that only take
    ``(start, stop)`` still work (see :func:`read_selected`); such sources may also offer a
    ``particle_fields`` attribute (the fields they provide) for early checks.
    """

    path: Path
    format: str
    class_names: tuple[str, ...]
    has_labels: bool

    def __len__(self) -> int: ...

    def read(self, start: int, stop: int) -> JetChunk: ...


def accepts_fields(source: object) -> bool:
    """Whether ``source.read`` takes ``fields`` and ``jet_fields`` (the built-in sources do)."""
    try:
        params = inspect.signature(source.read).parameters  # type: ignore[attr-defined]
    except (TypeError, ValueError):
        return False
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return True
    return "fields" in params and "jet_fields" in params


def read_selected(
    source: JetSource,
    start: int,
    stop: int,
    fields: Collection[str] | None = None,
    jet_fields: Collection[str] | None = None,
    *,
    accepts: bool | None = None,
) -> JetChunk:
    """``source.read(start, stop, fields=..., jet_fields=...)`` if the source takes them, else
    ``source.read(start, stop)`` (then everything the source returns is kept).

    ``accepts``: :func:`accepts_fields` of the source, if the caller has it already.
    """
    if accepts is None:
        accepts = accepts_fields(source)
    if accepts:
        return source.read(start, stop, fields=fields, jet_fields=jet_fields)  # type: ignore[call-arg]
    return source.read(start, stop)


def _select(d: dict, names: Collection[str] | None) -> dict:
    if names is None:
        return dict(d)
    want = set(names)
    return {k: v for k, v in d.items() if k in want}


class ArraySource:
    """A :class:`JetSource` over a JetChunk already in memory (tests, generated data before writing)."""

    format = "memory"

    def __init__(self, chunk: JetChunk, path: str | Path = "<memory>") -> None:
        self.chunk = chunk
        self.path = Path(path)
        self.class_names = chunk.class_names
        self.has_labels = chunk.label is not None

    @property
    def particle_fields(self) -> tuple[str, ...]:
        return tuple(self.chunk.particles)

    def __len__(self) -> int:
        return len(self.chunk)

    def read(
        self,
        start: int,
        stop: int,
        fields: Collection[str] | None = None,
        jet_fields: Collection[str] | None = None,
    ) -> JetChunk:
        c = self.chunk
        if fields is None and jet_fields is None:
            return c.take(slice(start, stop))
        sl = slice(start, stop)
        return JetChunk(
            p4=c.p4[sl],
            mask=c.mask[sl],
            label=None if c.label is None else c.label[sl],
            class_names=c.class_names,
            particles={k: v[sl] for k, v in _select(c.particles, fields).items()},
            jets={k: v[sl] for k, v in _select(c.jets, jet_fields).items()},
        )
