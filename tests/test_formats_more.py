"""The JetClass layout in more containers: a ROOT RNTuple (written by uproot itself) and Parquet."""

from __future__ import annotations

import json
import pickle
import sys

import awkward as ak
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import uproot
from _factories import jetclass_chunk, official_jetclass_columns, random_chunk

from hepfm.cli import main
from hepfm.data.formats import FORMATS, WRITERS, detect_format, open_source, write_jets
from hepfm.data.jets import JETCLASS_CLASSES, TOPTAG_CLASSES, JetChunk
from hepfm.errors import HepfmInputError


def write_rntuple(path, chunk: JetChunk, cluster: int) -> None:
    """The JetClass layout as an RNTuple ``tree``, one cluster per ``cluster`` jets."""
    full = official_jetclass_columns(chunk)
    with uproot.recreate(path) as f:
        nt = None
        for a in range(0, len(chunk), cluster):
            data = {k: v[a : a + cluster] for k, v in full.items()}
            if nt is None:
                nt = f.mkrntuple("tree", data)
            else:
                nt.extend(data)
        f["hepfm_metadata"] = json.dumps({"origin": "rntuple test"})


def write_parquet(path, chunk: JetChunk, row_group: int | None = None, drop: tuple[str, ...] = ()) -> None:
    """The JetClass columns written with plain pyarrow (``list<float>`` particle columns)."""
    cols = {}
    for k, v in official_jetclass_columns(chunk).items():
        if k in drop:
            continue
        cols[k] = ak.to_arrow(v, extensionarray=False) if isinstance(v, ak.Array) else pa.array(v)
    pq.write_table(pa.table(cols), path, row_group_size=row_group)


def assert_same_chunks(a: JetChunk, b: JetChunk) -> None:
    np.testing.assert_array_equal(a.mask, b.mask)
    np.testing.assert_array_equal(a.p4, b.p4)
    np.testing.assert_array_equal(a.label, b.label)
    assert a.class_names == b.class_names
    assert set(a.particles) == set(b.particles)
    for k in a.particles:
        np.testing.assert_array_equal(a.particles[k], b.particles[k], err_msg=k)
    for k in set(a.jets) & set(b.jets):
        np.testing.assert_array_equal(a.jets[k], b.jets[k], err_msg=k)


def root_reference(tmp_path, chunk: JetChunk) -> JetChunk:
    """``chunk`` through the official-like TTree and the JetClass ROOT reader."""
    path = tmp_path / "ref.root"
    with uproot.recreate(path) as f:
        data = official_jetclass_columns(chunk)
        f.mktree("tree", {k: (v.type if isinstance(v, ak.Array) else v.dtype) for k, v in data.items()})
        f["tree"].extend(data)
    src = open_source(path, max_particles=40)
    assert src.format == "jetclass-root"
    return src.read(0, len(src))


def test_registries():
    assert "jetclass-parquet" in FORMATS.names()
    assert "jetclass-parquet" in WRITERS.names()


# -- RNTuple ------------------------------------------------------------------------------------
def test_rntuple_reads_like_the_ttree(tmp_path):
    c = jetclass_chunk(90, 40, seed=11)
    path = tmp_path / "jc_rntuple.root"
    write_rntuple(path, c, cluster=25)
    assert uproot.open(path).classname_of("tree") == "ROOT::RNTuple"
    assert detect_format(path) == "jetclass-root"
    src = open_source(path, max_particles=40)
    assert len(src) == 90
    assert src.class_names == JETCLASS_CLASSES
    assert src.metadata == {"origin": "rntuple test"}
    assert "isPhoton" in src.particle_fields
    ref = root_reference(tmp_path, c)
    assert_same_chunks(ref, src.read(0, 90))
    # reads across cluster boundaries and inside the cached range
    for a, b in ((17, 44), (20, 30), (0, 1), (74, 90)):
        assert_same_chunks(ref.take(slice(a, b)), src.read(a, b))
    kin = src.read(10, 60, fields=())
    assert kin.particles == {}
    np.testing.assert_array_equal(kin.p4, ref.p4[10:60])
    assert set(kin.jets) == {"jet_pt", "jet_sdmass", "jet_nparticles"}
    assert_same_chunks(ref.take(slice(5, 70)), pickle.loads(pickle.dumps(src)).read(5, 70))


def test_rntuple_cli_inspect(tmp_path, capsys):
    path = tmp_path / "r.root"
    write_rntuple(path, jetclass_chunk(30, 20, seed=14), cluster=16)
    assert main(["inspect", str(path)]) == 0
    out = capsys.readouterr().out
    assert "jetclass-root" in out
    assert "30" in out


def test_rntuple_missing_momentum_branch(tmp_path):
    c = jetclass_chunk(10, 20, seed=12)
    data = official_jetclass_columns(c)
    del data["part_energy"]
    path = tmp_path / "no_e.root"
    with uproot.recreate(path) as f:
        f.mkrntuple("tree", data)
    with pytest.raises(HepfmInputError, match=r"no_e\.root: missing branch part_energy"):
        open_source(path)


def test_root_file_without_tree_names_what_it_holds(tmp_path):
    path = tmp_path / "other.root"
    with uproot.recreate(path) as f:
        f.mktree("events", {"x": np.float32})
        f["events"].extend({"x": np.zeros(3, np.float32)})
        f["notes"] = "hello"
    with pytest.raises(HepfmInputError) as err:
        detect_format(path)
    msg = str(err.value)
    assert "no TTree or RNTuple 'tree'" in msg
    assert "events (TTree)" in msg
    assert "notes (TObjString)" in msg
    with pytest.raises(HepfmInputError, match=r"the file holds: events \(TTree\), notes \(TObjString\)"):
        open_source(path, format="jetclass-root")


def test_root_tree_of_another_class(tmp_path):
    path = tmp_path / "str.root"
    with uproot.recreate(path) as f:
        f["tree"] = "not a tree"
    with pytest.raises(HepfmInputError, match=r"tree \(TObjString\)"):
        detect_format(path)
    with pytest.raises(HepfmInputError, match="is a TObjString, not a TTree or RNTuple"):
        open_source(path, format="jetclass-root")


# -- Parquet ------------------------------------------------------------------------------------
def test_parquet_reads_like_root(tmp_path):
    c = jetclass_chunk(90, 40, seed=13)
    path = tmp_path / "jets.data"  # the extension says nothing: detection is by content
    write_parquet(path, c, row_group=25)
    assert detect_format(path) == "jetclass-parquet"
    src = open_source(path, max_particles=40)
    assert src.format == "jetclass-parquet"
    assert len(src) == 90
    assert src.class_names == JETCLASS_CLASSES
    ref = root_reference(tmp_path, c)
    assert_same_chunks(ref, src.read(0, 90))
    for a, b in ((17, 44), (20, 30), (0, 1), (74, 90), (50, 50)):
        assert_same_chunks(ref.take(slice(a, b)), src.read(a, b))
    kin = src.read(3, 9, fields=(), jet_fields=())
    assert kin.particles == {}
    assert kin.jets == {}
    np.testing.assert_array_equal(kin.p4, ref.p4[3:9])
    # long jets clipped to the hardest
    assert open_source(path, max_particles=5).read(0, 90).max_particles == 5
    # pickled for DataLoader workers: the pyarrow handle is reopened
    assert_same_chunks(ref.take(slice(30, 80)), pickle.loads(pickle.dumps(src)).read(30, 80))


def test_parquet_writer_round_trip(tmp_path):
    c = jetclass_chunk(70, 25, seed=4)
    path = tmp_path / "w.parquet"
    n = write_jets(path, [c.take(slice(0, 33)), c.take(slice(33, 70))], "jetclass-parquet", {"seed": 9},
                   row_group_jets=20)
    assert n == 70
    assert pq.ParquetFile(path).metadata.num_row_groups == 4
    root = tmp_path / "w.root"
    write_jets(root, [c], "jetclass-root", {"seed": 9}, basket_jets=20)
    a, b = open_source(path, max_particles=25), open_source(root, max_particles=25)
    assert a.metadata == b.metadata
    assert a.metadata["seed"] == 9
    assert a.particle_fields == b.particle_fields
    assert_same_chunks(b.read(0, 70), a.read(0, 70))
    assert_same_chunks(b.read(19, 41), a.read(19, 41))
    assert sorted(a.read(0, 5).jets) == sorted(b.read(0, 5).jets)


def test_parquet_other_classes_and_unlabeled(tmp_path):
    c = random_chunk(30, 10, class_names=TOPTAG_CLASSES, seed=3, mean_particles=5, min_particles=2)
    write_jets(tmp_path / "t.parquet", [c], "jetclass-parquet", {})
    src = open_source(tmp_path / "t.parquet", max_particles=10)
    assert src.class_names == TOPTAG_CLASSES
    np.testing.assert_array_equal(src.read(0, 30).label, c.label)
    u = JetChunk(p4=c.p4, mask=c.mask, label=None, class_names=())
    write_jets(tmp_path / "u.parquet", [u], "jetclass-parquet", {})
    assert not open_source(tmp_path / "u.parquet").has_labels


def test_parquet_missing_column_one_line(tmp_path, capsys):
    c = jetclass_chunk(10, 20, seed=5)
    path = tmp_path / "broken.parquet"
    write_parquet(path, c, drop=("part_pz",))
    with pytest.raises(HepfmInputError, match=r"broken\.parquet: missing column part_pz"):
        open_source(path)
    assert main(["inspect", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "broken.parquet" in err
    assert "part_pz" in err


def test_parquet_null_values_refused(tmp_path):
    c = jetclass_chunk(10, 20, seed=6)
    data = official_jetclass_columns(c)
    cols = {k: ak.to_arrow(v, extensionarray=False) if isinstance(v, ak.Array) else pa.array(v)
            for k, v in data.items()}
    cols["jet_pt"] = pa.array([None, *data["jet_pt"][1:].tolist()], pa.float32())
    path = tmp_path / "nulls.parquet"
    pq.write_table(pa.table(cols), path)
    with pytest.raises(HepfmInputError, match=r"nulls\.parquet: column jet_pt has 1 null values"):
        open_source(path).read(0, 10)


def test_parquet_without_jetclass_columns(tmp_path):
    path = tmp_path / "other.parquet"
    pq.write_table(pa.table({"x": [1.0, 2.0]}), path)
    with pytest.raises(HepfmInputError, match=r"Parquet file with no part_\* columns .*\['x'\]"):
        detect_format(path)
    with pytest.raises(HepfmInputError, match="missing column part_px"):
        open_source(path, format="jetclass-parquet")
    root = tmp_path / "a.root"
    write_jets(root, [jetclass_chunk(5, 10)], "jetclass-root", {})
    with pytest.raises(HepfmInputError, match="needs a Parquet file, but this is a ROOT file"):
        open_source(root, format="jetclass-parquet")


def test_parquet_truncated(tmp_path):
    path = tmp_path / "cut.parquet"
    write_parquet(path, jetclass_chunk(50, 20, seed=7))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(HepfmInputError, match=r"cut\.parquet: .*failed \(file truncated or corrupted\?\)"):
        open_source(path)


def test_without_pyarrow_one_line(tmp_path, monkeypatch):
    path = tmp_path / "j.parquet"
    write_parquet(path, jetclass_chunk(5, 10))
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    with pytest.raises(HepfmInputError, match=r"needs pyarrow: pip install 'hepfm\[parquet\]'"):
        open_source(path)
    with pytest.raises(HepfmInputError, match="needs pyarrow"):
        write_jets(tmp_path / "o.parquet", [jetclass_chunk(5, 10)], "jetclass-parquet", {})
    assert not (tmp_path / "o.parquet").exists()


def test_parquet_cli_inspect_and_convert(tmp_path, capsys):
    c = jetclass_chunk(40, 30, seed=8)
    path = tmp_path / "in.parquet"
    write_parquet(path, c, row_group=16)
    assert main(["inspect", str(path)]) == 0
    out = capsys.readouterr().out
    assert "jetclass-parquet" in out
    assert "40" in out
    h5 = tmp_path / "out.h5"
    assert main(["convert", str(path), "--to", "hepfm", "--out", str(h5)]) == 0
    capsys.readouterr()
    src = open_source(h5)
    assert src.format == "hepfm"
    ref = root_reference(tmp_path, c)
    got = src.read(0, 40)
    np.testing.assert_array_equal(got.label, ref.label)
    np.testing.assert_array_equal(got.mask[:, :30], ref.mask[:, :30])
    np.testing.assert_allclose(got.p4[:, :30], ref.p4[:, :30], rtol=1e-6)
    # and back to Parquet through the CLI writer
    pout = tmp_path / "back.parquet"
    assert main(["convert", str(h5), "--to", "jetclass-parquet", "--out", str(pout)]) == 0
    assert detect_format(pout) == "jetclass-parquet"
    np.testing.assert_array_equal(open_source(pout, max_particles=30).read(0, 40).p4, ref.p4[:, :30])
