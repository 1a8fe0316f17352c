"""Generated events as sets of reconstructed objects: physics, selection, mixture, CLI, round trip."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("pythia8mc")
pytest.importorskip("fastjet")

from hepfm.cli import main as cli_main
from hepfm.data.formats import open_source
from hepfm.data.formats.nanoaod_events import count_groups
from hepfm.data.jets import OBJECT_TYPES, pt_eta_phi
from hepfm.generation.events import RECO, hadron_flavour, pad_events
from hepfm.generation.job import GenerationJob, run_job
from hepfm.generation.processes import DATASETS, leptonic_w
from hepfm.generation.worker import ShardTask, run_shard

pytestmark = pytest.mark.gen
T = {name: i for i, name in enumerate(OBJECT_TYPES)}


@pytest.fixture(scope="module")
def tth_chunks():
    """150 tt+jets and 150 ttH events passing the ttH (1 lepton) selection, CMS-like detector."""
    ttbar, tt_stats = run_shard(ShardTask("tth", 0, 0, 150, seed=31, detector="cms"))
    tth, _ = run_shard(ShardTask("tth", 1, 0, 150, seed=32, detector="cms"))
    return ttbar, tth, tt_stats


def _count(chunk, *kinds):
    t = chunk.particles["object_type"]
    return (np.isin(t, [T[k] for k in kinds]) & chunk.mask).sum(axis=1)


def test_events_pass_the_selection_and_follow_the_reader_layout(tth_chunks):
    ttbar, tth, stats = tth_chunks
    sel = DATASETS.get("tth").events
    for chunk in (ttbar, tth):
        assert np.all(_count(chunk, "electron", "muon") >= sel.lepton)
        assert np.all(_count(chunk, "jet", "bjet") >= sel.jet)
        assert np.all(_count(chunk, "bjet") >= sel.bjet)
        assert np.all(_count(chunk, "met") == 1)
        types = np.where(chunk.mask, chunk.particles["object_type"], 99)
        n = chunk.mask.sum(axis=1)
        assert np.all(types[np.arange(len(chunk)), n - 1] == T["met"]), "MET is the last object"
        pt, eta, _ = pt_eta_phi(chunk.p4)
        jets = np.isin(types, [T["jet"], T["bjet"]])
        assert np.all(pt[jets] > RECO.jet_min_pt - 1e-3)
        assert np.all(np.abs(eta[jets]) < RECO.jet_max_eta)
        leptons = np.isin(types, [T["electron"], T["muon"]])
        assert set(np.unique(chunk.particles["charge"][leptons])) <= {-1.0, 1.0}
        # the b-tag score agrees with the type at the reader's working point
        assert np.all(chunk.particles["btag"][types == T["bjet"]] > RECO.btag_wp)
        assert np.all(chunk.particles["btag"][types == T["jet"]] <= RECO.btag_wp)
    assert 0 < stats["accepted"] / stats["events"] < 0.5
    assert 0.45 < stats["decay_filter_share"] < 0.65  # >= 1 of 2 W -> l nu: 1 - (1 - 0.326)^2 = 0.55
    assert stats["sigma_pb"] > 100  # tt at 13 TeV (LO, filtered): hundreds of pb


def test_leptonic_w_transverse_mass_has_its_edge_near_80_gev(tth_chunks):
    ttbar, _, _ = tth_chunks
    one_lepton = _count(ttbar, "electron", "muon") == 1
    types = ttbar.particles["object_type"]
    pt, _, phi = pt_eta_phi(ttbar.p4)
    rows = np.flatnonzero(one_lepton)
    lep = [np.flatnonzero(np.isin(types[i], [T["electron"], T["muon"]]) & ttbar.mask[i])[0] for i in rows]
    met = [np.flatnonzero((types[i] == T["met"]) & ttbar.mask[i])[0] for i in rows]
    mt = np.sqrt(2 * pt[rows, lep] * pt[rows, met] * (1 - np.cos(phi[rows, lep] - phi[rows, met])))
    assert len(mt) > 60
    # the Jacobian edge: most events below m_W, a thin resolution tail above it
    assert np.mean(mt < 90) > 0.75, np.percentile(mt, [50, 75, 90])
    assert 30 < np.median(mt) < 80
    assert np.mean(mt > 150) < 0.05


def test_b_jet_multiplicity_is_higher_in_tth(tth_chunks):
    ttbar, tth, _ = tth_chunks
    assert _count(tth, "bjet").mean() > _count(ttbar, "bjet").mean() + 0.2
    assert _count(tth, "jet", "bjet").mean() > _count(ttbar, "jet", "bjet").mean()


def test_hadron_flavour_and_event_selection():
    ids = np.array([511, -521, 5122, 531, 421, -411, 4122, 211, 2212, 21, 5, 5101, 443, 553, 22])
    assert hadron_flavour(ids).tolist() == [5, 5, 5, 5, 4, 4, 4, 0, 0, 0, 0, 0, 4, 5, 0]
    sel = DATASETS.get("hplus-hw").events  # the reader's event selection, with the seed's numbers
    per_type = {"electron": [1, 0, 0, 1], "muon": [0, 1, 0, 1], "tau": [1, 1, 1, 0], "bjet": [1, 0, 2, 1],
                "jet": [2, 3, 3, 3]}
    ok = sel.passes(count_groups({t: np.array(v) for t, v in per_type.items()}))
    assert ok.tolist() == [True, False, False, False]
    assert sel.describe() == "lepton >= 1, tau >= 1, jet >= 3, bjet >= 1"
    assert leptonic_w([(24, False, "had"), (24, False, "lep")])
    assert not leptonic_w([(24, False, "had"), (24, False, "had"), (23, True, "lep")])


def test_padding_drops_the_softest_jets_never_leptons_or_met():
    from hepfm.generation.events import EventObjects

    kind = np.array([T["muon"], T["bjet"], T["jet"], T["jet"], T["met"]])
    ev = EventObjects(pt=np.array([50.0, 80, 40, 30, 20]), eta=np.zeros(5), phi=np.zeros(5), mass=np.zeros(5),
                      charge=np.array([-1.0, 0, 0, 0, 0]), kind=kind, btag=np.array([0, 0.9, 0.1, 0.1, 0]))
    p4, mask, fields = pad_events([ev], 3)
    assert mask.tolist() == [[True, True, True]]
    assert fields["object_type"][0].tolist() == [T["muon"], T["bjet"], T["met"]]
    np.testing.assert_allclose(p4[0, :, 0], [50, 80, 20])


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_collision_mixture_by_cross_section_cli_inspect_and_nanoaod_round_trip(tmp_path, capsys):
    out = tmp_path / "data.h5"
    args = ["generate", "collision", "--n-events", "40", "--unlabeled", "--detector", "cms", "--seed", "3",
            "--pilot-events", "250", "--shard-size", "20", "--no-progress", "--json"]
    assert cli_main([*args, "--out", str(out)]) == 0
    summary = json.loads(capsys.readouterr().out)
    counts = summary["class_counts"]
    assert sum(counts.values()) == 40
    assert counts["ttbar"] == max(counts.values())  # tt dominates "lepton + 2 jets + b-jet" at the LHC
    src = open_source(out)
    assert src.item == "event"
    assert not src.has_labels
    pilots = src.metadata["cross_sections"]["pilots"]
    assert set(pilots) == {"ttbar", "single_top", "wjets", "zjets"}
    assert pilots["wjets"]["sigma_pb"] > pilots["ttbar"]["sigma_pb"]  # but it rarely passes
    assert src.metadata["selection"]["events"] == "lepton >= 1, jet >= 2, bjet >= 1"
    # resumable and deterministic: a second run (other worker count) gives the same bytes
    again = tmp_path / "again.h5"
    assert cli_main([*args, "--workers", "2", "--out", str(again)]) == 0
    capsys.readouterr()
    assert _sha(again) == _sha(out)

    assert cli_main(["inspect", str(out)]) == 0
    text = capsys.readouterr().out
    for line in ("processes", "objects by type", "events"):
        assert line in text

    # events written as NanoAOD-like ROOT and read back by the NanoAOD events reader: the same objects
    root = tmp_path / "data.root"
    assert cli_main(["convert", str(out), "--to", "nanoaod", "--out", str(root)]) == 0
    back = open_source(root)
    assert back.format == "nanoaod-events"
    assert len(back) == 40
    a, b = src.read(0, 40), back.read(0, 40)
    np.testing.assert_array_equal(a.mask.sum(1), b.mask[:, : a.mask.shape[1]].sum(1))
    n = a.mask.shape[1]
    np.testing.assert_array_equal(np.where(a.mask, a.particles["object_type"], -1),
                                  np.where(b.mask[:, :n], b.particles["object_type"][:, :n], -1))
    np.testing.assert_allclose(a.p4[..., :2], b.p4[:, :n, :2], atol=1e-3, rtol=1e-4)


def test_event_dataset_bad_options(tmp_path, capsys):
    out = tmp_path / "x.h5"
    assert cli_main(["generate", "tth", "--n-events", "10", "--pileup", "20", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert "pileup" in err[0]
    assert cli_main(["generate", "collision", "--n-events", "10", "--pilot-events", "0", "--out", str(out)]) \
        == 2
    assert not out.exists()
    job = GenerationJob("collision", 10, tmp_path / "y.h5", mix={"ttbar": 1, "wjets": 1})
    assert job.class_counts() == {"ttbar": 5, "single_top": 0, "wjets": 5, "zjets": 0}
    with pytest.raises(RuntimeError, match="pilot"):
        GenerationJob("collision", 10, tmp_path / "y.h5").class_counts()


def test_labeled_task_file(tmp_path):
    job = GenerationJob("hplus-hw", 8, tmp_path / "hw.h5", detector="cms", shard_size=4, seed=5)
    run_job(job, progress=False)
    src = open_source(job.out)
    chunk = src.read(0, 8)
    assert src.class_names == ("ttbar", "Hplus_HW")
    assert sorted(chunk.label.tolist()) == [0] * 4 + [1] * 4
    assert np.all(_count(chunk, "tau") >= 1)
    assert np.all(_count(chunk, "jet", "bjet") >= 3)
