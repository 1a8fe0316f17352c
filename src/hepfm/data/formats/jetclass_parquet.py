"""The JetClass column layout in a Parquet file, read and written with pyarrow (``pip install
'hepfm[parquet]'``; imported only when a Parquet file is opened or written).

Columns are named as the JetClass ROOT branches (see :mod:`hepfm.data.formats.jetclass_root`):
jagged ``part_px, part_py, part_pz, part_energy`` (required) and the other ``part_*`` fields as
list columns (``list<float>`` / ``large_list``, ``part_is*`` of any numeric type), one-hot
``label_*`` and ``jet_*`` / ``aux_hepfm_*`` as numeric columns. The column-to-chunk mapping, the
pT sorting, clipping and the one-range cache are the ROOT reader's
(:class:`~hepfm.data.formats.jetclass_root.JetClassColumnsSource`); a Parquet row group plays the
part of a ROOT basket (a read decodes the row groups covering it, and only the columns asked for).
Null values are refused (one line naming the column). The hepfm metadata dict is the JSON value of
the ``hepfm_metadata`` key of the file's key-value metadata.

Writer: one row group per ``row_group_jets`` jets (default 8192), zstd-compressed without dictionary
encoding, the same columns
the ROOT writer writes (``part_*`` as ``list<float>`` / ``list<int32>``, ``label_*`` bool,
``jet_*`` float32).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from hepfm.data.formats.jetclass_root import (
    DEFAULT_BASKET_JETS,
    METADATA_KEY,
    ColumnTable,
    JetClassColumnsSource,
    _jagged_parts,
    _JetClassTreeWriter,
    written_metadata,
)
from hepfm.data.jets import JetChunk
from hepfm.errors import HepfmInputError
from hepfm.io import atomic_path

DEFAULT_ROW_GROUP_JETS = DEFAULT_BASKET_JETS


def _pyarrow(path: str | Path, action: str = "reading") -> Any:
    """``pyarrow.parquet``, or a one-line error saying how to install it."""
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise HepfmInputError(
            f"{action} Parquet files needs pyarrow: pip install 'hepfm[parquet]'", path
        ) from None
    return pq


def _errors() -> tuple[type[BaseException], ...]:
    """pyarrow's exceptions that mean a corrupted or unreadable file (pyarrow is imported by then)."""
    import pyarrow as pa

    return (pa.ArrowException, ValueError)


def parquet_columns(path: str | Path) -> list[str]:
    """The top-level column names of a Parquet file (for format detection)."""
    pq = _pyarrow(path)
    from hepfm.data.validate import read_errors

    with read_errors(path, "opening the Parquet file", _errors()):
        return list(pq.read_schema(path).names)


def _numeric(t) -> bool:
    import pyarrow as pa

    return bool(pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t))


class _ParquetTable(ColumnTable):
    def __init__(self, pf, path: Path) -> None:
        import pyarrow as pa

        self.pf = pf
        self.path = path
        schema = pf.schema_arrow
        self.names = list(schema.names)
        self.num_entries = int(pf.metadata.num_rows)
        self._scalar = {f.name for f in schema if _numeric(f.type)}
        self._jagged = {
            f.name
            for f in schema
            if (pa.types.is_list(f.type) or pa.types.is_large_list(f.type)) and _numeric(f.type.value_type)
        }
        md = pf.metadata
        rows = [md.row_group(i).num_rows for i in range(md.num_row_groups)]
        self._starts = np.concatenate([[0], np.cumsum(rows, dtype=np.int64)]).astype(np.int64)

    def is_scalar(self, name: str) -> bool:
        return name in self._scalar

    def is_jagged(self, name: str) -> bool:
        return name in self._jagged

    def type_of(self, name: str) -> str:
        return str(self.pf.schema_arrow.field(name).type)

    def layout(self, names):
        md = self.pf.metadata
        want = set(names)
        total = 0
        for i in range(md.num_row_groups):
            rg = md.row_group(i)
            for j in range(rg.num_columns):
                col = rg.column(j)
                if col.path_in_schema.split(".")[0] in want:
                    total += col.total_uncompressed_size
        return self._starts, total / max(self.num_entries, 1) + 8.0

    def decode(self, start, stop, jagged, scalar):
        for name in jagged:
            if name not in self._jagged:
                raise HepfmInputError(f"column {name} is not a list of numbers", self.path)
        lo = int(np.searchsorted(self._starts, start, side="right")) - 1
        hi = int(np.searchsorted(self._starts, stop, side="left"))
        groups = list(range(max(lo, 0), min(hi, len(self._starts) - 1)))
        table = self.pf.read_row_groups(groups, columns=[*jagged, *scalar], use_threads=False)
        first = int(self._starts[groups[0]]) if groups else 0
        table = table.slice(start - first, stop - start)
        out_j: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        out_s: dict[str, np.ndarray] = {}
        for name in (*jagged, *scalar):
            col = table.column(name)
            if col.null_count:
                raise HepfmInputError(
                    f"column {name} has {col.null_count} null values in jets {start}-{stop}", self.path
                )
            arr = col.combine_chunks()
            if name not in jagged:
                out_s[name] = arr.to_numpy(zero_copy_only=False)
                continue
            off = arr.offsets.to_numpy().astype(np.int64)
            if arr.values.null_count:
                raise HepfmInputError(
                    f"column {name} has null particle values in jets {start}-{stop}", self.path
                )
            values = arr.values.to_numpy(zero_copy_only=False)
            out_j[name] = (off - off[0], values[off[0] : off[-1]])
        return out_j, out_s


class JetClassParquetSource(JetClassColumnsSource):
    """Reader of JetClass-layout Parquet files (see the module docstring).

    Args:
        path: the file.
        max_particles: slots per jet (default 128; None = the longest jet in each chunk read).
        validate, skip_bad: see :class:`~hepfm.data.formats.base.ValidatingSource`.
    """

    format = "jetclass-parquet"
    COLUMN = "column"
    LAYOUT = "JetClass Parquet layout"

    def _container(self) -> str:
        return "Parquet columns"

    def __init__(self, path: str | Path, **options: Any) -> None:
        _pyarrow(path)
        self.ERRORS = _errors()
        super().__init__(path, **options)

    def _open(self):
        return _pyarrow(self.path).ParquetFile(self.path)

    def _table(self) -> ColumnTable:
        return _ParquetTable(self._file(), self.path)

    def _read_metadata(self) -> dict:
        kv = self._file().metadata.metadata or {}  # the file's key-value metadata
        raw = kv.get(METADATA_KEY.encode())
        if raw is None:
            return {}
        try:
            meta = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError):
            return {}
        return meta if isinstance(meta, dict) else {}


class _ParquetWriter(_JetClassTreeWriter):
    """The ROOT writer's columns, one Parquet row group per ``basket_jets`` jets."""

    def _extend(self, chunk: JetChunk) -> None:
        import pyarrow as pa

        pq = _pyarrow(self.f, "writing")
        data = self._arrays(chunk)
        part = data.pop("part")
        cols: dict[str, Any] = {}
        for k in part.fields:
            off, content = _jagged_parts(part[k])
            cols[f"part_{k}"] = pa.ListArray.from_arrays(pa.array(off.astype(np.int32)), pa.array(content))
        for k, v in data.items():
            cols[k] = pa.array(np.asarray(v))
        table = pa.table(cols)
        if self.tree is None:
            # no dictionary encoding: it bloats float columns (41 -> 29 MB for 20k JetClass-like jets)
            self.tree = pq.ParquetWriter(self.f, table.schema, compression="zstd", use_dictionary=False)
        elif table.schema != self.tree.schema:
            table = table.cast(self.tree.schema)
        self.tree.write_table(table, row_group_size=len(chunk))
        self.n += len(chunk)


def write_jetclass_parquet(
    path: str | Path,
    chunks: Iterable[JetChunk],
    metadata: dict | None = None,
    *,
    row_group_jets: int = DEFAULT_ROW_GROUP_JETS,
) -> int:
    """Write ``chunks`` as a JetClass-layout Parquet file; returns the number of jets written."""
    if row_group_jets < 1:
        raise ValueError(f"row_group_jets must be positive, got {row_group_jets}")
    _pyarrow(path, "writing")
    from hepfm.data.formats.hepfm_h5 import dumps_metadata

    with atomic_path(path, suffix=".parquet") as tmp:
        w = _ParquetWriter(str(tmp), row_group_jets)
        try:
            for chunk in chunks:
                w.add(chunk)
            w.flush()
            if w.tree is None:
                raise HepfmInputError("nothing to write: no jets", path)
            w.tree.add_key_value_metadata({METADATA_KEY: dumps_metadata(written_metadata(w, metadata))})
        finally:
            if w.tree is not None:
                w.tree.close()
    return w.n
