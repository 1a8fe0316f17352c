"""Jets from CMS files and JetClass-II: NanoAOD / PFNano constituents through the index maps, Aspen
Open Jets HDF5, JetClass-II's integer labels; each on files written the way their producers write
them (tests/_producers.py) and, for NanoAOD, on the real CMS files of ``../shared/data/real``."""

from __future__ import annotations

import os
from pathlib import Path

import h5py
import numpy as np
import pytest
import uproot
from _factories import random_chunk
from _producers import write_aspen, write_jetclass2, write_nanoaod

from hepfm.cli import main
from hepfm.data.formats import detect_format, open_source
from hepfm.data.jets import JETCLASS2_CLASSES
from hepfm.errors import HepfmInputError


def _real_dir() -> Path | None:
    """The real NanoAOD files: $HEPFM_REAL_DATA, or shared/data/real beside the repository."""
    env = os.environ.get("HEPFM_REAL_DATA")
    candidates = [Path(env)] if env else []
    candidates.append(Path(__file__).resolve().parents[2] / "shared" / "data" / "real")
    return next((p for p in candidates if (p / "coffea_pfnano.root").exists()), None)


REAL = _real_dir()
needs_real = pytest.mark.skipif(REAL is None, reason="real CMS files (../shared/data/real) not found")


@pytest.fixture(scope="module")
def chunk():
    return random_chunk(30, 40, class_names=None, particle_fields=True, seed=21)


def _same(read, ref, atol=2e-3):
    n = read.p4.shape[1]
    assert read.p4.shape[0] == len(ref)
    np.testing.assert_allclose(read.p4, ref.p4[:, :n], rtol=2e-4, atol=atol)
    assert np.array_equal(read.mask, ref.mask[:, :n])


def _trim(chunk, n):
    """The chunk's per-particle fields cut to the ``n`` slots a read without a cap returns."""
    return {k: v[:, :n] for k, v in chunk.particles.items()}


# -- NanoAOD / PFNano ----------------------------------------------------------------------------
@pytest.mark.parametrize(("scheme", "container"), [("PFNano", "TTree"), ("v15", "TTree"), ("v15", "RNTuple")])
def test_nanoaod_constituents_through_the_index_maps(tmp_path, chunk, scheme, container):
    path = tmp_path / "nano.root"
    info = write_nanoaod(path, chunk, scheme=scheme, container=container)
    assert detect_format(path) == "nanoaod"
    src = open_source(path, max_particles=None)
    # one FatJet per event has no stored constituents: skipped; the rest come back exactly
    assert len(src) == len(chunk)
    got = src.read(0, len(src))
    _same(got, chunk)
    m, ref = got.mask, _trim(chunk, got.p4.shape[1])
    for k in ("d0val", "dzval", "d0err", "dzerr", "charge"):  # cm in the file, mm here
        np.testing.assert_allclose(got.particles[k][m], ref[k][m], atol=1e-5)
    for k in ("isChargedHadron", "isNeutralHadron", "isPhoton"):
        assert np.array_equal(got.particles[k][m], ref[k][m]), k
    assert np.array_equal(got.particles["pid"][m], ref["pid"][m])
    np.testing.assert_allclose(got.jets["jet_sdmass"], 0.9 * chunk.jet_kinematics()["mass"], rtol=1e-4)
    assert "jet_particleNet_TvsQCD" in got.jets
    assert got.jets["event"][:4].tolist() == [1, 1, 2, 2]
    # reads of any slice agree with the whole (events split across reads)
    part = src.read(5, 17)
    np.testing.assert_array_equal(part.p4, got.p4[5:17, : part.p4.shape[1]])
    # AK4 jets: FILE:Jet, constituent counts as the file's Jet_nConstituents
    ak4 = open_source(f"{path}:Jet", max_particles=None)
    c4 = ak4.read(0, len(ak4))
    assert np.array_equal(c4.n_particles, info["ak4_counts"])
    assert np.array_equal(c4.jets["jet_nconstituents"], c4.n_particles)
    assert "PFCand" in src.detected
    assert src.field_map["dzval"].endswith("(cm -> mm)")


def test_nanoaod_puppi_weights_scale_and_drop(tmp_path, chunk):
    path = tmp_path / "half.root"
    write_nanoaod(path, chunk, puppi_weight=0.5)
    fat = open_source(path, max_particles=None).read(0, len(chunk))  # FatJet: PUPPI-weighted
    np.testing.assert_allclose(fat.p4, 0.5 * chunk.p4[:, : fat.p4.shape[1]], rtol=2e-4, atol=2e-3)
    raw = open_source(path, max_particles=None, puppi_weight=False).read(0, len(chunk))
    _same(raw, chunk)
    write_nanoaod(tmp_path / "zero.root", chunk, puppi_weight=0.0)
    # every candidate of weight 0: no jet has constituents left, each is an empty (bad) jet
    zero = open_source(tmp_path / "zero.root", skip_bad=True)
    assert len(zero.read(0, len(zero))) == 0
    assert zero.bad_counts == {"empty": len(chunk)}


def test_nanoaod_index_map_out_of_range_is_one_line(tmp_path, chunk):
    path = tmp_path / "bad.root"
    write_nanoaod(path, chunk)
    with uproot.open(path) as f:
        arrays = f["Events"].arrays(library="ak")
    import awkward as ak

    def rewrite(name, field, shift):
        data = {}
        for coll in ("FatJet", "Jet", "PFCands", "FatJetPFCands", "JetPFCands"):
            rec = {k[len(coll) + 1 :]: arrays[k] for k in arrays.fields if k.startswith(coll + "_")}
            if coll == name:
                rec[field] = rec[field] + shift
            data[coll] = ak.zip(rec)
        for k in ("run", "luminosityBlock", "event"):
            data[k] = ak.to_numpy(arrays[k])
        out = tmp_path / f"{field}.root"
        with uproot.recreate(out) as f:
            f["Events"] = data
        return out

    bad_cand = rewrite("FatJetPFCands", "pFCandsIdx", 1000)
    with pytest.raises(HepfmInputError, match=r"pFCandsIdx points outside the candidate list: event 0 has"):
        open_source(bad_cand).read(0, 4)
    bad_jet = rewrite("FatJetPFCands", "jetIdx", 5)
    with pytest.raises(HepfmInputError, match=r"jetIdx points outside the FatJet list"):
        open_source(bad_jet)
    assert main(["inspect", str(bad_jet)]) == 2


@needs_real
def test_real_pfnano_file():
    path = REAL / "coffea_pfnano.root"
    assert detect_format(path) == "nanoaod"
    fat = open_source(path, max_particles=None)
    ak4 = open_source(f"{path}:Jet", max_particles=None)
    with uproot.open(path) as f:
        n_jet = f["Events"]["Jet_nConstituents"].array(library="np")
        fat_idx = f["Events"]["FatJetPFCands_jetIdx"].array(library="np")
    # every AK4 jet's constituents, counted as the file itself stores them
    c4 = ak4.read(0, len(ak4))
    assert np.array_equal(c4.n_particles, np.concatenate(n_jet))
    assert np.array_equal(c4.jets["jet_nconstituents"], c4.n_particles)
    cf = fat.read(0, len(fat))
    assert np.array_equal(cf.n_particles, np.concatenate([np.bincount(i) for i in fat_idx]))
    # physics: PUPPI-weighted constituents add up to 85-100 % of the corrected AK8 jet pT
    ratio = cf.jet_kinematics()["pt"] / cf.jets["jet_pt"]
    assert np.median(ratio) > 0.85
    assert np.all(ratio < 1.05)
    assert cf.particles["isPhoton"].sum() > 0
    assert cf.particles["isChargedHadron"].sum() > 0


@needs_real
@pytest.mark.parametrize("name", ["nanoAOD_2015_CMS_Open_Data_ttbar.root", "coffea_nano_dy.root"])
def test_real_nanoaod_without_candidates_has_no_jets_with_constituents(name, capsys):
    # read as events of objects by default (tests/test_events_nanoaod.py); jets need PF candidates
    assert main(["inspect", f"{REAL / name}:FatJet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "without jet constituents: no PF candidates" in err
    assert "FatJet" in err


# -- Aspen Open Jets -------------------------------------------------------------------------------
def test_aspen_open_jets(tmp_path, chunk):
    path = tmp_path / "RunG_batch0.h5"
    write_aspen(path, chunk)
    assert detect_format(path) == "aspen-h5"
    src = open_source(path, max_particles=None)
    got = src.read(0, len(src))
    _same(got, chunk)
    m, ref = got.mask, _trim(chunk, got.p4.shape[1])
    np.testing.assert_allclose(got.particles["dzval"][m], ref["dzval"][m], atol=1e-5)
    assert np.all(got.particles["d0val"][m & (got.particles["charge"] == 0)] == 0)  # -1 in the file
    assert got.jets["run"][0] == 278820
    assert "jet_PN_TvsQCD" in got.jets
    # PUPPI: half weights halve the momenta; zero weights drop the candidate and re-sort
    w = np.where(np.arange(chunk.max_particles) == 0, 0.0, 1.0)[None, :].repeat(len(chunk), 0)
    write_aspen(tmp_path / "w.h5", chunk, puppi_weight=w)
    gw = open_source(tmp_path / "w.h5", max_particles=None).read(0, len(chunk))
    assert np.array_equal(gw.n_particles, chunk.n_particles - 1)
    np.testing.assert_allclose(gw.p4[:, 0], chunk.p4[:, 1], rtol=1e-5)


def test_aspen_wrong_shape_is_one_line(tmp_path):
    path = tmp_path / "odd.h5"
    with h5py.File(path, "w") as f:
        f["PFCands"] = np.zeros((3, 150, 16), np.float32)  # e.g. a private re-skim
        f["jet_kinematics"] = np.zeros((3, 4), np.float32)
    with pytest.raises(HepfmInputError, match=r"odd\.h5: PFCands has shape \(3, 150, 16\)"):
        open_source(path)


# -- JetClass-II ----------------------------------------------------------------------------------
@pytest.mark.parametrize("container", ["root", "parquet"])
def test_jetclass2_integer_labels(tmp_path, chunk, container):
    labels = (np.arange(len(chunk)) * 7) % 188
    path = tmp_path / f"Res2P_0000.{container}"
    write_jetclass2(path, chunk, labels, container=container)
    src = open_source(path, max_particles=None)
    assert src.has_labels
    assert src.class_names == JETCLASS2_CLASSES
    assert len(src.class_names) == 188
    got = src.read(0, len(src))
    _same(got, chunk)
    assert np.array_equal(got.label, labels)
    assert src.class_names[got.label[1]] == "X_cq"
    assert JETCLASS2_CLASSES[187] == "QCD_light"
    assert np.array_equal(got.particles["isPhoton"], chunk.particles["isPhoton"][:, : got.p4.shape[1]])
    assert np.all(got.jets["resx_mass"] == 125.0)
    assert "genjet_pt" in got.jets
    assert "jet_label" not in got.jets
    assert "jet_label" in src.detected


def test_jetclass2_label_out_of_range(tmp_path, chunk):
    labels = np.zeros(len(chunk), int)
    labels[3] = 188
    write_jetclass2(tmp_path / "bad.root", chunk, labels)
    with pytest.raises(HepfmInputError, match=r"jet 3: label is not a valid class index"):
        open_source(tmp_path / "bad.root").read(0, len(chunk))


def test_rntuple_field_of_the_wrong_type(tmp_path):
    import awkward as ak

    with uproot.recreate(tmp_path / "s.root") as f:
        f.mkrntuple("tree", {"part_px": ak.Array([[1.0]]), "part_py": ak.Array([[1.0]]),
                             "part_pz": ak.Array([["a"]]), "part_energy": ak.Array([[2.0]])})
    with pytest.raises(HepfmInputError, match=r"part_pz has type std::vector<std::string>, not a list"):
        open_source(tmp_path / "s.root")


# -- the CLI ------------------------------------------------------------------------------------
def test_cli_inspect_pretrain_train_on_each_layout(tmp_path, chunk, capsys):
    write_nanoaod(tmp_path / "nano.root", chunk, scheme="v15", container="RNTuple")
    write_aspen(tmp_path / "aoj.h5", chunk)
    big = random_chunk(200, 40, class_names=None, particle_fields=True, seed=22)
    labels = np.where(big.n_particles > 25, 187, 0)  # two JetClass-II classes, told apart by multiplicity
    write_jetclass2(tmp_path / "train.parquet", big, labels, container="parquet")
    write_jetclass2(tmp_path / "val.root", big, labels)
    assert main(["inspect", str(tmp_path / "nano.root:Jet"), str(tmp_path / "aoj.h5"),
                 str(tmp_path / "val.root")]) == 0
    out = capsys.readouterr().out
    for text in ("nanoaod", "NanoAOD v15 scheme", "JetPFCand_jetIdx", "aspen-h5", "jet_label (JetClass-II",
                 "dzval            <- PFCand_dz (cm -> mm)"):
        assert text in out, text
    common = ["--steps", "3", "--batch-size", "8", "--no-progress", "--backbone", "part-small",
              "--max-particles", "16", "--features", "full"]
    assert main(["pretrain", "--objective", "mpm", "--data", str(tmp_path / "nano.root"),
                 str(tmp_path / "aoj.h5"), "--out", str(tmp_path / "pre"), *common]) == 0
    assert (tmp_path / "pre" / "backbone.safetensors").exists()
    assert main(["train", "--data", str(tmp_path / "train.parquet"), "--val", str(tmp_path / "val.root"),
                 "--out", str(tmp_path / "tr"), *common]) == 0


def test_convert_jagged_layouts_to_hepfm_keeps_every_particle(tmp_path):
    short = random_chunk(20, 40, class_names=None, particle_fields=True, seed=23, mean_particles=4)
    long = random_chunk(20, 40, class_names=None, particle_fields=True, seed=24, mean_particles=30)
    write_nanoaod(tmp_path / "a.root", short)
    write_aspen(tmp_path / "b.h5", long)
    out = tmp_path / "all.h5"
    # the first input's jets are shorter than the second's: slots come from all inputs, not the first read
    assert main(["convert", str(tmp_path / "a.root"), str(tmp_path / "b.h5"), "--to", "hepfm",
                 "--out", str(out)]) == 0
    got = open_source(out, max_particles=None).read(0, 40)
    assert np.array_equal(got.n_particles, np.concatenate([short.n_particles, long.n_particles]))
