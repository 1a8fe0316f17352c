"""Physics of the JetCLR augmentations (what each must keep exactly) and torch-vs-numpy features."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from _factories import jetclass_chunk, random_chunk

from hepfm.data.features import FEATURE_SETS
from hepfm.data.jets import JetChunk
from hepfm.errors import HepfmInputError
from hepfm.physics.augment import (
    Augmentation,
    AugmentConfig,
    collinear_split,
    compose_parents,
    drop_soft,
    rotate,
    smear,
    sort_by_pt,
    translate,
)
from hepfm.physics.torch_features import compute_features, jet_vector, kinematic_columns


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny tensors: intra-op threads only add synchronisation (30x slower on a busy 2-core box)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def make_jets(b: int = 32, n: int = 24, seed: int = 0, massive: bool = True,
              dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    """Toy jets: (B, N, 4) p4 and (B, N) mask, left-packed and pT-sorted, 3..n-4 particles each.

    Jets of pT ~ 300-800 GeV at |η| < 2 with particles within ~0.2 of the axis and a falling pT
    spectrum; a third of the particles get the pion mass (massive=True).
    """
    g = torch.Generator().manual_seed(seed)
    counts = torch.randint(3, n - 3, (b,), generator=g)
    mask = torch.arange(n).unsqueeze(0) < counts.unsqueeze(1)  # (B, N)
    frac = torch.rand(b, n, generator=g, dtype=dtype).pow(4) * mask
    frac = torch.sort(frac, dim=1, descending=True).values
    pt = (300 + 500 * torch.rand(b, 1, generator=g, dtype=dtype)) * frac / frac.sum(1, keepdim=True)
    spread = 0.2 * torch.randn(b, n, 2, generator=g, dtype=dtype)
    eta = 4 * torch.rand(b, 1, generator=g, dtype=dtype) - 2 + spread[..., 0]
    phi = 2 * math.pi * torch.rand(b, 1, generator=g, dtype=dtype) + spread[..., 1]
    charged = (torch.rand(b, n, generator=g) < 0.33).to(dtype)
    m = 0.13957 * charged if massive else torch.zeros(b, n, dtype=dtype)
    px, py, pz = pt * torch.cos(phi), pt * torch.sin(phi), pt * torch.sinh(eta)
    e = torch.sqrt(px**2 + py**2 + pz**2 + m**2)
    p4 = torch.stack([px, py, pz, e], dim=-1) * mask.unsqueeze(-1)
    return p4, mask


def jet_p4(p4: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (p4.double() * mask.unsqueeze(-1)).sum(1)  # (B, 4)


def jet_mass(p4: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    j = jet_p4(p4, mask)
    return torch.sqrt((j[:, 3] ** 2 - (j[:, :3] ** 2).sum(-1)).clamp(min=0))


def rapidity_phi(p4: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    p4 = p4.double()
    pt = torch.hypot(p4[..., 0], p4[..., 1])
    y = 0.5 * torch.log((p4[..., 3] + p4[..., 2]) / (p4[..., 3] - p4[..., 2]).clamp(min=1e-300))
    eta = torch.asinh(p4[..., 2] / pt.clamp(min=1e-300))
    return y, eta, torch.atan2(p4[..., 1], p4[..., 0])


def ecf2(p4: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Energy correlation function e2(β=1) = Σ_{i<j} z_i z_j ΔR_ij, z = pT / ΣpT: IRC safe. (B,)"""
    p4 = p4.double() * mask.unsqueeze(-1)
    pt = torch.hypot(p4[..., 0], p4[..., 1])
    _, eta, phi = rapidity_phi(p4)
    z = pt / pt.sum(1, keepdim=True)
    deta = eta.unsqueeze(2) - eta.unsqueeze(1)
    dphi = torch.remainder(phi.unsqueeze(2) - phi.unsqueeze(1) + math.pi, 2 * math.pi) - math.pi
    dr = torch.sqrt(deta**2 + dphi**2)
    w = (z.unsqueeze(2) * z.unsqueeze(1)) * (mask.unsqueeze(2) & mask.unsqueeze(1))
    return 0.5 * (w * dr).sum((1, 2))


def assert_padding_clean(p4: torch.Tensor, mask: torch.Tensor) -> None:
    assert torch.all(p4[~mask] == 0)
    assert torch.all(torch.hypot(p4[..., 0], p4[..., 1])[mask] > 0)


# -- symmetries ----------------------------------------------------------------------------------------


def test_rotation_keeps_jet_four_momentum_and_pt_relative_to_axis():
    p4, mask = make_jets()
    torch.manual_seed(0)
    out = rotate(p4, mask)
    assert out.parent is None
    assert torch.equal(out.mask, mask)
    assert_padding_clean(out.p4, mask)
    torch.testing.assert_close(jet_p4(out.p4, mask), jet_p4(p4, mask), rtol=1e-12, atol=1e-9)
    torch.testing.assert_close(jet_mass(out.p4, mask), jet_mass(p4, mask), rtol=1e-9, atol=1e-7)
    k = torch.nn.functional.normalize(jet_p4(p4, mask)[:, :3], dim=1).unsqueeze(1)  # (B, 1, 3)
    kt_in = torch.linalg.cross(k.expand_as(p4[..., :3]), p4[..., :3], dim=-1).norm(dim=-1)
    kt_out = torch.linalg.cross(k.expand_as(p4[..., :3]), out.p4[..., :3], dim=-1).norm(dim=-1)
    torch.testing.assert_close(kt_out, kt_in, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(out.p4[..., 3], p4[..., 3])
    assert (out.p4 - p4).abs()[mask].max() > 1.0  # it did rotate


def test_translation_is_a_boost_plus_azimuthal_rotation():
    p4, mask = make_jets(seed=1)
    torch.manual_seed(1)
    out = translate(p4, mask, width=1.0)
    assert_padding_clean(out.p4, mask)
    torch.testing.assert_close(jet_mass(out.p4, mask), jet_mass(p4, mask), rtol=1e-9, atol=1e-7)
    pt = lambda q: torch.hypot(q[..., 0], q[..., 1])  # noqa: E731
    torch.testing.assert_close(pt(out.p4), pt(p4))
    (y0, _, f0), (y1, _, f1) = rapidity_phi(p4), rapidity_phi(out.p4)
    dy0, dy1 = y0.unsqueeze(2) - y0.unsqueeze(1), y1.unsqueeze(2) - y1.unsqueeze(1)
    pair = mask.unsqueeze(2) & mask.unsqueeze(1)
    torch.testing.assert_close(dy1[pair], dy0[pair], rtol=0, atol=1e-9)
    wrap = lambda a: torch.remainder(a + math.pi, 2 * math.pi) - math.pi  # noqa: E731
    dphi0, dphi1 = wrap(f0.unsqueeze(2) - f0.unsqueeze(1)), wrap(f1.unsqueeze(2) - f1.unsqueeze(1))
    torch.testing.assert_close(wrap(dphi1 - dphi0)[pair], torch.zeros_like(dphi0[pair]), rtol=0, atol=1e-9)
    shift = (y1 - y0)[:, 0]
    assert shift.abs().max() > 0.05  # it did translate, by an amount bounded by the jet's extent
    extent = torch.where(mask, y0, -9).amax(1) - torch.where(mask, y0, 9).amin(1)
    assert torch.all(shift.abs() <= extent * 1.05 + 1e-6)


def test_translation_keeps_pairwise_delta_eta_of_massless_particles():
    p4, mask = make_jets(seed=2, massive=False)
    torch.manual_seed(2)
    out = translate(p4, mask)
    (_, e0, _), (_, e1, _) = rapidity_phi(p4), rapidity_phi(out.p4)
    pair = mask.unsqueeze(2) & mask.unsqueeze(1)
    d0, d1 = (e0.unsqueeze(2) - e0.unsqueeze(1))[pair], (e1.unsqueeze(2) - e1.unsqueeze(1))[pair]
    torch.testing.assert_close(d1, d0, rtol=0, atol=1e-8)


# -- soft and collinear --------------------------------------------------------------------------------


def test_smearing_moves_soft_particles_more_than_hard_ones():
    p4, mask = make_jets(b=256, n=40, seed=3)
    torch.manual_seed(3)
    out = smear(p4, mask, strength=0.1, pt_min=0.1)
    assert_padding_clean(out.p4, mask)
    pt0, pt1 = torch.hypot(p4[..., 0], p4[..., 1]), torch.hypot(out.p4[..., 0], out.p4[..., 1])
    torch.testing.assert_close(pt1, pt0)
    mass = lambda q: torch.sqrt((q[..., 3] ** 2 - (q[..., :3] ** 2).sum(-1)).clamp(min=0))  # noqa: E731
    torch.testing.assert_close(mass(out.p4)[mask], mass(p4)[mask], rtol=0, atol=1e-4)
    (_, e0, f0), (_, e1, f1) = rapidity_phi(p4), rapidity_phi(out.p4)
    moved = torch.hypot(e1 - e0, torch.remainder(f1 - f0 + math.pi, 2 * math.pi) - math.pi)
    soft, hard = moved[mask & (pt0 < 2)], moved[mask & (pt0 > 30)]
    assert soft.numel() > 50
    assert hard.numel() > 50
    assert soft.mean() > 10 * hard.mean()
    # sigma = 0.1 / pT: the per-particle displacement over its expected size is O(1)
    scaled = (moved * pt0.clamp(min=0.1) / 0.1)[mask]
    assert 1.0 < scaled.mean() < 1.6  # Rayleigh mean sqrt(pi/2) ~ 1.25


@pytest.mark.parametrize("extra", [0, 16])
def test_collinear_split_keeps_jet_and_irc_safe_observables(extra):
    p4, mask = make_jets(seed=4)
    torch.manual_seed(4)
    out = collinear_split(p4, mask, fraction=1.0, extra_slots=extra)
    b, n = mask.shape
    assert out.p4.shape == (b, n + extra, 4)
    assert_padding_clean(out.p4, out.mask)
    n_in, n_out = mask.sum(1), out.mask.sum(1)
    torch.testing.assert_close(n_out, n_in + torch.minimum(n_in, n + extra - n_in))  # JetCLR's fill
    assert torch.all(n_out > n_in)
    torch.testing.assert_close(jet_p4(out.p4, out.mask), jet_p4(p4, mask), rtol=1e-12, atol=1e-9)
    torch.testing.assert_close(jet_mass(out.p4, out.mask), jet_mass(p4, mask), rtol=1e-9, atol=1e-7)
    torch.testing.assert_close(ecf2(out.p4, out.mask), ecf2(p4, mask), rtol=1e-9, atol=1e-12)
    # every particle is a piece of its parent: same direction, a fraction of its momentum
    parent_p4 = torch.gather(p4, 1, out.parent.unsqueeze(-1).expand(-1, -1, 4))
    frac = out.p4[..., 3] / parent_p4[..., 3].clamp(min=1e-300)
    torch.testing.assert_close(out.p4[out.mask], (parent_p4 * frac.unsqueeze(-1))[out.mask])
    assert torch.all((frac[out.mask] > 0) & (frac[out.mask] <= 1))


def test_collinear_split_fraction_and_full_jets():
    p4, mask = make_jets(b=64, n=24, seed=5)
    assert torch.equal(collinear_split(p4, mask, fraction=0.0).mask, mask)  # no candidates
    full_p4, full_mask = p4[:, :3], mask[:, :3]  # every jet has >= 3 particles: no free slot
    assert full_mask.all()
    assert torch.equal(collinear_split(full_p4, full_mask).p4, full_p4)
    torch.manual_seed(5)
    half = collinear_split(p4, mask, fraction=0.5, extra_slots=24)
    added = (half.mask.sum(1) - mask.sum(1)).double()
    assert 0.35 < float(added.sum() / mask.sum()) < 0.65


def test_drop_soft_removes_only_soft_particles_and_repacks():
    p4, mask = make_jets(b=64, n=32, seed=6)
    torch.manual_seed(6)
    out = drop_soft(p4, mask, pt_threshold=2.0, drop_prob=1.0)
    assert_padding_clean(out.p4, out.mask)
    pt0, pt1 = torch.hypot(p4[..., 0], p4[..., 1]), torch.hypot(out.p4[..., 0], out.p4[..., 1])
    keep = mask & ((pt0 >= 2.0) | (pt0 == pt0.amax(1, keepdim=True)))
    torch.testing.assert_close(out.mask.sum(1), keep.sum(1))
    assert torch.all(out.mask.sum(1) >= 1)
    assert torch.all(out.mask[:, :-1] | ~out.mask[:, 1:])  # real particles first
    torch.testing.assert_close(pt1[out.mask], pt0[keep])  # survivors in their order
    torch.testing.assert_close(torch.gather(pt0, 1, out.parent)[out.mask], pt1[out.mask])


# -- pipeline ------------------------------------------------------------------------------------------


def _pipeline(**kw) -> Augmentation:
    return Augmentation.from_config(AugmentConfig(drop_soft=0.5, split_extra_slots=8, **kw))


def test_pipeline_layout_padding_and_parent_map():
    p4, mask = make_jets(b=64, n=32, seed=7, dtype=torch.float32)
    torch.manual_seed(7)
    out = _pipeline()(p4, mask)
    assert out.p4.dtype == torch.float32
    assert out.p4.shape[1] == 40
    assert_padding_clean(out.p4, out.mask)
    assert torch.all(out.mask[:, :-1] | ~out.mask[:, 1:])  # left-packed
    pt = torch.hypot(out.p4[..., 0], out.p4[..., 1])
    assert torch.all((pt[:, :-1] >= pt[:, 1:]) | ~out.mask[:, 1:])  # pT-descending
    assert out.parent.min() >= 0
    assert out.parent.max() < 32
    assert torch.all(torch.gather(mask, 1, out.parent)[out.mask])  # every particle has a real parent
    assert torch.isfinite(out.p4).all()


def test_augmentations_are_reproducible_under_manual_seed():
    p4, mask = make_jets(seed=8, dtype=torch.float32)
    aug = _pipeline()
    torch.manual_seed(11)
    a = aug(p4, mask)
    torch.manual_seed(11)
    b = aug(p4, mask)
    torch.manual_seed(12)
    c = aug(p4, mask)
    assert torch.equal(a.p4, b.p4)
    assert torch.equal(a.mask, b.mask)
    assert torch.equal(a.parent, b.parent)
    assert not torch.equal(a.p4, c.p4)
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    assert torch.equal(aug(p4, mask, g1).p4, aug(p4, mask, g2).p4)


def test_probabilities_gate_whole_jets():
    p4, mask = make_jets(b=200, seed=9, dtype=torch.float32)
    off = Augmentation.from_config(AugmentConfig(rotate=0, translate=0, smear=0, split=0))
    out = off(p4, mask)
    assert torch.equal(out.p4, p4)
    assert out.parent is None
    torch.manual_seed(9)
    half = rotate(p4, mask, prob=0.5).p4
    changed = (half != p4).any(dim=(1, 2)).float().mean()
    assert 0.35 < float(changed) < 0.65


def test_symmetries_only_view_keeps_multiplicity():
    p4, mask = make_jets(seed=10, dtype=torch.float32)
    cfg = AugmentConfig(drop_soft=1.0, translate=0.0)  # rotation only: energies are kept
    torch.manual_seed(10)
    out = Augmentation.from_config(cfg, symmetries_only=True)(p4, mask)
    assert torch.equal(out.mask, mask)  # no particle created or removed, only re-sorted by pT
    torch.testing.assert_close(torch.gather(p4[..., 3], 1, out.parent)[mask], out.p4[..., 3][mask])  # E kept


def test_compose_parents_and_sort():
    p4, mask = make_jets(b=4, n=8, seed=11)
    perm = torch.stack([torch.randperm(8) for _ in range(4)])
    shuffled = torch.gather(p4, 1, perm.unsqueeze(-1).expand(-1, -1, 4))
    srt = sort_by_pt(shuffled, torch.gather(mask, 1, perm))
    torch.testing.assert_close(srt.p4, p4)
    torch.testing.assert_close(torch.gather(perm, 1, srt.parent)[mask], torch.arange(8).expand(4, 8)[mask])
    assert compose_parents(None, perm) is perm
    assert compose_parents(perm, None) is perm


def test_config_from_dict_validates():
    cfg = AugmentConfig.from_dict({"smear": "0.5", "split_passes": 1, "sort": True})
    assert cfg.smear == 0.5
    assert cfg.split_passes == 1
    with pytest.raises(
        HepfmInputError, match=r"unknown option augment\.rotation; did you mean augment\.rotate"
    ):
        AugmentConfig.from_dict({"rotation": 1})
    with pytest.raises(HepfmInputError, match=r"augment\.sort: expected true or false"):
        AugmentConfig.from_dict({"sort": "false"})
    with pytest.raises(HepfmInputError, match="probability"):
        AugmentConfig(smear=2.0)


# -- torch features vs the numpy loader features --------------------------------------------------------


@pytest.mark.parametrize("name", ["kin", "jetclr", "kinpid"])
def test_torch_features_match_numpy(name):
    chunk = jetclass_chunk(n=96, max_particles=40, seed=12)
    fs = FEATURE_SETS.get(name)
    ref = fs.compute(chunk)
    p4, mask = torch.from_numpy(chunk.p4), torch.from_numpy(chunk.mask)
    x = compute_features(fs, p4, mask, source_x=torch.from_numpy(ref))
    cols = kinematic_columns(fs)
    assert len(cols) == (7 if name == "kinpid" else fs.dim)
    assert np.abs(x.numpy()[..., cols] - ref[..., cols]).max() < 1e-4
    assert np.abs(x.numpy() - ref).max() < 1e-4
    jet = jet_vector(p4, mask).numpy()
    np.testing.assert_allclose(jet, fs.jet_features(chunk), rtol=1e-5, atol=1e-4)


def test_augmented_features_match_numpy_and_carry_pid():
    chunk = jetclass_chunk(n=48, max_particles=32, seed=13)
    fs = FEATURE_SETS.get("kinpid")
    src = torch.from_numpy(fs.compute(chunk))
    torch.manual_seed(13)
    out = _pipeline()(torch.from_numpy(chunk.p4), torch.from_numpy(chunk.mask))
    x = compute_features(fs, out.p4, out.mask, source_x=src, parent=out.parent)
    aug_chunk = JetChunk(p4=out.p4.numpy(), mask=out.mask.numpy())
    kin = kinematic_columns(fs)
    ref = FEATURE_SETS.get("kin").compute(aug_chunk)  # kinpid's kinematic columns are kin's, in order
    assert np.abs(x.numpy()[..., kin] - ref).max() < 1e-4
    charge = fs.names.index("part_charge")
    parent_charge = torch.gather(src[..., charge], 1, out.parent)
    torch.testing.assert_close(x[..., charge][out.mask], parent_charge[out.mask])
    assert torch.all(x[~out.mask] == 0)


def test_non_kinematic_features_need_a_source():
    chunk = random_chunk(4, 10, particle_fields=True)
    with pytest.raises(HepfmInputError, match="not kinematic"):
        compute_features(FEATURE_SETS.get("kinpid"), torch.from_numpy(chunk.p4), torch.from_numpy(chunk.mask))
