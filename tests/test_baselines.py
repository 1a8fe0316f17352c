"""The boosted-tree baseline: hand-computed features, separation where the features differ, chance where
they do not, and the same labeled jets as ``hepfm finetune --n-labels``."""

from __future__ import annotations

import numpy as np
import pytest
from _factories import chunk_from_jets, jetclass_chunk, random_chunk, two_particle_jet

from hepfm.data.formats import open_sources, write_jets
from hepfm.data.jets import JetChunk
from hepfm.errors import HepfmInputError
from hepfm.studies import baselines
from hepfm.studies.baselines import HIGH_LEVEL_FEATURES, bdt_baseline, high_level_features
from hepfm.workflows.data import balanced_subset

F = {name: i for i, name in enumerate(HIGH_LEVEL_FEATURES)}
KEYS = {"accuracy", "auc", "rej30", "rej50", "n_jets", "seconds", "features", "per_class"}


def two_prong(chunk: JetChunk, angle: float = 0.5) -> JetChunk:
    """``chunk`` with every other particle of the class-1 jets turned by ``angle`` in phi: a second prong,
    so those jets are heavier (particles stay on shell and pT-ordered)."""
    p4 = chunk.p4.astype(np.float64)
    assert chunk.label is not None
    turn = (chunk.label == 1)[:, None] & (np.arange(chunk.max_particles) % 2 == 1)[None, :]
    c, s = np.cos(angle), np.sin(angle)
    px, py = p4[..., 0].copy(), p4[..., 1].copy()
    p4[..., 0] = np.where(turn, c * px - s * py, px)
    p4[..., 1] = np.where(turn, s * px + c * py, py)
    return JetChunk(p4=p4.astype(np.float32), mask=chunk.mask, label=chunk.label,
                    class_names=chunk.class_names)


def write(path, chunk: JetChunk) -> str:
    write_jets(path, [chunk], "hepfm")
    return str(path)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, str]:
    """Train/val/test files where class 1 (Top) jets have two prongs, and test files with random labels."""
    root = tmp_path_factory.mktemp("bdt")
    out = {}
    for name, n, seed in (("train", 600, 1), ("val", 300, 2), ("test", 600, 3)):
        out[name] = write(root / f"{name}.h5", two_prong(random_chunk(n, 32, seed=seed, mean_particles=16)))
    # random labels: the features carry no information about them
    out["random_train"] = write(root / "rtrain.h5", random_chunk(400, 32, seed=4, mean_particles=16))
    out["random_val"] = write(root / "rval.h5", random_chunk(300, 32, seed=5, mean_particles=16))
    out["random_test"] = write(root / "rtest.h5", random_chunk(1000, 32, seed=6, mean_particles=16))
    return out


def test_features_of_a_hand_built_two_particle_jet():
    mass, pt, eta = 80.0, 300.0, 0.3
    sym = two_particle_jet(mass, pt, pt, eta)  # equal pT: soft drop keeps both
    asym = two_particle_jet(mass, 300.0, 20.0, eta)  # z = 20/320 < 0.1: soft drop drops the soft one
    x = high_level_features(chunk_from_jets([sym, asym], 6, labels=[0, 1]))
    assert x.shape == (2, len(HIGH_LEVEL_FEATURES))
    assert x.dtype == np.float64
    assert x[:, F["mass"]] == pytest.approx([mass, mass], rel=1e-4)
    assert x[:, F["multiplicity"]].tolist() == [2.0, 2.0]
    assert x[0, F["sdmass"]] == pytest.approx(mass, rel=1e-3)
    assert x[1, F["sdmass"]] == pytest.approx(0.0, abs=0.5)  # float32 rounding of a massless particle
    assert x[0, F["ptd"]] == pytest.approx(1 / np.sqrt(2), rel=1e-6)
    assert x[1, F["ptd"]] == pytest.approx(np.hypot(300, 20) / 320, rel=1e-6)
    # width: equal pT at the same eta, opening dphi -> the axis halves dphi; its eta follows from pz / pT
    dphi = np.arccos(1 - mass**2 / (2 * pt * pt))
    eta_axis = np.arcsinh(np.sinh(eta) / np.cos(dphi / 2))
    assert x[0, F["width"]] == pytest.approx(np.hypot(eta - eta_axis, dphi / 2), rel=1e-4)
    # two particles are two perfect subjets: tau2 = 0, and tau3 / tau2 is 0 by the safe division
    assert x[:, F["tau21"]] == pytest.approx([0.0, 0.0], abs=1e-6)
    assert x[:, F["tau32"]].tolist() == [0.0, 0.0]


def test_features_finite_and_ratios_bounded():
    chunk = jetclass_chunk(200, 40, seed=3)
    chunk.mask[0] = False  # an empty jet and a one-particle jet get features, not a FastJet crash
    chunk.p4[0] = 0
    chunk.mask[1, 1:] = False
    chunk.p4[1, 1:] = 0
    x = high_level_features(chunk)
    assert np.isfinite(x).all()
    assert x[0].tolist() == [0.0] * len(HIGH_LEVEL_FEATURES)
    assert x[1, F["multiplicity"]] == 1
    assert x[1, F["ptd"]] == pytest.approx(1.0)
    for name in ("tau21", "tau32"):
        assert (x[:, F[name]] >= 0).all()
        assert (x[2:, F[name]] > 0).mean() > 0.95
        assert (x[:, F[name]] <= 1.05).all()
    assert (x[2:, F["sdmass"]] <= x[2:, F["mass"]] + 1e-3).all()
    assert ((x[:, F["ptd"]] > 0) | (x[:, F["multiplicity"]] == 0)).all()


def test_bdt_separates_two_prong_jets(files):
    m = bdt_baseline([files["train"]], [files["val"]], [files["test"]], n_labels=200, seed=1,
                     max_particles=32)
    assert set(m) >= KEYS
    assert m["features"] == list(HIGH_LEVEL_FEATURES)
    assert m["n_jets"] == 600
    assert m["labels_per_class"] == {"QCD": 100, "Top": 100}
    assert m["auc"] > 0.9
    assert m["accuracy"] > 0.8
    assert 1 <= m["n_iter"] <= baselines.ITERATIONS[-1]


def test_bdt_is_at_chance_on_random_labels(files):
    m = bdt_baseline([files["random_train"]], [files["random_val"]], [files["random_test"]], n_labels=300,
                     seed=2, max_particles=32)
    assert m["auc"] == pytest.approx(0.5, abs=0.1)


def test_same_seed_same_jets_and_metrics_as_finetune(files, monkeypatch):
    drawn = []

    def spy(sources, n, seed):
        subset, per_class = balanced_subset(sources, n, seed)
        drawn.append(subset)
        return subset, per_class

    monkeypatch.setattr(baselines, "balanced_subset", spy)
    args = ([files["train"]], [files["val"]], [files["test"]])
    a = bdt_baseline(*args, n_labels=10, seed=7, max_particles=32)  # 10 labels: trees still train
    b = bdt_baseline(*args, n_labels=10, seed=7, max_particles=32)
    c = bdt_baseline(*args, n_labels=10, seed=8, max_particles=32)
    drop = ("seconds",)
    assert {k: v for k, v in a.items() if k not in drop} == {k: v for k, v in b.items() if k not in drop}
    # the jets finetune draws for (n_labels, seed): balanced_subset over the same files and cap
    ref, _ = balanced_subset(open_sources([files["train"]], max_particles=32), 10, 7)
    np.testing.assert_array_equal(drawn[0].p4, ref.p4)
    np.testing.assert_array_equal(drawn[0].p4, drawn[1].p4)
    assert len(drawn[2]) == 10
    assert c["labels_per_class"] == {"QCD": 5, "Top": 5}
    assert not np.array_equal(drawn[0].p4, drawn[2].p4)
    assert np.isfinite(c["auc"])


def test_multiclass_keys_match_the_networks(tmp_path):
    train = two_prong(jetclass_chunk(300, 24, seed=11, mean_particles=12))
    test = two_prong(jetclass_chunk(300, 24, seed=12, mean_particles=12))
    m = bdt_baseline([write(tmp_path / "tr.h5", train)], [], [write(tmp_path / "te.h5", test)], n_labels=100,
                     seed=0, max_particles=24)
    assert set(m["per_class"]) == {"QCD", "Hbb", "Hcc", "Hgg", "H4q", "Hqql", "Zqq", "Wqq", "Tbqq", "Tbl"}
    assert m["per_class"]["Hbb"]["auc"] > 0.8  # class 1 carries the second prong
    assert sum(m["labels_per_class"].values()) == 100
    assert m["n_iter"] == baselines.ITERATIONS[-1]  # no validation files: no selection


def test_bad_input_names_the_file(files, tmp_path):
    with pytest.raises(HepfmInputError, match="larger than the 600 labeled jets") as err:
        bdt_baseline([files["train"]], [files["val"]], [files["test"]], n_labels=601, seed=0)
    assert files["train"] in str(err.value)
    other = write(tmp_path / "jc.h5", jetclass_chunk(50, 16, seed=1))
    with pytest.raises(HepfmInputError, match="differ from the training classes") as err:
        bdt_baseline([files["train"]], [files["val"]], [other], n_labels=20, seed=0)
    assert other in str(err.value)
    with pytest.raises(HepfmInputError, match="fewer than the 2 classes"):
        bdt_baseline([files["train"]], [files["val"]], [files["test"]], n_labels=1, seed=0)
