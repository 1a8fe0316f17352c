"""Collision events from NanoAOD as sets of reconstructed objects (seed 003's input): the reader, the
``objects`` feature set and the CLI, on NanoAOD v15-named files written as CMSSW writes them and on
the real CMS files of ``../shared/data/real``."""

from __future__ import annotations

import numpy as np
import pytest
import uproot
from _producers import write_nanoaod_events
from test_formats_cms import REAL, needs_real

from hepfm.cli import main
from hepfm.data.features import get_feature_set
from hepfm.data.formats import detect_format, open_source
from hepfm.data.jets import OBJECT_TYPES
from hepfm.errors import HepfmInputError

T = {k: i for i, k in enumerate(OBJECT_TYPES)}


def _types(chunk, i):
    return sorted(OBJECT_TYPES[t] for t in chunk.particles["object_type"][i][chunk.mask[i]])


def test_v15_events_objects_selection_and_cleaning(tmp_path):
    path = tmp_path / "v15.root"
    info = write_nanoaod_events(path, 20)
    assert detect_format(path) == "nanoaod-events"
    src = open_source(path, max_particles=None)
    assert src.item == "event"
    assert src.field_map["met"] == "PFMET_pt/phi"
    assert "Jet_btagUParTAK4B" in src.field_map["bjet"]
    assert "tau" not in src.field_map  # the file has no Tau_*
    c = src.read(0, 20)
    # even events: the muon passes looseId; the jet on top of the electron is cleaned away
    assert _types(c, 0) == ["bjet", "electron", "jet", "jet", "met", "muon"]
    assert _types(c, 1) == ["bjet", "electron", "jet", "jet", "met"]
    # four-vectors: MET massless at eta 0 with the file's pT; objects pT-sorted
    pt = np.hypot(c.p4[..., 0], c.p4[..., 1])
    met = c.particles["object_type"] == T["met"]
    np.testing.assert_allclose(pt[met & c.mask], info["met_pt"], rtol=1e-5)
    np.testing.assert_allclose(c.p4[..., 2][met & c.mask], 0, atol=1e-6)
    assert np.all(np.diff(np.where(c.mask, pt, -1), axis=1) <= 1e-4)
    assert np.all(c.particles["btag"][c.particles["object_type"] == T["bjet"]] == np.float32(0.9))
    assert c.jets["run"][0] == 362000


def test_objects_feature_set(tmp_path):
    write_nanoaod_events(tmp_path / "e.root", 10, taus=True)
    c = open_source(tmp_path / "e.root").read(0, 10)
    fs = get_feature_set("objects")
    assert fs.dim == 5 + len(OBJECT_TYPES)
    x = fs.compute(c)
    onehot = x[..., 5:]
    t = c.particles["object_type"]
    assert np.array_equal(onehot.argmax(-1)[c.mask], t[c.mask])
    assert np.all(onehot[c.mask].sum(-1) == 1)
    assert np.all(x[~c.mask] == 0)
    assert np.all(x[..., 4][c.mask & (t == T["electron"])] == -1)  # the charge


def test_missing_met_and_empty_files_are_one_line(tmp_path):
    path = tmp_path / "nomet.root"
    write_nanoaod_events(path, 5, met="NoMET")
    with pytest.raises(HepfmInputError, match=r"neither jet constituents nor Jet and MET objects"):
        detect_format(path)
    with pytest.raises(HepfmInputError, match=r"nomet\.root: NanoAOD file without missing pT"):
        open_source(f"{path}:Events")
    assert main(["inspect", str(path)]) == 2


def test_placeholder_btag_branches_are_passed_over(tmp_path):
    path = tmp_path / "old.root"
    write_nanoaod_events(path, 5, met="MET", btag="btagDeepFlavB")
    with uproot.open(path) as f:
        data = f["Events"].arrays(library="ak")
    import awkward as ak

    jets = {k[4:]: data[k] for k in data.fields if k.startswith("Jet_")}
    jets["btagDeepB"] = jets["btagDeepFlavB"]
    jets["btagDeepFlavB"] = ak.full_like(jets["btagDeepFlavB"], -3000.0)  # a tagger that was not run
    out = {"Jet": ak.zip(jets)}
    for c in ("Electron", "Muon"):
        out[c] = ak.zip({k[len(c) + 1 :]: data[k] for k in data.fields if k.startswith(c + "_")})
    out |= {k: ak.to_numpy(data[k]) for k in ("MET_pt", "MET_phi", "run", "luminosityBlock", "event")}
    with uproot.recreate(tmp_path / "old2.root") as f:
        f["Events"] = out
    src = open_source(tmp_path / "old2.root")
    assert src.field_map["bjet"].startswith("Jet_btagDeepB >")
    assert (src.read(0, 5).particles["object_type"] == T["bjet"]).sum() == 5


@needs_real
def test_real_drell_yan_events_show_the_z_peak():
    src = open_source(REAL / "coffea_nano_dy.root")
    assert src.format == "nanoaod-events"
    c = src.read(0, len(src))
    t, q = c.particles["object_type"], c.particles["charge"]
    masses = []
    for i in range(len(c)):
        for lepton in (T["electron"], T["muon"]):
            sel = np.flatnonzero(c.mask[i] & (t[i] == lepton))
            if len(sel) == 2 and q[i, sel].sum() == 0:
                p = c.p4[i, sel].sum(0).astype(np.float64)
                masses.append(np.sqrt(max(p[3] ** 2 - (p[:3] ** 2).sum(), 0.0)))
    masses = np.array(masses)
    assert len(masses) >= 5
    assert np.mean(np.abs(masses - 91.2) < 6) > 0.7  # opposite-sign same-flavour pairs: the Z


@needs_real
def test_real_2015_open_data_file_uses_the_filled_branches():
    src = open_source(REAL / "nanoAOD_2015_CMS_Open_Data_ttbar.root")
    # DeepJet/DeepCSV are stored there but unfilled (-3000 / -1); looseId is false for every muon
    assert src.field_map["bjet"].startswith("Jet_btagCSVV2 > 0.8484")
    assert src.field_map["muon"].endswith("no filled ID branch")
    assert "Tau_idMVAoldDM & 4" in src.field_map["tau"]
    c = src.read(0, len(src))
    assert np.all((c.particles["object_type"] == T["met"]).sum(1) == 1)  # one MET per event
    # the PFNano file is jets by default, events with :Events
    assert open_source(REAL / "coffea_pfnano.root").format == "nanoaod"
    assert open_source(f"{REAL / 'coffea_pfnano.root'}:Events").format == "nanoaod-events"


def test_cli_inspect_and_pretrain_on_events(tmp_path, capsys):
    write_nanoaod_events(tmp_path / "a.root", 40, taus=True)
    assert main(["inspect", str(tmp_path / "a.root")]) == 0
    out = capsys.readouterr().out
    assert "objects/event" in out
    line = next(x for x in out.splitlines() if x.startswith("  objects by type"))
    assert "electron 1.00  muon 0.50  tau 1.00" in line
    assert line.endswith("met 1.00  (per event)")
    assert main(["pretrain", "--objective", "mpm", "--features", "objects", "--data",
                 str(tmp_path / "a.root"), "--out", str(tmp_path / "pre"), "--steps", "3",
                 "--batch-size", "8", "--max-particles", "8", "--backbone", "part-small",
                 "--no-progress"]) == 0
