"""Datasets, collate, sharding and exact resume of the jet loaders (in-memory ArraySources only)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hepfm.contracts import ParticleBatch
from hepfm.data.features import FEATURE_SETS
from hepfm.data.formats.base import ArraySource
from hepfm.data.jets import JetChunk
from hepfm.data.loader import (
    JetDataset,
    JetSample,
    StreamingJetDataset,
    _round_robin_share,
    collate,
    make_loader,
)
from hepfm.errors import HepfmInputError


def make_source(n: int, first_id: int, n_slots: int = 8, labelled: bool = True, seed: int = 0,
                path: str = "<memory>", **fields) -> ArraySource:
    """n random jets; jet k carries the id ``first_id + k`` as px - 1 of its first particle."""
    rng = np.random.default_rng(seed)
    counts = rng.integers(1, n_slots + 1, n)
    mask = np.arange(n_slots)[None] < counts[:, None]
    pt = rng.uniform(1, 50, (n, n_slots))
    eta = rng.normal(0, 1, (n, 1)) + rng.normal(0, 0.3, (n, n_slots))
    phi = rng.uniform(-np.pi, np.pi, (n, 1)) + rng.normal(0, 0.3, (n, n_slots))
    p4 = np.stack([pt * np.cos(phi), pt * np.sin(phi), pt * np.sinh(eta), pt * np.cosh(eta) + 0.1], -1)
    ids = first_id + np.arange(n)
    p4[:, 0] = np.stack([ids + 1.0, np.full(n, 0.5), np.full(n, 0.3), ids + 2.0], -1)
    p4[~mask] = 0
    chunk = JetChunk(
        p4=p4.astype(np.float32), mask=mask,
        label=(ids % 2).astype(np.int64) if labelled else None,
        class_names=("QCD", "Top") if labelled else (),
        particles={k: np.where(mask, 1.0, 0.0).astype(np.float32) for k in fields},
    )
    return ArraySource(chunk, path)


def ids_of(batch: ParticleBatch) -> np.ndarray:
    return (batch.p4[:, 0, 0].numpy() - 1).round().astype(np.int64)


def three_sources() -> list[ArraySource]:
    return [make_source(1000, 0, seed=1), make_source(370, 1000, seed=2), make_source(55, 1370, seed=3)]


def check_batch(batch: ParticleBatch, sources: list[ArraySource], fs_name: str = "kin") -> None:
    """Shapes, mask semantics, trimming, and content equal to the features of the same jets."""
    ref = JetChunk.concat([s.chunk for s in sources])
    fs = FEATURE_SETS.get(fs_name)
    ids = ids_of(batch)
    b, n = batch.mask.shape
    assert batch.x.shape == (b, n, fs.dim)
    assert batch.p4.shape == (b, n, 4)
    assert batch.jet.shape == (b, 5)
    assert batch.mask.dtype == torch.bool
    assert batch.x.dtype == torch.float32
    counts = batch.mask.sum(1).numpy()
    assert n == counts.max()  # trimmed to the longest jet
    assert torch.all(batch.mask == (torch.arange(n)[None] < torch.as_tensor(counts)[:, None]))  # prefix
    assert torch.all(batch.x[~batch.mask] == 0)
    assert torch.all(batch.p4[~batch.mask] == 0)
    sub = ref.take(ids)
    want = fs.compute(sub)[:, :n]
    np.testing.assert_array_equal(batch.x.numpy(), want)
    np.testing.assert_array_equal(batch.mask.numpy(), sub.mask[:, :n])
    np.testing.assert_allclose(batch.jet.numpy(), fs.jet_features(sub), rtol=1e-6)
    if batch.label is not None:
        np.testing.assert_array_equal(batch.label.numpy(), ids % 2)


# -- map-style dataset and collate ----------------------------------------------------------------

def test_jet_dataset_items_and_batches():
    srcs = three_sources()
    ds = JetDataset(srcs, "kin")
    assert len(ds) == 1425
    assert ds.labelled
    assert ds.class_names == ("QCD", "Top")
    item = ds[1003]
    assert isinstance(item, JetSample)
    assert item.x.shape[1] == 7
    assert item.label == 1003 % 2
    assert item.x.shape[0] == srcs[1].chunk.mask[3].sum()
    batch = ds.__getitems__([5, 1371, 1000, 17])
    np.testing.assert_array_equal(ids_of(batch), [5, 1371, 1000, 17])
    check_batch(batch, srcs)
    # the per-jet path gives the same batch as the batched fast path
    slow = collate([ds[i] for i in [5, 1371, 1000, 17]])
    for f in ("x", "mask", "p4", "jet", "label"):
        torch.testing.assert_close(getattr(slow, f), getattr(batch, f))


def test_jet_dataset_limits_and_truncation():
    ds = JetDataset(three_sources(), "kin", max_particles=3, n_jets=1100)
    assert len(ds) == 1100
    assert int(ds._data.counts.max()) == 3
    assert ids_of(ds.__getitems__([1099]))[0] == 1099


def test_collate_fixed_padding_and_merge():
    ds = JetDataset([make_source(20, 0)], "kin")
    a = collate([ds[i] for i in range(4)], trim=False, pad_to=8)
    assert a.x.shape == (4, 8, 7)
    assert torch.all(a.x[~a.mask] == 0)
    b = ds.__getitems__([4, 5])
    merged = collate([ds.__getitems__([0, 1, 2, 3]), b])
    assert merged.x.shape[0] == 6
    assert merged.x.shape[1] == merged.mask.sum(1).max()
    np.testing.assert_array_equal(ids_of(merged), range(6))
    assert collate(b) is b
    unl = collate([JetSample(np.ones((2, 7)), np.ones((2, 4)), np.zeros(5), None)])
    assert unl.label is None
    assert unl.mask.tolist() == [[True, True]]


def test_map_loader_epochs_and_ranks():
    srcs = three_sources()
    ds = JetDataset(srcs, "kin")
    seen = []
    for rank in range(2):
        loader = make_loader(ds, batch_size=64, shuffle=True, seed=3, rank=rank, world_size=2)
        ids = np.concatenate([ids_of(b) for b in loader])
        assert len(loader) == -(-713 // 64)
        seen.append(ids)
        loader.set_epoch(1)
        assert not np.array_equal(np.concatenate([ids_of(b) for b in loader]), ids)
    allids = np.concatenate(seen)
    assert set(allids) == set(range(1425))
    assert len(allids) == 1426
    again = make_loader(ds, batch_size=64, shuffle=True, seed=3, rank=0, world_size=2)
    np.testing.assert_array_equal(np.concatenate([ids_of(b) for b in again]), seen[0])


def test_map_loader_resume():
    ds = JetDataset(three_sources(), "kin")
    full = [ids_of(b) for b in make_loader(ds, batch_size=100, seed=5, epoch=2)]
    loader = make_loader(ds, batch_size=100, seed=5, epoch=2)
    for i, _b in enumerate(loader):
        if i == 3:
            break
    state = loader.state_dict()
    assert state["batches"] == 4
    assert state["epoch"] == 2
    fresh = make_loader(ds, batch_size=100, seed=5)
    fresh.load_state_dict(state)
    rest = [ids_of(b) for b in fresh]
    assert len(rest) == len(full) - 4
    for x, y in zip(rest, full[4:], strict=True):
        np.testing.assert_array_equal(x, y)


# -- streaming ------------------------------------------------------------------------------------

STREAM = {"batch_size": 32, "chunk_size": 64, "buffer_size": 200, "seed": 11}


def stream_ids(rank: int, world: int, workers: int, epoch: int = 0, **kw) -> list[np.ndarray]:
    loader = make_loader(three_sources(), "kin", streaming=True, num_workers=workers, rank=rank,
                         world_size=world, epoch=epoch, **(STREAM | kw))
    out = [ids_of(b) for b in loader]
    assert len(out) == len(loader)
    return out


def test_streaming_sharding_covers_every_jet_once():
    shards = {}
    for rank in range(2):
        shards[rank] = stream_ids(rank, 2, workers=2)
    allids = np.concatenate([np.concatenate(v) for v in shards.values()])
    assert len(allids) == 1425
    assert set(allids.tolist()) == set(range(1425))
    # jets from different sources end up mixed within batches
    src_of = np.searchsorted([1000, 1370], np.concatenate(shards[0]), side="right")
    assert len(set(src_of[:200].tolist())) > 1
    # all batches full but the last of each worker shard
    sizes = [len(b) for b in shards[0]]
    assert sizes.count(32) >= len(sizes) - 2
    # same seed -> same order; different epoch -> different order, same set
    again = stream_ids(0, 2, workers=2)
    np.testing.assert_array_equal(np.concatenate(again), np.concatenate(shards[0]))
    other = np.concatenate(stream_ids(0, 2, workers=2, epoch=1))
    assert not np.array_equal(other, np.concatenate(shards[0]))
    e1 = np.concatenate([other, np.concatenate(stream_ids(1, 2, workers=2, epoch=1))])
    assert sorted(e1.tolist()) == list(range(1425))


def test_streaming_batches_content_and_no_shuffle_order():
    srcs = three_sources()
    ds = StreamingJetDataset(srcs, "kin", batch_size=50, shuffle=False, chunk_size=64)
    batches = list(ds)
    np.testing.assert_array_equal(np.concatenate([ids_of(b) for b in batches]), np.arange(1425))
    for b in batches[::7]:
        check_batch(b, srcs)
    dl = StreamingJetDataset(srcs, "kin", batch_size=50, shuffle=False, drop_last=True)
    assert all(len(b) == 50 for b in dl)
    assert len(list(dl)) == 1425 // 50


def test_streaming_unlabeled_and_fixed_padding():
    src = make_source(100, 0, labelled=False)
    batches = list(StreamingJetDataset([src], "kin", batch_size=40, max_particles=6, trim=False, seed=1))
    assert all(b.label is None for b in batches)
    assert all(b.x.shape[1] == 6 for b in batches)
    assert sum(len(b) for b in batches) == 100


def take(it, k):
    out = []
    for b in it:
        out.append(ids_of(b))
        if len(out) == k:
            break
    return out


@pytest.mark.parametrize("k", [0, 1, 5, 6, 7, 13, 45])
def test_streaming_exact_resume_in_process(k):
    make = lambda: StreamingJetDataset(three_sources(), "kin", **STREAM)  # noqa: E731
    ds = make()
    ds.set_epoch(3)
    full = [ids_of(b) for b in ds]
    ds = make()
    ds.set_epoch(3)
    head = take(ds, k)
    state = ds.state_dict()
    assert state["batches"] == len(head)
    fresh = make()
    fresh.load_state_dict(state)
    rest = [ids_of(b) for b in fresh]
    assert len(head) + len(rest) == len(full)
    for x, y in zip(head + rest, full, strict=True):
        np.testing.assert_array_equal(x, y)


def test_streaming_exact_resume_with_workers():
    def loader():
        return make_loader(three_sources(), "kin", streaming=True, num_workers=2, rank=1, world_size=2,
                           epoch=1, **STREAM)

    full = [ids_of(b) for b in loader()]
    for k in (1, 3, 4, len(full) - 2, len(full)):
        first = loader()
        head = take(first, k)
        state = first.state_dict()
        second = loader()
        second.load_state_dict(state)
        rest = [ids_of(b) for b in second]
        assert len(head) + len(rest) == len(full)
        for x, y in zip(head + rest, full, strict=True):
            np.testing.assert_array_equal(x, y)


class DroppingSource(ArraySource):
    """Like a reader opened with skip_bad: drops the jets whose id % 7 == 3 from every read."""

    skip_bad = True

    def read(self, start: int, stop: int) -> JetChunk:
        chunk = super().read(start, stop)
        keep = (np.arange(start, stop) + self.first_id) % 7 != 3
        return chunk.take(np.flatnonzero(keep))


def dropping_sources() -> list[ArraySource]:
    out = []
    for s in three_sources():
        d = DroppingSource(s.chunk)
        d.first_id = int(ids_of_chunk(s.chunk)[0])
        out.append(d)
    return out


def ids_of_chunk(c: JetChunk) -> np.ndarray:
    return (c.p4[:, 0, 0] - 1).round().astype(np.int64)


@pytest.mark.parametrize("k", [0, 4, 7, 30])
def test_streaming_with_sources_that_drop_jets(k):
    # every jet the source returns comes out once, and the resume is still exact
    make = lambda: StreamingJetDataset(dropping_sources(), "kin", **STREAM)  # noqa: E731
    full = [ids_of(b) for b in make()]
    allids = np.concatenate(full)
    assert sorted(allids.tolist()) == [i for i in range(1425) if i % 7 != 3]
    ds = make()
    head = take(ds, k)
    fresh = make()
    fresh.load_state_dict(ds.state_dict())
    rest = [ids_of(b) for b in fresh]
    for x, y in zip(head + rest, full, strict=True):
        np.testing.assert_array_equal(x, y)
    assert len(JetDataset(dropping_sources(), "kin")) == len(allids)


def test_resume_rejects_changed_settings():
    a = StreamingJetDataset(three_sources(), "kin", **STREAM)
    b = StreamingJetDataset(three_sources(), "kin", **(STREAM | {"batch_size": 16}))
    with pytest.raises(HepfmInputError, match="batch_size"):
        b.load_state_dict(a.state_dict())


def test_round_robin_share():
    assert _round_robin_share(0, [3, 3]) == ([0, 0], 0)
    assert _round_robin_share(3, [3, 3]) == ([2, 1], 1)
    assert _round_robin_share(4, [3, 3]) == ([2, 2], 0)
    assert _round_robin_share(4, [1, 5]) == ([1, 3], 1)
    assert _round_robin_share(4, [2, 4, 3]) == ([2, 1, 1], 1)
    assert _round_robin_share(5, [1, 4, 3]) == ([1, 2, 2], 1)
    assert _round_robin_share(6, [3, 4, 1]) == ([3, 2, 1], 1)
    assert _round_robin_share(9, [2, 4, 3]) == ([2, 4, 3], 0)
    assert _round_robin_share(20, [2, 4, 3]) == ([2, 4, 3], 0)


def test_rank_from_environment(monkeypatch):
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "3")
    ds = StreamingJetDataset(three_sources(), "kin", **STREAM)
    assert (ds.rank, ds.world_size) == (1, 3)
    monkeypatch.setenv("RANK", "3")
    with pytest.raises(HepfmInputError):
        StreamingJetDataset(three_sources(), "kin", **STREAM)


@pytest.mark.parametrize("streaming", [False, True])
def test_missing_fields_name_the_file(streaming):
    src = make_source(10, 0, path="top_test.h5")
    with pytest.raises(HepfmInputError) as err:
        make_loader([src], "full", streaming=streaming)
    assert "top_test.h5" in str(err.value)
    assert "'full'" in str(err.value)
    assert "charge" in str(err.value)


def test_kinpid_with_fields_and_mixed_class_names():
    fields = {k: True for k in ("charge", "isChargedHadron", "isNeutralHadron", "isPhoton", "isElectron",
                                "isMuon")}
    src = make_source(30, 0, **fields)
    batch = next(iter(make_loader([src], "kinpid", batch_size=30, shuffle=False)))
    assert batch.x.shape[2] == 13
    assert torch.all(batch.x[..., 5][batch.mask] == 1)
    other = make_source(5, 30)
    other.class_names = ("a", "b")
    with pytest.raises(HepfmInputError, match="class names"):
        JetDataset([src, other], "kin")


class RecordingSource(ArraySource):
    """Records the fields every read asks for."""

    def read(self, start, stop, fields=None, jet_fields=None):
        self.calls.append((None if fields is None else tuple(fields), jet_fields))
        return super().read(start, stop, fields, jet_fields)


class LegacySource:
    """A third-party source with the original ``read(start, stop)`` only and no ``particle_fields``."""

    format = "legacy"

    def __init__(self, inner: ArraySource) -> None:
        self.inner, self.path = inner, inner.path
        self.class_names, self.has_labels = inner.class_names, inner.has_labels

    def __len__(self) -> int:
        return len(self.inner)

    def read(self, start: int, stop: int) -> JetChunk:
        return self.inner.read(start, stop)


@pytest.mark.parametrize("streaming", [False, True])
def test_loaders_read_only_the_fields_the_feature_set_needs(streaming):
    pid = ("charge", "isChargedHadron", "isNeutralHadron", "isPhoton", "isElectron", "isMuon")
    extra = {k: True for k in (*pid, "d0val", "dzval")}
    plain = make_source(300, 0, **extra)
    rec = RecordingSource(plain.chunk)
    rec.calls = []
    legacy = LegacySource(make_source(300, 0, **extra))
    kw = {"batch_size": 64, "shuffle": False, "streaming": streaming, "chunk_size": 100}
    for name in ("kin", "kinpid"):
        rec.calls.clear()
        want = list(make_loader([plain], name, **kw))
        got = list(make_loader([rec], name, **kw))
        old = list(make_loader([legacy], name, **kw))
        need = FEATURE_SETS.get(name).requires
        assert rec.calls
        assert set(rec.calls) == {(need, ())}
        assert len(got) == len(want) == len(old)
        for a, b, c in zip(got, want, old, strict=True):
            np.testing.assert_array_equal(a.x.numpy(), b.x.numpy())
            np.testing.assert_array_equal(c.x.numpy(), b.x.numpy())
            np.testing.assert_array_equal(a.label.numpy(), b.label.numpy())
    # a missing field is reported before any reading, for a source that declares its fields
    bare = RecordingSource(make_source(50, 0, path="bare.h5").chunk, "bare.h5")
    bare.calls = []
    with pytest.raises(HepfmInputError, match=r"bare\.h5.*'kinpid'.*charge"):
        make_loader([plain, bare], "kinpid", **kw)
    assert bare.calls == []
