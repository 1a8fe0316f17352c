"""hepfm's own HDF5 layout: chunked, compressed, checksummed and schema-versioned.

Root attributes::

    hepfm_format = "jets"        hepfm_schema = 1          n_jets
    class_names  (JSON list)     labeled (bool)           metadata (JSON: generator versions,
    class_counts (JSON dict)     hepfm_version             settings, seed, provenance...)
    compression  (e.g. "gzip-1"; absent in files written before it was recorded)

Datasets (``n`` jets, ``N`` particle slots)::

    p4            (n, N, 4) float32   px, py, pz, E; zero in padding slots
    n_particles   (n,)      int16     mask = slot < n_particles (particles fill the leading slots)
    label         (n,)      int64     only if labeled (the reader also takes other numeric dtypes
                                      and one-hot (n, K) rows, as other tools write them; values
                                      that are not whole class indices are bad jets, never cast)
    particles/<k> (n, N)    float32   one per per-particle field (``pid``, ``object_type``: int32)
    jets/<k>      (n, ...)  as given  one per per-jet field

Every dataset is chunked along jets (``chunk_jets`` = 1024 by default, a divisor of the loaders'
8192-jet reads so that no chunk is decompressed twice), compressed with :data:`DEFAULT_COMPRESSION`
(``gzip-1``, no shuffle) and Fletcher-32 checksummed so that corrupted bytes raise instead of
returning wrong numbers. Files are written to a temporary sibling and renamed on success
(:class:`HepfmH5Writer`); a full disk (or quota, or file-size limit) is an ``OSError`` with its
errno and no file left behind, never an HDF5 crash (:class:`DeferredErrorFile`). The reader reads
any compression h5py can decode (older files use ``gzip-4+shuffle``); the ``compression``
attribute records the writer's choice.

Why gzip-1 without shuffle (``benchmarks/bench_loader.py --compare-compression FILE``: per dataset,
1024-jet chunks, CPU time of reading in 8192-jet blocks, one core; numbers in docs/data.md): the
padded ``p4`` is mostly zeros and its real slots hold full-entropy float32 mantissas, so the
codec's work is mostly on runs of zeros. There, gzip-1 decompresses 1.3-1.6x faster than the
former gzip-4+shuffle for 12-14% more bytes; shuffle makes every codec slower to read and does
not make the zero runs smaller; LZF (h5py's own filter, unreadable by other HDF5 tools without a
plugin) is within 15% of gzip-1 on ``p4`` (faster at 128 slots, slower at 200) but 8-10% larger,
and on the per-particle fields (small integers, flags, impact parameters) gzip-1 is both smaller
and 1.4-3.3x faster than LZF.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
from collections.abc import Collection, Iterable, Iterator
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from hepfm._version import __version__
from hepfm.data.formats.base import ValidatingSource
from hepfm.data.jets import FULL_JET_P4, INT_FIELDS, JetChunk
from hepfm.data.validate import (
    labels_from_one_hot,
    labels_from_values,
    read_errors,
    select_fields,
)
from hepfm.errors import HepfmInputError
from hepfm.io import atomic_path, json_default

#: The schema this version writes and the newest it reads.
SCHEMA = 1
FORMAT_TAG = "jets"
#: HDF5 chunk cache per dataset when reading (a p4 chunk of 1024 jets x 128 slots is 2 MB).
_CACHE_BYTES = 8 * 1024 * 1024
#: What the writer uses unless told otherwise (see the module docstring for the measurements).
DEFAULT_COMPRESSION = "gzip-1"
#: Jets per HDF5 chunk: divides the loaders' default 8192-jet reads.
DEFAULT_CHUNK_JETS = 1024
_COMPRESSION = re.compile(r"^(?:(none)|(lzf)|gzip-([0-9]))(\+shuffle)?$")


def compression_options(spec: str) -> dict[str, Any]:
    """h5py ``create_dataset`` options of a compression spec.

    ``spec``: ``"gzip-N"`` (N = 0..9), ``"lzf"`` or ``"none"``, optionally followed by
    ``"+shuffle"`` (e.g. the former default ``"gzip-4+shuffle"``).
    """
    m = _COMPRESSION.match(str(spec))
    if m is None:
        raise ValueError(
            f"unknown compression {spec!r}: use 'gzip-N' (N = 0..9), 'lzf' or 'none', optionally "
            "with '+shuffle'"
        )
    none, lzf, level, shuffle = m.groups()
    out: dict[str, Any] = {"shuffle": bool(shuffle)}
    if lzf:
        out["compression"] = "lzf"
    elif not none:
        out["compression"] = "gzip"
        out["compression_opts"] = int(level)
    return out


def describe_compression(ds: h5py.Dataset) -> str:
    """The compression spec of an existing dataset (same syntax as :func:`compression_options`)."""
    if ds.compression is None:
        base = "none"
    elif ds.compression == "gzip":
        base = f"gzip-{ds.compression_opts}"
    else:
        base = str(ds.compression)
    return base + ("+shuffle" if ds.shuffle else "")


def _attr_str(value: Any) -> str:
    if isinstance(value, bytes | np.bytes_):
        return value.decode("utf-8", "replace")
    return str(value)


def dumps_metadata(metadata: dict | None) -> str:
    """JSON text of a metadata dict (numpy scalars/arrays and paths allowed)."""
    return json.dumps(metadata or {}, sort_keys=True, default=json_default)


def is_hepfm_file(f: h5py.File) -> bool:
    return _attr_str(f.attrs.get("hepfm_format", "")) == FORMAT_TAG


class HepfmH5Source(ValidatingSource):
    """Reader of hepfm HDF5 files; ``read(start, stop, fields)`` reads only those rows, and only the
    ``particles/<k>`` datasets of ``fields`` (each dataset is decompressed separately, so a ``kin``
    read decompresses ``p4``, ``n_particles`` and ``label`` only).

    Args:
        path: the file.
        max_particles: keep at most this many particle slots (None: all the file has).
        validate, skip_bad: see :class:`~hepfm.data.formats.base.ValidatingSource`.
    """

    format = "hepfm"

    def __init__(
        self,
        path: str | Path,
        *,
        max_particles: int | None = None,
        validate: bool = True,
        skip_bad: bool = False,
    ) -> None:
        super().__init__(path, validate=validate, skip_bad=skip_bad)
        self.max_particles_option = max_particles
        with read_errors(self.path, "reading the hepfm HDF5 header"):
            self._init_header()

    def _open(self) -> h5py.File:
        return h5py.File(self.path, "r", rdcc_nbytes=_CACHE_BYTES)

    def _init_header(self) -> None:
        f = self._file()
        if not is_hepfm_file(f):
            raise HepfmInputError("not a hepfm jets file (no hepfm_format='jets' attribute)", self.path)
        try:
            schema = int(f.attrs["hepfm_schema"])
        except KeyError:
            raise HepfmInputError("hepfm file without a hepfm_schema attribute", self.path) from None
        if schema > SCHEMA:
            raise HepfmInputError(
                f"written with hepfm file schema {schema}, but this hepfm reads schema {SCHEMA} and "
                "older; upgrade hepfm to read it",
                self.path,
            )
        if schema < 1:
            raise HepfmInputError(f"invalid hepfm_schema {schema}", self.path)
        self.schema = schema
        for name in ("p4", "n_particles"):
            if name not in f:
                raise HepfmInputError(f"hepfm file is missing dataset {name!r}", self.path)
        p4 = f["p4"]
        if p4.ndim != 3 or p4.shape[2] != 4:
            raise HepfmInputError(f"dataset 'p4' has shape {p4.shape}, expected (n, N, 4)", self.path)
        n, n_slots = p4.shape[0], p4.shape[1]
        self._n = n
        self.file_max_particles = n_slots
        mp = self.max_particles_option
        self._slots = n_slots if mp is None else min(mp, n_slots)
        try:
            self.class_names = tuple(json.loads(_attr_str(f.attrs.get("class_names", "[]"))))
            self.metadata = json.loads(_attr_str(f.attrs.get("metadata", "{}")))
        except json.JSONDecodeError as err:
            raise HepfmInputError(f"unreadable JSON in file attributes: {err}", self.path) from None
        self.has_labels = bool(f.attrs.get("labeled", "label" in f))
        self.n_jets_attr = int(f.attrs.get("n_jets", n))

        def check_rows(name: str, ndim_min: int = 1) -> None:
            ds = f[name]
            if ds.ndim < ndim_min or ds.shape[0] != n:
                raise HepfmInputError(
                    f"dataset {name!r} has shape {ds.shape}, inconsistent with {n} jets in 'p4'", self.path
                )

        check_rows("n_particles")
        if self.has_labels:
            if "label" not in f:
                raise HepfmInputError("file says labeled=True but has no 'label' dataset", self.path)
            check_rows("label")
            self._check_label_layout(f["label"])
        self._particle_keys = sorted(f["particles"]) if "particles" in f else []
        self._jet_keys = sorted(f["jets"]) if "jets" in f else []
        self.particle_fields = tuple(self._particle_keys)
        if "object_type" in self._particle_keys:  # events as sets of objects (e.g. hepfm generate collision)
            self.item = "event"
        self.compression = _attr_str(f.attrs.get("compression", describe_compression(p4)))
        n_classes = len(self.class_names)
        labels = f"labels from integer 'label' ({n_classes} classes)" if self.has_labels else "unlabeled"
        self.detected = f"hepfm HDF5 ({self.compression}); {labels}"
        self.field_map = {"p4": "p4 (px, py, pz, E)", "mask": "n_particles",
                          **{k: f"particles/{k}" for k in self._particle_keys}}
        if self._jet_keys:
            self.field_map["jet fields"] = ", ".join(f"jets/{k}" for k in self._jet_keys)
        for k in self._particle_keys:
            check_rows(f"particles/{k}", 2)
            if f[f"particles/{k}"].shape[1] != n_slots:
                raise HepfmInputError(
                    f"dataset 'particles/{k}' has {f[f'particles/{k}'].shape[1]} slots, 'p4' has {n_slots}",
                    self.path,
                )
        for k in self._jet_keys:
            check_rows(f"jets/{k}")
        if self.n_jets_attr != n:
            raise HepfmInputError(
                f"n_jets attribute says {self.n_jets_attr} jets but the datasets hold {n}", self.path
            )

    def _check_label_layout(self, ds: h5py.Dataset) -> None:
        """Accept class indices (n,) or one-hot rows (n, K) of any numeric dtype (files written by other
        tools); the values themselves are checked per jet when read."""
        if ds.dtype.kind not in "biuf":
            raise HepfmInputError(f"dataset 'label' has dtype {ds.dtype}, expected numbers", self.path)
        if ds.ndim == 2:
            if ds.shape[1] != len(self.class_names):
                raise HepfmInputError(
                    f"one-hot dataset 'label' has {ds.shape[1]} columns but the file names "
                    f"{len(self.class_names)} classes {list(self.class_names)}",
                    self.path,
                )
        elif ds.ndim != 1:
            raise HepfmInputError(
                f"dataset 'label' has shape {ds.shape}, expected (n,) class indices or (n, K) one-hot",
                self.path,
            )

    def _read(
        self, start: int, stop: int, fields: Collection[str] | None, jet_fields: Collection[str] | None
    ) -> JetChunk:
        s = self._slots
        # a plain row slice when every slot is kept (no hyperslab along the slots)
        rows = slice(start, stop)
        sel = rows if s == self.file_max_particles else (rows, slice(0, s))
        with read_errors(self.path, f"reading jets {start}-{stop}"):
            f = self._file()
            npart = f["n_particles"][rows].astype(np.int64)
            full = None
            if s < self.file_max_particles and npart.size and npart.max() > s:
                # the cap drops particles: keep the whole jets' sums. HDF5 chunks span every slot,
                # so reading them all costs no extra decompression.
                whole = f["p4"][rows].astype(np.float32, copy=False)
                full = whole.sum(axis=1, dtype=np.float64)  # padding slots are zero
                p4 = np.ascontiguousarray(whole[:, :s])
            else:
                p4 = f["p4"][sel].astype(np.float32, copy=False)
            raw_label = f["label"][rows] if self.has_labels else None
            particles = {k: f[f"particles/{k}"][sel] for k in select_fields(self._particle_keys, fields)}
            jets = {k: f[f"jets/{k}"][rows] for k in select_fields(self._jet_keys, jet_fields)}
            if FULL_JET_P4 in self._jet_keys:  # written from capped jets: the whole-jet sums, always
                jets[FULL_JET_P4] = f[f"jets/{FULL_JET_P4}"][rows]
        if npart.size and (npart.min() < 0 or npart.max() > self.file_max_particles):
            i = int(np.flatnonzero((npart < 0) | (npart > self.file_max_particles))[0])
            raise HepfmInputError(
                f"jet {start + i}: n_particles = {npart[i]} outside [0, {self.file_max_particles}] "
                "(file corrupted?)",
                self.path,
            )
        mask = np.arange(s)[None, :] < npart[:, None]
        if full is not None:
            jets.setdefault(FULL_JET_P4, full)
        label = None
        if raw_label is not None:  # never a cast: 0.9 must be reported, not read as class 0
            if raw_label.ndim == 2:
                label = labels_from_one_hot(raw_label)
            else:
                label = labels_from_values(raw_label, len(self.class_names))
        return JetChunk(
            p4=p4, mask=mask, label=label, class_names=self.class_names, particles=particles, jets=jets
        )


class DeferredErrorFile:
    """A binary file for h5py's ``fileobj`` driver that never reports a failed write to HDF5 but keeps
    the first ``OSError`` (:attr:`error`) for the caller to raise once HDF5 has closed the file.

    Why: HDF5 (2.0, through h5py 3.16) does not survive a failed write. The close that follows fails
    and leaves the library in a state that crashes the process (SIGSEGV on a second close or at
    interpreter exit), so a full disk killed ``hepfm convert`` with a segfault and left its temporary
    file behind. Here the first failed write switches the file to memory: later writes (what HDF5
    still flushes from its caches before the writer stops, a few MB) are kept in order and reads see
    them, so HDF5 closes cleanly; :func:`h5_output` then raises the kept error.
    """

    def __init__(self, path: str | Path, *, append: bool = False) -> None:
        flags = os.O_RDWR | os.O_CREAT | (0 if append else os.O_TRUNC)
        self.name = str(path)
        self._fd = os.open(path, flags, 0o666)
        self._pos = 0
        self._end = os.fstat(self._fd).st_size  # what HDF5 sees as the file's size
        self.error: OSError | None = None
        self._pending: list[tuple[int, bytes]] = []  # (offset, bytes) written after the failure

    def seek(self, pos: int, whence: int = os.SEEK_SET) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self._pos, os.SEEK_END: self._end}[whence]
        self._pos = base + pos
        return self._pos

    def tell(self) -> int:
        return self._pos

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        n = len(view)
        if self.error is None:
            try:
                done = 0
                while done < n:
                    k = os.pwrite(self._fd, view[done:], self._pos + done)
                    if k == 0:
                        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), self.name)
                    done += k
            except OSError as err:
                self.error = err
        if self.error is not None:
            self._pending.append((self._pos, bytes(view)))
        self._pos += n
        self._end = max(self._end, self._pos)
        return n

    def read(self, size: int = -1) -> bytes:
        n = max(0, self._end - self._pos) if size is None or size < 0 else size
        buf = bytearray(n)
        return bytes(buf[: self.readinto(buf)])

    def readinto(self, buf: Any) -> int:
        view = memoryview(buf).cast("B")
        n = max(0, min(len(view), self._end - self._pos))
        data = os.pread(self._fd, n, self._pos) if n else b""
        view[: len(data)] = data
        view[len(data) : n] = bytes(n - len(data))  # beyond what reached the disk: zeros ...
        for off, chunk in self._pending:  # ... or what was written after the failure
            lo, hi = max(off, self._pos), min(off + len(chunk), self._pos + n)
            if lo < hi:
                view[lo - self._pos : hi - self._pos] = chunk[lo - off : hi - off]
        self._pos += n
        return n

    def truncate(self, size: int | None = None) -> int:
        size = self._pos if size is None else int(size)
        if self.error is None:
            try:
                os.ftruncate(self._fd, size)
            except OSError as err:
                self.error = err
        self._end = size
        return size

    def flush(self) -> None:
        """Nothing to do: every write is a system call."""

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        self._pending = []

    def raise_error(self) -> None:
        """Raise the kept write error (e.g. EFBIG, ENOSPC), if any, as an ``OSError`` with its errno."""
        if self.error is not None:
            err = self.error
            raise OSError(err.errno, err.strerror or str(err), self.name) from err


@contextlib.contextmanager
def h5_output(path: str | Path, *, append: bool = False) -> Iterator[tuple[h5py.File, DeferredErrorFile]]:
    """An ``h5py.File`` opened for writing through a :class:`DeferredErrorFile`.

    On leaving the block the file is closed exactly once, then a write error that happened (disk
    full, quota, file-size limit) is raised as an ``OSError`` with its errno instead of crashing
    HDF5. ``append``: open an existing file (mode ``"a"``) instead of creating it.
    """
    raw = DeferredErrorFile(path, append=append)
    try:
        f = h5py.File(raw, "a" if append else "w")
        try:
            yield f, raw
        finally:
            f.close()
    finally:
        raw.close()
    raw.raise_error()


class HepfmH5Writer:
    """Streaming writer of hepfm HDF5 files, used as a context manager::

        with HepfmH5Writer(path, max_particles=128, class_names=names, labeled=True,
                           metadata={"seed": 1}) as w:
            for chunk in chunks:
                w.append(chunk)

    Chunks with more particle slots than ``max_particles`` are truncated (particles are
    pT-ordered, so the softest go), fewer are zero-padded. The per-particle and per-jet fields of the
    first chunk fix the file's fields; later chunks must have the same ones. Rows are buffered and
    written in whole HDF5 chunks. On success the file is renamed onto ``path``; on an exception the
    temporary file is removed and ``path`` is left untouched.

    ``compression`` (see :func:`compression_options`) applies to every dataset and is recorded in
    the ``compression`` attribute; ``compression_level`` is the former option and, if given,
    means ``gzip-<level>+shuffle``.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        max_particles: int,
        class_names: Iterable[str],
        labeled: bool,
        metadata: dict | None = None,
        chunk_jets: int = DEFAULT_CHUNK_JETS,
        compression: str = DEFAULT_COMPRESSION,
        compression_level: int | None = None,
    ) -> None:
        if max_particles < 1 or max_particles > np.iinfo(np.int16).max:
            raise ValueError(f"max_particles must be in [1, 32767], got {max_particles}")
        self.path = Path(path)
        self.max_particles = int(max_particles)
        self.class_names = tuple(class_names)
        self.labeled = bool(labeled)
        self.metadata = dict(metadata or {})
        self._metadata_json = dumps_metadata(self.metadata)  # fail early if not serialisable
        if chunk_jets < 1:
            raise ValueError(f"chunk_jets must be positive, got {chunk_jets}")
        self.chunk_jets = int(chunk_jets)
        if compression_level is not None:
            compression = f"gzip-{int(compression_level)}+shuffle"
        self._filters = compression_options(compression)  # fail early on an unknown spec
        self.compression = compression
        self.n_written = 0
        self._class_counts = np.zeros(len(self.class_names), dtype=np.int64)
        self._buffer: list[dict[str, np.ndarray]] = []
        self._buffered = 0
        self._particle_keys: list[str] | None = None
        self._jet_keys: list[str] | None = None
        self._f: h5py.File | None = None
        self._io: DeferredErrorFile | None = None
        self._stack: contextlib.ExitStack | None = None

    # -- context manager ----------------------------------------------------------------------
    def __enter__(self) -> HepfmH5Writer:
        self._stack = contextlib.ExitStack()
        try:
            tmp = self._stack.enter_context(atomic_path(self.path, suffix=".h5"))
            # a full disk surfaces as an OSError (EFBIG, ENOSPC) instead of crashing HDF5
            self._f, self._io = self._stack.enter_context(h5_output(tmp))
        except BaseException as err:
            self._stack.__exit__(type(err), err, err.__traceback__)
            raise
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        """Finish the file, close it once and rename it onto ``path``; on any error (including a
        write error kept by :class:`DeferredErrorFile`) remove the temporary file instead."""
        assert self._stack is not None
        assert self._f is not None
        stack, self._stack = self._stack, None
        if exc_type is None:
            try:
                self._flush(final=True)
                self._ensure_datasets({})
                self._write_attrs()
            except BaseException as err:
                stack.__exit__(type(err), err, err.__traceback__)
                raise
        return bool(stack.__exit__(exc_type, exc, tb))

    # -- writing ------------------------------------------------------------------------------
    def append(self, chunk: JetChunk) -> None:
        """Add the jets of ``chunk``."""
        if self._f is None:
            raise RuntimeError("HepfmH5Writer.append outside its 'with' block")
        if len(chunk) == 0:
            return
        if self.labeled:
            if chunk.label is None:
                raise ValueError("writer is labeled but the chunk has no labels")
            if tuple(chunk.class_names) != self.class_names:
                raise ValueError(f"chunk class names {chunk.class_names} != writer's {self.class_names}")
            lab = chunk.label
            if lab.min() < 0 or lab.max() >= len(self.class_names):
                raise ValueError("chunk labels outside [0, number of classes)")
            self._class_counts += np.bincount(lab, minlength=len(self.class_names))
        n_slots = self.max_particles
        chunk = chunk.truncate(n_slots, keep_jet_sums=False)
        npart = chunk.mask.sum(axis=1)
        if not np.array_equal(chunk.mask, np.arange(chunk.max_particles)[None, :] < npart[:, None]):
            raise ValueError("chunk mask is not contiguous: real particles must fill the leading slots")
        pad = n_slots - chunk.max_particles

        def padded(a: np.ndarray) -> np.ndarray:
            if pad == 0:
                return a
            return np.pad(a, [(0, 0), (0, pad)] + [(0, 0)] * (a.ndim - 2))

        p4 = np.where(chunk.mask[..., None], chunk.p4, 0).astype(np.float32)
        rows: dict[str, np.ndarray] = {"p4": padded(p4), "n_particles": npart.astype(np.int16)}
        if self.labeled:
            rows["label"] = chunk.label.astype(np.int64)  # type: ignore[union-attr]
        if self._particle_keys is None:
            self._particle_keys = sorted(chunk.particles)
            self._jet_keys = sorted(chunk.jets)
        if sorted(chunk.particles) != self._particle_keys or sorted(chunk.jets) != self._jet_keys:
            raise ValueError(
                f"chunk fields differ from the first chunk's: particles {sorted(chunk.particles)} vs "
                f"{self._particle_keys}, jets {sorted(chunk.jets)} vs {self._jet_keys}"
            )
        for k, v in chunk.particles.items():
            dtype = np.int32 if k in INT_FIELDS else np.float32
            rows[f"particles/{k}"] = padded(np.where(chunk.mask, v, 0).astype(dtype))
        for k, v in chunk.jets.items():
            rows[f"jets/{k}"] = np.asarray(v)
        self._buffer.append(rows)
        self._buffered += len(chunk)
        if self._buffered >= self.chunk_jets:
            self._flush(final=False)

    def _ensure_datasets(self, rows: dict[str, np.ndarray]) -> None:
        f = self._f
        assert f is not None
        if "p4" in f:
            return
        if not rows:  # nothing was ever written: an empty but valid file
            rows = {
                "p4": np.zeros((0, self.max_particles, 4), np.float32),
                "n_particles": np.zeros(0, np.int16),
            }
            if self.labeled:
                rows["label"] = np.zeros(0, np.int64)
        for name, arr in rows.items():
            f.create_dataset(
                name,
                shape=(0, *arr.shape[1:]),
                maxshape=(None, *arr.shape[1:]),
                dtype=arr.dtype,
                chunks=(self.chunk_jets, *arr.shape[1:]),
                fletcher32=True,
                **self._filters,
            )

    def _flush(self, *, final: bool) -> None:
        if not self._buffer:
            return
        rows = {k: np.concatenate([b[k] for b in self._buffer]) for k in self._buffer[0]}
        n = len(rows["p4"])
        n_out = n if final else (n // self.chunk_jets) * self.chunk_jets
        if n_out == 0:
            return
        self._ensure_datasets(rows)
        f = self._f
        assert f is not None
        start = self.n_written
        for name, arr in rows.items():
            ds = f[name]
            ds.resize(start + n_out, axis=0)
            ds[start : start + n_out] = arr[:n_out]
        self.n_written += n_out
        assert self._io is not None
        self._io.raise_error()  # stop at the first failed write rather than keep writing to memory
        rest = {k: v[n_out:] for k, v in rows.items()}
        self._buffer = [rest] if n_out < n else []
        self._buffered = n - n_out

    def _write_attrs(self) -> None:
        f = self._f
        assert f is not None
        f.attrs["hepfm_format"] = FORMAT_TAG
        f.attrs["hepfm_schema"] = SCHEMA
        f.attrs["hepfm_version"] = __version__
        f.attrs["class_names"] = json.dumps(list(self.class_names))
        f.attrs["labeled"] = self.labeled
        f.attrs["metadata"] = self._metadata_json
        f.attrs["n_jets"] = self.n_written
        f.attrs["compression"] = self.compression
        counts = dict(zip(self.class_names, self._class_counts.tolist(), strict=True)) if self.labeled else {}
        f.attrs["class_counts"] = json.dumps(counts)


def write_hepfm(
    path: str | Path,
    chunks: Iterable[JetChunk],
    metadata: dict | None = None,
    *,
    max_particles: int | None = None,
    chunk_jets: int = DEFAULT_CHUNK_JETS,
    compression: str = DEFAULT_COMPRESSION,
) -> int:
    """Write ``chunks`` to a hepfm HDF5 file; returns the number of jets written.

    Class names, labeled-ness and (unless ``max_particles`` is given) the number of slots come from
    the first chunk; with ``max_particles=None`` a later chunk with more real particles than that is
    an error rather than a silent truncation. ``compression``: see :func:`compression_options`.
    """
    it = iter(chunks)
    first = next(it, None)
    if first is None:
        raise HepfmInputError("nothing to write: no jets", path)
    auto = max_particles is None
    n_slots = first.max_particles if auto else int(max_particles)  # type: ignore[arg-type]
    with HepfmH5Writer(
        path,
        max_particles=n_slots,
        class_names=first.class_names,
        labeled=first.label is not None,
        metadata=metadata,
        chunk_jets=chunk_jets,
        compression=compression,
    ) as w:
        w.append(first)
        for chunk in it:
            if auto and chunk.max_particles > n_slots and chunk.mask[:, n_slots:].any():
                raise ValueError(
                    f"a chunk has jets with more than {n_slots} particles (the first chunk's slot "
                    "count); pass max_particles to write_jets to truncate"
                )
            w.append(chunk)
    return w.n_written
