"""ParT pair features: a hand-computed two-particle case, a naive double loop, masking."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from hepfm.physics.pairwise import PAIR_FEATURES, pairwise_features

EPS = 1e-8


def p4_of(pt: float, eta: float, phi: float, m: float = 0.0) -> list[float]:
    px, py, pz = pt * math.cos(phi), pt * math.sin(phi), pt * math.sinh(eta)
    return [px, py, pz, math.sqrt(px * px + py * py + pz * pz + m * m)]


def naive_pair(a, b) -> list[float]:
    """One pair, straight from the definitions (rapidity y, wrapped Δφ), in float64."""
    def pt_y_phi(v):
        px, py, pz, e = v
        return math.hypot(px, py), 0.5 * math.log((e + pz) / (e - pz)), math.atan2(py, px)

    pti, yi, phii = pt_y_phi(a)
    ptj, yj, phij = pt_y_phi(b)
    dphi = (phii - phij + math.pi) % (2 * math.pi) - math.pi
    delta = math.sqrt((yi - yj) ** 2 + dphi**2)
    ptmin = min(pti, ptj)
    s = [x + y for x, y in zip(a, b, strict=True)]
    m2 = s[3] ** 2 - s[0] ** 2 - s[1] ** 2 - s[2] ** 2
    return [
        math.log(max(ptmin * delta, EPS)),
        math.log(max(ptmin / max(pti + ptj, EPS), EPS)),
        math.log(max(delta, EPS)),
        math.log(max(m2, EPS)),
    ]


def test_channel_order():
    assert PAIR_FEATURES == ("ln_kt", "ln_z", "ln_delta", "ln_m2")


def test_two_particles_by_hand():
    # massive particles at rapidity-distinct points across the φ = ±π boundary
    a = p4_of(10.0, 0.5, 3.0, m=5.0)
    b = p4_of(5.0, -0.2, -3.0, m=2.0)
    out = pairwise_features(torch.tensor([[a, b]], dtype=torch.float64)).numpy()
    assert out.shape == (1, 4, 2, 2)
    # by hand: rapidity y = ½ ln((E+pz)/(E-pz)); Δφ = 2π - 6 (across the boundary, not 6)
    ya = 0.5 * math.log((a[3] + a[2]) / (a[3] - a[2]))
    yb = 0.5 * math.log((b[3] + b[2]) / (b[3] - b[2]))
    assert abs(ya - 0.5) > 0.04  # rapidity, not pseudorapidity
    delta = math.hypot(ya - yb, 2 * math.pi - 6.0)
    m2 = 25.0 + 4.0 + 2 * (a[3] * b[3] - a[0] * b[0] - a[1] * b[1] - a[2] * b[2])
    expect = [math.log(5.0 * delta), math.log(5.0 / 15.0), math.log(delta), math.log(m2)]
    np.testing.assert_allclose(out[0, :, 0, 1], expect, rtol=1e-9)
    np.testing.assert_allclose(out[0, :, 1, 0], expect, rtol=1e-9)  # symmetric
    # self pair, as weaver computes it: Δ = 0 -> ln eps; z = ½; m² = 4 m²
    self_pair = [math.log(EPS), math.log(0.5), math.log(EPS), math.log(100.0)]
    np.testing.assert_allclose(out[0, :, 0, 0], self_pair, rtol=1e-9)


def test_against_naive_double_loop_and_mask():
    rng = np.random.default_rng(0)
    B, N = 3, 7
    p4 = np.zeros((B, N, 4))
    mask = np.zeros((B, N), bool)
    for b, n in enumerate((7, 4, 1)):
        for i in range(n):
            p4[b, i] = p4_of(rng.exponential(20) + 0.5, rng.normal(0, 1.5), rng.uniform(-math.pi, math.pi),
                             rng.uniform(0, 1))
        mask[b, :n] = True
    out = pairwise_features(torch.tensor(p4), torch.tensor(mask)).numpy()
    out32 = pairwise_features(torch.tensor(p4, dtype=torch.float32), torch.tensor(mask)).numpy()
    assert out32.dtype == np.float32
    for b in range(B):
        for i in range(N):
            for j in range(N):
                if mask[b, i] and mask[b, j]:
                    if i == j:
                        continue  # self pair checked by hand above
                    want = naive_pair(p4[b, i], p4[b, j])
                    np.testing.assert_allclose(out[b, :, i, j], want, rtol=1e-9, atol=1e-9)
                    np.testing.assert_allclose(out32[b, :, i, j], want, rtol=1e-3, atol=1e-3)
                else:
                    assert np.all(out[b, :, i, j] == 0)
    assert np.all(np.isfinite(out32))


def test_padding_invariance_and_no_nan_on_zero_vectors():
    rng = np.random.default_rng(1)
    p4 = torch.tensor([[p4_of(rng.uniform(1, 9), rng.normal(), rng.uniform(-3, 3)) for _ in range(3)]],
                      dtype=torch.float32)
    short = pairwise_features(p4, torch.ones(1, 3, dtype=torch.bool))
    padded_p4 = torch.cat([p4, torch.zeros(1, 5, 4)], dim=1)
    mask = torch.zeros(1, 8, dtype=torch.bool)
    mask[:, :3] = True
    long = pairwise_features(padded_p4, mask)
    torch.testing.assert_close(long[:, :, :3, :3], short)
    assert torch.all(long[:, :, 3:] == 0)
    assert torch.all(long[:, :, :, 3:] == 0)
    assert torch.isfinite(pairwise_features(padded_p4)).all()  # no mask: zero vectors stay finite


def test_half_precision_and_shape_check():
    p4 = torch.tensor([[p4_of(10, 0.1, 0.2), p4_of(5, -0.1, 0.3)]])
    out = pairwise_features(p4.to(torch.bfloat16))
    assert out.dtype == torch.bfloat16
    assert out.shape == (1, 4, 2, 2)
    with pytest.raises(ValueError, match=r"p4 must be \(B, N, 4\)"):
        pairwise_features(torch.zeros(2, 4, 3))
