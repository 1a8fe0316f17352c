"""The reader contract: a random-access source of jets, read in chunks so files larger than memory stream.

:class:`JetSource` is the protocol; :class:`ValidatingSource` is the base class of the file readers
(the checks it runs live in :mod:`hepfm.data.validate`); :class:`ArraySource` wraps a chunk in memory.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Collection, Iterator
from pathlib import Path
from typing import Protocol, runtime_checkable

from hepfm.data.jets import JetChunk
from hepfm.data.validate import merge_counts, validate_and_sort


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


class ValidatingSource:
    """Base class of the file readers: ``read(start, stop, fields)`` = format-specific ``_read`` + pT
    sorting + :func:`~hepfm.data.validate.check_chunk` (through the fast scan of
    :func:`~hepfm.data.validate.validate_and_sort`).

    Options shared by every reader:
        validate: check each chunk read (default True). With ``validate=False`` the caller owns the
            checks (``hepfm inspect`` does that to count problems).
        skip_bad: with ``validate=True``, drop bad jets instead of raising; ``read(start, stop)`` then
            returns fewer than ``stop - start`` jets and :attr:`bad_counts` accumulates the reasons.

    ``read(start, stop, fields=None, jet_fields=None)`` reads only the per-particle fields named in
    ``fields`` and the per-jet fields named in ``jet_fields`` (None: all the file has; names the
    file does not have are ignored). Four-momenta, mask and labels are always read. Validation looks
    at what was read, so with ``skip_bad`` a jet whose only defect is in a field that was not read
    is kept. :attr:`particle_fields` lists the per-particle fields the file has.

    The underlying file handle is opened lazily and reopened after a fork (DataLoader workers), and
    is not pickled.
    """

    format: str = ""
    #: what one entry is: a jet of particles, or (events read as sets of objects) an event
    item: str = "jet"

    def __init__(self, path: str | Path, *, validate: bool = True, skip_bad: bool = False) -> None:
        self.path = Path(path)
        self.validate = validate
        self.skip_bad = skip_bad
        self.bad_counts: dict[str, int] = {}
        self.metadata: dict = {}
        self.class_names: tuple[str, ...] = ()
        self.has_labels = False
        #: the per-particle fields (``JetChunk.particles`` keys) the file provides
        self.particle_fields: tuple[str, ...] = ()
        #: for ``hepfm inspect``: the layout the reader recognised, and which file fields it reads as what
        self.detected = ""
        self.field_map: dict[str, str] = {}
        self._n = 0
        self._handle = None
        self._pid: int | None = None

    # -- file handle -------------------------------------------------------------------------
    def _open(self):  # pragma: no cover - overridden
        raise NotImplementedError

    def _file(self):
        import os

        if self._handle is None or self._pid != os.getpid():
            self._handle = self._open()
            self._pid = os.getpid()
        return self._handle

    def close(self) -> None:
        h, self._handle = self._handle, None
        if h is not None:
            with contextlib.suppress(Exception):
                h.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_handle"] = None
        state["_pid"] = None
        return state

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()

    # -- reading -----------------------------------------------------------------------------
    def __len__(self) -> int:
        return self._n

    def _read(
        self, start: int, stop: int, fields: Collection[str] | None, jet_fields: Collection[str] | None
    ) -> JetChunk:  # pragma: no cover - overridden
        raise NotImplementedError

    def read(
        self,
        start: int,
        stop: int,
        fields: Collection[str] | None = None,
        jet_fields: Collection[str] | None = None,
    ) -> JetChunk:
        """Jets ``[start, stop)`` (clipped to the file), validated unless ``validate=False``.

        ``fields`` / ``jet_fields``: the per-particle / per-jet fields to read (None: all).
        """
        if start < 0 or stop < 0:
            raise ValueError(f"read({start}, {stop}): negative index")
        stop = min(stop, self._n)
        start = min(start, stop)
        chunk = self._read(start, stop, fields, jet_fields)
        chunk, counts = validate_and_sort(
            chunk, self.path, validate=self.validate, skip_bad=self.skip_bad, offset=start
        )
        merge_counts(self.bad_counts, counts)
        return chunk

    def iter_chunks(self, chunk_size: int = 10_000, max_jets: int | None = None) -> Iterator[JetChunk]:
        """Read the file front to back in chunks of ``chunk_size`` jets (at most ``max_jets``)."""
        end = self._n if max_jets is None else min(self._n, max_jets)
        for start in range(0, end, chunk_size):
            yield self.read(start, min(start + chunk_size, end))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.path)!r}, n={self._n}, labels={self.has_labels})"
