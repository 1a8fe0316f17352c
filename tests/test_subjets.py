"""Subjet finding (hepfm.physics.subjets): FastJet anti-kT R=0.2 on padded batches, vectorised."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

pytest.importorskip("fastjet")

from hepfm.errors import HepfmInputError
from hepfm.physics.subjets import find_subjets, pt_eta_phi


def _particles(rng: np.random.Generator, n: int, eta: float, phi: float, pt: float,
               width: float) -> np.ndarray:
    """(n, 4) massless particles around (eta, phi) sharing ``pt``."""
    z = rng.dirichlet(np.ones(n)) * pt
    e, p = eta + rng.normal(0, width, n), phi + rng.normal(0, width, n)
    return np.stack([z * np.cos(p), z * np.sin(p), z * np.sinh(e), z * np.cosh(e)], axis=1)


def _pad(jets: list[np.ndarray], n_max: int, shuffle_slots: bool = False,
         seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Padded (B, N, 4) p4 and (B, N) mask; ``shuffle_slots`` scatters real particles among the slots."""
    rng = np.random.default_rng(seed)
    p4 = np.zeros((len(jets), n_max, 4))
    mask = np.zeros((len(jets), n_max), dtype=bool)
    for i, j in enumerate(jets):
        slots = rng.permutation(n_max)[: len(j)] if shuffle_slots else np.arange(len(j))
        p4[i, slots], mask[i, slots] = j, True
    return torch.tensor(p4, dtype=torch.float32), torch.tensor(mask)


def _random_jets(n_jets: int = 24, n_max: int = 40, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    jets = []
    for _ in range(n_jets):
        eta0, phi0 = rng.uniform(-2, 2), rng.uniform(-math.pi, math.pi)
        k = int(rng.integers(1, 4))
        parts = [_particles(rng, int(rng.integers(2, 12)), eta0 + rng.normal(0, 0.3),
                            phi0 + rng.normal(0, 0.3), rng.uniform(50, 300), 0.05) for _ in range(k)]
        jets.append(np.concatenate(parts)[:n_max])
    return jets


def test_two_separated_clusters_are_two_subjets() -> None:
    rng = np.random.default_rng(1)
    hard = _particles(rng, 8, 0.3, 1.0, 400.0, 0.02)
    soft = _particles(rng, 6, -0.2, 1.4, 100.0, 0.02)  # ΔR ≈ 0.64 > 2R
    p4, mask = _pad([np.concatenate([soft, hard])], 20)  # slots 0-5 soft, 6-13 hard
    s = find_subjets(p4, mask, radius=0.2)
    assert s.mask.tolist() == [[True, True]]
    assert s.count.tolist() == [2]
    assert s.index[0].tolist() == [1] * 6 + [0] * 8 + [-1] * 6  # the harder cluster is subjet 0
    assert torch.allclose(s.p4[0, 0], torch.tensor(hard.sum(0), dtype=torch.float32), rtol=1e-4)


def test_every_real_particle_in_exactly_one_subjet_and_sums_match() -> None:
    p4, mask = _pad(_random_jets(), 40, shuffle_slots=True)
    s = find_subjets(p4, mask)
    assert ((s.index >= 0) == mask).all()  # each real particle has one subjet index, padding has -1
    _b, n_sub = s.mask.shape
    one_hot = torch.nn.functional.one_hot(s.index.clamp(min=0), n_sub) * mask.unsqueeze(-1)  # (B, N, S)
    assert (one_hot.sum(-1) == mask.long()).all()
    member_p4 = torch.einsum("bns,bnd->bsd", one_hot.double(), p4.double())
    assert torch.allclose(member_p4.float(), s.p4, rtol=1e-5, atol=1e-3)  # subjet = sum of its particles
    jet = (p4.double() * mask.unsqueeze(-1)).sum(1)
    assert torch.allclose(s.p4.double().sum(1), jet, rtol=1e-5, atol=1e-3)  # subjets sum to the jet
    assert torch.allclose(s.jet_p4.double(), jet, rtol=1e-5, atol=1e-3)
    assert (s.mask.sum(1) == s.count).all()
    pt = torch.hypot(s.p4[..., 0], s.p4[..., 1])
    assert (pt[:, :-1] >= pt[:, 1:] - 1e-3).all()  # pT-ordered, padding (zero) last


def test_matches_fastjet_inclusive_jets() -> None:
    import awkward as ak
    import fastjet

    jets = _random_jets(6, seed=3)
    p4, mask = _pad(jets, 40)
    s = find_subjets(p4, mask)
    for i, j in enumerate(jets):
        arr = ak.Array([{"px": v[0], "py": v[1], "pz": v[2], "E": v[3]} for v in j.astype(np.float32)])
        cs = fastjet.ClusterSequence(arr, fastjet.JetDefinition(fastjet.antikt_algorithm, 0.2))
        pts = sorted((float(np.hypot(x.px, x.py)) for x in cs.inclusive_jets()), reverse=True)
        ours = torch.hypot(s.p4[i, :, 0], s.p4[i, :, 1])[s.mask[i]].tolist()
        assert ours == pytest.approx(pts, rel=1e-4)


def test_max_subjets_keeps_the_leading_ones() -> None:
    p4, mask = _pad(_random_jets(seed=5), 40)
    full, cut = find_subjets(p4, mask), find_subjets(p4, mask, max_subjets=2)
    assert cut.p4.shape[1] == 2
    assert torch.equal(cut.count, full.count)
    assert torch.allclose(cut.p4, full.p4[:, :2])
    # particles of softer subjets get -1
    assert torch.equal(cut.index, torch.where(full.index < 2, full.index, -1))


def test_empty_and_single_particle_jets() -> None:
    rng = np.random.default_rng(2)
    p4, mask = _pad([np.zeros((0, 4)), _particles(rng, 1, 0.0, 0.0, 100.0, 0.0)], 5)
    s = find_subjets(p4, mask)
    assert s.count.tolist() == [0, 1]
    assert s.mask.tolist() == [[False], [True]]
    assert s.index[0].tolist() == [-1] * 5
    assert s.index[1, 0] == 0


def test_coordinates_relative_to_the_jet_axis_wrap_phi() -> None:
    rng = np.random.default_rng(4)
    a = _particles(rng, 5, 0.5, math.pi - 0.1, 300.0, 0.01)
    b = _particles(rng, 5, 0.5, -math.pi + 0.3, 100.0, 0.01)  # across the ±π seam
    p4, mask = _pad([np.concatenate([a, b])], 12)
    s = find_subjets(p4, mask)
    c = s.coordinates()[0]  # (S, 3)
    assert c.shape == (2, 3)
    assert (c[:, :2].abs() < 0.5).all()
    assert c[0, 1] < 0 < c[1, 1]  # harder subjet on the low-φ side of the axis
    assert torch.allclose(c[:, 2].exp().sum(), torch.tensor(1.0), atol=0.02)  # pT fractions of a 2-subjet jet
    pt, eta, _ = pt_eta_phi(s.p4[0])
    assert torch.allclose(pt, torch.tensor([300.0, 100.0]), rtol=0.02)
    assert (eta - 0.5).abs().max() < 0.05


def test_bad_options() -> None:
    p4, mask = _pad(_random_jets(2), 40)
    with pytest.raises(HepfmInputError, match="algorithm"):
        find_subjets(p4, mask, algorithm="siscone")
    with pytest.raises(HepfmInputError, match="radius"):
        find_subjets(p4, mask, radius=0.0)
    assert find_subjets(p4, mask, algorithm="ca").mask.any()
