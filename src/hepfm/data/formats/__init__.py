"""Jet file formats: detection by content, readers (:class:`~hepfm.data.formats.base.JetSource`) and
writers.

Formats (registry names):

``hepfm``
    hepfm's own chunked, compressed, schema-versioned HDF5 (what the generator writes).
``toptag-h5``
    The Top Quark Tagging reference dataset: a pandas ``to_hdf(key="table")`` file.
``jetclass-root``
    The JetClass dataset: a ROOT TTree (or RNTuple) ``tree`` with ``part_*``/``label_*``/``jet_*``
    branches.
``jetclass-parquet``
    The same columns in a Parquet file (jagged ``part_*`` list columns), read with pyarrow.
``nanoaod-events``
    CMS NanoAOD events as sets of reconstructed objects (leptons, taus, b-jets, jets, MET): what a
    NanoAOD file without PF candidates is read as, or any NanoAOD file as ``FILE:Events``.
``aspen-h5``
    Aspen Open Jets (CMS open-data AK8 jets): HDF5 with ``PFCands`` (n, 150, 11) and ``jet_kinematics``.
``nanoaod``
    Jets with their PF constituents from CMS NanoAOD / PFNano (an ``Events`` TTree or RNTuple with
    ``PFCands_*``/``PFCand_*`` and the jet-to-candidate index maps); ``FILE:Jet`` or
    ``FILE:FatJet`` picks the collection. As a *writer* name, ``nanoaod`` writes events of objects
    as a NanoAOD-like ``Events`` tree (:mod:`~hepfm.data.formats.nanoaod_writer`), which is read
    back as ``nanoaod-events``.

The format of a file is decided from its content, never from its extension: HDF5, ROOT and Parquet
by their magic bytes, then by structure (hepfm attributes, a pandas ``table`` key, a TTree or RNTuple
``tree`` with ``part_*`` branches, an ``Events`` tree with PF-candidate index maps, ``part_*`` Parquet
columns).
"""

from __future__ import annotations

import errno
import glob
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from hepfm.data.formats.aspen_h5 import AspenH5Source
from hepfm.data.formats.base import ArraySource, JetSource
from hepfm.data.formats.hepfm_h5 import HepfmH5Source, HepfmH5Writer, write_hepfm
from hepfm.data.formats.jetclass_parquet import JetClassParquetSource, write_jetclass_parquet
from hepfm.data.formats.jetclass_root import JetClassRootSource, write_jetclass
from hepfm.data.formats.nanoaod import NanoAODJetSource, split_selector
from hepfm.data.formats.nanoaod_events import NanoAODEventSource
from hepfm.data.formats.nanoaod_writer import write_nanoaod_events
from hepfm.data.formats.toptag_h5 import TopTagH5Source, write_toptag
from hepfm.data.jets import JetChunk
from hepfm.data.validate import ROOT_ERRORS, one_line, read_errors
from hepfm.errors import HepfmInputError
from hepfm.registry import Registry

__all__ = [
    "FORMATS",
    "WRITERS",
    "ArraySource",
    "AspenH5Source",
    "HepfmH5Source",
    "HepfmH5Writer",
    "JetClassParquetSource",
    "JetClassRootSource",
    "JetSource",
    "NanoAODEventSource",
    "NanoAODJetSource",
    "TopTagH5Source",
    "detect_format",
    "expand_patterns",
    "open_source",
    "open_sources",
    "write_jets",
]

#: Format name -> reader class (``cls(path, **options)`` is a JetSource).
FORMATS: Registry[type] = Registry("data format")
FORMATS.add("hepfm", HepfmH5Source)
FORMATS.add("toptag-h5", TopTagH5Source)
FORMATS.add("jetclass-root", JetClassRootSource)
FORMATS.add("jetclass-parquet", JetClassParquetSource)
FORMATS.add("nanoaod", NanoAODJetSource)
FORMATS.add("aspen-h5", AspenH5Source)
FORMATS.add("nanoaod-events", NanoAODEventSource)

#: Format name -> writer ``fn(path, chunks, metadata, **options) -> jets written``.
WRITERS: Registry[Callable[..., int]] = Registry("output format")
WRITERS.add("hepfm", write_hepfm)
WRITERS.add("toptag-h5", write_toptag)
WRITERS.add("jetclass-root", write_jetclass)
WRITERS.add("jetclass-parquet", write_jetclass_parquet)
WRITERS.add("nanoaod", write_nanoaod_events)  # events of objects, read back as nanoaod-events

#: Write errors that mean "no room": disk full, quota, file-size limit.
_DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})
#: The container each built-in format lives in.
_CONTAINERS = {"hepfm": "hdf5", "toptag-h5": "hdf5", "jetclass-root": "root", "jetclass-parquet": "parquet",
               "nanoaod": "root", "aspen-h5": "hdf5", "nanoaod-events": "root"}
_ARTICLE = {"hdf5": "an HDF5", "root": "a ROOT", "parquet": "a Parquet"}
HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
ROOT_MAGIC = b"root"
PARQUET_MAGIC = b"PAR1"
#: HDF5 files may start with a user block of 512, 1024, 2048, ... bytes before the signature.
_HDF5_OFFSETS = (0, 512, 1024, 2048, 4096, 8192, 16384, 32768, 65536)


def _check_file(path: Path) -> None:
    if not path.exists():
        raise HepfmInputError("file not found", path)
    if path.is_dir():
        raise HepfmInputError("is a directory, not a file", path)
    if not os.access(path, os.R_OK):
        raise HepfmInputError("file is not readable (permission denied)", path)


def _sniff(path: Path) -> str:
    """'hdf5', 'root', 'parquet', or raise: the container type from the magic bytes."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            head = fh.read(8)
            if size == 0:
                raise HepfmInputError("file is empty", path)
            if head[:4] == ROOT_MAGIC:
                return "root"
            if head[:4] == PARQUET_MAGIC:
                return "parquet"
            for off in _HDF5_OFFSETS:
                if off + 8 > size:
                    break
                fh.seek(off)
                if fh.read(8) == HDF5_MAGIC:
                    return "hdf5"
    except OSError as err:
        raise HepfmInputError(f"cannot read file: {one_line(err)}", path) from None
    raise HepfmInputError(
        f"not an HDF5, ROOT or Parquet file (unrecognised content, first bytes {head[:8]!r}); "
        "supported formats: " + ", ".join(FORMATS.names()),
        path,
    )


def detect_format(path: str | Path) -> str:
    """The registry name of the format of ``path``, from its content (never its extension)."""
    path = Path(path).expanduser()
    _check_file(path)
    kind = _sniff(path)
    if kind == "hdf5":
        import h5py

        from hepfm.data.formats.aspen_h5 import is_aspen_file
        from hepfm.data.formats.hepfm_h5 import is_hepfm_file
        from hepfm.data.formats.toptag_h5 import is_pandas_table

        with read_errors(path, "opening the HDF5 file"), h5py.File(path, "r") as f:
            if is_hepfm_file(f):
                return "hepfm"
            if is_pandas_table(f):
                return "toptag-h5"
            if is_aspen_file(f):
                return "aspen-h5"
            keys = sorted(f.keys())
        raise HepfmInputError(
            "HDF5 file with no known jet layout (expected hepfm attributes, a pandas 'table' key as in "
            f"the Top Tagging dataset, or Aspen Open Jets' PFCands); top-level keys: {keys[:10]}",
            path,
        )
    if kind == "parquet":
        from hepfm.data.formats.jetclass_parquet import parquet_columns

        cols = parquet_columns(path)
        if any(c.startswith("part_") for c in cols):
            return "jetclass-parquet"
        raise HepfmInputError(
            f"Parquet file with no part_* columns (JetClass layout); columns: {cols[:10]}", path
        )
    import uproot

    from hepfm.data.formats.jetclass_root import TREE, describe_root_keys, find_tree
    from hepfm.data.formats.nanoaod import EVENTS, constituent_maps, describe_nanoaod, find_events, flat_names
    from hepfm.data.formats.nanoaod_events import is_nanoaod_events

    with read_errors(path, "opening the ROOT file", ROOT_ERRORS), uproot.open(path) as f:
        tree = find_tree(f)
        # tree.keys(), not tree: iterating an uproot tree yields branches, not names
        if tree is not None and any(k.startswith("part_") for k in tree.keys()):  # noqa: SIM118
            return "jetclass-root"
        events = find_events(f)
        if events is not None:
            keys = flat_names(events.keys())
            if constituent_maps(keys):
                return "nanoaod"
            if is_nanoaod_events(keys):
                return "nanoaod-events"
            raise HepfmInputError(
                f"NanoAOD file ({EVENTS!r} tree) with neither jet constituents nor Jet and MET objects: "
                f"{describe_nanoaod(keys)}",
                path,
            )
        found = describe_root_keys(f)
    raise HepfmInputError(
        f"ROOT file with no TTree or RNTuple {TREE!r} with part_* branches (JetClass layout) and no "
        f"NanoAOD {EVENTS!r} tree; the file holds: {found}",
        path,
    )


def open_source(path: str | Path, format: str | None = None, **options: Any) -> JetSource:
    """Open ``path`` as a :class:`JetSource`, detecting the format from the content unless given.

    ``options`` go to the reader: ``max_particles``, ``validate`` (default True: every ``read``
    checks its jets and raises on the first bad one) and ``skip_bad`` (drop bad jets instead).
    ``path`` may end in a NanoAOD selector: ``FILE:FatJet`` / ``FILE:Jet`` (jets with constituents),
    ``FILE:Events`` (events as sets of objects).
    """
    text, collection = split_selector(os.path.expanduser(str(path)))
    path = Path(text)
    _check_file(path)
    if collection is not None:
        wanted = "nanoaod-events" if collection == "Events" else "nanoaod"
        if format is not None and format != wanted:
            raise HepfmInputError(f"the ':{collection}' selector reads format {wanted!r}, not {format!r}",
                                  path)
        format = wanted  # the container check below refuses a file that is not ROOT
        if wanted == "nanoaod":
            options = {**options, "collection": collection}
    if format is None:
        name = detect_format(path)
    else:
        name = format
        cls = FORMATS.get(name)  # unknown names fail here, before the file is read
        expected = _CONTAINERS.get(name)
        found = _sniff(path)
        if expected is not None and found != expected:
            raise HepfmInputError(
                f"format {name!r} needs {_ARTICLE[expected]} file, but this is {_ARTICLE[found]} file", path
            )
    cls = FORMATS.get(name)
    return cls(path, **options)


def expand_patterns(patterns: Iterable[str | Path]) -> list[Path]:
    """Paths from file names and glob patterns (each pattern's matches sorted; duplicates dropped).

    A pattern with glob characters that matches nothing is an error; a plain name is kept as is (so
    a missing file is reported as "file not found" when opened). A NanoAOD collection selector
    (``FILE:Jet``) stays on every match.
    """
    out: list[Path] = []
    seen: set[str] = set()
    for pat in patterns:
        text, collection = split_selector(os.path.expanduser(str(pat)))
        if glob.has_magic(text):
            matches = sorted(glob.glob(text, recursive=True))
            if not matches:
                raise HepfmInputError("no file matches this pattern", text)
        else:
            matches = [text]
        if collection is not None:
            matches = [f"{m}:{collection}" for m in matches]
        for m in matches:
            key = os.path.abspath(m)
            if key not in seen:
                seen.add(key)
                out.append(Path(m))
    return out


def open_sources(patterns: Sequence[str | Path], format: str | None = None,
                 **options: Any) -> list[JetSource]:
    """Open every file that ``patterns`` (names or glob patterns) give, in order."""
    paths = expand_patterns(patterns)
    if not paths:
        raise HepfmInputError("no input files given")
    return [open_source(p, format, **options) for p in paths]


def write_jets(
    path: str | Path,
    chunks: Iterable[JetChunk],
    format: str,
    metadata: dict | None = None,
    **options: Any,
) -> int:
    """Write ``chunks`` to ``path`` in ``format`` (a :data:`WRITERS` name); returns jets written.

    The file appears atomically (temporary sibling + rename); on an error no partial file is left,
    and a full disk (or quota, or file-size limit) is an ``OSError`` with its errno naming ``path``.
    ``options`` go to the writer (``max_particles``/``chunk_jets`` for hepfm, ``n_slots`` for
    toptag-h5, ``basket_jets`` for jetclass-root, ``row_group_jets`` for jetclass-parquet,
    ``photons``/``basket_events`` for nanoaod).
    """
    writer = WRITERS.get(format)
    path = Path(path).expanduser()
    try:
        return writer(path, chunks, metadata, **options)
    except OSError as err:
        if err.errno not in _DISK_FULL:
            raise
        # name the destination, not the temporary sibling the writer was filling (removed by now)
        raise OSError(err.errno, err.strerror, str(path)) from err
