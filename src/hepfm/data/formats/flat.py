"""Flat particle arrays (jets one after another, with offsets) to the padded arrays of a JetChunk.

Every column reader ends here: the JetClass layouts (ROOT, Parquet) decode jagged columns as flat
contents plus offsets, and NanoAOD gathers each jet's constituents through its index maps into the
same form. Padding is numpy index arithmetic (one scatter per field), never a Python loop over jets
or awkward's padding, and it sorts particles by decreasing pT only when a jet is not sorted yet.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from hepfm.data.jets import INT_FIELDS


@dataclass
class Padded:
    """Jets padded to ``n_slots`` particles.

    Attributes:
        p4: (n, n_slots, 4) float32 (px, py, pz, E), zero in empty slots.
        mask: (n, n_slots) bool, True = real particle.
        particles: per-particle fields (n, n_slots), float32 (:data:`~hepfm.data.jets.INT_FIELDS`: int32).
        full: (n, 4) float64 four-vector sums of *all* the jets' particles if the cap dropped some, else None.
    """

    p4: np.ndarray
    mask: np.ndarray
    particles: dict[str, np.ndarray]
    full: np.ndarray | None


def rows_view(a: np.ndarray) -> np.ndarray:
    """A C-contiguous (M, K) array as (M,) opaque rows: gathers and scatters move one item per row."""
    return a.view(np.dtype((np.void, a.shape[1] * a.itemsize))).reshape(a.shape[0])


def sort_within_jets(pt2: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Stable order of flat particles that keeps jets in place and sorts each by decreasing pT^2.

    One integer sort: (jet index << 32) | ~(float32 bits of pT^2), as the bits of a non-negative
    float order like the float (NaN sorts first, as the largest).
    """
    row = np.repeat(np.arange(len(counts), dtype=np.uint64), counts)
    bits = np.ascontiguousarray(pt2, dtype=np.float32).view(np.uint32).astype(np.uint64)
    key = (row << np.uint64(32)) | (np.uint64(0xFFFFFFFF) - bits)
    return np.argsort(key, kind="stable")


def pad_particles(
    offsets: np.ndarray,
    momenta: Sequence[np.ndarray],
    fields: dict[str, np.ndarray],
    n_slots: int | None,
) -> Padded:
    """Pad flat particles into ``n_slots`` slots per jet, hardest first.

    Args:
        offsets: (n + 1,) int64, jet ``i`` owns flat particles ``offsets[i]:offsets[i + 1]``, from 0.
        momenta: the four flat (px, py, pz, E) arrays.
        fields: other flat per-particle arrays, by their ``JetChunk.particles`` name.
        n_slots: particles kept per jet (the softest are dropped); None = the longest jet.
    """
    counts = np.diff(offsets)
    n = len(counts)
    total = int(offsets[-1])
    flat = {str(c): m for c, m in enumerate(momenta)} | {f"f:{k}": v for k, v in fields.items()}
    px = flat["0"].astype(np.float32, copy=False)
    py = flat["1"].astype(np.float32, copy=False)
    with np.errstate(all="ignore"):
        pt2 = px * px + py * py  # float32, as the key of sort_by_pt
    # pT-descending within each jet (before clipping, so the hardest particles are kept)
    if total > 1:
        rising = pt2[1:] > pt2[:-1]
        starts = offsets[1:-1]
        starts = starts[(starts > 0) & (starts < total)]
        rising[starts - 1] = False  # pairs across a jet boundary do not count
        if rising.any():
            order = sort_within_jets(pt2, counts)
            flat = {k: v[order] for k, v in flat.items()}
    if n_slots is None:
        n_slots = int(counts.max(initial=0))
    kept = np.minimum(counts, n_slots)
    # destination of every particle in the (n * n_slots) padded rows: jet * n_slots + position
    first_slot = np.arange(n, dtype=np.int64) * n_slots
    dst = np.arange(total, dtype=np.int64) + np.repeat(first_slot - offsets[:-1], counts)
    full = None
    if int(kept.sum()) != total:  # clip the softest particles of long jets
        full = np.zeros((n, 4), dtype=np.float64)  # ... keeping the whole jets' sums
        nonempty = counts > 0
        for c in range(4):
            full[nonempty, c] = np.add.reduceat(flat[str(c)], offsets[:-1][nonempty], dtype=np.float64)
        keep = np.flatnonzero(dst - np.repeat(first_slot, counts) < n_slots)
        dst = dst[keep]
        flat = {k: v[keep] for k, v in flat.items()}
    cols = np.empty((len(dst), 4), dtype=np.float32)
    for c in range(4):
        cols[:, c] = flat[str(c)]
    p4: np.ndarray = np.zeros((n * n_slots, 4), dtype=np.float32)
    rows_view(p4)[dst] = rows_view(cols)
    mask = np.arange(n_slots)[None, :] < kept[:, None]
    particles = {}
    for k in fields:
        arr = np.zeros(n * n_slots, dtype=np.int32 if k in INT_FIELDS else np.float32)
        arr[dst] = flat[f"f:{k}"]
        particles[k] = arr.reshape(n, n_slots)
    return Padded(p4=p4.reshape(n, n_slots, 4), mask=mask, particles=particles, full=full)
