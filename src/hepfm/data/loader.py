"""From jet sources to :class:`~hepfm.contracts.ParticleBatch` es: in-memory and streaming datasets.

* :class:`JetDataset` (map-style) reads its sources once, computes the features and keeps them in
  a ragged layout (real particles only): about ``n_jets x mean multiplicity x (F + 4) x 4`` bytes.
* :class:`StreamingJetDataset` (``IterableDataset``) reads blocks of ``chunk_size`` jets on demand,
  for data larger than memory, with seeded shuffling, sharding over DataLoader workers and DDP
  ranks, and an exact resume.
* :func:`collate` pads per-jet samples (or merges batches) into a :class:`ParticleBatch`.
* :func:`make_loader` builds a :class:`JetLoader` (a ``DataLoader`` with ``set_epoch`` and a
  resumable ``state_dict``) for either.

Reading: the datasets ask each source only for what the feature set needs,
``source.read(start, stop, fields=feature_set.requires, jet_fields=())`` (see
:func:`~hepfm.data.formats.base.read_selected`; sources whose ``read`` takes only ``(start, stop)``
are read whole), so a ``kin`` stream decompresses four-momenta, particle counts and labels only.

Batches are assembled directly in their final padded form, trimmed by default to the longest jet of
the batch (ParT's cost grows as N²): ``x`` (B, N, F) zero at padding, ``mask`` (B, N) True = real,
``p4`` (B, N, 4), ``jet`` (B, 5) (pt, eta, phi, energy, mass of the constituent sum), ``label`` (B,)
int64 or None for unlabeled data. Real particles keep their order and become a prefix of the slots.
Both datasets hand out whole batches (``__getitems__`` for the map-style one), because building a
batch with one vectorised gather is several times faster than collating per-jet samples.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence, Sized
from pathlib import Path
from typing import Any, NamedTuple, cast

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, Sampler, get_worker_info

from hepfm.contracts import ParticleBatch
from hepfm.data.features import FeatureSet, get_feature_set
from hepfm.data.formats.base import JetSource, accepts_fields, read_selected
from hepfm.data.formats.flat import rows_view
from hepfm.data.jets import JetChunk
from hepfm.errors import HepfmInputError

log = logging.getLogger(__name__)

SourcesLike = JetSource | str | Path | Sequence[JetSource | str | Path]


class JetSample(NamedTuple):
    """One jet, unpadded: what :meth:`JetDataset.__getitem__` returns and :func:`collate` accepts.

    Shape: x (n, F), p4 (n, 4), jet (5,); label an int or None.
    """

    x: np.ndarray
    p4: np.ndarray
    jet: np.ndarray
    label: int | None


class _Block:
    """Computed features of a block of jets in the ragged layout.

    Shape: x (M, F), p4 (M, 4), offsets (n + 1,), counts (n,), jet (n, 5), label (n,) or None.
    Jet i owns rows ``offsets[i]:offsets[i + 1]``. ``n_slots`` is the padded length it came with.
    """

    __slots__ = ("counts", "jet", "label", "n_slots", "offsets", "p4", "x")

    def __init__(self, x, p4, counts, jet, label, n_slots) -> None:
        self.x, self.p4, self.jet, self.label, self.n_slots = x, p4, jet, label, int(n_slots)
        self.counts = np.asarray(counts, dtype=np.int64)
        self.offsets = np.zeros(len(self.counts) + 1, dtype=np.int64)
        np.cumsum(self.counts, out=self.offsets[1:])

    @classmethod
    def from_chunk(cls, chunk: JetChunk, fs: FeatureSet, path: Any, labelled: bool) -> _Block:
        r = fs.compute_ragged(chunk, path)
        if labelled and chunk.label is None:
            raise HepfmInputError("a chunk came without labels although the source says it has them", path)
        label = chunk.label.astype(np.int64) if labelled else None  # type: ignore[union-attr]
        return cls(r.x, r.p4, r.counts, r.jet, label, chunk.max_particles)

    def __len__(self) -> int:
        return len(self.counts)

    def take(self, rows: np.ndarray) -> _Block:
        """A compact copy of some jets, in the given order."""
        c = self.counts[rows]
        src = _ragged_index(self.offsets[rows], c)
        lab = None if self.label is None else self.label[rows]
        return _Block(self.x[src], self.p4[src], c, self.jet[rows], lab, self.n_slots)

    @staticmethod
    def concat(blocks: Sequence[_Block]) -> _Block:
        lab = None if blocks[0].label is None else np.concatenate([b.label for b in blocks])
        return _Block(
            np.concatenate([b.x for b in blocks]),
            np.concatenate([b.p4 for b in blocks]),
            np.concatenate([b.counts for b in blocks]),
            np.concatenate([b.jet for b in blocks]),
            lab,
            max(b.n_slots for b in blocks),
        )


def _ragged_index(starts: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Concatenated ranges ``starts[i] : starts[i] + counts[i]`` without a Python loop."""
    total = int(counts.sum())
    within = np.arange(total, dtype=np.int64) - np.repeat(np.cumsum(counts) - counts, counts)
    return np.repeat(starts, counts) + within


def _gather(
    blocks: Sequence[_Block], cum: np.ndarray, ids: np.ndarray, length: int | None, labelled: bool
) -> ParticleBatch:
    """Assemble jets ``ids`` (indices into the concatenation of ``blocks``) into a padded batch.

    ``length`` None trims to the longest jet of the batch; otherwise pads to ``length`` slots.

    The index arithmetic runs once for the whole batch, over its jets grouped by block (a stable
    sort, so each block's particles are one contiguous slice of the source/destination indices);
    per block there are only the row gathers/scatters.
    """
    n = len(ids)
    which = np.searchsorted(cum, ids, side="right") - 1
    rows = ids - cum[which]
    order = np.argsort(which, kind="stable")  # batch positions, grouped by block
    rows_g = rows[order]
    jb = np.searchsorted(which[order], np.arange(len(blocks) + 1))  # block k: jets jb[k]:jb[k+1]
    counts_g = np.empty(n, dtype=np.int64)
    starts_g = np.empty(n, dtype=np.int64)
    jet = np.empty((n, blocks[0].jet.shape[1]), dtype=np.float32)
    label = np.empty(n, dtype=np.int64) if labelled else None
    used = [k for k in range(len(blocks)) if jb[k] < jb[k + 1]]
    for k in used:
        b, lo, hi = blocks[k], jb[k], jb[k + 1]
        r = rows_g[lo:hi]
        counts_g[lo:hi] = b.counts[r]
        starts_g[lo:hi] = b.offsets[r]
        jet[order[lo:hi]] = b.jet[r]
        if label is not None:
            label[order[lo:hi]] = b.label[r]
    size = int(counts_g.max(initial=0)) if length is None else int(length)
    c = np.minimum(counts_g, size)
    ends = np.cumsum(c)
    within = np.arange(int(ends[-1]) if n else 0, dtype=np.int64) - np.repeat(ends - c, c)
    src = np.repeat(starts_g, c) + within  # row in its block
    dst = np.repeat(order * size, c) + within  # row in the (B*N) padded output
    pb = np.concatenate([[0], ends])[jb]  # block k: particles pb[k]:pb[k+1]
    f = blocks[0].x.shape[1]
    x = np.zeros((n * size, f), dtype=np.float32)  # (B*N, F), reshaped below
    p4 = np.zeros((n * size, 4), dtype=np.float32)
    vx, vp = rows_view(x), rows_view(p4)
    for k in used:
        b, lo, hi = blocks[k], pb[k], pb[k + 1]
        d, s = dst[lo:hi], src[lo:hi]
        vx[d] = np.take(rows_view(b.x), s)
        vp[d] = np.take(rows_view(b.p4), s)
    counts = np.empty(n, dtype=np.int64)
    counts[order] = c
    mask = np.arange(size)[None, :] < counts[:, None]  # real particles are a prefix of the slots
    return ParticleBatch(
        x=torch.from_numpy(x.reshape(n, size, f)),
        mask=torch.from_numpy(mask),
        p4=torch.from_numpy(p4.reshape(n, size, 4)),
        jet=torch.from_numpy(jet),
        label=None if label is None else torch.from_numpy(label),
    )


def _as_sources(sources: SourcesLike) -> list[JetSource]:
    if isinstance(sources, (str, Path)) or not isinstance(sources, Sequence):
        sources = [sources]
    paths = [s for s in sources if isinstance(s, (str, Path))]
    if paths:
        from hepfm.data.formats import open_sources  # lazy: the readers pull in h5py / uproot

        opened = iter(open_sources(paths))
        sources = [next(opened) if isinstance(s, (str, Path)) else s for s in sources]
    if not sources:
        raise HepfmInputError("no jet sources given")
    return list(sources)  # type: ignore[arg-type]


def _labelled(sources: Sequence[JetSource]) -> tuple[bool, tuple[str, ...]]:
    """Whether every source has labels, and their common class names."""
    labelled = all(s.has_labels for s in sources)
    if not labelled:
        unl = [str(s.path) for s in sources if not s.has_labels]
        if len(unl) < len(sources):
            log.warning("some sources have no labels (%s): all batches will have label=None", unl[0])
        return False, ()
    names = tuple(sources[0].class_names)
    for s in sources[1:]:
        if tuple(s.class_names) != names:
            raise HepfmInputError(
                f"class names {tuple(s.class_names)} differ from {names} of {sources[0].path}", s.path
            )
    return True, names


def _check_fields_early(sources: Sequence[JetSource], fs: FeatureSet) -> bool:
    """Check ``fs`` against the ``particle_fields`` each source declares (no reading); returns
    whether every source declared them."""
    declared = True
    for s in sources:
        have = getattr(s, "particle_fields", None)
        if have is None:
            declared = False
        else:
            fs.check_fields(have, s.path)
    return declared


def _read_for(src: JetSource, start: int, stop: int, fs: FeatureSet, accepts: bool | None = None) -> JetChunk:
    """Jets ``[start, stop)`` of ``src`` with only the per-particle fields ``fs`` needs, no per-jet ones."""
    return read_selected(src, start, stop, fs.requires, (), accepts=accepts)


def _load(
    src: JetSource,
    start: int,
    stop: int,
    fs: FeatureSet,
    max_particles: int | None,
    lab: bool,
    exact: bool = True,
    accepts: bool | None = None,
) -> _Block:
    chunk = _read_for(src, start, stop, fs, accepts)
    if exact and len(chunk) != stop - start:
        raise HepfmInputError(
            f"read({start}, {stop}) returned {len(chunk)} jets; a source that drops jets must have "
            "skip_bad=True (as the readers opened with skip_bad do)",
            src.path,
        )
    if max_particles is not None:
        chunk = chunk.truncate(max_particles)
    return _Block.from_chunk(chunk, fs, src.path, lab)


def collate(
    samples: Sequence[JetSample] | Sequence[ParticleBatch] | ParticleBatch,
    *,
    trim: bool = True,
    pad_to: int | None = None,
) -> ParticleBatch:
    """Pad jets into one :class:`ParticleBatch`.

    Args:
        samples: per-jet :class:`JetSample` s, or batches to merge, or one batch (returned as is:
            the batched fast path of the datasets, which already trim).
        trim: pad to the longest jet (else to ``pad_to``, which is then required).
        pad_to: fixed padded length (longer jets are truncated: their softest particles go).

    Shape: returns x (B, N, F), mask (B, N), p4 (B, N, 4), jet (B, 5), label (B,) or None.
    """
    if isinstance(samples, ParticleBatch):
        return samples
    if len(samples) == 0:
        raise ValueError("collate needs at least one sample")
    if not trim and pad_to is None:
        raise ValueError("collate(trim=False) needs pad_to")
    if isinstance(samples[0], ParticleBatch):
        blocks = [_batch_to_block(b) for b in samples]  # type: ignore[arg-type]
        labelled = all(b.label is not None for b in samples)
    else:
        s: Sequence[JetSample] = samples  # type: ignore[assignment]
        labelled = all(j.label is not None for j in s)
        blocks = [
            _Block(
                np.concatenate([np.asarray(j.x, np.float32).reshape(-1, np.shape(j.x)[-1]) for j in s]),
                np.concatenate([np.asarray(j.p4, np.float32).reshape(-1, 4) for j in s]),
                np.array([len(j.x) for j in s]),
                np.stack([np.asarray(j.jet, np.float32) for j in s]),
                np.array([j.label for j in s], np.int64) if labelled else None,
                0,
            )
        ]
    if not labelled:
        for b in blocks:
            b.label = None
    cum = np.concatenate([[0], np.cumsum([len(b) for b in blocks])])
    return _gather(blocks, cum, np.arange(cum[-1]), None if trim else pad_to, labelled)


def _batch_to_block(b: ParticleBatch) -> _Block:
    mask = b.mask.numpy()
    idx = np.flatnonzero(mask)
    return _Block(
        np.ascontiguousarray(b.x.numpy().reshape(-1, b.x.shape[-1])[idx]),
        np.ascontiguousarray(b.p4.numpy().reshape(-1, 4)[idx]),
        mask.sum(axis=1),
        b.jet.numpy() if b.jet is not None else np.zeros((len(mask), 5), np.float32),
        None if b.label is None else b.label.numpy(),
        mask.shape[1],
    )


class JetDataset(Dataset):
    """All jets of some sources, features computed once and held in memory (ragged layout).

    Args:
        sources: :class:`JetSource` s or paths (opened with ``hepfm.data.formats.open_sources``).
        feature_set: a registry name, a :class:`FeatureSet` or its ``to_dict()``.
        max_particles: keep at most this many (hardest) particles per jet.
        n_jets: read at most this many jets in total (sources in order).
        chunk_size: jets per ``read`` call.
        trim: batches pad to their longest jet; else to ``pad_to`` (default: the longest jet of the
            dataset, or ``max_particles``).

    ``dataset[i]`` is a :class:`JetSample`; ``dataset.__getitems__(indices)`` (used by DataLoader)
    returns a whole :class:`ParticleBatch`, so pass :func:`collate` as ``collate_fn``.
    """

    def __init__(
        self,
        sources: SourcesLike,
        feature_set: str | FeatureSet | dict = "kin",
        *,
        max_particles: int | None = None,
        n_jets: int | None = None,
        chunk_size: int = 65536,
        trim: bool = True,
        pad_to: int | None = None,
    ) -> None:
        self.sources = _as_sources(sources)
        self.feature_set = get_feature_set(feature_set)
        self.labelled, self.class_names = _labelled(self.sources)
        self.trim = trim
        _check_fields_early(self.sources, self.feature_set)
        blocks: list[_Block] = []
        left = np.inf if n_jets is None else int(n_jets)
        for src in self.sources:
            n = int(min(len(src), left))
            acc = accepts_fields(src)
            for start in range(0, n, chunk_size):
                stop = min(start + chunk_size, n)
                blocks.append(
                    _load(src, start, stop, self.feature_set, max_particles, self.labelled, False, acc)
                )
            left -= n
            if left <= 0:
                break
        if not blocks:
            raise HepfmInputError("the sources hold no jets", self.sources[0].path)
        self._data = blocks[0] if len(blocks) == 1 else _Block.concat(blocks)
        self._cum = np.array([0, len(self._data)])
        longest = int(self._data.counts.max(initial=0))
        self.pad_to = pad_to if pad_to is not None else (max_particles or longest)

    def __len__(self) -> int:
        return len(self._data)

    def __getitem__(self, i: int) -> JetSample:
        d = self._data
        i = int(i) + len(self) if int(i) < 0 else int(i)
        if not 0 <= i < len(self):
            raise IndexError(f"jet index {i} out of range for {len(self)} jets")
        a, b = d.offsets[i], d.offsets[i + 1]
        return JetSample(d.x[a:b], d.p4[a:b], d.jet[i], None if d.label is None else int(d.label[i]))

    def __getitems__(self, indices: Sequence[int]) -> ParticleBatch:
        ids = np.asarray(indices, dtype=np.int64)
        if ids.size and (ids.min() < 0 or ids.max() >= len(self)):
            raise IndexError("jet index out of range")
        return _gather([self._data], self._cum, ids, None if self.trim else self.pad_to, self.labelled)


class StreamingJetDataset(IterableDataset):
    """Jets streamed from many sources in blocks, for data larger than memory; yields whole batches.

    It yields ready :class:`ParticleBatch` es of ``batch_size`` jets (building them per jet would
    cost more than the features), so wrap it in ``DataLoader(ds, batch_size=None, ...)`` or use
    :func:`make_loader`.

    Work units are blocks ``(source, start, stop)`` of ``chunk_size`` jets. Each epoch:

    1. the unit order is shuffled with ``default_rng([seed, epoch])`` (identical on every rank);
    2. unit ``u`` of that order goes to the global shard ``u % S``, where the shard of a DataLoader
       worker is ``rank * num_workers + worker_id`` and ``S = world_size * num_workers``: every jet
       is in exactly one shard, none is repeated or lost;
    3. each shard groups its units into pools of at least ``buffer_size`` jets, permutes each pool
       (``default_rng([seed, epoch, shard, pool])``) and cuts it into batches; the < ``batch_size``
       jets left over join the next pool, and the shard's last batch may be short (dropped with
       ``drop_last``, the only case where jets are not yielded).

    Memory per worker: one pool, i.e. about ``buffer_size + chunk_size`` jets in the ragged layout
    (real particles only, ~2.2 kB per jet for ``kin`` at 50 particles), plus the batch being built.
    With ``shuffle=False`` a pool is one unit and nothing is permuted (sources in order, sharded).

    Mixing: a batch draws from ``buffer_size / chunk_size`` units of random sources; for files that
    each hold one class (JetClass) keep that ratio well above the number of classes.

    Resume: the stream is a deterministic function of (seed, epoch, shard) and the unit sizes, so a
    position is just the number of batches already consumed. ``load_state_dict`` (or
    :meth:`JetLoader.load_state_dict`) sets it; each worker then works out its own share (DataLoader
    takes batches from the workers round-robin, skipping exhausted ones), skips the pools it has
    fully delivered without reading them, and re-reads only the pool it stopped in (and the units of
    the leftover jets carried into it). This is exact for any ``num_workers`` as long as the count is
    taken in the main process, which :class:`JetLoader` does; ``state_dict()`` of the dataset itself
    counts the batches it yielded in this process, so it is exact only with ``num_workers=0``. The
    world size, worker count, batch size, seed and sources must not change across the resume.

    DDP: ranks can get different numbers of batches (units have different sizes); the trainer must
    not assume equal counts (e.g. stop every rank at the minimum, or use uneven-input joins).

    Sources with ``skip_bad=True`` (readers that drop bad jets) return fewer jets than asked for:
    every jet they return is still yielded once, but sizes are known only by reading, so a resume
    re-reads (without computing features) the units of the skipped pools, ``len()`` is an upper
    bound, and with ``num_workers > 1`` a resume in the last round of an epoch, after a worker ran
    out, can be off (the workers' batch counts used to split the position are the nominal ones).
    """

    def __init__(
        self,
        sources: SourcesLike,
        feature_set: str | FeatureSet | dict = "kin",
        batch_size: int = 512,
        *,
        shuffle: bool = True,
        seed: int = 0,
        chunk_size: int = 8192,
        buffer_size: int = 65536,
        max_particles: int | None = None,
        n_jets: int | None = None,
        drop_last: bool = False,
        trim: bool = True,
        pad_to: int | None = None,
        rank: int | None = None,
        world_size: int | None = None,
        num_workers: int | None = None,
    ) -> None:
        super().__init__()
        if batch_size < 1 or chunk_size < 1:
            raise HepfmInputError("batch_size and chunk_size must be positive")
        self.sources = _as_sources(sources)
        self.feature_set = get_feature_set(feature_set)
        self.labelled, self.class_names = _labelled(self.sources)
        self.batch_size, self.shuffle, self.seed = int(batch_size), shuffle, int(seed)
        self.chunk_size, self.buffer_size = int(chunk_size), int(buffer_size)
        self.max_particles, self.drop_last, self.trim = max_particles, drop_last, trim
        self.pad_to = pad_to if pad_to is not None else max_particles
        self._explicit_rank = (rank, world_size)
        self.rank, self.world_size = resolve_rank(rank, world_size)
        self.num_workers = num_workers or 0
        self.epoch = 0
        self._resume_batches = 0
        self._yielded = 0
        units = []
        left = np.inf if n_jets is None else int(n_jets)
        for i, src in enumerate(self.sources):
            n = int(min(len(src), left))
            units += [(i, a, min(a + self.chunk_size, n)) for a in range(0, n, self.chunk_size)]
            left -= n
        self.units = np.array(units, dtype=np.int64).reshape(-1, 3)  # (U, 3): source, start, stop
        # readers opened with skip_bad drop bad jets, so a unit may hold fewer jets than stop - start
        self._exact_sizes = not any(getattr(s, "skip_bad", False) for s in self.sources)
        self._accepts = [accepts_fields(s) for s in self.sources]
        # fail fast on missing fields (every chunk is checked again later)
        if not _check_fields_early(self.sources, self.feature_set):
            first = next((s for s in self.sources if len(s) > 0), None)
            if first is not None:
                self.feature_set.check_fields(first.read(0, 1).particles, first.path)

    # -- epoch, rank, resume ------------------------------------------------------------------
    def set_epoch(self, epoch: int) -> None:
        if int(epoch) != self.epoch:
            self._yielded = 0
        self.epoch = int(epoch)

    def resolve_rank(self) -> None:
        """Re-read rank/world size (torch.distributed may have been initialised after construction)."""
        self.rank, self.world_size = resolve_rank(*self._explicit_rank)

    def fingerprint(self) -> dict[str, Any]:
        return {"seed": self.seed, "batch_size": self.batch_size, "chunk_size": self.chunk_size,
                "buffer_size": self.buffer_size, "shuffle": self.shuffle, "drop_last": self.drop_last,
                "world_size": self.world_size, "n_units": len(self.units),
                "n_jets": int((self.units[:, 2] - self.units[:, 1]).sum())}

    def state_dict(self) -> dict[str, Any]:
        """Epoch and batches yielded by this process (exact with ``num_workers=0``; see class doc)."""
        return {"epoch": self.epoch, "batches": self._yielded, **self.fingerprint(),
                "num_workers": self.num_workers}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        mine = self.fingerprint() | {"num_workers": self.num_workers}
        bad = {k: (state.get(k), v) for k, v in mine.items() if k in state and state[k] != v}
        if bad:
            raise HepfmInputError(f"cannot resume the data stream exactly: settings changed {bad}")
        self.epoch = int(state["epoch"])
        self._resume_batches = int(state["batches"])

    # -- planning (sizes only, no reading) -------------------------------------------------------
    def _shard_units(self, shard: int, n_shards: int) -> np.ndarray:
        order = np.arange(len(self.units))
        if self.shuffle:
            order = np.random.default_rng([self.seed, self.epoch]).permutation(len(self.units))
        return order[shard::n_shards]

    def _n_batches(self, units: np.ndarray) -> int:
        n = int((self.units[units, 2] - self.units[units, 1]).sum())
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def _pools(self, units: np.ndarray) -> list[np.ndarray]:
        if not self.shuffle:
            return [units[i : i + 1] for i in range(len(units))]
        pools: list[np.ndarray] = []
        start, size = 0, 0
        for i, u in enumerate(units):
            size += int(self.units[u, 2] - self.units[u, 1])
            if size >= self.buffer_size or i == len(units) - 1:
                pools.append(units[start : i + 1])
                start, size = i + 1, 0
        return pools

    def __len__(self) -> int:
        """Batches this rank yields per epoch (given ``num_workers``, which make_loader sets)."""
        w = max(self.num_workers, 1)
        s = self.world_size * w
        return sum(self._n_batches(self._shard_units(self.rank * w + k, s)) for k in range(w))

    # -- iteration --------------------------------------------------------------------------------
    def __iter__(self) -> Iterator[ParticleBatch]:
        info = get_worker_info()
        if info is None:
            self.resolve_rank()
        w, wid = (info.num_workers, info.id) if info is not None else (1, 0)
        n_shards, shard = self.world_size * w, self.rank * w + wid
        resume, self._resume_batches = self._resume_batches, 0
        if resume:
            per_worker = [self._n_batches(self._shard_units(self.rank * w + k, n_shards)) for k in range(w)]
            got, first = _round_robin_share(resume, per_worker)
            local = (wid + first) % w  # rotated so that DataLoader's worker 0 serves the next shard
            shard, skip = self.rank * w + local, got[local]
        else:
            skip = 0
        self._yielded = resume
        return self._generate(self._shard_units(shard, n_shards), shard, skip)

    def _generate(self, units: np.ndarray, shard: int, skip: int) -> Iterator[ParticleBatch]:
        bs, done = self.batch_size, 0
        length = None if self.trim else self.pad_to
        carry: _Block | None = None
        carry_refs = np.zeros((0, 2), dtype=np.int64)  # (unit, row) of the carried jets, while skipping
        pools = self._pools(units)
        for k, pool in enumerate(pools):
            blocks: list[_Block] | None = None
            if done >= skip:  # streaming normally: read the pool, sizes as read
                carry = self._materialise(carry_refs) if len(carry_refs) else carry
                blocks = ([carry] if carry is not None else []) + [self._load_unit(u) for u in pool]
                sizes = np.array([len(b) for b in blocks[len(blocks) - len(pool) :]], dtype=np.int64)
            elif self._exact_sizes:
                sizes = self.units[pool, 2] - self.units[pool, 1]
            else:  # sources that drop bad jets: the sizes are only known by reading
                sizes = np.array([len(self._read_unit(u)) for u in pool], dtype=np.int64)
            total = (len(carry) if carry is not None else len(carry_refs)) + int(sizes.sum())
            perm = np.arange(total)
            if self.shuffle:
                perm = np.random.default_rng([self.seed, self.epoch, shard, k]).permutation(total)
            last = k == len(pools) - 1
            n_full = total // bs
            n_out = n_full + int(last and total % bs > 0 and not self.drop_last)
            tail = perm[n_full * bs :] if not last else perm[:0]
            if blocks is None:
                if done + n_out <= skip:  # delivered before the interruption: follow the jets only
                    refs = [
                        np.stack([np.full(n, u), np.arange(n)], 1) for u, n in zip(pool, sizes, strict=True)
                    ]
                    carry_refs, done = np.concatenate([carry_refs, *refs])[tail], done + n_out
                    continue
                carry = self._materialise(carry_refs) if len(carry_refs) else carry
                blocks = ([carry] if carry is not None else []) + [self._load_unit(u) for u in pool]
            carry_refs = carry_refs[:0]
            cum = np.concatenate([[0], np.cumsum([len(b) for b in blocks])])
            for b in range(max(skip - done, 0), n_out):
                batch = _gather(blocks, cum, perm[b * bs : (b + 1) * bs], length, self.labelled)
                self._yielded += 1
                yield batch
            done += n_out
            carry = _gather_block(blocks, cum, tail) if len(tail) else None
            del blocks  # before the next pool is read: at most one pool in memory

    def _read_unit(self, u: int) -> JetChunk:
        # the same fields as _load_unit: with skip_bad, what is dropped depends on what is read
        si, a, b = (int(v) for v in self.units[u])
        return _read_for(self.sources[si], a, b, self.feature_set, self._accepts[si])

    def _load_unit(self, u: int) -> _Block:
        si, a, b = (int(v) for v in self.units[u])
        return _load(self.sources[si], a, b, self.feature_set, self.max_particles, self.labelled,
                     exact=self._exact_sizes, accepts=self._accepts[si])

    def _materialise(self, refs: np.ndarray) -> _Block:
        """Read back the jets ``refs`` (unit, row), in that order: the leftovers of a skipped pool."""
        blocks, ids, n = [], np.empty(len(refs), dtype=np.int64), 0
        for u in np.unique(refs[:, 0]):
            sel = np.flatnonzero(refs[:, 0] == u)
            if self._exact_sizes:  # rows are file offsets: read just the range that holds them
                si, a, _ = (int(v) for v in self.units[u])
                lo, hi = int(refs[sel, 1].min()), int(refs[sel, 1].max()) + 1
                blk = _load(self.sources[si], a + lo, a + hi, self.feature_set, self.max_particles,
                            self.labelled, accepts=self._accepts[si])
            else:
                blk, lo = self._load_unit(int(u)), 0
            blocks.append(blk)
            ids[sel] = n + refs[sel, 1] - lo
            n += len(blk)
        return _gather_block(blocks, np.concatenate([[0], np.cumsum([len(b) for b in blocks])]), ids)


def _gather_block(blocks: Sequence[_Block], cum: np.ndarray, ids: np.ndarray) -> _Block:
    """Jets ``ids`` of the concatenation of ``blocks`` as one compact block, in the order of ``ids``."""
    which = np.searchsorted(cum, ids, side="right") - 1
    rows = ids - cum[which]
    parts, pos = [], []
    for k in np.unique(which):
        sel = np.flatnonzero(which == k)
        parts.append(blocks[k].take(rows[sel]))
        pos.append(sel)
    joined = _Block.concat(parts) if len(parts) > 1 else parts[0]
    return joined.take(np.argsort(np.concatenate(pos), kind="stable"))


def _round_robin_share(k: int, counts: Sequence[int]) -> tuple[list[int], int]:
    """How many of the first ``k`` batches came from each worker, and which worker is next.

    DataLoader takes one batch from each worker in turn (worker 0 first) and skips workers that are
    exhausted; ``counts`` are the workers' batch totals. A resumed DataLoader starts again at worker
    0, so the resumed workers are rotated to put the "next" one first.
    """
    got = [0] * len(counts)
    left = k
    while left > 0:
        active = [i for i, c in enumerate(counts) if got[i] < c]
        if not active:
            break
        rounds = min(min(counts[i] - got[i] for i in active), left // len(active))
        if rounds == 0:  # a partial round: the first `left` active workers, then the one after them
            for i in active[:left]:
                got[i] += 1
            after = [i for i in active[left:] if got[i] < counts[i]]
            return got, (after[0] if after else _first_left(got, counts))
        for i in active:
            got[i] += rounds
        left -= rounds * len(active)
    return got, _first_left(got, counts)


def _first_left(got: Sequence[int], counts: Sequence[int]) -> int:
    return next((i for i, c in enumerate(counts) if got[i] < c), 0)


class _EpochSampler(Sampler[int]):
    """Seeded per-epoch permutation, sharded over DDP ranks, with a one-shot skip for resuming.

    With ``world_size`` > 1 every rank gets ``ceil(n / world)`` indices (wrapping around, as
    DistributedSampler does) or ``floor`` with ``drop_last``.
    """

    def __init__(self, n: int, shuffle: bool, seed: int, rank: int, world_size: int, drop_last: bool) -> None:
        self.n, self.shuffle, self.seed = n, shuffle, seed
        self.rank, self.world_size, self.drop_last = rank, world_size, drop_last
        self.epoch = 0
        self.skip = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n // self.world_size if self.drop_last else -(-self.n // self.world_size)

    def __iter__(self) -> Iterator[int]:
        skip, self.skip = self.skip, 0
        if self.shuffle:
            order = np.random.default_rng([self.seed, self.epoch]).permutation(self.n)
        else:
            order = np.arange(self.n)
        total = len(self) * self.world_size
        if total > self.n:
            order = np.resize(order, total)  # wrap around
        order = order[:total][self.rank :: self.world_size]
        return iter(order[skip:].tolist())


def _identity(batch: Any) -> Any:
    return batch


def resolve_rank(rank: int | None = None, world_size: int | None = None) -> tuple[int, int]:
    """(rank, world size): explicit values, else torch.distributed if initialised, else env
    ``RANK`` / ``WORLD_SIZE`` (torchrun), else (0, 1)."""
    if rank is not None and world_size is not None:
        r, w = int(rank), int(world_size)
    elif torch.distributed.is_available() and torch.distributed.is_initialized():
        r, w = torch.distributed.get_rank(), torch.distributed.get_world_size()
    else:
        r, w = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    if not 0 <= r < w:
        raise HepfmInputError(f"rank {r} is not in [0, world size {w})")
    return r, w


class JetLoader(DataLoader):
    """A DataLoader that knows its epoch and how far it got, for exact resumes.

    ``state_dict()`` records the epoch and the number of batches this rank has handed out in it
    (counted here, in the main process, so it is right for any ``num_workers``);
    ``load_state_dict()`` makes the next iteration continue with the very next batch. Save it after
    the optimizer step of the last batch you used. Workers are not persistent (a new iteration
    must see the new epoch and resume point).
    """

    def __init__(self, dataset: Dataset, *, sampler: _EpochSampler | None = None, **kwargs: Any) -> None:
        super().__init__(dataset, sampler=sampler, **kwargs)
        self.streaming = isinstance(dataset, StreamingJetDataset)
        self._epoch_sampler = sampler
        self.epoch = 0
        self.consumed = 0
        self._resume = 0

    def set_epoch(self, epoch: int) -> None:
        """Start epoch ``epoch`` (a new shuffle) from its beginning."""
        self.epoch, self.consumed, self._resume = int(epoch), 0, 0
        if self.streaming:
            self.dataset.set_epoch(epoch)  # type: ignore[attr-defined]
        elif self._epoch_sampler is not None:
            self._epoch_sampler.set_epoch(epoch)

    def __iter__(self) -> Iterator[ParticleBatch]:  # type: ignore[override]
        resume, self._resume = self._resume, 0
        if self.streaming:
            ds: StreamingJetDataset = self.dataset  # type: ignore[assignment]
            ds.set_epoch(self.epoch)
            ds._resume_batches = resume
            ds.num_workers = self.num_workers
            ds.resolve_rank()
        elif self._epoch_sampler is not None:
            self._epoch_sampler.skip = resume * int(self.batch_size or 1)
        it = super().__iter__()  # workers (or the in-process iterator) take their copy of the state here
        if self.streaming:
            self.dataset._resume_batches = 0  # type: ignore[attr-defined]
        self.consumed = resume
        for batch in it:
            self.consumed += 1
            yield batch

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "batches": self.consumed, **self._fingerprint()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        mine = self._fingerprint()
        bad = {k: (state.get(k), v) for k, v in mine.items() if k in state and state[k] != v}
        if bad:
            raise HepfmInputError(f"cannot resume the data stream exactly: settings changed {bad}")
        self.set_epoch(int(state["epoch"]))
        self._resume = int(state["batches"])

    def _fingerprint(self) -> dict[str, Any]:
        if self.streaming:
            fp: dict[str, Any] = self.dataset.fingerprint()  # type: ignore[attr-defined]
            return fp | {"num_workers": self.num_workers}
        s = self._epoch_sampler
        return {"n_jets": len(cast(Sized, self.dataset)), "batch_size": self.batch_size,
                "seed": s.seed if s else None, "shuffle": s.shuffle if s else False,
                "world_size": s.world_size if s else 1}


def make_loader(
    sources: SourcesLike,
    feature_set: str | FeatureSet | dict = "kin",
    batch_size: int = 512,
    *,
    streaming: bool = False,
    shuffle: bool = True,
    seed: int = 0,
    num_workers: int = 0,
    max_particles: int | None = None,
    drop_last: bool = False,
    n_jets: int | None = None,
    trim: bool = True,
    pad_to: int | None = None,
    chunk_size: int = 8192,
    buffer_size: int = 65536,
    rank: int | None = None,
    world_size: int | None = None,
    pin_memory: bool = False,
    epoch: int = 0,
) -> JetLoader:
    """A :class:`JetLoader` of :class:`ParticleBatch` es over ``sources``.

    ``streaming=False`` loads everything into a :class:`JetDataset` (``sources`` may also be a
    ready JetDataset); ``streaming=True`` uses a :class:`StreamingJetDataset` (``chunk_size``,
    ``buffer_size`` apply). Both shard over DDP ranks (``rank``/``world_size``, default from
    torch.distributed or the environment). Call ``loader.set_epoch(e)`` before each epoch.
    """
    common: dict[str, Any] = {"num_workers": num_workers, "pin_memory": pin_memory}
    if streaming:
        ds = StreamingJetDataset(
            sources, feature_set, batch_size, shuffle=shuffle, seed=seed, chunk_size=chunk_size,
            buffer_size=buffer_size, max_particles=max_particles, n_jets=n_jets, drop_last=drop_last,
            trim=trim, pad_to=pad_to, rank=rank, world_size=world_size, num_workers=num_workers,
        )
        loader = JetLoader(ds, batch_size=None, collate_fn=_identity, **common)
    else:
        ds2: JetDataset
        if isinstance(sources, JetDataset):
            ds2 = sources
        else:
            ds2 = JetDataset(sources, feature_set, max_particles=max_particles, n_jets=n_jets, trim=trim,
                             pad_to=pad_to)
        r, w = resolve_rank(rank, world_size)
        sampler = _EpochSampler(len(ds2), shuffle, seed, r, w, drop_last)
        loader = JetLoader(
            ds2, sampler=sampler, batch_size=batch_size, drop_last=drop_last, collate_fn=collate, **common
        )
    loader.set_epoch(epoch)
    return loader
