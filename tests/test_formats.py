"""Readers, writers, format detection and ``hepfm inspect`` on good files of every layout."""

from __future__ import annotations

import json
import pickle
import shutil
import subprocess
import sys

import awkward as ak
import h5py
import numpy as np
import pandas as pd
import pytest
import uproot
from _factories import (
    chunk_from_jets,
    jetclass_chunk,
    official_jetclass_columns,
    random_chunk,
    two_particle_jet,
)

from hepfm.data.formats import (
    FORMATS,
    WRITERS,
    HepfmH5Source,
    HepfmH5Writer,
    detect_format,
    open_source,
    open_sources,
    write_jets,
)
from hepfm.data.inspect import _IntHistogram, _Sample, inspect_files
from hepfm.data.jets import JETCLASS_CLASSES, TOPTAG_CLASSES, JetChunk
from hepfm.errors import HepfmInputError

CLI = "import sys, hepfm.cli as c; c.SUBCOMMANDS = ('inspect',); sys.exit(c.main(sys.argv[1:]))"


def run_cli(*args: str) -> subprocess.CompletedProcess:
    """``hepfm inspect`` through the real ``hepfm.cli.main`` (only the inspect subcommand loaded)."""
    return subprocess.run(
        [sys.executable, "-c", CLI, "inspect", *args], capture_output=True, text=True, timeout=120
    )


def assert_same(a: JetChunk, b: JetChunk, particles: bool = True) -> None:
    assert a.p4.dtype == np.float32
    assert b.p4.dtype == np.float32
    np.testing.assert_array_equal(a.p4, b.p4)
    np.testing.assert_array_equal(a.mask, b.mask)
    if a.label is None:
        assert b.label is None
    else:
        np.testing.assert_array_equal(a.label, b.label)
    assert tuple(a.class_names) == tuple(b.class_names)
    if particles:
        assert set(a.particles) == set(b.particles)
        for k in a.particles:
            np.testing.assert_array_equal(a.particles[k], b.particles[k], err_msg=k)


def toptag_dataframe(chunk: JetChunk, n_slots: int, labeled: bool = True) -> pd.DataFrame:
    """The official Top Tagging columns, built independently of hepfm's writer."""
    cols: dict[str, np.ndarray] = {}
    for i in range(n_slots):
        for comp, c in (("E", 3), ("PX", 0), ("PY", 1), ("PZ", 2)):
            cols[f"{comp}_{i}"] = (
                chunk.p4[:, i, c] if i < chunk.max_particles else np.zeros(len(chunk), np.float32)
            )
    n = len(chunk)
    if labeled:
        cols["truthE"] = np.full(n, 700.0)
        cols["truthPX"] = np.arange(n, dtype=np.float64)
        cols["truthPY"] = np.zeros(n)
        cols["truthPZ"] = np.zeros(n)
    cols["ttv"] = np.zeros(n, np.int64)
    if labeled:
        cols["is_signal_new"] = chunk.label.astype(np.int64)
    return pd.DataFrame(cols)


# -- registries --------------------------------------------------------------------------------
def test_registries_names():
    assert set(WRITERS.names()) == {"hepfm", "toptag-h5", "jetclass-root", "jetclass-parquet", "nanoaod"}
    assert set(FORMATS.names()) == {"hepfm", "toptag-h5", "jetclass-root", "jetclass-parquet", "nanoaod",
                                    "aspen-h5", "nanoaod-events"}
    with pytest.raises(HepfmInputError, match="unknown output format"):
        write_jets("x.h5", [], "csv", {})


# -- hepfm HDF5 --------------------------------------------------------------------------------
def test_hepfm_round_trip_chunked(tmp_path):
    c = random_chunk(157, 30, seed=5, particle_fields=True)
    c.jets = {
        "n_const": c.n_particles.astype(np.int32),
        "vec": np.arange(157 * 2, dtype=np.float64).reshape(157, 2),
    }
    path = tmp_path / "a.h5"
    pieces = [c.take(slice(0, 10)), c.take(slice(10, 90)), c.take(slice(90, 157))]
    n = write_jets(path, pieces, "hepfm", {"seed": 7, "generator": {"pythia": "8.312"}}, chunk_jets=16)
    assert n == 157
    assert detect_format(path) == "hepfm"
    src = open_source(path)
    assert isinstance(src, HepfmH5Source)
    assert len(src) == 157
    assert src.has_labels
    assert src.class_names == TOPTAG_CLASSES
    assert src.metadata == {"seed": 7, "generator": {"pythia": "8.312"}}
    back = src.read(0, 157)
    assert_same(c, back)
    assert back.particles["pid"].dtype == np.int32
    np.testing.assert_array_equal(back.jets["n_const"], c.jets["n_const"])
    np.testing.assert_array_equal(back.jets["vec"], c.jets["vec"])
    # a middle range reads only those rows
    mid = src.read(37, 101)
    assert_same(c.take(slice(37, 101)), mid)
    # past the end is clipped
    assert len(src.read(150, 400)) == 7
    with h5py.File(path) as f:
        assert f.attrs["hepfm_schema"] == 1
        assert f.attrs["hepfm_format"] == "jets"
        assert json.loads(f.attrs["class_names"]) == ["QCD", "Top"]
        assert bool(f.attrs["labeled"])
        assert f.attrs["n_jets"] == 157
        assert json.loads(f.attrs["class_counts"]) == {
            "QCD": int((c.label == 0).sum()),
            "Top": int((c.label == 1).sum()),
        }
        ds = f["p4"]
        assert ds.shape == (157, 30, 4)
        assert ds.dtype == np.float32
        # the default compression: gzip level 1 without shuffle (measured: see docs/data.md), checksummed
        assert ds.chunks == (16, 30, 4)
        assert ds.compression == "gzip"
        assert ds.fletcher32
        assert ds.compression_opts == 1
        assert not ds.shuffle
        assert f.attrs["compression"] == "gzip-1"
        assert f["n_particles"].dtype == np.int16
        np.testing.assert_array_equal(f["n_particles"][:], c.n_particles)
        assert f["label"].dtype == np.int64
        assert f["particles/pid"].dtype == np.int32
        assert f["particles/charge"].dtype == np.float32
    # no temporary files left behind
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.h5"]


def test_hepfm_unlabeled_padding_truncation(tmp_path):
    c = random_chunk(20, 12, class_names=None, seed=2, mean_particles=8)
    path = tmp_path / "u.h5"
    with HepfmH5Writer(path, max_particles=16, class_names=(), labeled=False, metadata={}) as w:
        w.append(c)
    src = open_source(path)
    assert not src.has_labels
    assert src.read(0, 1).label is None
    back = src.read(0, 20)
    assert back.max_particles == 16
    assert_same(c, back.truncate(12))
    assert not back.mask[:, 12:].any()
    # max_particles on the reader keeps the leading (hardest) slots
    short = open_source(path, max_particles=5).read(0, 20)
    assert short.max_particles == 5
    np.testing.assert_array_equal(short.p4, c.p4[:, :5])


def test_hepfm_writer_is_atomic(tmp_path):
    path = tmp_path / "keep.h5"
    write_jets(path, [random_chunk(5, 8, seed=1)], "hepfm", {"v": 1})
    w = HepfmH5Writer(path, max_particles=8, class_names=TOPTAG_CLASSES, labeled=True, metadata={"v": 2})
    with pytest.raises(RuntimeError, match="boom"), w:  # noqa: PT012 (the error must come from inside the writer)
        w.append(random_chunk(5, 8, seed=2))
        raise RuntimeError("boom")
    assert open_source(path).metadata == {"v": 1}  # the old file is untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.h5"]


def test_hepfm_auto_slots_refuses_silent_truncation(tmp_path):
    with pytest.raises(ValueError, match="more than 8 particles"):
        write_jets(
            tmp_path / "x.h5",
            [random_chunk(5, 8), random_chunk(5, 20, mean_particles=15, min_particles=10)],
            "hepfm",
            {},
        )
    assert list(tmp_path.iterdir()) == []
    n = write_jets(
        tmp_path / "y.h5",
        [random_chunk(5, 8), random_chunk(5, 20, mean_particles=15, min_particles=10)],
        "hepfm",
        {},
        max_particles=8,
    )
    assert n == 10
    assert open_source(tmp_path / "y.h5").read(0, 10).max_particles == 8


def test_reader_pickles_for_workers(tmp_path):
    path = tmp_path / "a.h5"
    c = random_chunk(30, 10, seed=4)
    write_jets(path, [c], "hepfm", {})
    src = open_source(path)
    src.read(0, 3)
    clone = pickle.loads(pickle.dumps(src))
    assert_same(c.take(slice(5, 9)), clone.read(5, 9))


# -- Top Tagging -------------------------------------------------------------------------------
@pytest.mark.parametrize("layout", ["fixed", "table"])
def test_toptag_read_pandas_layouts(tmp_path, layout):
    c = random_chunk(40, 23, seed=11)
    df = toptag_dataframe(c, 23)
    path = tmp_path / "top.h5"
    df.to_hdf(path, key="table", mode="w", format=layout)
    assert detect_format(path) == "toptag-h5"
    src = open_source(path)
    assert src.format == "toptag-h5"
    assert src.layout == layout
    assert len(src) == 40
    assert src.file_max_particles == 23  # inferred from the columns, not 200
    back = src.read(0, 40)
    assert_same(c, back)
    np.testing.assert_array_equal(back.jets["truthPX"], np.arange(40.0))
    np.testing.assert_array_equal(back.jets["ttv"], 0)
    assert src.read(10, 25).label.tolist() == c.label[10:25].tolist()


def test_toptag_fixed_blocks_mapped_by_name(tmp_path):
    """Blocks are grouped by dtype in an order that is not the column order: map by blockN_items."""
    c = random_chunk(25, 6, seed=3)
    df = toptag_dataframe(c, 6)
    # put the label first and make some momenta float64 so they sit in another block
    df = df[["is_signal_new"] + [k for k in df.columns if k != "is_signal_new"]]
    for k in ("E_2", "PX_4", "PZ_0"):
        df[k] = df[k].astype(np.float64)
    path = tmp_path / "mixed.h5"
    df.to_hdf(path, key="table", mode="w")
    with h5py.File(path) as f:
        items = [
            [x.decode() for x in f[f"table/block{b}_items"][()]] for b in range(f["table"].attrs["nblocks"])
        ]
        columns = [x.decode() for x in f["table/axis0"][()]]
    assert columns[0] == "is_signal_new"
    assert [
        c for block in items for c in block
    ] != columns  # the test means something: blocks are not in column order
    assert any("PZ_0" in it and "PX_0" not in it for it in items)
    back = open_source(path).read(0, 25)
    assert_same(c, back)


def test_toptag_unsorted_particles_are_sorted(tmp_path):
    c = random_chunk(6, 5, seed=8, min_particles=3)
    df = toptag_dataframe(c, 5)
    swapped = df.copy()
    for comp in ("E", "PX", "PY", "PZ"):  # jet 2: swap the two hardest particles in the file
        swapped.loc[2, f"{comp}_0"], swapped.loc[2, f"{comp}_1"] = (
            df.loc[2, f"{comp}_1"],
            df.loc[2, f"{comp}_0"],
        )
    path = tmp_path / "unsorted.h5"
    swapped.to_hdf(path, key="table", mode="w")
    assert_same(c, open_source(path).read(0, 6))


def test_toptag_writer_readable_by_pandas(tmp_path):
    c = random_chunk(50, 30, seed=6)
    c.jets = {"ttv": np.ones(50, np.int64)}
    path = tmp_path / "ours.h5"
    assert write_jets(path, [c.take(slice(0, 20)), c.take(slice(20, 50))], "toptag-h5", {"seed": 3}) == 50
    df = pd.read_hdf(path, "table")
    expected = [f"{comp}_{i}" for i in range(200) for comp in ("E", "PX", "PY", "PZ")]
    expected += ["truthE", "truthPX", "truthPY", "truthPZ", "ttv", "is_signal_new"]
    assert list(df.columns) == expected
    assert df["is_signal_new"].dtype == np.int64
    assert df["ttv"].dtype == np.int64
    assert df["E_0"].dtype == np.float32
    np.testing.assert_array_equal(df["is_signal_new"].to_numpy(), c.label)
    np.testing.assert_array_equal(df["ttv"].to_numpy(), 1)
    np.testing.assert_array_equal(df["PX_3"].to_numpy(), c.p4[:, 3, 0])
    np.testing.assert_array_equal(df["E_0"].to_numpy(), c.p4[:, 0, 3])
    assert (df[[f"E_{i}" for i in range(30, 200)]].to_numpy() == 0).all()
    src = open_source(path)
    assert src.metadata == {"seed": 3}
    assert_same(c, src.read(0, 50).truncate(30))


def test_toptag_writer_unlabeled_and_slots(tmp_path):
    c = random_chunk(10, 12, class_names=None, seed=1)
    path = tmp_path / "u.h5"
    write_jets(path, [c], "toptag-h5", {}, n_slots=12)
    df = pd.read_hdf(path, "table")
    assert "is_signal_new" not in df.columns
    assert "truthE" not in df.columns
    assert list(df.columns)[-1] == "ttv"
    assert len(df.columns) == 4 * 12 + 1
    src = open_source(path)
    assert not src.has_labels
    assert src.file_max_particles == 12
    assert_same(c, src.read(0, 10))


# -- JetClass ROOT -----------------------------------------------------------------------------
def official_like_jetclass(path, chunk: JetChunk, label_types: bool = True) -> None:
    """A JetClass file written with plain uproot: separate jagged branches, mixed label types."""
    data = official_jetclass_columns(chunk, label_types)
    data["aux_genpart_pt"] = np.ones(len(chunk), np.float32)
    with uproot.recreate(path) as f:
        types = {k: (v.type if isinstance(v, ak.Array) else v.dtype) for k, v in data.items()}
        t = f.mktree("tree", types)
        t.extend(data)
        f["notes"] = "a foreign key"


def test_jetclass_read_official_like(tmp_path):
    c = jetclass_chunk(60, 40, seed=3)
    path = tmp_path / "jc.root"
    official_like_jetclass(path, c)
    assert detect_format(path) == "jetclass-root"
    src = open_source(path, max_particles=40)
    assert src.has_labels
    assert src.class_names == JETCLASS_CLASSES
    assert len(src) == 60
    back = src.read(0, 60)
    c.particles.pop("pid")
    assert_same(c, back)
    assert back.particles["isPhoton"].dtype == np.float32
    np.testing.assert_array_equal(back.jets["jet_sdmass"], np.linspace(10, 200, 60).astype(np.float32))
    assert "aux_genpart_pt" not in back.jets
    assert_same(c.take(slice(17, 44)), src.read(17, 44))
    # default is 128 slots as in ParT
    assert open_source(path).read(0, 2).max_particles == 128


def test_jetclass_unsorted_clipped_keeps_hardest(tmp_path):
    c = jetclass_chunk(8, 30, seed=9, mean_particles=25, min_particles=20)
    rev = JetChunk(  # reverse the particle order of every jet inside its real slots
        p4=c.p4.copy(), mask=c.mask, label=c.label, class_names=c.class_names, particles={}
    )
    for i, k in enumerate(c.n_particles):
        rev.p4[i, :k] = c.p4[i, :k][::-1]
    path = tmp_path / "rev.root"
    official_like_jetclass(path, rev)
    back = open_source(path, max_particles=10).read(0, 8)
    np.testing.assert_array_equal(back.p4, c.p4[:, :10])
    assert back.mask.all()


def test_jetclass_writer_readable_by_uproot(tmp_path):
    c = jetclass_chunk(70, 25, seed=4)
    c.jets = {"jet_sdmass": np.full(70, 80.0, np.float32), "n_const": c.n_particles.astype(np.int32)}
    path = tmp_path / "ours.root"
    n = write_jets(
        path, [c.take(slice(0, 33)), c.take(slice(33, 70))], "jetclass-root", {"seed": 9}, basket_jets=20
    )
    assert n == 70
    f = uproot.open(path)
    tree = f["tree"]
    assert f.classname_of("tree") == "TTree"
    names = set(tree.keys())
    official = {
        "part_px",
        "part_py",
        "part_pz",
        "part_energy",
        "part_deta",
        "part_dphi",
        "part_d0val",
        "part_d0err",
        "part_dzval",
        "part_dzerr",
        "part_charge",
        "part_isChargedHadron",
        "part_isNeutralHadron",
        "part_isPhoton",
        "part_isElectron",
        "part_isMuon",
        *(f"label_{k}" for k in JETCLASS_CLASSES),
        "jet_pt",
        "jet_eta",
        "jet_phi",
        "jet_energy",
        "jet_nparticles",
        "jet_sdmass",
    }
    assert official <= names
    a = tree.arrays()
    assert len(a) == 70
    np.testing.assert_array_equal(ak.to_numpy(ak.num(a["part_px"])), c.n_particles)
    np.testing.assert_array_equal(ak.to_numpy(ak.flatten(a["part_energy"])), c.p4[..., 3][c.mask])
    np.testing.assert_array_equal(
        ak.to_numpy(ak.flatten(a["part_isPhoton"])), c.particles["isPhoton"][c.mask]
    )
    assert a["part_isPhoton"].type.content.content.primitive == "int32"
    assert a["part_px"].type.content.content.primitive == "float32"
    onehot = np.stack([ak.to_numpy(a[f"label_{k}"]) for k in JETCLASS_CLASSES], axis=1)
    assert onehot.dtype == np.bool_
    np.testing.assert_array_equal(onehot.argmax(1), c.label)
    assert (onehot.sum(1) == 1).all()
    kin = c.jet_kinematics()
    np.testing.assert_allclose(ak.to_numpy(a["jet_pt"]), kin["pt"], rtol=1e-6)
    np.testing.assert_allclose(ak.to_numpy(a["jet_energy"]), kin["energy"], rtol=1e-6)
    np.testing.assert_array_equal(ak.to_numpy(a["jet_nparticles"]), c.n_particles)
    np.testing.assert_array_equal(ak.to_numpy(a["jet_sdmass"]), 80.0)
    # part_deta / part_dphi relative to the jet axis, deta flipped for negative-eta jets
    i = int(np.argmin(kin["eta"]))
    assert kin["eta"][i] < 0
    px, py, pz = (c.p4[i, : c.n_particles[i], k].astype(np.float64) for k in range(3))
    eta = np.arcsinh(pz / np.hypot(px, py))
    phi = np.arctan2(py, px)
    np.testing.assert_allclose(ak.to_numpy(a["part_deta"][i]), -(eta - kin["eta"][i]), atol=1e-5)
    dphi = (phi - kin["phi"][i] + np.pi) % (2 * np.pi) - np.pi
    np.testing.assert_allclose(ak.to_numpy(a["part_dphi"][i]), dphi, atol=1e-5)
    assert (np.abs(ak.to_numpy(ak.flatten(a["part_dphi"]))) < 1.5).all()
    meta = json.loads(str(f["hepfm_metadata"]))
    assert meta["seed"] == 9
    assert meta["zero_filled_branches"] == []
    # and back through our reader, including the non-jet_ field
    back = open_source(path, max_particles=25).read(0, 70)
    assert_same(c, back)
    np.testing.assert_array_equal(back.jets["n_const"], c.n_particles)
    np.testing.assert_array_equal(back.jets["jet_sdmass"], 80.0)


def test_jetclass_writer_zero_fills_missing_fields(tmp_path):
    c = random_chunk(10, 15, class_names=None, seed=2)
    path = tmp_path / "u.root"
    write_jets(path, [c], "jetclass-root", {})
    f = uproot.open(path)
    assert not any(k.startswith("label_") for k in f["tree"].keys())  # noqa: SIM118 (uproot: names, not branches)
    meta = json.loads(str(f["hepfm_metadata"]))
    assert "part_d0val" in meta["zero_filled_branches"]
    assert "part_isMuon" in meta["zero_filled_branches"]
    assert (ak.to_numpy(ak.flatten(f["tree"]["part_charge"].array())) == 0).all()
    src = open_source(path, max_particles=15)
    assert not src.has_labels
    assert_same(c, src.read(0, 10), particles=False)


def test_jetclass_layout_with_other_classes(tmp_path):
    c = random_chunk(30, 10, seed=5)  # QCD / Top labels
    path = tmp_path / "top.root"
    write_jets(path, [c], "jetclass-root", {})
    assert {"label_QCD", "label_Top"} <= set(uproot.open(path)["tree"].keys())
    src = open_source(path, max_particles=10)
    assert src.class_names == TOPTAG_CLASSES
    assert_same(c, src.read(0, 30), particles=False)


# -- field selection ---------------------------------------------------------------------------
def _corrupt_bytes(path, offset: int, width: int) -> None:
    b = bytearray(path.read_bytes())
    b[offset : offset + width] = np.random.default_rng(3).integers(0, 256, width, dtype=np.uint8).tobytes()
    path.write_bytes(bytes(b))


def test_read_fields_selects_particle_and_jet_fields(tmp_path):
    c = random_chunk(90, 20, seed=7, particle_fields=True)
    c.jets = {"n_const": c.n_particles.astype(np.int32), "pthat": np.linspace(1, 2, 90).astype(np.float32)}
    paths = {"hepfm": tmp_path / "a.h5", "jetclass-root": tmp_path / "a.root"}
    write_jets(paths["hepfm"], [c], "hepfm", {}, chunk_jets=32)
    write_jets(paths["jetclass-root"], [c], "jetclass-root", {}, basket_jets=32)
    for fmt, path in paths.items():
        src = open_source(path, max_particles=20)
        full = src.read(10, 80)
        assert set(src.particle_fields) >= {"charge", "isPhoton", "d0val"}
        some = src.read(10, 80, fields=["charge", "d0val", "no_such_field"], jet_fields=["n_const"])
        assert set(some.particles) == {"charge", "d0val"}  # unknown names are ignored
        np.testing.assert_array_equal(some.particles["charge"], full.particles["charge"])
        np.testing.assert_array_equal(some.particles["d0val"], full.particles["d0val"])
        assert set(some.jets) == {"n_const"}, fmt
        np.testing.assert_array_equal(some.jets["n_const"], c.n_particles[10:80])
        kin = src.read(10, 80, fields=(), jet_fields=())
        assert kin.particles == {}
        assert kin.jets == {}
        assert_same(full, kin, particles=False)
        # positional fields work too, and None means all
        assert set(src.read(0, 5, ["isPhoton"]).particles) == {"isPhoton"}
        assert set(src.read(0, 5, None).particles) == set(full.particles)
    top = tmp_path / "top.h5"
    toptag_dataframe(random_chunk(30, 10, seed=1), 10).to_hdf(top, key="table", mode="w")
    src = open_source(top)
    assert src.particle_fields == ()
    assert set(src.read(0, 30).jets) == {"truthE", "truthPX", "truthPY", "truthPZ", "ttv"}
    assert set(src.read(0, 30, fields=(), jet_fields=["ttv"]).jets) == {"ttv"}
    np.testing.assert_array_equal(src.read(0, 30, jet_fields=()).p4, src.read(0, 30).p4)


def test_unread_hepfm_datasets_are_not_decompressed(tmp_path):
    """A kin read touches p4, n_particles and label only: garbage in another dataset does not matter."""
    path = tmp_path / "a.h5"
    c = random_chunk(300, 16, seed=3, particle_fields=True)
    write_jets(path, [c], "hepfm", {}, chunk_jets=100)
    with h5py.File(path) as f:
        info = f["particles/charge"].id.get_chunk_info(1)
    _corrupt_bytes(path, info.byte_offset, info.size)
    src = open_source(path)
    assert_same(c, src.read(0, 300, fields=("isPhoton",), jet_fields=()), particles=False)
    with pytest.raises(HepfmInputError, match="truncated or corrupted"):
        src.read(0, 300)
    with pytest.raises(HepfmInputError, match="truncated or corrupted"):
        src.read(150, 200, fields=["charge"])


def test_unread_jetclass_branches_are_not_decompressed(tmp_path):
    path = tmp_path / "a.root"
    c = jetclass_chunk(200, 20, seed=5)
    write_jets(path, [c], "jetclass-root", {}, basket_jets=50)
    seek = int(uproot.open(path)["tree"]["part_charge"].member("fBasketSeek")[1])
    _corrupt_bytes(path, seek + 100, 200)
    src = open_source(path, max_particles=20)
    back = src.read(0, 200, fields=("isPhoton",), jet_fields=())
    assert_same(c, back, particles=False)
    np.testing.assert_array_equal(back.particles["isPhoton"], c.particles["isPhoton"])
    with pytest.raises(HepfmInputError, match="truncated or corrupted"):
        open_source(path, max_particles=20).read(0, 200)


def test_jetclass_baskets_and_range_cache(tmp_path, monkeypatch):
    """The writer cuts baskets of basket_jets whatever the chunk sizes; the reader serves reads inside
    a decoded basket range from its cache, and reads the request alone when the range is too big."""
    import hepfm.data.formats.jetclass_root as jr

    c = jetclass_chunk(130, 20, seed=8)
    path = tmp_path / "a.root"
    write_jets(path, [c.take(slice(0, 33)), c.take(slice(33, 130))], "jetclass-root", {}, basket_jets=40)
    tree = uproot.open(path)["tree"]
    assert tree.common_entry_offsets() == [0, 40, 80, 120, 130]
    src = open_source(path, max_particles=20)
    for a, b in ((45, 50), (50, 78), (40, 80), (79, 121), (0, 130), (125, 130)):
        assert_same(c.take(slice(a, b)), src.read(a, b))
        assert src._cache is not None
        assert src._cache.lo <= a
        assert b <= src._cache.hi
    assert src._cache.nbytes < 200 * 130 * 10
    monkeypatch.setattr(jr, "CACHE_BYTES", 1)  # nothing fits: each read decodes its own range only
    small = open_source(path, max_particles=20)
    for a, b in ((45, 50), (0, 130), (7, 93)):
        assert_same(c.take(slice(a, b)), small.read(a, b))
        assert small._cache is None
    clone = pickle.loads(pickle.dumps(src))  # the cache is not pickled to workers
    assert clone._cache is None
    assert_same(c.take(slice(3, 9)), clone.read(3, 9))


# -- hepfm compression -------------------------------------------------------------------------
@pytest.mark.parametrize("spec", ["gzip-1", "gzip-4+shuffle", "gzip-9", "lzf", "lzf+shuffle", "none"])
def test_hepfm_compressions_round_trip(tmp_path, spec):
    c = random_chunk(70, 24, seed=9, particle_fields=True)
    path = tmp_path / "c.h5"
    write_jets(path, [c], "hepfm", {}, compression=spec, chunk_jets=32)
    with h5py.File(path) as f:
        assert f.attrs["compression"] == spec
        for name in ("p4", "particles/charge", "label"):
            ds = f[name]
            assert ds.fletcher32
            assert ds.chunks[0] == 32
            assert ds.shuffle == spec.endswith("+shuffle")
            assert ds.compression == {"g": "gzip", "l": "lzf", "n": None}[spec[0]]
    src = open_source(path)
    assert src.compression == spec
    assert_same(c, src.read(0, 70))


def test_hepfm_compression_default_legacy_and_errors(tmp_path):
    from hepfm.data.formats.hepfm_h5 import DEFAULT_CHUNK_JETS, DEFAULT_COMPRESSION, compression_options

    assert DEFAULT_COMPRESSION == "gzip-1"
    assert DEFAULT_CHUNK_JETS == 1024
    assert 8192 % DEFAULT_CHUNK_JETS == 0  # the loaders' reads never split an HDF5 chunk
    c = random_chunk(2100, 8, seed=2)
    write_jets(tmp_path / "d.h5", [c], "hepfm", {})
    with h5py.File(tmp_path / "d.h5") as f:
        assert f["p4"].chunks == (1024, 8, 4)
        assert f["p4"].compression_opts == 1
        assert not f["p4"].shuffle
    # the former writer option still works and means gzip + shuffle
    with HepfmH5Writer(tmp_path / "old.h5", max_particles=8, class_names=TOPTAG_CLASSES, labeled=True,
                       compression_level=4) as w:
        w.append(c)
    # a file written before the attribute existed: the reader describes the datasets' filters
    with h5py.File(tmp_path / "old.h5", "a") as f:
        assert f.attrs["compression"] == "gzip-4+shuffle"
        del f.attrs["compression"]
    old = open_source(tmp_path / "old.h5")
    assert old.compression == "gzip-4+shuffle"
    assert_same(c, old.read(0, 2100))
    assert compression_options("gzip-4+shuffle") == {
        "compression": "gzip", "compression_opts": 4, "shuffle": True
    }
    assert compression_options("none") == {"shuffle": False}
    for bad in ("zstd", "gzip", "gzip-10", "lzf+", "shuffle"):
        with pytest.raises(ValueError, match="unknown compression"):
            compression_options(bad)
    with pytest.raises(ValueError, match="unknown compression"):
        write_jets(tmp_path / "e.h5", [c], "hepfm", {}, compression="brotli")
    assert not (tmp_path / "e.h5").exists()


# -- detection, globs, conversion --------------------------------------------------------------
def test_detection_by_content_not_extension(tmp_path):
    write_jets(tmp_path / "a.root", [random_chunk(5, 8)], "hepfm", {})
    write_jets(tmp_path / "b.root", [random_chunk(5, 8)], "toptag-h5", {})
    write_jets(tmp_path / "c.h5", [jetclass_chunk(5, 8)], "jetclass-root", {})
    shutil.copy(tmp_path / "c.h5", tmp_path / "c_noext")
    assert detect_format(tmp_path / "a.root") == "hepfm"
    assert detect_format(tmp_path / "b.root") == "toptag-h5"
    assert detect_format(tmp_path / "c.h5") == "jetclass-root"
    assert detect_format(tmp_path / "c_noext") == "jetclass-root"
    assert open_source(tmp_path / "c.h5").format == "jetclass-root"
    # HDF5 with a user block before the signature is still HDF5
    with h5py.File(tmp_path / "ub.dat", "w", userblock_size=512) as f:
        f.create_dataset("x", data=[1])
    with pytest.raises(HepfmInputError, match="no known jet layout"):
        detect_format(tmp_path / "ub.dat")


def test_open_sources_glob(tmp_path):
    for i in (2, 0, 1):
        write_jets(tmp_path / f"part{i}.h5", [random_chunk(3 + i, 8, seed=i)], "hepfm", {})
    srcs = open_sources([str(tmp_path / "part*.h5")])
    assert [s.path.name for s in srcs] == ["part0.h5", "part1.h5", "part2.h5"]
    assert [len(s) for s in srcs] == [3, 4, 5]
    srcs = open_sources([str(tmp_path / "part1.h5"), str(tmp_path / "part?.h5")])  # duplicates dropped
    assert [s.path.name for s in srcs] == ["part1.h5", "part0.h5", "part2.h5"]
    with pytest.raises(HepfmInputError, match="no file matches"):
        open_sources([str(tmp_path / "nothing*.h5")])


def test_conversion_chain(tmp_path):
    """Top layout -> hepfm -> JetClass ROOT -> hepfm keeps the momenta, mask and labels."""
    c = random_chunk(40, 20, seed=12)
    write_jets(tmp_path / "top.h5", [c], "toptag-h5", {})
    top = open_source(tmp_path / "top.h5", max_particles=20)
    write_jets(tmp_path / "a.h5", top.iter_chunks(15), "hepfm", {"from": "top"})
    hep = open_source(tmp_path / "a.h5")
    assert_same(c, hep.read(0, 40), particles=False)
    np.testing.assert_array_equal(hep.read(0, 40).jets["truthE"], 0)
    unl = JetChunk(p4=c.p4, mask=c.mask)
    write_jets(tmp_path / "b.root", [unl], "jetclass-root", {})
    write_jets(
        tmp_path / "c.h5", open_source(tmp_path / "b.root", max_particles=20).iter_chunks(7), "hepfm", {}
    )
    assert_same(unl, open_source(tmp_path / "c.h5").read(0, 40), particles=False)


# -- inspect -----------------------------------------------------------------------------------
def known_jets():
    """8 jets of two massless particles each with known invariant masses, labels 0/1."""
    masses = [50.0, 80.0, 100.0, 120.0, 172.5, 30.0, 90.0, 140.0]
    labels = [0, 0, 0, 1, 1, 1, 1, 0]
    jets = [
        two_particle_jet(m, pt1=300.0 + 10 * i, pt2=200.0, eta=0.1 * i - 0.3) for i, m in enumerate(masses)
    ]
    return masses, labels, jets


@pytest.mark.parametrize("fmt", ["hepfm", "toptag-h5", "jetclass-root"])
def test_inspect_hand_computed(tmp_path, fmt):
    masses, labels, jets = known_jets()
    chunk = chunk_from_jets(jets, 4, labels, TOPTAG_CLASSES if fmt != "jetclass-root" else JETCLASS_CLASSES)
    path = tmp_path / f"known.{fmt}"
    write_jets(path, [chunk], fmt, {"note": "hand"})
    s = inspect_files([str(path)])
    f = s["files"][0]
    assert f["format"] == fmt
    assert f["n_jets"] == 8
    assert f["n_good"] == 8
    assert f["n_bad"] == 0
    assert f["labeled"]
    cls = f["class_names"]
    assert f["class_counts"][cls[0]] == 4
    assert f["class_counts"][cls[1]] == 4
    for k, name in ((0, cls[0]), (1, cls[1])):
        ms = np.array([m for m, lab in zip(masses, labels, strict=True) if lab == k])
        q = f["jet_mass"][name]
        np.testing.assert_allclose(
            [q["q10"], q["q50"], q["q90"]], np.quantile(ms, [0.1, 0.5, 0.9]), rtol=2e-4
        )
    np.testing.assert_allclose(f["jet_mass"]["all"]["q50"], np.median(masses), rtol=2e-4)
    pts = []
    for i in range(8):
        pts.append(np.hypot(*jets[i][:, :2].sum(0)))
    np.testing.assert_allclose(
        [f["jet_pt"][k] for k in ("q10", "q50", "q90")], np.quantile(pts, [0.1, 0.5, 0.9]), rtol=1e-5
    )
    assert f["constituents"] == {"mean": 2.0, "min": 2.0, "q10": 2.0, "q50": 2.0, "q90": 2.0, "max": 2.0}
    assert f["metadata"]["note"] == "hand"
    assert f["quantiles_exact"]


def test_inspect_multiplicity_and_totals(tmp_path):
    counts = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]
    jets = []
    for k in counts:
        pt = 100.0 * np.arange(k, 0, -1)
        jets.append(np.stack([pt, np.zeros(k), np.zeros(k), pt], axis=1))
    chunk = chunk_from_jets(jets, 10)
    write_jets(tmp_path / "m1.h5", [chunk], "hepfm", {})
    write_jets(tmp_path / "m2.h5", [chunk.take(slice(0, 4))], "hepfm", {})
    s = inspect_files([str(tmp_path / "m*.h5")], chunk_size=3)
    f1, _f2 = s["files"]
    c = f1["constituents"]
    assert c["mean"] == 5.5
    assert c["min"] == 1
    assert c["max"] == 10
    np.testing.assert_allclose([c["q10"], c["q50"], c["q90"]], np.quantile(counts, [0.1, 0.5, 0.9]))
    allc = counts + counts[:4]
    t = s["total"]
    assert t["n_files"] == 2
    assert t["n_jets"] == 14
    assert t["formats"] == {"hepfm": 2}
    np.testing.assert_allclose(
        [t["constituents"][k] for k in ("mean", "q10", "q50", "q90")],
        [np.mean(allc), *np.quantile(allc, [0.1, 0.5, 0.9])],
    )
    assert not f1["labeled"]
    assert set(f1["jet_mass"]) == {"all"}
    np.testing.assert_allclose(f1["jet_mass"]["all"]["q50"], 0.0, atol=1e-2)  # collinear massless
    s2 = inspect_files([str(tmp_path / "m1.h5")], max_jets=4)
    assert s2["files"][0]["n_read"] == 4
    assert s2["files"][0]["constituents"]["max"] == 4


def test_int_histogram_and_sample_match_numpy():
    rng = np.random.default_rng(0)
    x = rng.poisson(40, 5001)
    h = _IntHistogram()
    for part in np.array_split(x, 7):
        h.add(part)
    s = h.summary()
    np.testing.assert_allclose([s["q10"], s["q50"], s["q90"]], np.quantile(x, [0.1, 0.5, 0.9]))
    assert s["min"] == x.min()
    assert s["max"] == x.max()
    assert s["mean"] == pytest.approx(x.mean())
    y = rng.normal(size=20_000)
    exact = _Sample(cap=30_000)
    approx = _Sample(cap=5_000)
    for part in np.array_split(y, 9):
        exact.add(part)
        approx.add(part)
    assert exact.exact
    assert not approx.exact
    assert approx.values().size == 5_000
    assert exact.quantiles()["q50"] == pytest.approx(np.median(y))
    assert approx.quantiles()["q90"] == pytest.approx(np.quantile(y, 0.9), abs=0.08)


def test_cli_inspect_text_and_json(tmp_path):
    write_jets(tmp_path / "a.h5", [random_chunk(30, 10, seed=1)], "hepfm", {"seed": 42})
    write_jets(tmp_path / "b.dat", [jetclass_chunk(20, 10)], "jetclass-root", {})
    r = run_cli(str(tmp_path / "a.h5"), str(tmp_path / "b.dat"))
    assert r.returncode == 0, r.stderr
    assert "hepfm" in r.stdout
    assert "jetclass-root" in r.stdout
    assert '"seed": 42' in r.stdout
    assert "total over 2 files" in r.stdout
    r = run_cli(str(tmp_path / "*.h5"), "--json", "--max-jets", "7")
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout)
    assert s["files"][0]["n_read"] == 7
    assert s["files"][0]["n_jets"] == 30
    assert s["files"][0]["metadata"] == {"seed": 42}


def test_cli_entry_point_lists_inspect():
    r = subprocess.run(
        [sys.executable, "-m", "hepfm.cli", "inspect", "--help"], capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 0, r.stderr
    assert "--skip-bad" in r.stdout
    assert "--max-jets" in r.stdout
