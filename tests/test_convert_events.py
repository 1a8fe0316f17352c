"""``hepfm convert --to nanoaod``: events of objects written as NanoAOD-like ROOT come back through the
``nanoaod-events`` reader with the same objects (those passing its default cuts), charges and MET."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import uproot
from _factories import random_chunk
from _producers import write_nanoaod_events

from hepfm.cli import main
from hepfm.data.formats import detect_format, open_source, write_jets
from hepfm.data.formats.nanoaod_events import SELECTIONS
from hepfm.data.jets import OBJECT_TYPES, JetChunk, from_pt_eta_phi_m, pt_eta_phi

T = {k: i for i, k in enumerate(OBJECT_TYPES)}
MASS = {"electron": 0.000511, "muon": 0.1057, "tau": 1.777, "bjet": 12.0, "jet": 8.0, "met": 0.0,
        "photon": 0.0}


def _events(n: int = 12, seed: int = 0) -> JetChunk:
    """Labeled events (no run/lumi/event): an electron, a muon, a tau in even events, a b-jet (score 0.9;
    0 in odd events, a file without scores), a light jet (0.1; 0.95 in event 3), a jet of 15 GeV and an
    electron at |eta| 2.7 (below the reader's cuts), a photon in event 5, one MET. Objects of an event
    sit 1 rad apart in phi, so no jet is cleaned away by a lepton."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        phi0 = rng.uniform(-np.pi, np.pi)
        objs = [("electron", rng.uniform(20, 60), rng.uniform(-2, 2), -1.0 if i % 3 else 1.0, 0.0),
                ("muon", rng.uniform(15, 50), rng.uniform(-2, 2), 1.0, 0.0),
                ("bjet", rng.uniform(40, 120), rng.uniform(-2, 2), 0.0, 0.9 if i % 2 == 0 else 0.0),
                ("jet", rng.uniform(30, 90), rng.uniform(-2, 2), 0.0, 0.95 if i == 3 else 0.1),
                ("jet", 15.0, rng.uniform(-2, 2), 0.0, 0.05),
                ("electron", 25.0, 2.7, 1.0, 0.0)]
        if i % 2 == 0:
            objs.append(("tau", rng.uniform(25, 50), rng.uniform(-2, 2), -1.0, 0.0))
        if i == 5:
            objs.append(("photon", 35.0, 0.3, 0.0, 0.0))
        phis = [(phi0 + 1.0 * k + np.pi) % (2 * np.pi) - np.pi for k in range(len(objs))]
        objs.append(("met", rng.uniform(10, 80), 0.0, 0.0, 0.0))
        phis.append(rng.uniform(-np.pi, np.pi))
        rows.append([(t, pt, eta, phi, q, b) for (t, pt, eta, q, b), phi in zip(objs, phis, strict=True)])
    slots = max(len(r) for r in rows)
    p4 = np.zeros((n, slots, 4), np.float32)
    mask = np.zeros((n, slots), bool)
    fields = {k: np.zeros((n, slots), np.float32) for k in ("charge", "btag")}
    fields["object_type"] = np.zeros((n, slots), np.int32)
    for i, r in enumerate(rows):
        r.sort(key=lambda o: -o[1])
        for j, (t, pt, eta, phi, q, b) in enumerate(r):
            p4[i, j] = from_pt_eta_phi_m(*(np.float64(x) for x in (pt, eta, phi, MASS[t])))
            mask[i, j] = True
            fields["charge"][i, j], fields["btag"][i, j], fields["object_type"][i, j] = q, b, T[t]
    return JetChunk(p4=p4, mask=mask, label=np.arange(n) % 2, class_names=("ttH", "ttbar"), particles=fields)


def _objects(c: JetChunk, i: int, cuts: bool = False) -> np.ndarray:
    """(type, pt, eta, phi, charge) of event ``i``'s objects, sorted; with ``cuts`` only those that pass
    the reader's default pT and |eta| cuts (MET always)."""
    t = c.particles["object_type"][i][c.mask[i]]
    pt, eta, phi = pt_eta_phi(c.p4[i][c.mask[i]].astype(np.float64))
    keep = np.ones(len(t), bool)
    if cuts:
        for k, kind in enumerate(OBJECT_TYPES[x] for x in t):
            sel = SELECTIONS.get("jet" if kind == "bjet" else kind)
            keep[k] = sel is None or (pt[k] > sel.min_pt and abs(eta[k]) < sel.max_abs_eta)
    out = np.stack([t, pt, eta, phi, c.particles["charge"][i][c.mask[i]]], 1)[keep]
    return out[np.lexsort((out[:, 1], out[:, 0]))]


def test_events_h5_to_nanoaod_and_back(tmp_path):
    ev = _events()
    write_jets(tmp_path / "in.h5", [ev], "hepfm", {"generator": "test"})
    out = tmp_path / "out.root"
    assert main(["convert", str(tmp_path / "in.h5"), "--to", "nanoaod", "--out", str(out)]) == 0
    assert detect_format(out) == "nanoaod-events"
    with uproot.open(out) as f:
        t = f["Events"]
        names = set(t.keys())
        for c, extra in (("Electron", ["charge", "cutBased"]), ("Muon", ["charge", "looseId", "mediumId"]),
                         ("Tau", ["charge", "idDeepTau2018v2p5VSjet"]), ("Jet", ["btagDeepFlavB", "jetId"]),
                         ("Photon", ["cutBased"])):
            assert {f"n{c}", *(f"{c}_{b}" for b in ["pt", "eta", "phi", "mass", *extra])} <= names
        assert {"MET_pt", "MET_phi", "run", "luminosityBlock", "event", "hepfm_label"} <= names
        a = t.arrays(["nElectron", "nJet", "Jet_btagDeepFlavB", "hepfm_label", "event", "run"], library="np")
        meta = json.loads(str(f["hepfm_metadata"]))
    np.testing.assert_array_equal(a["nElectron"], 2)  # written with the one below the cuts
    np.testing.assert_array_equal(a["nJet"], 3)
    np.testing.assert_array_equal(a["hepfm_label"], ev.label)
    np.testing.assert_array_equal(a["event"], np.arange(1, 13))
    np.testing.assert_array_equal(a["run"], 1)
    assert meta["class_names"] == ["ttH", "ttbar"]
    assert meta["label_branch"] == "hepfm_label"
    assert meta["btag"]["scores_replaced"] == 6 + 1  # bjets without score in odd events, event 3's jet
    assert meta["converted_from"][0]["metadata"]["generator"] == "test"
    assert np.all(np.concatenate(a["Jet_btagDeepFlavB"]) <= 1)

    src = open_source(out, photons=True)
    assert src.format == "nanoaod-events"
    assert "no filled ID branch" not in str(src.field_map)  # the IDs written pass and are used
    got = src.read(0, len(src))
    assert len(got) == len(ev)
    np.testing.assert_array_equal(got.jets["event"], np.arange(1, 13))
    assert src.class_names == ("ttH", "ttbar")  # the labels come back
    np.testing.assert_array_equal(got.label, ev.label)
    for i in range(len(ev)):
        want, have = _objects(ev, i, cuts=True), _objects(got, i)
        assert have.shape == want.shape, f"event {i}"
        np.testing.assert_array_equal(have[:, 0], want[:, 0], err_msg=f"types, event {i}")
        np.testing.assert_allclose(have[:, 1:4], want[:, 1:4], rtol=1e-5, atol=1e-5, err_msg=f"event {i}")
        np.testing.assert_array_equal(have[:, 4], want[:, 4], err_msg=f"charges, event {i}")
    t = got.particles["object_type"]
    assert np.all((t == T["met"]).sum(1) == 1)
    assert np.all((t == T["bjet"]).sum(1) == 1)
    assert np.all((t == T["jet"]).sum(1) == 1)
    assert (t == T["photon"]).sum() == 1
    np.testing.assert_array_equal(got.p4[..., 2][t == T["met"]], 0)
    # without photons=True the reader leaves them out, as for any NanoAOD file
    assert (open_source(out).read(0, 12).particles["object_type"] == T["photon"]).sum() == 0


def test_nanoaod_events_to_h5_to_nanoaod(tmp_path):
    write_nanoaod_events(tmp_path / "nano.root", 40, taus=True)
    for a, fmt, b in (("nano.root", "hepfm", "e.h5"), ("e.h5", "nanoaod", "o.root")):
        assert main(["convert", str(tmp_path / a), "--to", fmt, "--out", str(tmp_path / b)]) == 0
    with uproot.open(tmp_path / "o.root") as f:
        names = set(f["Events"].keys())
    assert "nPhoton" not in names  # no photons: no Photon collection
    assert "hepfm_label" not in names
    a, b = (open_source(tmp_path / p).read(0, 40) for p in ("nano.root", "o.root"))
    np.testing.assert_array_equal(b.mask, a.mask)
    for k in ("object_type", "charge", "btag"):
        np.testing.assert_array_equal(b.particles[k], a.particles[k], err_msg=k)
    np.testing.assert_allclose(b.p4, a.p4, rtol=1e-5, atol=1e-4)
    for k in ("run", "luminosityBlock", "event"):
        np.testing.assert_array_equal(b.jets[k], a.jets[k])


def test_jets_to_nanoaod_is_one_line_and_leaves_nothing(tmp_path):
    write_jets(tmp_path / "jets.h5", [random_chunk(10, 8, seed=2, mean_particles=4)], "hepfm", {})
    out = tmp_path / "out.root"
    r = subprocess.run([sys.executable, "-m", "hepfm.cli", "convert", str(tmp_path / "jets.h5"), "--to",
                        "nanoaod", "--out", str(out)], capture_output=True, text=True, check=False)
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    assert len(r.stderr.strip().split("\n")) == 1
    assert "jets.h5" in r.stderr
    assert "object_type" in r.stderr
    assert list(tmp_path.iterdir()) == [tmp_path / "jets.h5"]
