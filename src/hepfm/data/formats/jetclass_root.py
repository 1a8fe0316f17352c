"""The JetClass ROOT layout (Qu, Li, Qian, arXiv:2202.03772), read and written with uproot.

One TTree ``tree``, one entry per jet (or the same layout stored as an RNTuple ``tree``, read
alike: fields for branches, clusters for baskets). Branches (as in the official files, ``tree.show()`` of
``JetClass_example_100k.root`` in jet-universe/particle_transformer ``notebooks/JetClass101.ipynb``):

* jagged per particle: ``part_px, part_py, part_pz, part_energy, part_deta, part_dphi, part_d0val,
  part_d0err, part_dzval, part_dzerr, part_charge`` (``vector<float>``) and ``part_isChargedHadron,
  part_isNeutralHadron, part_isPhoton, part_isElectron, part_isMuon`` (``vector<int32>``);
* per jet: ``label_QCD, label_Hbb, ..., label_Tbl`` (one-hot; the official file mixes float, bool
  and int32, so any numeric type is accepted), ``jet_pt, jet_eta, jet_phi, jet_energy,
  jet_nparticles, jet_sdmass, jet_tau1..4`` (float) and ``aux_genpart_*``, ``aux_truth_match``
  (float; truth information, ignored by the reader).

Reader (:class:`JetClassColumnsSource`, shared with the Parquet reader of
:mod:`~hepfm.data.formats.jetclass_parquet`, over a :class:`ColumnTable`): ``part_px/py/pz/energy``
are required (a missing one is an error naming it); the other
``part_*`` fields of :data:`~hepfm.data.jets.PARTICLE_FIELDS` are read if present and asked for
(``read(start, stop, fields)``; float32, ``pid`` int32), so a ``kin`` read decompresses only the
four momentum branches and the labels. Particles are sorted by decreasing pT if a jet is not,
then clipped/zero-padded to ``max_particles`` (default 128 as in ParT; None = the longest jet of
the chunk). ``label`` is the
index of the set ``label_*`` (class names :data:`~hepfm.data.jets.JETCLASS_CLASSES`); a file with
no ``label_*`` branch is unlabeled, one with only some of the ten is an error. A file whose
``label_*`` names are not all JetClass classes (e.g. ``label_QCD, label_Top`` written by hepfm from
Top Tagging jets) is read with those classes, in branch order. Every scalar ``jet_*``
branch goes to ``chunk.jets`` under its branch name; ``aux_hepfm_<k>`` (written by hepfm) goes back
to ``chunk.jets[k]`` (``jet_fields`` select by these ``chunk.jets`` names). Other keys in the file
(e.g. ``hepfm_metadata``) are ignored.

Reading cost and memory: ROOT compresses each branch in baskets, and a basket is always
decompressed whole. A read therefore decompresses the baskets covering ``[start, stop)`` (through
uproot, without its array cache) and keeps the decoded flat arrays of the covered entry range
(basket-cluster aligned) as a one-range cache, so the next read inside that range decompresses
nothing. The cache holds at most :data:`CACHE_BYTES` of decoded data; a cover larger than that is
read for the request alone. The jagged arrays are never padded with awkward: the flat contents
and offsets are scattered into the padded arrays with numpy index arithmetic.

Writer: a TTree (not an RNTuple), in baskets of ``basket_jets`` entries (one basket per branch
and per ``basket_jets`` jets, default 8192 = the loaders' read size), whose per-particle branches
are written through one awkward record, so uproot names them ``part_<field>`` with a shared
counter branch ``npart`` (``float[npart]`` instead of ``vector<float>``: both read back as the
same jagged arrays in uproot and weaver). Particle fields missing from the chunks are written as
zeros so that weaver's JetClass configs load, and are listed in the metadata
(``zero_filled_branches``). ``part_deta`` /
``part_dphi`` are computed relative to the jet axis with the official convention
(``deta = (eta - jet_eta) * sign(jet_eta)``, ``dphi`` wrapped into [-pi, pi)). ``jet_pt, jet_eta,
jet_phi, jet_energy, jet_nparticles`` come from ``chunk.jets`` if present, else from the sum of
the constituents; ``jet_sdmass``/``jet_tau*`` only if present. ``label_<class>`` (bool) is written
for each of the chunks' class names (the ten JetClass ones, or any other set such as QCD/Top).
The metadata dict is stored as JSON in a ``TObjString`` named ``hepfm_metadata``.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Iterable
from pathlib import Path
from typing import Any

import numpy as np

from hepfm.data.formats.base import ValidatingSource
from hepfm.data.formats.flat import pad_particles
from hepfm.data.jets import (
    FULL_JET_P4,
    JETCLASS2_CLASSES,
    JETCLASS_CLASSES,
    PID_FLAGS,
    JetChunk,
    pid_flags,
    pt_eta_phi,
)
from hepfm.data.validate import (
    ROOT_ERRORS,
    labels_from_one_hot,
    labels_from_values,
    read_errors,
    select_fields,
)
from hepfm.errors import HepfmInputError
from hepfm.io import atomic_path

TREE = "tree"
MOMENTUM_BRANCHES = ("part_px", "part_py", "part_pz", "part_energy")
#: Per-particle fields of the official files besides the momenta, in their branch order.
OFFICIAL_PARTICLE_FIELDS = (
    "d0val",
    "d0err",
    "dzval",
    "dzerr",
    "charge",
    "isChargedHadron",
    "isNeutralHadron",
    "isPhoton",
    "isElectron",
    "isMuon",
)
READ_PARTICLE_FIELDS = (*OFFICIAL_PARTICLE_FIELDS, "pid")
JET_BRANCHES = ("jet_pt", "jet_eta", "jet_phi", "jet_energy", "jet_nparticles")
OPTIONAL_JET_BRANCHES = ("jet_sdmass", "jet_tau1", "jet_tau2", "jet_tau3", "jet_tau4")
AUX_PREFIX = "aux_hepfm_"
#: JetClass-II's label: one integer per jet over its 188 classes (:data:`~hepfm.data.jets.JETCLASS2_CLASSES`).
LABEL_INDEX = "jet_label"
#: Scalar columns kept as per-jet fields: jet observables, JetClass-II's matched generator jet, hepfm's own.
JET_PREFIXES = ("jet_", "genjet_", AUX_PREFIX)
#: JetClass-II's truth-particle masses and the flags of its resonances X and Y: ``resx_mass``/``resy_mass``.
TRUTH_MASS = "aux_genpart_mass"
RESONANCES = ("ResX", "ResY")
METADATA_KEY = "hepfm_metadata"
DEFAULT_MAX_PARTICLES = 128
#: Entries per basket the writer uses by default (the loaders read 8192 jets at a time).
DEFAULT_BASKET_JETS = 8192
#: Upper bound of the decoded entry range a reader keeps between reads (see the module docstring).
CACHE_BYTES = 64 * 1024 * 1024


def _scalar_branch(branch) -> bool:
    """True if an uproot branch holds one number per entry."""
    import uproot

    interp = branch.interpretation
    return isinstance(interp, uproot.interpretation.numerical.AsDtype) and interp.to_dtype.shape == ()


def _jagged_parts(arr) -> tuple[np.ndarray, np.ndarray]:
    """(offsets from 0, flat content) of a jagged awkward array, without copying the content."""
    import awkward as ak

    layout = arr.layout
    if isinstance(layout, ak.contents.ListOffsetArray) and isinstance(layout.content, ak.contents.NumpyArray):
        off = np.asarray(layout.offsets.data, dtype=np.int64)
        content = np.asarray(layout.content.data)
        return off - off[0], content[off[0] : off[-1]]
    counts = ak.to_numpy(ak.num(arr, axis=1)).astype(np.int64)
    off = np.zeros(len(counts) + 1, dtype=np.int64)
    np.cumsum(counts, out=off[1:])
    return off, ak.to_numpy(ak.flatten(arr, axis=1))


def _flat_numpy(arr) -> np.ndarray:
    """A one-number-per-entry awkward array as numpy, without a copy where possible."""
    import awkward as ak

    layout = arr.layout
    if isinstance(layout, ak.contents.NumpyArray):
        return np.asarray(layout.data)
    return ak.to_numpy(arr)


class _Decoded:
    """Flat arrays of the entries ``[lo, hi)`` of some branches: jagged ones as (offsets, content)."""

    __slots__ = ("hi", "jagged", "lo", "nbytes", "scalar")

    def __init__(self, lo: int, hi: int, jagged: dict, scalar: dict) -> None:
        self.lo, self.hi, self.jagged, self.scalar = lo, hi, jagged, scalar
        self.nbytes = sum(o.nbytes + c.nbytes for o, c in jagged.values()) + sum(
            v.nbytes for v in scalar.values()
        )

    def covers(self, start: int, stop: int, jagged: Iterable[str], scalar: Iterable[str]) -> bool:
        return (
            self.lo <= start
            and stop <= self.hi
            and all(b in self.jagged for b in jagged)
            and all(b in self.scalar for b in scalar)
        )

    def slice(self, start: int, stop: int, jagged: Iterable[str], scalar: Iterable[str]) -> _Decoded:
        a, b = start - self.lo, stop - self.lo
        out_j = {}
        for name in jagged:
            off, content = self.jagged[name]
            o = off[a : b + 1]
            out_j[name] = (o - o[0], content[o[0] : o[-1]])
        out_s = {name: self.scalar[name][a:b] for name in scalar}
        return _Decoded(start, stop, out_j, out_s)


#: RNTuple field types that hold one number per entry (uproot's type names).
_RNTUPLE_SCALARS = frozenset(
    {"bool", "char", "float", "double"}
    | {f"std::{u}int{b}_t" for u in ("", "u") for b in (8, 16, 32, 64)}
)
#: The JetClass object's classes in a ROOT file: a TTree, or the same layout stored as an RNTuple.
TREE_CLASSES = ("TTree", "ROOT::RNTuple")


class ColumnTable:
    """The columns of one JetClass-layout table (a ROOT TTree or RNTuple, a Parquet file): what
    :class:`JetClassColumnsSource` needs from a container. Subclasses fill ``names`` (file order)
    and ``num_entries``."""

    names: list[str]
    num_entries: int

    def is_scalar(self, name: str) -> bool:  # pragma: no cover - overridden
        """True if the column holds one number per entry."""
        raise NotImplementedError

    def is_jagged(self, name: str) -> bool:  # pragma: no cover - overridden
        """True if the column holds a list of numbers per entry."""
        raise NotImplementedError

    def type_of(self, name: str) -> str:  # pragma: no cover - overridden
        """The column's type as the container names it (for error messages)."""
        raise NotImplementedError

    def layout(self, names: tuple[str, ...]) -> tuple[np.ndarray, float]:  # pragma: no cover
        """Entry numbers where the compression units (baskets, clusters, row groups) of all ``names``
        start together (0 ... n), and the decoded bytes per entry of those columns."""
        raise NotImplementedError

    def decode(
        self, start: int, stop: int, jagged: list[str], scalar: list[str]
    ) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], dict[str, np.ndarray]]:  # pragma: no cover
        """Entries ``[start, stop)``: jagged columns as (offsets from 0, flat content), scalar ones as
        numpy arrays."""
        raise NotImplementedError


class _UprootTable(ColumnTable):
    """A TTree or an RNTuple, read with uproot (both have ``keys``, ``num_entries``, ``arrays``)."""

    def __init__(self, obj) -> None:
        self.obj = obj
        # obj.keys(), not obj: iterating an uproot tree yields branches, not names
        self.names = list(obj.keys())
        self.num_entries = int(obj.num_entries)

    def decode(self, start, stop, jagged, scalar):
        arrays = self.obj.arrays(
            [*jagged, *scalar], entry_start=start, entry_stop=stop, library="ak", how=dict, array_cache=None
        )
        for name in (*jagged, *scalar):
            if len(arrays[name]) != stop - start:
                raise HepfmInputError(f"read {len(arrays[name])} entries of {name} for jets {start}-{stop}")
        return (
            {name: _jagged_parts(arrays[name]) for name in jagged},
            {name: _flat_numpy(arrays[name]) for name in scalar},
        )


class _TTreeTable(_UprootTable):
    def is_scalar(self, name: str) -> bool:
        return _scalar_branch(self.obj[name])

    def is_jagged(self, name: str) -> bool:
        import uproot

        interp = self.obj[name].interpretation
        return (isinstance(interp, uproot.interpretation.jagged.AsJagged)
                and isinstance(interp.content, uproot.interpretation.numerical.AsDtype)
                and interp.content.to_dtype.kind in "biuf")

    def type_of(self, name: str) -> str:
        return str(self.obj[name].typename)

    def layout(self, names):
        bounds = np.asarray(self.obj.common_entry_offsets(filter_name=list(names)), dtype=np.int64)
        per_entry = sum(self.obj[b].uncompressed_bytes for b in names) / max(self.num_entries, 1) + 8.0
        return bounds, per_entry


class _RNTupleTable(_UprootTable):
    """An RNTuple: uproot decompresses whole clusters, so the cluster starts are the boundaries."""

    #: decoded bytes per entry assumed for a jagged field before one has been read (~100 particles)
    JAGGED_GUESS = 400.0

    def __init__(self, obj) -> None:
        super().__init__(obj)
        self._types = dict(obj.typenames())
        self._learned: dict[str, float] = {}

    def is_scalar(self, name: str) -> bool:
        return self._types.get(name) in _RNTUPLE_SCALARS

    def is_jagged(self, name: str) -> bool:
        t = self._types.get(name, "")
        for box in ("std::vector<", "ROOT::VecOps::RVec<", "ROOT::RVec<"):
            if t.startswith(box) and t.endswith(">"):
                return t[len(box) : -1] in _RNTUPLE_SCALARS
        return False

    def type_of(self, name: str) -> str:
        return self._types.get(name) or "a record or collection"

    def layout(self, names):
        starts = [int(c.num_first_entry) for c in self.obj.cluster_summaries]
        bounds = np.asarray(sorted({*starts, self.num_entries}), dtype=np.int64)
        per_entry = 8.0 + sum(
            self._learned.get(b, 8.0 if self.is_scalar(b) else self.JAGGED_GUESS) for b in names
        )
        return bounds, per_entry

    def decode(self, start, stop, jagged, scalar):
        j, s = super().decode(start, stop, jagged, scalar)
        n = max(stop - start, 1)
        for name, (off, content) in j.items():
            self._learned[name] = (off.nbytes + content.nbytes) / n
        for name, v in s.items():
            self._learned[name] = v.nbytes / n
        return j, s


def find_tree(f):
    """The JetClass TTree (or RNTuple) ``tree`` of an open uproot file, or None."""
    if TREE not in f:
        return None
    classname = f.classname_of(TREE)
    if classname not in TREE_CLASSES:
        return None
    return f[TREE]


def describe_root_keys(f, limit: int = 10) -> str:
    """The objects of an open uproot file as ``name (class), ...`` (at most ``limit``)."""
    items = [f"{k} ({c})" for k, c in f.classnames(recursive=False, cycle=False).items()]
    if not items:
        return "nothing (no objects)"
    more = f", ... ({len(items) - limit} more)" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more


class JetClassColumnsSource(ValidatingSource):
    """The JetClass column layout, whatever stores it: ``part_*``/``label_*``/``jet_*`` columns of a
    :class:`ColumnTable` mapped to a :class:`JetChunk` (see the module docstring). Subclasses open
    the container (``_open``, ``_table``) and read its metadata (``_read_metadata``).

    Args:
        path: the file.
        max_particles: slots per jet (default 128; None = the longest jet in each chunk read).
        validate, skip_bad: see :class:`~hepfm.data.formats.base.ValidatingSource`.
    """

    #: what a column is called in this container (for error messages)
    COLUMN = "branch"
    #: the exceptions of the container's library that mean a corrupted file
    ERRORS: tuple[type[BaseException], ...] = ROOT_ERRORS
    LAYOUT = "JetClass ROOT layout"

    def __init__(
        self,
        path: str | Path,
        *,
        max_particles: int | None = DEFAULT_MAX_PARTICLES,
        validate: bool = True,
        skip_bad: bool = False,
    ) -> None:
        super().__init__(path, validate=validate, skip_bad=skip_bad)
        self.max_particles = max_particles
        self._columns: ColumnTable | None = None
        self._columns_of: object = None
        with read_errors(self.path, f"reading the {self.LAYOUT}", self.ERRORS):
            self._init_layout()

    def _table(self) -> ColumnTable:  # pragma: no cover - overridden
        raise NotImplementedError

    def _read_metadata(self) -> dict:
        return {}

    def _container(self) -> str:  # pragma: no cover - overridden
        """What holds the columns, for ``hepfm inspect``."""
        raise NotImplementedError

    def _cols(self) -> ColumnTable:
        """The table of the current file handle (rebuilt after a reopen, e.g. in a forked worker)."""
        handle = self._file()
        if self._columns is None or self._columns_of is not handle:
            self._columns = self._table()
            self._columns_of = handle
        return self._columns

    def _init_layout(self) -> None:
        table = self._cols()
        names = set(table.names)
        for b in MOMENTUM_BRANCHES:
            if b not in names:
                raise HepfmInputError(f"missing {self.COLUMN} {b}", self.path)
        self._particle_fields = [k for k in READ_PARTICLE_FIELDS if f"part_{k}" in names]
        for b in (*MOMENTUM_BRANCHES, *(f"part_{k}" for k in self._particle_fields)):
            if not table.is_jagged(b):
                raise HepfmInputError(
                    f"{self.COLUMN} {b} has type {table.type_of(b)}, not a list of numbers per jet", self.path
                )
        # label_* columns in file order (scalar ones only)
        in_file = [k for k in table.names if k.startswith("label_") and table.is_scalar(k)]
        file_classes = [k[len("label_") :] for k in in_file]
        self._label_branches: list[str] = []
        self._label_index: str | None = None
        if not file_classes:
            classes: tuple[str, ...] = ()
            if LABEL_INDEX in names and table.is_scalar(LABEL_INDEX):  # JetClass-II: one integer
                classes = JETCLASS2_CLASSES
                self._label_index = LABEL_INDEX
        elif set(file_classes) <= set(JETCLASS_CLASSES):
            missing = [c for c in JETCLASS_CLASSES if c not in file_classes]
            if missing:
                what = f"{self.COLUMN}es" if self.COLUMN == "branch" else f"{self.COLUMN}s"
                raise HepfmInputError(
                    f"missing {self.COLUMN} label_{missing[0]} (other JetClass label_* {what} exist)",
                    self.path,
                )
            classes = JETCLASS_CLASSES
        else:  # another class set written in this layout (e.g. QCD/Top by hepfm): file order
            classes = tuple(file_classes)
        self.has_labels = bool(classes)
        self.class_names = classes
        if self._label_index is None:
            self._label_branches = [f"label_{c}" for c in classes]
        self._jet_branches = sorted(
            k for k in names
            if k.startswith(JET_PREFIXES) and k != LABEL_INDEX and table.is_scalar(k)
        )
        #: JetClass-II's truth particles: the resonances' masses become per-jet fields (regression targets)
        self._resonances = [r for r in RESONANCES if {TRUTH_MASS, f"aux_genpart_is{r}"} <= names]
        self._n = int(table.num_entries)
        self.particle_fields = tuple(self._particle_fields)
        self._cache: _Decoded | None = None
        self._boundaries: dict[tuple[str, ...], tuple[np.ndarray, float]] = {}
        self.metadata = self._read_metadata()
        self.detected = f"{self.LAYOUT} ({self._container()})" + (
            f"; labels from integer {LABEL_INDEX} (JetClass-II, {len(classes)} classes)" if self._label_index
            else f"; labels from one-hot label_* ({len(classes)} classes)" if classes else "; unlabeled"
        )
        self.field_map = {
            "p4": "part_px/py/pz/energy",
            **{k: f"part_{k}" for k in self._particle_fields},
            "label": self._label_index or ("label_*" if classes else "-"),
            "jet fields": ", ".join(self._jet_branches[:8]) + (" ..." if len(self._jet_branches) > 8 else ""),
        }

    def __getstate__(self) -> dict:
        state = super().__getstate__()
        state["_cache"] = None  # per process; never pickled to DataLoader workers
        state["_columns"] = None
        state["_columns_of"] = None
        return state

    # -- decoding ---------------------------------------------------------------------------------
    def _layout_of(self, branches: tuple[str, ...]) -> tuple[np.ndarray, float]:
        """Entry numbers where the compression units of all ``branches`` start together (0 ... n),
        and the decoded bytes per entry of those branches."""
        key = tuple(sorted(branches))
        if key not in self._boundaries:
            self._boundaries[key] = self._cols().layout(key)
        return self._boundaries[key]

    def _decode(self, start: int, stop: int, jagged: list[str], scalar: list[str]) -> _Decoded:
        """The flat arrays of ``[start, stop)``: from the cached range, or by decompressing the units
        that cover it (and caching the whole covered range if it fits in :data:`CACHE_BYTES`)."""
        c = self._cache
        if c is not None and c.covers(start, stop, jagged, scalar):
            return c.slice(start, stop, jagged, scalar)
        branches = (*jagged, *scalar)
        bounds, per_entry = self._layout_of(branches)
        lo, hi = start, stop
        if len(bounds):
            lo = min(lo, int(bounds[np.searchsorted(bounds, start, side="right") - 1]))
            i = np.searchsorted(bounds, stop, side="left")
            hi = max(hi, int(bounds[i])) if i < len(bounds) else hi
        keep = (hi - lo) * per_entry <= CACHE_BYTES
        a, b = (lo, hi) if keep else (start, stop)
        self._cache = None  # free the previous range before decoding the next one
        try:
            dj, ds = self._cols().decode(a, b, jagged, scalar)
        except HepfmInputError as err:
            if err.path is None:
                raise HepfmInputError(err.problem, self.path) from None
            raise
        dec = _Decoded(a, b, dj, ds)
        if not keep:
            return dec
        self._cache = dec
        return dec.slice(start, stop, jagged, scalar)
    def _read(
        self, start: int, stop: int, fields: Collection[str] | None, jet_fields: Collection[str] | None
    ) -> JetChunk:
        pfields = select_fields(self._particle_fields, fields)
        keys = select_fields([_jet_key(b) for b in self._jet_branches], jet_fields)  # JetChunk.jets names
        jet_branches = [b for b in self._jet_branches if _jet_key(b) in keys]
        resonances = [r for r in self._resonances if jet_fields is None or f"{r.lower()}_mass" in jet_fields]
        truth = [TRUTH_MASS, *(f"aux_genpart_is{r}" for r in resonances)] if resonances else []
        jagged = [*MOMENTUM_BRANCHES, *(f"part_{k}" for k in pfields), *truth]
        scalar = [*self._label_branches, *([self._label_index] if self._label_index else []), *jet_branches]
        with read_errors(self.path, f"reading jets {start}-{stop}", self.ERRORS):
            dec = self._decode(start, stop, jagged, scalar)
        offsets = dec.jagged["part_px"][0]
        for b in jagged[1 : len(jagged) - len(truth)]:
            off = dec.jagged[b][0]
            if not np.array_equal(off, offsets):
                c, counts = np.diff(off), np.diff(offsets)
                i = int(np.flatnonzero(c != counts)[0])
                raise HepfmInputError(
                    f"jet {start + i}: branch {b} has {c[i]} particles but part_px has {counts[i]}",
                    self.path,
                )
        padded = pad_particles(
            offsets,
            [dec.jagged[b][1] for b in MOMENTUM_BRANCHES],
            {k: dec.jagged[f"part_{k}"][1] for k in pfields},
            self.max_particles,
        )
        label = None
        if self._label_index is not None:
            label = labels_from_values(dec.scalar[self._label_index], len(self.class_names))
        elif self.has_labels:
            # float64 holds every branch type exactly enough: 0.9 stays 0.9 (not one-hot), never class 0
            onehot = np.stack([dec.scalar[b].astype(np.float64) for b in self._label_branches], axis=1)
            label = labels_from_one_hot(onehot)
        jets = {_jet_key(b): dec.scalar[b].copy() for b in jet_branches}
        for r in resonances:
            flags = dec.jagged[f"aux_genpart_is{r}"]
            jets[f"{r.lower()}_mass"] = _first_flagged(dec.jagged[TRUTH_MASS], flags)
        if padded.full is not None:
            jets[FULL_JET_P4] = padded.full
        return JetChunk(
            p4=padded.p4, mask=padded.mask, label=label, class_names=self.class_names,
            particles=padded.particles, jets=jets,
        )


class JetClassRootSource(JetClassColumnsSource):
    """Reader of JetClass ROOT files: the layout in a TTree ``tree``, or in an RNTuple ``tree``.

    Args:
        path: the file.
        max_particles: slots per jet (default 128; None = the longest jet in each chunk read).
        validate, skip_bad: see :class:`~hepfm.data.formats.base.ValidatingSource`.
    """

    format = "jetclass-root"

    def _open(self):
        import uproot

        return uproot.open(self.path)

    def _tree(self):
        """The TTree or RNTuple ``tree`` (an error naming what the file holds if there is none)."""
        f = self._file()
        tree = find_tree(f)
        if tree is None:
            if TREE in f:
                raise HepfmInputError(
                    f"key {TREE!r} is a {f.classname_of(TREE)}, not a TTree or RNTuple (JetClass layout)",
                    self.path,
                )
            raise HepfmInputError(
                f"no TTree or RNTuple {TREE!r} (JetClass layout); the file holds: {describe_root_keys(f)}",
                self.path,
            )
        return tree

    def _container(self) -> str:
        return f"{self._file().classname_of(TREE)} {TREE!r}"

    def _table(self) -> ColumnTable:
        tree = self._tree()
        return _TTreeTable(tree) if self._file().classname_of(TREE) == "TTree" else _RNTupleTable(tree)

    def _read_metadata(self) -> dict:
        return root_metadata(self._file())


def root_metadata(f: Any) -> dict:
    """What hepfm's ROOT writers stored in an open file (``METADATA_KEY``, JSON); {} if none or unreadable."""
    if METADATA_KEY not in f:
        return {}
    try:
        meta = json.loads(str(f[METADATA_KEY]))
    except (json.JSONDecodeError, TypeError, ValueError):
        return {}
    return meta if isinstance(meta, dict) else {}


def _first_flagged(values: tuple[np.ndarray, np.ndarray], flags: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """Per entry, the first value whose flag is set (0 where none is): jagged (offsets, content) pairs."""
    (off, val), (_, flag) = values, flags
    n = len(off) - 1
    out = np.zeros(n, dtype=np.float32)
    hit = np.flatnonzero(flag.astype(bool))
    if hit.size:
        row = np.searchsorted(off, hit, side="right") - 1
        rows, first = np.unique(row, return_index=True)
        out[rows] = val[hit[first]]
    return out


def _jet_key(branch: str) -> str:
    """The ``JetChunk.jets`` name of a per-jet branch (``aux_hepfm_<k>`` -> ``<k>``)."""
    return branch[len(AUX_PREFIX) :] if branch.startswith(AUX_PREFIX) else branch


# -- writer -------------------------------------------------------------------------------------
def _wrap_phi(x: np.ndarray) -> np.ndarray:
    return (x + np.pi) % (2 * np.pi) - np.pi


class _JetClassTreeWriter:
    def __init__(self, f, basket_jets: int) -> None:
        self.f = f
        self.basket_jets = basket_jets
        self.tree: Any = None  # an uproot WritableTree, made on the first write
        self.buffer: list[JetChunk] = []
        self.buffered = 0
        self.labeled: bool | None = None
        self.class_names: tuple[str, ...] | None = None
        self.zero_filled: set[str] = set()
        self.derived_flags = False
        self.dropped: set[str] = set()
        self.n = 0

    def add(self, chunk: JetChunk) -> None:
        if len(chunk) == 0:
            return
        labeled = chunk.label is not None
        if self.labeled is None:
            self.labeled = labeled
        elif self.labeled != labeled:
            raise ValueError("mixing labeled and unlabeled chunks")
        if labeled:
            if self.class_names is None:
                self.class_names = tuple(chunk.class_names)
                if not self.class_names:
                    raise ValueError("labeled chunk without class names")
            elif tuple(chunk.class_names) != self.class_names:
                raise ValueError(
                    f"class names differ between chunks: {chunk.class_names} vs {self.class_names}"
                )
        self.buffer.append(chunk)
        self.buffered += len(chunk)
        if self.buffered >= self.basket_jets:
            self.flush(final=False)

    def flush(self, final: bool = True) -> None:
        """Write the buffered jets in baskets of ``basket_jets`` (the rest too if ``final``)."""
        if not self.buffer:
            return
        chunk = JetChunk.concat(self.buffer) if len(self.buffer) > 1 else self.buffer[0]
        bj = self.basket_jets
        n_out = len(chunk) if final else (len(chunk) // bj) * bj
        for a in range(0, n_out, bj):
            self._extend(chunk.take(slice(a, min(a + bj, n_out))))
        rest = chunk.take(slice(n_out, len(chunk))) if n_out < len(chunk) else None
        self.buffer = [rest] if rest is not None else []
        self.buffered = 0 if rest is None else len(rest)

    def _extend(self, chunk: JetChunk) -> None:
        """One ``TTree.extend``: one basket per branch."""
        data = self._arrays(chunk)
        import awkward as ak

        if self.tree is None:
            types = {k: (v.type if isinstance(v, ak.Array) else v.dtype) for k, v in data.items()}
            self.tree = self.f.mktree(TREE, types)
        self.tree.extend(data)
        self.n += len(chunk)

    def _arrays(self, chunk: JetChunk) -> dict:
        import awkward as ak

        mask = chunk.mask
        npart = mask.sum(axis=1)
        if not np.array_equal(mask, np.arange(chunk.max_particles)[None, :] < npart[:, None]):
            raise ValueError("chunk mask is not contiguous: real particles must fill the leading slots")
        kin = chunk.jet_kinematics()
        jets: dict[str, np.ndarray] = {}
        for b in JET_BRANCHES:
            if b in chunk.jets:
                jets[b] = np.asarray(chunk.jets[b], dtype=np.float32)
            elif b == "jet_nparticles":
                jets[b] = npart.astype(np.float32)
            else:
                jets[b] = kin[b[len("jet_") :]].astype(np.float32)
        for b in sorted(chunk.jets):
            v = np.asarray(chunk.jets[b])
            if b in jets:
                continue
            if v.ndim != 1:
                self.dropped.add(b)
                continue
            name = b if b.startswith("jet_") else AUX_PREFIX + b
            jets[name] = v.astype(np.float32) if b.startswith("jet_") else v
        # particles, flattened to the real ones
        p4 = chunk.p4[mask]
        _pt, eta, phi = pt_eta_phi(p4.astype(np.float64))
        row = np.repeat(np.arange(len(chunk)), npart)
        jet_eta = jets["jet_eta"].astype(np.float64)[row]
        jet_phi = jets["jet_phi"].astype(np.float64)[row]
        sign = np.where(jet_eta < 0, -1.0, 1.0)
        fields: dict[str, np.ndarray] = {
            "px": p4[:, 0],
            "py": p4[:, 1],
            "pz": p4[:, 2],
            "energy": p4[:, 3],
            "deta": ((eta - jet_eta) * sign).astype(np.float32),
            "dphi": _wrap_phi(phi - jet_phi).astype(np.float32),
        }
        flags = None
        if (
            "pid" in chunk.particles
            and "charge" in chunk.particles
            and not all(k in chunk.particles for k in PID_FLAGS)
        ):
            flags = pid_flags(chunk.particles["pid"][mask], chunk.particles["charge"][mask])
            self.derived_flags = True
        for k in OFFICIAL_PARTICLE_FIELDS:
            dtype = np.int32 if k in PID_FLAGS else np.float32
            if k in chunk.particles:
                fields[k] = chunk.particles[k][mask].astype(dtype)
            elif flags is not None and k in flags:
                fields[k] = flags[k].astype(dtype)
            else:
                fields[k] = np.zeros(len(p4), dtype=dtype)
                self.zero_filled.add(f"part_{k}")
        if "pid" in chunk.particles:
            fields["pid"] = chunk.particles["pid"][mask].astype(np.int32)
        part = ak.zip({k: ak.unflatten(v, npart) for k, v in fields.items()})
        data: dict = {"part": part}
        if self.labeled:
            for i, c in enumerate(chunk.class_names):
                data[f"label_{c}"] = chunk.label == i
        data.update(jets)
        return data


def write_jetclass(
    path: str | Path,
    chunks: Iterable[JetChunk],
    metadata: dict | None = None,
    *,
    basket_jets: int = DEFAULT_BASKET_JETS,
) -> int:
    """Write ``chunks`` as a JetClass ROOT file; returns the number of jets written.

    Jets are buffered and written ``basket_jets`` at a time (one ROOT basket per branch each,
    whatever the sizes of the incoming chunks; a reader decompresses whole baskets, so baskets
    no larger than its reads keep reads cheap). All labeled chunks must share their class names
    (one ``label_<name>`` branch each).
    """
    if basket_jets < 1:
        raise ValueError(f"basket_jets must be positive, got {basket_jets}")
    import uproot

    from hepfm.data.formats.hepfm_h5 import dumps_metadata

    with atomic_path(path, suffix=".root") as tmp, uproot.recreate(tmp) as f:
        w = _JetClassTreeWriter(f, basket_jets)
        for chunk in chunks:
            w.add(chunk)
        w.flush()
        if w.tree is None:
            raise HepfmInputError("nothing to write: no jets", path)
        f[METADATA_KEY] = dumps_metadata(written_metadata(w, metadata))
    return w.n


def written_metadata(w: Any, metadata: dict | None) -> dict:
    """The file's metadata plus what a JetClass-layout writer ``w`` did to fit the layout: columns
    it filled with zeros, PID flags it derived, jet fields it dropped (the ROOT and Parquet writers)."""
    meta = dict(metadata or {})
    meta["zero_filled_branches"] = sorted(w.zero_filled)
    if w.derived_flags:
        meta["pid_flags_derived_from"] = "pid and charge"
    if w.dropped:
        meta["dropped_jet_fields"] = sorted(w.dropped)
    return meta
