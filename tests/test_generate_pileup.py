"""The pileup overlay of ``hepfm generate --pileup MU``: physics, reproducibility, resume identity, misuse.

Small samples (tens of jets, libraries of 100-200 min-bias events) keep the module at ~30 s on 2 cores.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("pythia8mc")
pytest.importorskip("fastjet")

from hepfm.cli import main as cli_main
from hepfm.data.jets import JetChunk
from hepfm.generation.job import GenerationJob, _prepare_parts_dir, run_job
from hepfm.generation.pileup import pileup_pthat_min
from hepfm.generation.worker import ShardTask, run_shard

pytestmark = pytest.mark.gen

MU = 20.0
#: The same hard process with and without pileup (the overlay otherwise lowers pTHatMin by ~3 GeV * MU),
#: so the same seed gives the same hard events and the jets can be compared event by event.
SAME_HARD = ("PhaseSpace:pTHatMin = 500.",)


def _shard(**kw: object) -> JetChunk:
    task = dict(dataset="toptag", class_index=0, shard=0, n_jets=30, seed=7, batch_events=50,
                extra_settings=SAME_HARD, pileup_library=150, pileup_seed=3) | kw
    return run_shard(ShardTask(**task))[0]


def _by_event(chunk: JetChunk) -> dict[float, int]:
    """Jet index by its event's pTHat (unique per hard event): matches jets of the same hard event."""
    return {float(p): i for i, p in enumerate(chunk.jets["pthat"])}


@pytest.fixture(scope="module")
def clean_and_pileup() -> tuple[JetChunk, JetChunk]:
    return _shard(), _shard(pileup=MU)


def test_pileup_adds_particles_mass_and_pt(clean_and_pileup):
    clean, pu = clean_and_pileup
    n_clean, n_pu = clean.jets["n_const"].mean(), pu.jets["n_const"].mean()
    # a min-bias interaction puts ~6 visible particles into an R = 0.8 jet (measured ~6.1)
    assert 2 * MU < n_pu - n_clean < 15 * MU, (n_clean, n_pu)
    m_clean, m_pu = np.median(clean.jet_kinematics()["mass"]), np.median(pu.jet_kinematics()["mass"])
    assert m_pu > m_clean + 15, (m_clean, m_pu)
    # the same hard events: pileup adds ~3 GeV of jet pT per interaction (measured 2.8-3.1)
    a, b = _by_event(clean), _by_event(pu)
    common = sorted(set(a) & set(b))
    assert len(common) >= 5, "too few hard events selected with and without pileup"
    pt_clean = clean.jet_kinematics()["pt"][[a[p] for p in common]]
    pt_pu = pu.jet_kinematics()["pt"][[b[p] for p in common]]
    gain = (pt_pu - pt_clean).mean()
    assert 1.0 * MU < gain < 6.0 * MU, gain
    frac = pu.jets["pileup_pt_fraction"]
    assert np.all((frac > 0) & (frac < 0.5))
    assert "pileup_pt_fraction" not in clean.jets
    # pileup vertices lie ~N(0, 64 mm) from the hard one: their tracks have large |dz| (in clean jets only
    # decays of K0S, Lambda, ... at cm distances do; measured 4 % of the tracks vs 62 % at MU = 20)
    charged_clean = clean.mask & (clean.particles["charge"] != 0)
    charged_pu = pu.mask & (pu.particles["charge"] != 0)
    assert np.mean(np.abs(clean.particles["dzval"][charged_clean]) > 10.0) < 0.1
    assert np.mean(np.abs(pu.particles["dzval"][charged_pu]) > 10.0) > 0.4


def test_pileup_goes_through_the_detector(clean_and_pileup):
    _, particle_level = clean_and_pileup
    det = _shard(pileup=MU, detector="atlas", n_jets=20)
    m, part = det.mask, det.particles
    pt = np.hypot(det.p4[..., 0], det.p4[..., 1])
    assert pt[m & (part["charge"] != 0)].min() > 1.0  # the track threshold applies to pileup tracks too
    assert set(np.unique(part["pid"][m & (part["charge"] == 0)])) <= {22, 130}  # merged into cells
    frac = det.jets["pileup_pt_fraction"]
    assert np.all((frac > 0) & (frac < 0.5))
    # thresholds and cell merging remove most of the soft pileup particles
    assert det.jets["n_const"].mean() < 0.6 * particle_level.jets["n_const"].mean()


def test_same_seed_same_pileup_and_another_seed_differs():
    a, b = _shard(pileup=MU, n_jets=10), _shard(pileup=MU, n_jets=10)
    for k in ("p4", "mask"):
        np.testing.assert_array_equal(getattr(a, k), getattr(b, k))
    for k, v in a.particles.items():
        np.testing.assert_array_equal(v, b.particles[k], err_msg=k)
    c = _shard(pileup=MU, n_jets=10, pileup_seed=4)  # another library, the same hard events
    np.testing.assert_array_equal(a.jets["pthat"][:3], c.jets["pthat"][:3])
    assert not np.array_equal(a.p4[:3], c.p4[:3])


def test_fresh_min_bias_events_without_a_library():
    fresh = _shard(pileup=5.0, pileup_library=0, n_jets=5)
    again = _shard(pileup=5.0, pileup_library=0, n_jets=5)
    np.testing.assert_array_equal(fresh.p4, again.p4)
    assert np.all(fresh.jets["pileup_pt_fraction"] > 0)


def _hash(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _meta(path: Path) -> dict:
    from hepfm.data.formats import open_source

    return open_source(path).metadata


def test_same_seed_same_file_whatever_the_workers(tmp_path):
    """Every worker builds the same library (seeded per job), so the file does not depend on --workers."""
    kw = dict(dataset="toptag", n_jets=20, seed=5, shard_size=10, batch_events=50, pileup=10.0,
              pileup_library=100)
    a = GenerationJob(out=tmp_path / "a.h5", **kw)
    b = GenerationJob(out=tmp_path / "b.h5", **kw)
    run_job(a, workers=1, progress=False)
    run_job(b, workers=2, progress=False)
    assert _hash(a.out) == _hash(b.out)
    meta = _meta(a.out)
    assert meta["pileup"] == 10.0
    assert meta["pileup_overlay"]["library"] == 100
    assert "SoftQCD:nonDiffractive = on" in meta["pileup_overlay"]["minbias_settings"]
    floor = f"PhaseSpace:pTHatMin = {pileup_pthat_min(500.0, 0.8, 10.0)}"
    assert floor == "PhaseSpace:pTHatMin = 470.0"
    assert floor in meta["pythia_settings"]["QCD"]
    assert all(s["pileup_events"] > 0 for s in meta["shard_stats"].values())


def test_pileup_zero_is_the_run_without_the_flag(tmp_path):
    base = ["generate", "toptag", "--n-jets", "20", "--shard-size", "10", "--batch-events", "50",
            "--no-progress", "--seed", "3"]
    off, zero = tmp_path / "off.h5", tmp_path / "zero.h5"
    assert cli_main([*base, "--out", str(off)]) == 0
    assert cli_main([*base, "--out", str(zero), "--pileup", "0", "--pileup-library", "0"]) == 0
    assert _hash(off) == _hash(zero)
    meta = _meta(zero)
    assert meta["pileup"] == 0.0
    assert "pileup_overlay" not in meta
    assert "PhaseSpace:pTHatMin = 500.0" in meta["pythia_settings"]["QCD"]
    from hepfm.data.formats import open_source

    assert "pileup_pt_fraction" not in open_source(zero).read(0, 20).jets


@pytest.mark.parametrize(
    "option",
    [["--pileup", "-1"], ["--pileup", "nan"], ["--pileup", "inf"], ["--pileup=-inf"], ["--pileup", "1e9"],
     ["--pileup-library", "-5"]],
)
def test_bad_pileup_values_give_one_line(tmp_path, capsys, option):
    argv = ["generate", "toptag", "--n-jets", "20", "--out", str(tmp_path / "o.h5"), "--no-progress", *option]
    assert cli_main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert option[0].split("=")[0] in err[0], err
    assert list(tmp_path.iterdir()) == []


def test_resume_refuses_another_pileup(tmp_path, capsys):
    kw = dict(dataset="toptag", n_jets=20, out=tmp_path / "o.h5", shard_size=10)
    _prepare_parts_dir(GenerationJob(pileup=5.0, **kw), restart=False)
    _prepare_parts_dir(GenerationJob(pileup=5.0, **kw), restart=False)  # the same options: accepted
    for other in ({"pileup": 10.0}, {"pileup": 0.0}, {"pileup": 5.0, "pileup_library": 50}):
        with pytest.raises(Exception, match="--restart"):
            _prepare_parts_dir(GenerationJob(**(kw | other)), restart=False)
    manifest = json.loads((tmp_path / "o.h5.parts" / "job.json").read_text())
    assert manifest["pileup"] == 5.0
    # the CLI says so in one line, before generating anything
    argv = ["generate", "toptag", "--n-jets", "20", "--out", str(tmp_path / "o.h5"), "--shard-size", "10",
            "--no-progress", "--pileup", "7"]
    assert cli_main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert "--restart" in err[0], err
    assert not list((tmp_path / "o.h5.parts").glob("*.npz"))


def test_pthat_floor_follows_the_pileup():
    assert pileup_pthat_min(500.0, 0.8, 0.0) == 500.0
    assert pileup_pthat_min(500.0, 0.8, 50.0) == 350.0
    assert pileup_pthat_min(500.0, 0.8, 1000.0) == 125.0  # floor: a quarter
