"""Generator physics, determinism, resume and CLI behaviour (runs Pythia 8 + FastJet: small samples)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("pythia8mc")
pytest.importorskip("fastjet")

from hepfm.cli import main as cli_main
from hepfm.data.jets import JETCLASS_CLASSES
from hepfm.generation.job import GenerationJob, _part_path, _prepare_parts_dir, _run_and_save, run_job
from hepfm.generation.processes import DATASETS, higgs_ww_one_leptonic_one_hadronic
from hepfm.generation.truth import match_resonance
from hepfm.generation.worker import ShardTask, masked_pid_flags, run_shard

pytestmark = pytest.mark.gen


@pytest.fixture(scope="module")
def toptag_chunks():
    """400 top and 400 QCD jets, truth level (generated once for the module)."""
    top, top_stats = run_shard(ShardTask("toptag", 1, 0, 400, seed=11))
    qcd, _ = run_shard(ShardTask("toptag", 0, 0, 400, seed=12))
    return top, qcd, top_stats


def test_top_jets_peak_at_top_mass_and_qcd_is_lighter(toptag_chunks):
    top, qcd, _ = toptag_chunks
    m_top = top.jet_kinematics()["mass"]
    m_qcd = qcd.jet_kinematics()["mass"]
    hist, edges = np.histogram(m_top, bins=np.arange(100, 260, 10))
    mode = edges[np.argmax(hist)] + 5
    assert 160 <= mode <= 185, mode
    assert 165 < np.median(m_top) < 182
    assert np.median(m_qcd) < 110
    # mass alone separates top from QCD well (datagen measured AUC 0.93)
    auc = (m_top[:, None] > m_qcd[None, :]).mean()
    assert auc > 0.85


def test_toptag_selection_window_and_particles(toptag_chunks):
    top, qcd, stats = toptag_chunks
    for chunk in (top, qcd):
        kin = chunk.jet_kinematics()
        # the jet is the sum of its (untruncated: max 200, none truncated here) constituents
        assert np.all((kin["pt"] > 549) & (kin["pt"] < 651))
        assert np.all(np.abs(kin["eta"]) < 2.0)
        pt = np.hypot(chunk.p4[..., 0], chunk.p4[..., 1])
        assert np.all(np.diff(pt, axis=1) <= 1e-4), "constituents sorted by decreasing pT"
        assert np.all(chunk.p4[~chunk.mask] == 0)
        for name, values in chunk.particles.items():
            assert np.all(np.isfinite(values)), name
        assert 40 < chunk.n_particles.mean() < 100
    assert set(np.unique(top.label)) == {1}
    assert set(np.unique(qcd.label)) == {0}
    assert top.class_names == ("QCD", "Top")
    # truth top is within the jet and on shell
    t = np.stack([top.jets[k] for k in ("truthPX", "truthPY", "truthPZ", "truthE")], axis=1).astype(
        np.float64
    )
    m_truth = np.sqrt(np.clip(t[:, 3] ** 2 - (t[:, :3] ** 2).sum(1), 0, None))
    assert np.mean(np.abs(m_truth - 172.5) < 10) > 0.95  # Breit-Wigner tails
    assert 0.15 < stats["accepted"] / stats["events"] < 0.5


def test_w_jets_peak_near_w_mass_without_mpi():
    chunk, _ = run_shard(
        ShardTask("jetclass", JETCLASS_CLASSES.index("Wqq"), 0, 150, seed=5,
                  extra_settings=("PartonLevel:MPI = off",))
    )
    m = chunk.jet_kinematics()["mass"]
    assert 72 < np.median(m) < 90


def test_jetclass_features_pid_and_impact_parameters():
    chunk, _ = run_shard(ShardTask("jetclass", JETCLASS_CLASSES.index("Hbb"), 0, 100, seed=3))
    p = chunk.particles
    flags = np.stack(
        [p[k] for k in ("isChargedHadron", "isNeutralHadron", "isPhoton", "isElectron", "isMuon")], -1
    )
    assert np.all(flags.sum(-1)[chunk.mask] == 1), "exactly one PID flag per real particle"
    charged = (p["charge"] != 0) & chunk.mask
    assert np.all(p["d0err"][charged] > 0)
    assert np.all(p["d0val"][~charged] == 0)
    # b-hadron decays displace tracks: H->bb jets have more large-|d0| tracks than light-quark W jets
    w, _ = run_shard(ShardTask("jetclass", JETCLASS_CLASSES.index("Wqq"), 0, 100, seed=4))
    def sig(c):
        return (
            np.abs(c.particles["d0val"]) / np.where(c.particles["d0err"] > 0, c.particles["d0err"], 1) > 5
        )[(c.particles["charge"] != 0) & c.mask].mean()
    assert sig(chunk) > 1.5 * sig(w)


def test_pid_flags_from_pdg_ids():
    pid = np.array([[211, -11, 13, 22, 130, 2212, 0]])
    charge = np.array([[1, 1, -1, 0, 0, 1, 0]], float)
    mask = np.array([[1, 1, 1, 1, 1, 1, 0]], bool)
    f = masked_pid_flags(pid, charge, mask)
    assert f["isChargedHadron"].tolist() == [[1, 0, 0, 0, 0, 1, 0]]
    assert f["isElectron"].tolist() == [[0, 1, 0, 0, 0, 0, 0]]
    assert f["isMuon"].tolist() == [[0, 0, 1, 0, 0, 0, 0]]
    assert f["isPhoton"].tolist() == [[0, 0, 0, 1, 0, 0, 0]]
    assert f["isNeutralHadron"].tolist() == [[0, 0, 0, 0, 1, 0, 0]]


def test_truth_matching_requires_all_partons_inside():
    # t(0) -> W(1) b(2); W -> u(3) d~(4). Particle record with daughters ranges.
    rec = {
        "id": np.array([6, 24, 5, 2, -1]),
        "status": np.array([-22, -22, 23, 23, 23]),
        "daughter1": np.array([1, 3, 0, 0, 0]),
        "daughter2": np.array([2, 4, 0, 0, 0]),
    }
    def p(eta, phi, pt=100.0):
        return pt * np.cos(phi), pt * np.sin(phi), pt * np.sinh(eta)
    kin = [p(0, 0), p(0.1, 0), p(0.2, 0.1), p(-0.2, 0.3), p(0.0, -0.3)]
    for i, k in enumerate(("px", "py", "pz")):
        rec[k] = np.array([x[i] for x in kin])
    rec["e"] = np.zeros(5)
    kw = dict(resonances=(6,), n_visible=3, need_lepton=False, radius=0.8)
    assert match_resonance(rec, 0.0, 0.0, **kw) == 0
    rec["pz"][4] = 100 * np.sinh(1.5)  # d~ far outside
    assert match_resonance(rec, 0.0, 0.0, **kw) is None
    assert match_resonance(rec, 0.0, 0.0, **(kw | {"n_visible": 2})) is None


def test_decay_filters():
    assert higgs_ww_one_leptonic_one_hadronic([(24, True, "lep"), (24, True, "had"), (23, False, "nu")])
    assert not higgs_ww_one_leptonic_one_hadronic([(24, True, "had"), (24, True, "had")])


def test_detector_presets_change_the_jets(toptag_chunks):
    top_truth = toptag_chunks[0]
    top_cms, _ = run_shard(ShardTask("toptag", 1, 0, 200, seed=11, detector="cms"))
    top_atlas, _ = run_shard(ShardTask("toptag", 1, 0, 200, seed=11, detector="atlas"))
    n_truth, n_cms, n_atlas = (c.n_particles.mean() for c in (top_truth, top_cms, top_atlas))
    # calorimeter merging and thresholds remove particles; ATLAS-like cells are coarser
    assert n_cms < 0.95 * n_truth
    assert n_atlas < n_cms
    m, part = top_atlas.mask, top_atlas.particles
    pt = np.hypot(top_atlas.p4[..., 0], top_atlas.p4[..., 1])
    tracks = m & (part["charge"] != 0)
    assert pt[tracks].min() > 1.0  # ATLAS-like track threshold
    assert top_atlas.p4[..., 3][m & (part["pid"] == 22)].min() > 1.0  # ECAL cell threshold
    assert top_atlas.p4[..., 3][m & (part["pid"] == 130)].min() > 1.5  # HCAL cell threshold
    assert set(np.unique(part["pid"][m & (part["charge"] == 0)])) <= {22, 130}
    assert 150 < np.median(top_cms.jet_kinematics()["mass"]) < 185


def test_class_mix_and_balance():
    job = GenerationJob("jetclass", 1003, Path("x.h5"))
    counts = job.class_counts()
    assert sum(counts.values()) == 1003
    assert max(counts.values()) - min(counts.values()) <= 1
    mixed = GenerationJob("toptag", 100, Path("x.h5"), mix={"QCD": 3, "Top": 1}).class_counts()
    assert mixed == {"QCD": 75, "Top": 25}


def _hash(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_same_seed_same_file_whatever_the_workers(tmp_path):
    kw = dict(dataset="toptag", n_jets=120, seed=21, shard_size=30, batch_events=100)
    a = GenerationJob(out=tmp_path / "a.h5", **kw)
    b = GenerationJob(out=tmp_path / "b.h5", **kw)
    run_job(a, workers=1, progress=False)
    run_job(b, workers=2, progress=False)
    assert _hash(a.out) == _hash(b.out)
    assert not (tmp_path / "a.h5.parts").exists()
    c = GenerationJob(out=tmp_path / "c.h5", **(kw | {"seed": 22}))
    run_job(c, workers=2, progress=False)
    assert _hash(c.out) != _hash(a.out)


def test_resume_from_finished_shards(tmp_path):
    kw = dict(dataset="toptag", n_jets=80, seed=4, shard_size=20, batch_events=100)
    ref = GenerationJob(out=tmp_path / "ref.h5", **kw)
    run_job(ref, progress=False)
    job = GenerationJob(out=tmp_path / "out.h5", **kw)
    parts = _prepare_parts_dir(job, restart=False)
    first = job.tasks()[0]
    _run_and_save(first, _part_path(parts, first))  # as if killed after one shard
    before = _part_path(parts, first).stat().st_mtime_ns
    assert not job.out.exists()
    run_job(job, progress=False)
    assert _hash(job.out) == _hash(ref.out)
    # a changed job refuses to reuse shards of another one
    other = GenerationJob(out=tmp_path / "out2.h5", **kw)
    _prepare_parts_dir(other, restart=False)
    changed = GenerationJob(out=tmp_path / "out2.h5", **(kw | {"seed": 5}))
    with pytest.raises(Exception, match="--restart"):
        _prepare_parts_dir(changed, restart=False)
    assert before > 0


def test_killed_cli_run_leaves_no_output_and_resumes(tmp_path):
    out = tmp_path / "killed.h5"
    cmd = [sys.executable, "-m", "hepfm.cli", "generate", "toptag", "--n-jets", "600", "--out", str(out),
           "--shard-size", "50", "--workers", "2", "--no-progress", "--seed", "9"]
    proc = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    parts = tmp_path / "killed.h5.parts"
    deadline = time.time() + 60
    while time.time() < deadline and len(list(parts.glob("*.npz"))) < 2:
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not out.exists()
    done = len(list(parts.glob("*.npz")))
    assert 2 <= done < 12
    res = subprocess.run([*cmd, "--json"], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert out.exists()
    assert not parts.exists()
    assert json.loads(res.stdout)["class_counts"] == {"QCD": 300, "Top": 300}


def test_cli_generate_unlabeled_and_bad_options(tmp_path, capsys):
    out = tmp_path / "u.h5"
    assert cli_main(["generate", "toptag", "--n-jets", "40", "--out", str(out), "--unlabeled",
                     "--no-progress", "--shard-size", "20"]) == 0
    from hepfm.data.formats import open_source

    src = open_source(out)
    assert len(src) == 40
    assert not src.has_labels
    chunk = src.read(0, 40)
    assert chunk.label is None
    assert not any(k.startswith("truth") for k in chunk.jets)
    assert cli_main(["generate", "toptag", "--n-jets", "10", "--out", str(out), "--mix", "Bogus=1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert "Bogus" in err[0]
    assert cli_main(["generate", "toptag", "--n-jets", "0", "--out", str(out)]) == 2


def test_dataset_specs_are_consistent():
    for name in DATASETS:
        spec = DATASETS.get(name)
        assert len(spec.class_names) == len(set(spec.classes.values()))


def test_substructure_separates_top_from_qcd(toptag_chunks):
    from hepfm.generation.substructure import substructure

    top, qcd, _ = toptag_chunks
    st, sq = substructure(top.p4, top.mask), substructure(qcd.p4, qcd.mask)
    assert 160 < np.median(st["jet_sdmass"]) < 185
    assert np.median(sq["jet_sdmass"]) < 80
    t32, q32 = st["jet_tau3"] / st["jet_tau2"], sq["jet_tau3"] / sq["jet_tau2"]
    assert (t32[:, None] < q32[None, :]).mean() > 0.85  # datagen measured tau32 AUC 0.935
    assert np.all(st["jet_tau2"] <= st["jet_tau1"] + 1e-6)
