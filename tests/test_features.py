"""Feature sets against hand computations, padding invariance, field requirements, serialisation."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from hepfm.data.features import (
    FEATURE_SETS,
    JET_FEATURES,
    Feature,
    FeatureSet,
    get_feature_set,
    jet_features,
)
from hepfm.data.jets import PARTICLE_FIELDS, JetChunk
from hepfm.errors import HepfmInputError


def p4_of(pt: float, eta: float, phi: float, m: float = 0.0) -> list[float]:
    px, py, pz = pt * math.cos(phi), pt * math.sin(phi), pt * math.sinh(eta)
    return [px, py, pz, math.sqrt(px * px + py * py + pz * pz + m * m)]


def chunk_of(jets: list[list[list[float]]], n_slots: int | None = None, **particles) -> JetChunk:
    """A JetChunk from lists of per-particle four-vectors, zero-padded to ``n_slots``."""
    size = n_slots or max(len(j) for j in jets)
    p4 = np.zeros((len(jets), size, 4), np.float32)
    mask = np.zeros((len(jets), size), bool)
    for i, j in enumerate(jets):
        p4[i, : len(j)] = j
        mask[i, : len(j)] = True
    fields = {}
    for k, vals in particles.items():
        arr = np.zeros((len(jets), size), np.float32)
        for i, v in enumerate(vals):
            arr[i, : len(v)] = v
        fields[k] = arr
    return JetChunk(p4=p4, mask=mask, particles=fields)


def wrap(d: float) -> float:
    while d >= math.pi:
        d -= 2 * math.pi
    while d < -math.pi:
        d += 2 * math.pi
    return d


# One two-particle jet straddling the φ = ±π boundary.
P1 = (100.0, 0.5, 3.0)  # pt, eta, phi
P2 = (50.0, -0.2, -3.0)


def hand_jet() -> dict[str, float]:
    """The jet axis and sums, by hand with the math module."""
    a, b = p4_of(*P1), p4_of(*P2)
    s = [x + y for x, y in zip(a, b, strict=True)]
    pt = math.hypot(s[0], s[1])
    return {
        "pt": pt,
        "eta": math.asinh(s[2] / pt),
        "phi": math.atan2(s[1], s[0]),
        "energy": s[3],
        "mass": math.sqrt(s[3] ** 2 - s[0] ** 2 - s[1] ** 2 - s[2] ** 2),
    }


def std(v: float, c: float, s: float) -> float:
    return min(5.0, max(-5.0, (v - c) * s))


def test_kin_against_hand_computation():
    c = chunk_of([[p4_of(*P1), p4_of(*P2)]])
    fs = FEATURE_SETS.get("kin")
    assert fs.names == (
        "part_pt_log", "part_e_log", "part_logptrel", "part_logerel", "part_deltaR", "part_deta", "part_dphi",
    )
    x = fs.compute(c)
    assert x.shape == (1, 2, 7)
    assert x.dtype == np.float32
    j = hand_jet()
    # the jet axis sits just below +π; particle 2 (φ = -3) is across the boundary
    assert j["phi"] == pytest.approx(3.09412, abs=1e-4)
    for k, (pt, eta, phi) in enumerate([P1, P2]):
        e = pt * math.cosh(eta)
        deta = eta - j["eta"]
        dphi = wrap(phi - j["phi"])
        expect = [
            std(math.log(pt), 1.7, 0.7),
            std(math.log(e), 2.0, 0.7),
            std(math.log(pt / j["pt"]), -4.7, 0.7),
            std(math.log(e / j["energy"]), -4.7, 0.7),
            std(math.hypot(deta, dphi), 0.2, 4.0),
            deta,
            dphi,
        ]
        np.testing.assert_allclose(x[0, k], expect, rtol=1e-5, atol=2e-6)
    # Δφ across the boundary is small and of the right sign, not ~2π
    assert x[0, 0, 6] == pytest.approx(3.0 - 3.09412, abs=1e-4)
    assert x[0, 1, 6] == pytest.approx(-3.0 + 2 * math.pi - 3.09412, abs=1e-4)


def test_clipping_and_dphi_range():
    # a very soft particle: standardised logs hit the -5 clip; Δφ of exactly π maps to -π
    c = chunk_of([[p4_of(100.0, 0.0, 0.0), p4_of(1e-4, 0.0, math.pi)]])
    x = FEATURE_SETS.get("kin").compute(c)
    assert x[0, 1, 0] == -5.0
    assert x[0, 1, 2] == -5.0
    assert -math.pi <= x[0, 1, 6] < math.pi
    assert x[0, 1, 6] == pytest.approx(-math.pi, abs=1e-5)


def test_jetclr_raw_eta_phi():
    c = chunk_of([[p4_of(*P1), p4_of(*P2)]])
    fs = FEATURE_SETS.get("jetclr")
    assert fs.names == (
        "part_eta", "part_phi", "part_pt_log", "part_e_log", "part_logptrel", "part_logerel",
    )
    x = fs.compute(c)
    j = hand_jet()
    for k, (pt, eta, phi) in enumerate([P1, P2]):
        e = pt * math.cosh(eta)
        expect = [eta, phi, std(math.log(pt), 1.7, 0.7), std(math.log(e), 2.0, 0.7),
                  std(math.log(pt / j["pt"]), -4.7, 0.7), std(math.log(e / j["energy"]), -4.7, 0.7)]
        np.testing.assert_allclose(x[0, k], expect, rtol=1e-5, atol=2e-6)


def full_fields() -> dict[str, list[list[float]]]:
    return {
        "charge": [[1.0, 0.0]],
        "isChargedHadron": [[1.0, 0.0]],
        "isNeutralHadron": [[0.0, 0.0]],
        "isPhoton": [[0.0, 1.0]],
        "isElectron": [[0.0, 0.0]],
        "isMuon": [[0.0, 0.0]],
        "d0val": [[0.3, -2.0]],
        "d0err": [[0.05, 1.7]],
        "dzval": [[-0.4, 0.0]],
        "dzerr": [[-0.1, 0.2]],
    }


def test_full_and_kinpid_against_hand_computation():
    c = chunk_of([[p4_of(*P1), p4_of(*P2)]], **full_fields())
    kin = FEATURE_SETS.get("kin").compute(c)
    full = FEATURE_SETS.get("full")
    assert full.dim == 17
    assert FEATURE_SETS.get("kinpid").dim == 13
    x = full.compute(c)
    # ParT config order: 5 kinematics, charge, 5 PID, d0, d0err, dz, dzerr, deta, dphi
    np.testing.assert_array_equal(x[..., :5], kin[..., :5])
    np.testing.assert_array_equal(x[..., 15:], kin[..., 5:])
    np.testing.assert_allclose(x[0, :, 5:11], [[1, 1, 0, 0, 0, 0], [0, 0, 0, 1, 0, 0]])
    np.testing.assert_allclose(x[0, 0, 11:15], [math.tanh(0.3), 0.05, math.tanh(-0.4), 0.0], rtol=1e-6)
    np.testing.assert_allclose(x[0, 1, 11:15], [math.tanh(-2.0), 1.0, 0.0, 0.2], rtol=1e-6)
    kp = FEATURE_SETS.get("kinpid").compute(c)
    np.testing.assert_array_equal(kp[..., :11], x[..., :11])
    np.testing.assert_array_equal(kp[..., 11:], x[..., 15:])


@pytest.mark.parametrize("name", FEATURE_SETS.names())
def test_padding_zero_and_invariant(name):
    rng = np.random.default_rng(1)
    jets = [[p4_of(rng.uniform(1, 50), rng.normal(0, 1), rng.uniform(-3.1, 3.1)) for _ in range(k)]
            for k in (3, 1, 5)]
    fields = {f: [list(rng.uniform(0, 1, len(j))) for j in jets] for f in PARTICLE_FIELDS if f != "pid"}
    fields["object_type"] = [list(rng.integers(0, 7, len(j))) for j in jets]
    fs = FEATURE_SETS.get(name)
    tight = fs.compute(chunk_of(jets, **fields))
    loose = fs.compute(chunk_of(jets, n_slots=12, **fields))
    assert loose.shape == (3, 12, fs.dim)
    np.testing.assert_array_equal(loose[:, :5], tight)
    mask = chunk_of(jets, n_slots=12).mask
    assert np.all(loose[~mask] == 0)
    assert np.all(np.isfinite(loose))


def test_vectorised_matches_naive_loop():
    """Random jets (all φ quadrants, both η signs) against a per-particle math-module computation."""
    rng = np.random.default_rng(7)
    jets = []
    for _ in range(20):
        axis_eta, axis_phi = rng.uniform(-2, 2), rng.uniform(-math.pi, math.pi)
        jets.append([p4_of(rng.exponential(20) + 0.1, axis_eta + rng.normal(0, 0.4),
                           axis_phi + rng.normal(0, 0.4), rng.uniform(0, 0.2))
                     for _ in range(rng.integers(1, 30))])
    c = chunk_of(jets, n_slots=32)
    x = FEATURE_SETS.get("kin").compute(c)
    xr = FEATURE_SETS.get("jetclr").compute(c)
    for i, jet in enumerate(jets):
        s = np.sum(np.asarray(jet, np.float64), axis=0)
        jpt, je = math.hypot(s[0], s[1]), s[3]
        jeta, jphi = math.asinh(s[2] / jpt), math.atan2(s[1], s[0])
        for k, (px, py, pz, e) in enumerate(np.asarray(jet, np.float32).astype(np.float64)):
            pt = math.hypot(px, py)
            eta, phi = math.asinh(pz / pt), math.atan2(py, px)
            deta, dphi = (eta - jeta) * (-1 if jeta < 0 else 1), wrap(phi - jphi)
            expect = [std(math.log(pt), 1.7, 0.7), std(math.log(e), 2.0, 0.7),
                      std(math.log(pt / jpt), -4.7, 0.7), std(math.log(e / je), -4.7, 0.7),
                      std(math.hypot(deta, dphi), 0.2, 4.0), deta, dphi]
            np.testing.assert_allclose(x[i, k], expect, rtol=2e-5, atol=2e-5)
            np.testing.assert_allclose(xr[i, k, :2], [eta, wrap(phi)], rtol=2e-5, atol=2e-5)


def test_flip_eta_convention():
    # ParT's Δη = (η - η_jet) * sign(η_jet): on by default for the ParT sets, off on request
    jets = [[p4_of(30, -1.2, 0.1), p4_of(20, -1.0, 0.0)], [p4_of(30, 1.2, 0.1), p4_of(20, 1.0, 0.0)]]
    c = chunk_of(jets)
    kin = FEATURE_SETS.get("kin")
    assert kin.flip_eta
    assert FEATURE_SETS.get("full").flip_eta
    assert FEATURE_SETS.get("kinpid").flip_eta
    flipped, plain = kin.compute(c), kin.replace(flip_eta=False).compute(c)
    assert plain[0, 0, 5] < 0 < flipped[0, 0, 5]  # the harder particle is at lower η than the axis
    np.testing.assert_allclose(flipped[0, :, 5], -plain[0, :, 5])  # negative-η jet: sign flipped
    np.testing.assert_array_equal(flipped[1], plain[1])  # positive-η jet: unchanged
    np.testing.assert_array_equal(flipped[..., :5], plain[..., :5])  # ΔR etc. do not care
    assert FeatureSet.from_dict(kin.replace(flip_eta=False).to_dict()).flip_eta is False


@pytest.mark.parametrize(("name", "field"), [("kinpid", "charge"), ("full", "charge"), ("full", "d0val")])
def test_missing_fields_raise(name, field):
    fields = {k: v for k, v in full_fields().items() if k != field}
    c = chunk_of([[p4_of(*P1), p4_of(*P2)]], **fields)
    with pytest.raises(HepfmInputError) as err:
        FEATURE_SETS.get(name).compute(c, path="top_test.h5")
    msg = str(err.value)
    assert field in msg
    assert repr(name) in msg
    assert "top_test.h5" in msg
    assert err.value.path == "top_test.h5"


def test_requires():
    assert FEATURE_SETS.get("kin").requires == ()
    assert FEATURE_SETS.get("jetclr").requires == ()
    assert set(FEATURE_SETS.get("kinpid").requires) == {"charge", "isChargedHadron", "isNeutralHadron",
                                                         "isPhoton", "isElectron", "isMuon"}
    assert {"d0val", "d0err", "dzval", "dzerr"} <= set(FEATURE_SETS.get("full").requires)


@pytest.mark.parametrize("name", FEATURE_SETS.names())
def test_serialisation_round_trip(name):
    fs = FEATURE_SETS.get(name)
    d = json.loads(json.dumps(fs.to_dict()))
    back = FeatureSet.from_dict(d)
    assert back == fs
    assert get_feature_set(d) == fs
    assert get_feature_set(name) is fs
    assert any(f["center"] is not None for f in d["features"])


def test_custom_standardisation_from_dict():
    d = FEATURE_SETS.get("kin").to_dict()
    d["name"] = "kin_raw"
    for f in d["features"]:
        f["center"] = None
    c = chunk_of([[p4_of(*P1), p4_of(*P2)]])
    x = FeatureSet.from_dict(d).compute(c)
    assert x[0, 0, 0] == pytest.approx(math.log(100.0), rel=1e-6)


def test_bad_descriptions_raise():
    with pytest.raises(HepfmInputError, match="unknown quantity"):
        Feature("part_x", "no_such_thing")
    with pytest.raises(HepfmInputError, match="malformed"):
        FeatureSet.from_dict({"features": []})
    with pytest.raises(HepfmInputError, match="unknown feature set"):
        get_feature_set("kinn")


def test_jet_features_match_jetchunk():
    rng = np.random.default_rng(3)
    jets = [[p4_of(rng.uniform(1, 50), rng.normal(0, 1), rng.uniform(-3, 3), 0.1) for _ in range(k)]
            for k in (4, 1, 7, 2)]
    c = chunk_of(jets, n_slots=8)
    jv = jet_features(c)
    assert jv.shape == (4, len(JET_FEATURES))
    assert jv.dtype == np.float32
    jk = c.jet_kinematics()
    np.testing.assert_allclose(jv, np.stack([jk[k] for k in JET_FEATURES], 1), rtol=1e-5, atol=1e-5)
    j = hand_jet()
    jv1 = jet_features(chunk_of([[p4_of(*P1), p4_of(*P2)]]))[0]
    np.testing.assert_allclose(jv1, [j[k] for k in JET_FEATURES], rtol=1e-5)


def test_empty_jet_and_large_chunk_blocks():
    # an all-padding jet gives zeros; chunks larger than one compute block give the same answer
    rng = np.random.default_rng(5)
    jets = [[p4_of(rng.uniform(1, 9), rng.normal(), rng.uniform(-3, 3)) for _ in range(rng.integers(1, 4))]
            for _ in range(5000)]
    c = chunk_of(jets, n_slots=4)
    c.p4[10] = 0
    c.mask[10] = False
    fs = FEATURE_SETS.get("kin")
    x = fs.compute(c)
    assert np.all(x[10] == 0)
    np.testing.assert_array_equal(x[4000:], fs.compute(c.take(slice(4000, None))))
    rag = fs.compute_ragged(c)
    np.testing.assert_array_equal(rag.x, x[c.mask])
    np.testing.assert_array_equal(rag.counts, c.mask.sum(1))


@pytest.mark.parametrize("fmt", ["hepfm", "toptag-h5", "jetclass-root", "memory"])
def test_a_particle_cap_does_not_change_the_kept_particles_features(tmp_path, fmt):
    """Jet-relative features (pT/E fractions, Δη/Δφ to the axis) refer to the whole jet, as ParT's
    configs do, whatever cap drops the softest particles (readers and JetChunk.truncate)."""
    from _factories import random_chunk

    from hepfm.data.formats import open_source, write_jets
    from hepfm.data.jets import FULL_JET_P4

    chunk = random_chunk(40, 30, seed=7, mean_particles=18, min_particles=8)
    if fmt == "memory":
        full, capped = chunk, chunk.truncate(6)
    else:
        path = tmp_path / ("j.root" if fmt == "jetclass-root" else "j.h5")
        write_jets(path, [chunk], fmt, {})
        full = open_source(path, max_particles=None).read(0, 40)
        capped = open_source(path, max_particles=6).read(0, 40)
    assert capped.max_particles == 6
    assert FULL_JET_P4 in capped.jets
    np.testing.assert_allclose(capped.jet_p4(), full.p4.sum(axis=1, dtype=np.float64), rtol=1e-6, atol=1e-6)
    fs = FEATURE_SETS.get("kin")
    want = fs.compute(full)[:, :6]
    got = fs.compute(capped)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(fs.jet_features(capped), fs.jet_features(full), rtol=1e-5)
    # without the whole-jet sums the kept particles alone would define the jet: a real difference
    alone = JetChunk(p4=capped.p4, mask=capped.mask, label=capped.label, class_names=capped.class_names)
    assert np.abs(fs.compute(alone) - want).max() > 1e-2
