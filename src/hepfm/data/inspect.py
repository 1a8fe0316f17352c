"""Summaries of jet files for ``hepfm inspect``: format, counts, multiplicities, jet masses, bad jets.

Files are read in chunks of :data:`CHUNK_SIZE` jets (readers hold one chunk at a time). Per-jet
numbers kept across chunks are bounded: constituent counts go into an integer histogram (exact
quantiles), jet pT and masses into buffers that are exact up to :data:`SAMPLE_CAP` jets per class
and a uniform random sample beyond (``quantiles_exact`` says which).

Jet masses and pT are computed from the sum of the stored constituents
(:meth:`~hepfm.data.jets.JetChunk.jet_kinematics`), all of them: the readers are opened without a
particle cap. Quantiles use numpy's default (linear) definition.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from hepfm.data.jets import OBJECT_TYPES
from hepfm.data.validate import check_chunk, merge_counts

#: Jets per read.
CHUNK_SIZE = 10_000
#: Per-class number of jet pT / mass values kept exactly; beyond it a uniform sample of this size.
SAMPLE_CAP = 1_000_000
QUANTILES = (0.1, 0.5, 0.9)
#: Above this many classes the text lists the most frequent ones and the mass of all jets only.
MANY_CLASSES = 12


class _Sample:
    """Values kept exactly up to ``cap``, then a uniform reservoir sample of size ``cap``."""

    def __init__(self, cap: int = SAMPLE_CAP, seed: int = 0) -> None:
        self.cap = cap
        self.seen = 0
        self.parts: list[np.ndarray] = []
        self.buf: np.ndarray | None = None
        self.rng = np.random.default_rng(seed)

    def add(self, values: np.ndarray) -> None:
        values = np.asarray(values, dtype=np.float64).ravel()
        if values.size == 0:
            return
        if self.buf is None and self.seen + values.size <= self.cap:
            self.parts.append(values)
            self.seen += values.size
            return
        if self.buf is None:
            head = self.cap - self.seen
            self.parts.append(values[:head])
            self.buf = np.concatenate(self.parts)
            self.parts = []
            self.seen = self.cap
            values = values[head:]
        t = self.seen + np.arange(values.size)
        j = (self.rng.random(values.size) * (t + 1)).astype(np.int64)
        sel = j < self.cap
        self.buf[j[sel]] = values[sel]
        self.seen += values.size

    @property
    def exact(self) -> bool:
        return self.buf is None

    def values(self) -> np.ndarray:
        if self.buf is not None:
            return self.buf
        return np.concatenate(self.parts) if self.parts else np.zeros(0)

    def quantiles(self) -> dict[str, float] | None:
        v = self.values()
        if v.size == 0:
            return None
        qs = np.quantile(v, QUANTILES)
        return {f"q{int(q * 100)}": float(x) for q, x in zip(QUANTILES, qs, strict=True)}


class _IntHistogram:
    """Exact mean/min/max/quantiles of non-negative integers in bounded memory."""

    def __init__(self) -> None:
        self.counts = np.zeros(0, dtype=np.int64)

    def add(self, values: np.ndarray) -> None:
        values = np.asarray(values, dtype=np.int64)
        if values.size == 0:
            return
        h = np.bincount(values)
        if h.size > self.counts.size:
            h[: self.counts.size] += self.counts
            self.counts = h
        else:
            self.counts[: h.size] += h

    def summary(self) -> dict[str, float] | None:
        n = int(self.counts.sum())
        if n == 0:
            return None
        cum = np.cumsum(self.counts)
        vals = np.arange(self.counts.size)

        def at(k: int) -> int:  # k-th smallest (0-based)
            return int(np.searchsorted(cum, k, side="right"))

        out: dict[str, float] = {
            "mean": float((vals * self.counts).sum() / n),
            "min": float(at(0)),
        }
        for q in QUANTILES:
            h = (n - 1) * q
            lo = int(np.floor(h))
            hi = min(lo + 1, n - 1)
            out[f"q{int(q * 100)}"] = float(at(lo) + (h - lo) * (at(hi) - at(lo)))
        out["max"] = float(at(n - 1))
        return out


class _Stats:
    """Accumulated statistics of one file or of all files."""

    def __init__(self) -> None:
        self.n_read = 0
        self.n_good = 0
        self.class_counts: dict[str, int] = {}
        self.nconst = _IntHistogram()
        self.pt = _Sample()
        self.mass: dict[str, _Sample] = {}
        self.bad: dict[str, int] = {}
        self.object_types: np.ndarray | None = None  # events of objects: objects per type, summed

    def add(self, chunk, n_read: int, bad: dict[str, int]) -> None:
        self.n_read += n_read
        merge_counts(self.bad, bad)
        n = len(chunk)
        self.n_good += n
        if n == 0:
            return
        with np.errstate(all="ignore"):
            kin = chunk.jet_kinematics()
        self.nconst.add(chunk.n_particles)
        if "object_type" in chunk.particles:
            types = chunk.particles["object_type"][chunk.mask]
            counts = np.bincount(types, minlength=len(OBJECT_TYPES))[: len(OBJECT_TYPES)]
            self.object_types = counts if self.object_types is None else self.object_types + counts
        self.pt.add(kin["pt"])
        self.mass.setdefault("all", _Sample()).add(kin["mass"])
        if chunk.label is not None:
            counts = np.bincount(chunk.label, minlength=len(chunk.class_names))
            for i, name in enumerate(chunk.class_names):
                self.class_counts[name] = self.class_counts.get(name, 0) + int(counts[i])
                sel = chunk.label == i
                if sel.any():
                    self.mass.setdefault(name, _Sample()).add(kin["mass"][sel])

    def summary(self) -> dict[str, Any]:
        samples = [self.pt, *self.mass.values()]
        order = [c for c in self.class_counts if c in self.mass] + [
            c for c in self.mass if c not in self.class_counts and c != "all"
        ]
        mass = {k: self.mass[k].quantiles() for k in [*order, "all"] if k in self.mass}
        return {
            "n_read": self.n_read,
            "n_good": self.n_good,
            "n_bad": sum(self.bad.values()),
            "bad": dict(sorted(self.bad.items())),
            "class_counts": self.class_counts,
            "constituents": self.nconst.summary(),
            "jet_pt": self.pt.quantiles(),
            "jet_mass": mass,
            "quantiles_exact": all(s.exact for s in samples),
            "objects_per_type": self._per_type(),
        }

    def _per_type(self) -> dict[str, float] | None:
        """Mean objects per event of each type (events read as sets of objects), else None."""
        if self.object_types is None or self.n_good == 0:
            return None
        return {k: float(v) / self.n_good for k, v in zip(OBJECT_TYPES, self.object_types, strict=True)}


def inspect_files(
    paths: Iterable[str | Path],
    skip_bad: bool = False,
    *,
    max_jets: int | None = None,
    chunk_size: int = CHUNK_SIZE,
    format: str | None = None,
) -> dict[str, Any]:
    """Summarise jet files (names or glob patterns).

    Args:
        paths: files or glob patterns.
        skip_bad: count and skip bad jets instead of raising on the first one.
        max_jets: read at most this many jets of each file.
        chunk_size: jets per read.
        format: force a format instead of detecting it.

    Returns:
        ``{"chunk_size", "files": [per-file summary], "total": summary over all files}``; a
        per-file summary has ``path, format, n_jets`` (in the file), ``n_read, n_good, n_bad, bad``
        (per reason), ``labeled, class_names, class_counts``, ``max_particles`` (slots in the
        file, if fixed), ``constituents`` (mean, min, q10, q50, q90, max), ``jet_pt`` (q10, q50,
        q90), ``jet_mass`` (per class and ``all``: q10, q50, q90), ``quantiles_exact`` and
        ``metadata`` (what the writer recorded; hepfm files and files written by hepfm), ``detected``
        (the layout the reader recognised) and ``fields`` (what it reads from which file field).

    Raises:
        HepfmInputError: a missing/unreadable file, an unknown layout, or (without ``skip_bad``) a
            bad jet, naming the file.
    """
    from hepfm.data.formats import expand_patterns, open_source

    files = []
    total = _Stats()
    formats: dict[str, int] = {}
    class_names: list[str] = []
    for path in expand_patterns(paths):
        source = open_source(path, format, validate=False, skip_bad=False, max_particles=None)
        try:
            stats = _Stats()
            end = len(source) if max_jets is None else min(len(source), max_jets)
            for start in range(0, end, chunk_size):
                stop = min(start + chunk_size, end)
                chunk = source.read(start, stop)
                chunk, bad = check_chunk(chunk, source.path, skip_bad=skip_bad, offset=start)
                stats.add(chunk, stop - start, bad)
                total.add(chunk, stop - start, bad)
        finally:
            close = getattr(source, "close", None)
            if close is not None:
                close()
        formats[source.format] = formats.get(source.format, 0) + 1
        for c in source.class_names:
            if c not in class_names:
                class_names.append(c)
        entry: dict[str, Any] = {
            "path": str(path),
            "format": source.format,
            "n_jets": len(source),
            "labeled": bool(source.has_labels),
            "class_names": list(source.class_names),
            "max_particles": getattr(source, "file_max_particles", None),
            "detected": getattr(source, "detected", ""),
            "item": getattr(source, "item", "jet"),
            "fields": dict(getattr(source, "field_map", {}) or {}),
        }
        entry.update(stats.summary())
        if source.has_labels:
            entry["class_counts"] = {c: entry["class_counts"].get(c, 0) for c in source.class_names}
        entry["metadata"] = getattr(source, "metadata", {}) or {}
        files.append(entry)
    tot: dict[str, Any] = {
        "n_files": len(files),
        "item": files[0]["item"] if files and all(f["item"] == files[0]["item"] for f in files) else "jet",
        "formats": formats,
        "n_jets": sum(f["n_jets"] for f in files),
        "labeled": bool(files) and all(f["labeled"] for f in files),
        "class_names": class_names,
    }
    tot.update(total.summary())
    return {"chunk_size": chunk_size, "max_jets": max_jets, "files": files, "total": tot}


# -- text rendering ----------------------------------------------------------------------------
def _num(x: float | None, digits: int = 1) -> str:
    if x is None:
        return "-"
    if float(x).is_integer() and abs(x) < 1e15:
        return f"{int(x):,}"
    return f"{x:,.{digits}f}"


def _render_block(title: str, s: dict[str, Any], lines: list[str]) -> None:
    lines.append(title)
    row = "  {:<18}{}"
    item = s.get("item", "jet")  # "event" for events read as sets of objects
    part = "objects" if item == "event" else "constituents"
    if "format" in s:
        lines.append(row.format("format", s["format"]))
        if s.get("detected"):
            lines.append(row.format("detected", s["detected"]))
        for i, (name, src) in enumerate((s.get("fields") or {}).items()):
            lines.append(row.format("reads" if i == 0 else "", f"{name:<16} <- {src}"))
    else:
        lines.append(row.format("formats", ", ".join(f"{k} x{v}" for k, v in s["formats"].items()) or "-"))
    lines.append(
        row.format(
            f"{item}s",
            f"{s['n_jets']:,} in file(s); read {s['n_read']:,}, good {s['n_good']:,}, bad {s['n_bad']:,}",
        )
    )
    if s.get("max_particles"):
        lines.append(row.format("particle slots", f"{s['max_particles']}"))
    if s["labeled"] and s["class_counts"]:
        items = list(s["class_counts"].items())
        note = ""
        if len(items) > MANY_CLASSES:  # e.g. JetClass-II's 188: the most frequent ones
            present = sorted((kv for kv in items if kv[1]), key=lambda kv: -kv[1])
            if len(present) > MANY_CLASSES:
                note = f"  ... ({len(present)} of {len(items)} classes present)"
            items = present[:MANY_CLASSES]
        counts = "  ".join(f"{k} {v:,}" for k, v in items)
        lines.append(row.format("labeled", f"yes: {counts}{note}"))
    else:
        lines.append(row.format("labeled", "no"))
    processes = (s.get("metadata") or {}).get("class_counts")
    if processes and not s["labeled"]:  # an unlabeled generated mixture: what it was made of
        lines.append(row.format("processes", "  ".join(f"{k} {v:,}" for k, v in processes.items())))
    c = s["constituents"]
    if c:
        lines.append(
            row.format(
                f"{part}/{item}",
                f"mean {c['mean']:.1f}  min {_num(c['min'])}  q10 {_num(c['q10'])}  q50 {_num(c['q50'])}  "
                f"q90 {_num(c['q90'])}  max {_num(c['max'])}",
            )
        )
    per_type = s.get("objects_per_type")
    if per_type:
        lines.append(row.format("objects by type", "  ".join(f"{k} {v:.2f}" for k, v in per_type.items()
                                                             if v) + f"  (per {item})"))
    pt = s["jet_pt"]
    if pt:
        lines.append(
            row.format(f"{item} pT [GeV]", f"q10 {pt['q10']:.1f}  q50 {pt['q50']:.1f}  q90 {pt['q90']:.1f}")
        )
    if s["jet_mass"]:
        lines.append(row.format(f"{item} mass [GeV]", f"{'class':<8}{'q10':>9}{'q50':>9}{'q90':>9}"))
        masses = s["jet_mass"]
        if len(masses) > MANY_CLASSES + 1:
            masses = {"all": masses["all"]}
        for cls, q in masses.items():
            if q:
                lines.append(row.format("", f"{cls:<8}{q['q10']:>9.1f}{q['q50']:>9.1f}{q['q90']:>9.1f}"))
    if not s["quantiles_exact"]:
        lines.append(row.format("", f"(quantiles from a uniform sample of {SAMPLE_CAP:,} jets per class)"))
    if s["n_bad"]:
        reasons = ", ".join(f"{k} {v:,}" for k, v in s["bad"].items())
        lines.append(row.format(f"bad {item}s (skipped)", reasons))
    else:
        lines.append(row.format(f"bad {item}s", "none"))
    meta = s.get("metadata")
    if meta:
        import json

        text = json.dumps(meta, sort_keys=True, default=str)
        lines.append(row.format("metadata", text if len(text) <= 400 else text[:397] + "..."))


def render_text(summary: dict[str, Any]) -> str:
    """The pretty, human-readable form of :func:`inspect_files`' result."""
    lines: list[str] = []
    for f in summary["files"]:
        _render_block(f"file: {f['path']}", f, lines)
        lines.append("")
    if len(summary["files"]) > 1:
        _render_block(f"total over {summary['total']['n_files']} files", summary["total"], lines)
        lines.append("")
    limit = f", at most {summary['max_jets']:,} jets per file" if summary.get("max_jets") else ""
    item = summary["total"].get("item", "jet")
    lines.append(f"(read in chunks of {summary['chunk_size']:,} {item}s{limit})")
    return "\n".join(lines)
