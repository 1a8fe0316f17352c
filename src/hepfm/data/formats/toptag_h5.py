"""The Top Quark Tagging reference dataset layout (Kasieczka et al., arXiv:1902.09914).

An HDF5 file written by ``pandas.DataFrame.to_hdf(path, key="table")`` with one row per jet and the
columns ``E_0, PX_0, PY_0, PZ_0, ..., E_199, PX_199, PY_199, PZ_199`` (constituents pT-ordered,
zero-padded), then ``truthE, truthPX, truthPY, truthPZ, ttv, is_signal_new`` (1 = top).

Reading uses h5py directly (no pandas) and slices rows ``[start, stop)``, so the 1.2M-jet files
stream. Both pandas layouts are understood:

* ``fixed`` (the default of ``to_hdf`` and of the official files): group ``/table`` with
  ``axis0`` (column names), ``axis1`` (index) and per-dtype blocks ``blockN_items`` (the names of
  the block's columns) / ``blockN_values`` (rows x columns). Columns are mapped by the
  ``blockN_items`` names, never by block order.
* ``table`` (``format="table"``): a compound dataset ``/table/table`` with fields ``index``,
  ``values_block_N`` (column names in the ``values_block_N_kind`` attribute, a protocol-0 pickle of
  a list of strings, decoded here by an unpickler that refuses every global) and possibly
  data columns stored as fields named after the column.

The number of particle slots is inferred from the columns. ``truth*`` and ``ttv`` go to
``chunk.jets``. Without ``is_signal_new`` the file is unlabeled; a missing ``E_i/PX_i/PY_i/PZ_i``
column is an error naming it. A particle slot is real if any of its four components is non-zero.

Writing needs pandas + tables (``pip install 'hepfm[pandas]'``): the whole output is built in memory
as one DataFrame (about 3.2 kB per jet for 200 slots, plus a copy) and saved in the fixed layout.
Labeled chunks give ``is_signal_new`` (the label, int64) and ``truth*`` (from ``chunk.jets`` if all
four are there, else zeros); **unlabeled chunks are written without ``is_signal_new`` and without
``truth*``** (the official files always have them, but an unlabeled sample has no truth).
``ttv`` (int64) comes from ``chunk.jets["ttv"]`` if present, else 0 (= train). hepfm metadata is
stored as a JSON string in the root attribute ``hepfm_metadata``, which pandas ignores.
"""

from __future__ import annotations

import io
import json
import pickle
import re
from collections.abc import Collection, Iterable
from pathlib import Path

import h5py
import numpy as np

from hepfm.data.formats.base import ValidatingSource
from hepfm.data.jets import FULL_JET_P4, TOPTAG_CLASSES, JetChunk
from hepfm.data.validate import LABEL_NOT_0_1, read_errors, select_fields, slot_nonzero
from hepfm.errors import HepfmInputError
from hepfm.io import atomic_path

KEY = "table"
#: Four-vector components: file column prefix -> index in hepfm's (px, py, pz, E).
COMPONENTS = {"PX": 0, "PY": 1, "PZ": 2, "E": 3}
TRUTH_COLUMNS = ("truthE", "truthPX", "truthPY", "truthPZ")
LABEL_COLUMN = "is_signal_new"
#: Slots the official files have.
OFFICIAL_SLOTS = 200
_PARTICLE_COL = re.compile(r"^(E|PX|PY|PZ)_(\d+)$")


class _NoGlobalsUnpickler(pickle.Unpickler):
    """Unpickles plain containers of strings/numbers only: any class or function lookup is refused."""

    def find_class(self, module: str, name: str):
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a file attribute")


def _safe_unpickle(data: bytes) -> object:
    return _NoGlobalsUnpickler(io.BytesIO(data)).load()


def _names(arr: np.ndarray) -> list[str]:
    return [x.decode("utf-8") if isinstance(x, bytes | np.bytes_) else str(x) for x in arr.tolist()]


def is_pandas_table(f: h5py.File) -> bool:
    """True if ``f`` has a pandas ``table`` key in the fixed or the table layout."""
    g = f.get(KEY)
    if not isinstance(g, h5py.Group):
        return False
    return "block0_items" in g or isinstance(g.get("table"), h5py.Dataset) or "pandas_type" in g.attrs


class TopTagH5Source(ValidatingSource):
    """Reader of Top Tagging HDF5 files (pandas fixed or table layout), via h5py.

    Args:
        path: the file.
        max_particles: keep at most this many slots (None: all the columns give).
        validate, skip_bad: see :class:`~hepfm.data.formats.base.ValidatingSource`.
    """

    format = "toptag-h5"

    def __init__(
        self,
        path: str | Path,
        *,
        max_particles: int | None = None,
        validate: bool = True,
        skip_bad: bool = False,
    ) -> None:
        super().__init__(path, validate=validate, skip_bad=skip_bad)
        with read_errors(self.path, "reading the Top Tagging HDF5 layout"):
            self._init_layout(max_particles)

    def _open(self) -> h5py.File:
        return h5py.File(self.path, "r")

    # -- layout -------------------------------------------------------------------------------
    def _init_layout(self, max_particles: int | None) -> None:
        f = self._file()
        g = f.get(KEY)
        if not isinstance(g, h5py.Group):
            raise HepfmInputError(f"no pandas {KEY!r} key (Top Tagging layout)", self.path)
        # column name -> (source, column index within the source)
        columns: dict[str, tuple[str, int]] = {}
        if "block0_items" in g:
            self.layout = "fixed"
            self._transposed: dict[str, bool] = {}
            n_rows = g["axis1"].shape[0] if "axis1" in g else None
            b = 0
            while f"block{b}_items" in g:
                items = _names(g[f"block{b}_items"][()])
                vals = g.get(f"block{b}_values")
                if not isinstance(vals, h5py.Dataset):
                    raise HepfmInputError(f"pandas block{b}_values is not a plain array", self.path)
                if vals.ndim != 2:
                    raise HepfmInputError(f"pandas block{b}_values has shape {vals.shape}", self.path)
                # pandas writes blocks transposed, i.e. (rows, columns) on disk, and says so.
                flag = vals.attrs.get("transposed")
                transposed = bool(flag) if flag is not None else vals.shape[1] == len(items)
                ncols = vals.shape[1] if transposed else vals.shape[0]
                rows = vals.shape[0] if transposed else vals.shape[1]
                if ncols != len(items):
                    raise HepfmInputError(
                        f"pandas block{b}: {len(items)} column names but {ncols} columns", self.path
                    )
                if n_rows is None:
                    n_rows = rows
                elif rows != n_rows:
                    raise HepfmInputError(
                        f"pandas block{b}_values has {rows} rows, the index has {n_rows}", self.path
                    )
                src = f"block{b}_values"
                self._transposed[src] = transposed
                for j, name in enumerate(items):
                    columns[name] = (src, j)
                b += 1
            self._n = int(n_rows or 0)
        elif isinstance(g.get("table"), h5py.Dataset):
            self.layout = "table"
            ds = g["table"]
            if ds.dtype.names is None:
                raise HepfmInputError("pandas /table/table is not a compound table", self.path)
            for field in ds.dtype.names:
                if field == "index":
                    continue
                kind = ds.attrs.get(f"{field}_kind")
                if field.startswith("values_block_") and kind is not None:
                    try:
                        names = _safe_unpickle(bytes(kind))
                    except Exception as err:
                        raise HepfmInputError(
                            f"cannot decode column names of {field}: {err}", self.path
                        ) from None
                    if not isinstance(names, list):
                        raise HepfmInputError(f"column names of {field} are not a list", self.path)
                    width = int(np.prod(ds.dtype[field].shape)) if ds.dtype[field].shape else 1
                    if width != len(names):
                        raise HepfmInputError(
                            f"{field}: {len(names)} column names but {width} columns", self.path
                        )
                    for j, name in enumerate(names):
                        columns[str(name)] = (field, j)
                else:  # a data column stored under its own name
                    columns[field] = (field, 0)
            self._n = int(ds.shape[0])
        else:
            raise HepfmInputError(
                f"pandas {KEY!r} group has neither the fixed (block0_items) nor the table "
                "(/table/table) layout",
                self.path,
            )

        # Particle slots: every slot up to the highest index seen needs all four columns.
        slots = [int(m.group(2)) for c in columns if (m := _PARTICLE_COL.match(c))]
        if not slots:
            raise HepfmInputError(
                "no constituent columns (E_0, PX_0, PY_0, PZ_0, ...) in the 'table' key", self.path
            )
        n_slots = max(slots) + 1
        for i in range(n_slots):
            for comp in ("E", "PX", "PY", "PZ"):
                if f"{comp}_{i}" not in columns:
                    raise HepfmInputError(f"missing column {comp}_{i}", self.path)
        self.file_max_particles = n_slots
        self._slots = n_slots if max_particles is None else min(max_particles, n_slots)
        # Gather plan: source -> list of (component, slot indices, column indices).
        plan: dict[str, list[tuple[int, np.ndarray, np.ndarray]]] = {}
        for comp, c in COMPONENTS.items():
            by_src: dict[str, tuple[list[int], list[int]]] = {}
            for i in range(self._slots):
                src, j = columns[f"{comp}_{i}"]
                s_list, j_list = by_src.setdefault(src, ([], []))
                s_list.append(i)
                j_list.append(j)
            for src, (s_list, j_list) in by_src.items():
                plan.setdefault(src, []).append((c, np.array(s_list), np.array(j_list)))
        self._plan = plan
        # The dropped slots' columns, summed into the whole jets' four-vectors (FULL_JET_P4).
        tail: dict[str, dict[int, list[int]]] = {}
        for comp, c in COMPONENTS.items():
            for i in range(self._slots, n_slots):
                src, j = columns[f"{comp}_{i}"]
                tail.setdefault(src, {}).setdefault(c, []).append(j)
        self._tail = {src: [(c, np.array(js)) for c, js in by_c.items()] for src, by_c in tail.items()}
        self._columns = columns
        self._slab = self._find_slab(plan)
        self.has_labels = LABEL_COLUMN in columns
        self.class_names = TOPTAG_CLASSES if self.has_labels else ()
        self._jet_columns = [c for c in (*TRUTH_COLUMNS, "ttv") if c in columns]
        self.detected = f"Top Tagging pandas HDF5 ({self.layout} layout, {n_slots} slots)" + (
            f"; labels from {LABEL_COLUMN}" if self.has_labels else "; unlabeled"
        )
        self.field_map = {"p4": "E_i, PX_i, PY_i, PZ_i (reordered to px, py, pz, E)",
                          "label": LABEL_COLUMN if self.has_labels else "-",
                          **({"jet fields": ", ".join(self._jet_columns)} if self._jet_columns else {})}
        meta = f.attrs.get("hepfm_metadata")
        if meta is not None:
            try:
                self.metadata = json.loads(meta.decode() if isinstance(meta, bytes) else str(meta))
            except json.JSONDecodeError:
                self.metadata = {}

    def _find_slab(self, plan: dict) -> tuple[str, int, tuple[int, ...]] | None:
        """(source, first column, component order) if the momenta of the kept slots are one run of
        columns, four per slot in a fixed order (``E_0, PX_0, PY_0, PZ_0, E_1, ...`` in the
        official files): then a read is one slice and a reorder of the last axis instead of a
        gather per component."""
        if len(plan) != 1:
            return None
        (src, parts), s = next(iter(plan.items())), self._slots
        if len(parts) != 4:
            return None
        first = min(int(cols[0]) for _, _, cols in parts)
        order = [0, 0, 0, 0]
        for c, slots, cols in parts:
            k = int(cols[0]) - first
            if not (0 <= k < 4) or not np.array_equal(slots, np.arange(s)):
                return None
            if not np.array_equal(cols, first + k + 4 * np.arange(s)):
                return None
            order[c] = k
        if sorted(order) != [0, 1, 2, 3]:
            return None
        return src, first, tuple(order)

    # -- reading ------------------------------------------------------------------------------
    def _read(
        self, start: int, stop: int, fields: Collection[str] | None, jet_fields: Collection[str] | None
    ) -> JetChunk:
        # no per-particle fields in this layout: ``fields`` has nothing to select
        jet_columns = select_fields(self._jet_columns, jet_fields)
        n = stop - start
        s = self._slots
        p4 = np.zeros((n, s, 4), dtype=np.float32)
        with read_errors(self.path, f"reading jets {start}-{stop}"):
            g = self._file()[KEY]
            if self.layout == "fixed":
                cache: dict[str, np.ndarray] = {}

                def block(src: str) -> np.ndarray:
                    if src not in cache:
                        ds = g[src]
                        cache[src] = ds[start:stop] if self._transposed[src] else ds[:, start:stop].T
                    return cache[src]

                def column(name: str) -> np.ndarray:
                    src, j = self._columns[name]
                    return block(src)[:, j]

            else:
                rec = g["table"][start:stop]

                def block(src: str) -> np.ndarray:
                    return rec[src].reshape(n, -1)

                def column(name: str) -> np.ndarray:
                    src, j = self._columns[name]
                    return block(src)[:, j]

            if self._slab is not None:
                src, first, order = self._slab
                v = block(src)[:, first : first + 4 * s].reshape(n, s, 4)
                if order == (1, 2, 3, 0):  # (E, PX, PY, PZ) per slot: two strided copies
                    p4[..., :3] = v[..., 1:]
                    p4[..., 3] = v[..., 0]
                else:
                    p4[...] = v[..., list(order)]
            else:
                for src, parts in self._plan.items():
                    vals = block(src)
                    for c, slots, cols in parts:
                        p4[:, slots, c] = vals[:, cols]
            jets = {name: np.asarray(column(name)).copy() for name in jet_columns}
            if self._tail:  # the cap's dropped slots: whole-jet sums if any of them is occupied
                tail = np.zeros((n, 4), dtype=np.float64)
                for src, tail_parts in self._tail.items():
                    vals = block(src)
                    for c, cols in tail_parts:
                        tail[:, c] = vals[:, cols].sum(axis=1, dtype=np.float64)
                if tail.any():
                    jets[FULL_JET_P4] = p4.sum(axis=1, dtype=np.float64) + tail
            raw_label = np.asarray(column(LABEL_COLUMN)) if self.has_labels else None
        mask = slot_nonzero(p4)
        label = None
        if raw_label is not None:
            with np.errstate(invalid="ignore"):
                ok = (raw_label == 0) | (raw_label == 1)
            label = np.where(ok, raw_label, LABEL_NOT_0_1).astype(np.int64)
        return JetChunk(p4=p4, mask=mask, label=label, class_names=self.class_names, jets=jets)


def write_toptag(
    path: str | Path,
    chunks: Iterable[JetChunk],
    metadata: dict | None = None,
    *,
    n_slots: int = OFFICIAL_SLOTS,
) -> int:
    """Write ``chunks`` in the Top Tagging layout (pandas fixed format); returns the jets written.

    ``n_slots`` constituent slots are written (200 as in the official files; jets with more
    particles keep their ``n_slots`` hardest). Labeled chunks must use the class names
    ``("QCD", "Top")``.
    """
    try:
        import pandas as pd
        import tables  # noqa: F401  (pandas needs it for HDFStore)
    except ImportError:
        raise HepfmInputError(
            "writing the Top Tagging layout needs pandas and tables: pip install 'hepfm[pandas]'", path
        ) from None
    from hepfm.data.formats.hepfm_h5 import dumps_metadata, h5_output

    parts = list(chunks)
    if not parts:
        raise HepfmInputError("nothing to write: no jets", path)
    labeled = all(c.label is not None for c in parts)
    if labeled:
        for c in parts:
            if tuple(c.class_names) != TOPTAG_CLASSES:
                raise ValueError(f"Top Tagging labels need class names {TOPTAG_CLASSES}, got {c.class_names}")
    elif any(c.label is not None for c in parts):
        raise ValueError("mixing labeled and unlabeled chunks")
    n = sum(len(c) for c in parts)
    momenta = np.zeros((n, n_slots, 4), dtype=np.float32)
    label = np.zeros(n, dtype=np.int64)
    ttv = np.zeros(n, dtype=np.int64)
    truth = np.zeros((n, 4), dtype=np.float32)
    row = 0
    for c in parts:
        c = c.truncate(n_slots, keep_jet_sums=False)
        k, s = len(c), c.max_particles
        p4 = np.where(c.mask[..., None], c.p4, 0).astype(np.float32)
        momenta[row : row + k, :s] = p4[..., [3, 0, 1, 2]]  # (E, px, py, pz)
        if labeled:
            label[row : row + k] = c.label  # type: ignore[assignment]
            if all(t in c.jets for t in TRUTH_COLUMNS):
                truth[row : row + k] = np.stack([c.jets[t] for t in TRUTH_COLUMNS], axis=1)
        if "ttv" in c.jets:
            ttv[row : row + k] = c.jets["ttv"]
        row += k
    names = [f"{comp}_{i}" for i in range(n_slots) for comp in ("E", "PX", "PY", "PZ")]
    frames = [pd.DataFrame(momenta.reshape(n, 4 * n_slots), columns=names, copy=False)]
    del momenta
    extra: dict[str, np.ndarray] = {}
    if labeled:
        for j, t in enumerate(TRUTH_COLUMNS):
            extra[t] = truth[:, j]
    extra["ttv"] = ttv
    if labeled:
        extra[LABEL_COLUMN] = label
    frames.append(pd.DataFrame(extra))
    df = pd.concat(frames, axis=1)
    del frames
    with atomic_path(path, suffix=".h5") as tmp:
        # built in memory and written by Python, as h5_output below: PyTables reports a failed write
        # (disk full) as a bare HDF5ExtError without its cause, this way it is an OSError with its errno
        with pd.HDFStore(tmp, mode="w", driver="H5FD_CORE", driver_core_backing_store=0) as store:
            store.put(KEY, df, format="fixed", track_times=False)
            image = store._handle.get_file_image()
        del df
        tmp.write_bytes(image)
        with h5_output(tmp, append=True) as (f, _):
            f.attrs["hepfm_metadata"] = dumps_metadata(metadata)
    return n
