"""Convert jet files between the supported formats (hepfm HDF5, Top Tagging HDF5, JetClass ROOT), and
events of reconstructed objects to NanoAOD-like ROOT (``--to nanoaod``).

Why: the same jets in the layout another tool reads lets it train on exactly our files (e.g.
weaver-core on a JetClass-layout ROOT file, see ``benchmarks/side_by_side_part.py``), and public
files can be re-packed into hepfm's compressed, chunked format for faster streaming.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from hepfm.data.formats import expand_patterns, open_source, write_jets
from hepfm.data.formats.base import read_selected
from hepfm.data.jets import OBJECT_TYPES, JetChunk
from hepfm.errors import HepfmInputError
from hepfm.io import check_output_file, output_lock

#: Jets per read while converting (bounds memory).
CHUNK_JETS = 10_000


def convert_files(
    inputs: list[str],
    out: str | Path,
    format: str,
    *,
    max_jets: int | None = None,
    chunk_jets: int = CHUNK_JETS,
) -> dict:
    """Stream every jet of ``inputs`` (in order) into one file ``out`` in ``format``.

    The readers validate every chunk (NaN/inf, empty jets, bad labels are errors naming the file
    and jet), so a converted file is clean. The output appears atomically: on an error nothing is
    left behind. Before any work ``out`` is refused if it is one of the inputs (the rename would
    replace that input), a directory or not writable, and it is locked so that a second conversion
    into the same file is refused instead of racing this one. Returns a summary dict.
    """
    paths = expand_patterns(inputs)
    if not paths:
        raise HepfmInputError("no input files given")
    out = Path(out).expanduser()
    for p in paths:
        if out.exists() and p.exists() and os.path.samefile(p, out):
            raise HepfmInputError("is also an input: converting would replace it; choose another --out", out)
    check_output_file(out)
    with output_lock(out, directory=False):
        return _convert(paths, out, format, max_jets, chunk_jets)


def _convert(paths: list[Path], out: Path, format: str, max_jets: int | None, chunk_jets: int) -> dict:
    """:func:`convert_files` once its output is checked and locked."""
    sources = [open_source(p, max_particles=None) for p in paths]  # every particle, no cap
    if format == "nanoaod":  # NanoAOD collections hold objects of events, not particles of jets
        for s in sources:
            if "object_type" not in getattr(s, "particle_fields", ()):
                raise HepfmInputError("has no per-object 'object_type': not events of reconstructed objects, "
                                      "which is what --to nanoaod writes", s.path)
    labeled = [s for s in sources if s.has_labels]
    if labeled and len(labeled) < len(sources):
        unlabeled = next(s for s in sources if not s.has_labels)
        raise HepfmInputError(
            f"has no labels but {labeled[0].path} has: convert labeled and unlabeled files separately",
            unlabeled.path,
        )
    names = {tuple(s.class_names) for s in labeled}
    if len(names) > 1:
        raise HepfmInputError(f"input files have different classes: {sorted(names)}", paths[0])
    total = sum(len(s) for s in sources)
    if max_jets is not None:
        total = min(total, max_jets)

    # Files of different formats carry different extra fields (truth, impact parameters, ...):
    # keep those that every input has, so that every chunk written has the same fields.
    firsts = [s.read(0, 1) for s in sources if len(s)]
    keep_p = set.intersection(*(set(c.particles) for c in firsts)) if firsts else set()
    keep_j = set.intersection(*(set(c.jets) for c in firsts)) if firsts else set()

    def chunks() -> Iterator[JetChunk]:
        left = total
        for src in sources:
            for start in range(0, len(src), chunk_jets):
                if left <= 0:
                    return
                stop = min(len(src), start + chunk_jets, start + left)
                chunk = src.read(start, stop)  # the readers validate every chunk they return
                chunk.particles = {k: v for k, v in chunk.particles.items() if k in keep_p}
                chunk.jets = {k: v for k, v in chunk.jets.items() if k in keep_j}
                left -= len(chunk)
                yield chunk

    options = {}
    if format == "hepfm":  # fixed slots per file: the longest jet of all inputs
        options["max_particles"] = _longest_jet(sources, total, chunk_jets)
    elif format == "nanoaod":  # the Photon branches exist or not from the first event on
        options["photons"] = _has_photons(sources, total, chunk_jets)
    metadata = {
        "converted_from": [
            {"path": str(s.path), "format": s.format, "n_jets": len(s),
             "metadata": getattr(s, "metadata", {})}
            for s in sources
        ]
    }
    n = write_jets(out, chunks(), format, metadata, **options)
    return {"out": str(out), "format": format, "n_jets": n, "inputs": [str(p) for p in paths]}


def _longest_jet(sources: list, total: int, chunk_jets: int) -> int:
    """The most particles a jet among the first ``total`` of ``sources`` has: a file's fixed slot
    count where it has one, else a pass over the momenta (readers of jagged layouts size each read
    to its own longest jet, so the first chunk does not tell)."""
    longest, left = 0, total
    for src in sources:
        fixed = getattr(src, "file_max_particles", None)
        if fixed is not None:
            longest = max(longest, int(fixed))
            left -= len(src)
            continue
        for start in range(0, len(src), chunk_jets):
            if left <= 0:
                break
            chunk = read_selected(src, start, min(len(src), start + chunk_jets, start + left), (), ())
            left -= len(chunk)
            longest = max(longest, int(chunk.n_particles.max(initial=0)))
    return max(longest, 1)


def _has_photons(sources: list, total: int, chunk_jets: int) -> bool:
    """Whether an event among the first ``total`` of ``sources`` has a photon object (a pass over the
    object types; NanoAOD events opened without photons, as here, have none and are not read)."""
    left, photon = total, OBJECT_TYPES.index("photon")
    for src in sources:
        if getattr(src, "photons", None) is False:
            left -= len(src)
            continue
        for start in range(0, len(src), chunk_jets):
            if left <= 0:
                return False
            stop = min(len(src), start + chunk_jets, start + left)
            chunk = read_selected(src, start, stop, ("object_type",), ())
            left -= len(chunk)
            if np.any(chunk.particles["object_type"][chunk.mask] == photon):
                return True
    return False
