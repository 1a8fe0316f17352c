"""Property-based tests (Hypothesis) of the physics kernels and the readers on random physical jets.

The other test files check each kernel on a few fixed jets; here its documented contracts are checked
on jets Hypothesis draws: 1 to N particles in a cone around a random axis (the φ = ±π seam often
inside), pT from 10 MeV up to the readers' 1e5 GeV limit, massless or massive (E >= |p| exactly in
float32), pT-sorted and zero-padded as readers deliver them. Each property is one a plausible bug
breaks (an unwrapped Δφ, a sum over padding, a split that loses momentum, a reader that reorders
particles). Deterministic: ``derandomize=True`` and no example database, so CI sees the same examples.
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from _factories import chunk_from_jets
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from hepfm.data.features import FEATURE_SETS, JET_FEATURES
from hepfm.data.jets import JETCLASS_CLASSES, PID_FLAGS, TOPTAG_CLASSES, JetChunk
from hepfm.physics.augment import (
    Augmentation,
    AugmentConfig,
    collinear_split,
    drop_soft,
    rotate,
    smear,
    translate,
)
from hepfm.physics.pairwise import pairwise_features
from hepfm.physics.torch_features import compute_features, jet_vector, kinematic_columns

#: Every test: the same examples on every run, no deadline (CI machines are slow and shared).
PROPS = settings(derandomize=True, database=None, deadline=None, max_examples=40,
                 suppress_health_check=[HealthCheck.too_slow])

PI = math.pi


def reals(lo: float, hi: float) -> st.SearchStrategy[float]:
    """Floats in [lo, hi] without subnormals: a library built with -ffast-math, loaded earlier in the
    same test session, can switch the CPU to flush-to-zero, and Hypothesis then refuses subnormals."""
    return st.floats(lo, hi, allow_subnormal=False)
MAX_RADIUS = 0.8  # largest cone radius the strategy draws
E_MAX = 0.99e5  # particle energies stay below the readers' limit (validate.MAX_MOMENTUM = 1e5 GeV)
SETS = ("kin", "kinpid", "full", "jetclr")
SEEDS = st.integers(0, 2**31 - 1)


# -- strategies ----------------------------------------------------------------------------------------


def four_vectors(pt, eta, phi, mass) -> np.ndarray:
    """(k, 4) float32 (px, py, pz, E), pT-descending, E <= E_MAX (a too hard particle is scaled down
    as a whole), E raised by one float32 ulp where rounding put it below |p| of the stored components."""
    pt, eta, phi, mass = (np.asarray(a, np.float64) for a in (pt, eta, phi, mass))
    px, py, pz = pt * np.cos(phi), pt * np.sin(phi), pt * np.sinh(eta)
    p = np.stack([px, py, pz, np.sqrt(px * px + py * py + pz * pz + mass**2)], axis=1)
    p4 = (p * np.minimum(1.0, E_MAX / p[:, 3])[:, None]).astype(np.float32)
    pabs = np.sqrt((p4[:, :3].astype(np.float64) ** 2).sum(axis=1))
    low = p4[:, 3].astype(np.float64) < pabs
    p4[low, 3] = np.nextafter(pabs[low].astype(np.float32), np.float32(np.inf))
    return p4[np.argsort(-pt2_f32(p4), kind="stable")]


def pt2_f32(p4: np.ndarray) -> np.ndarray:
    """pT² in float32, the readers' sort key (:func:`hepfm.data.validate.sort_by_pt`)."""
    p4 = p4.astype(np.float32)
    return p4[..., 0] * p4[..., 0] + p4[..., 1] * p4[..., 1]


MASS = st.one_of(st.just(0.0), st.sampled_from((0.000511, 0.10566, 0.13957, 0.49368, 0.93827)),
                 reals(0.0, 20.0))
#: jet axis azimuth, with the seam (and its float32 neighbourhood) drawn often
AXIS_PHI = st.one_of(reals(-PI, PI), st.sampled_from((PI, -PI, PI - 1e-3, -PI + 1e-3, 0.0)))


@st.composite
def jet_particles(draw: st.DrawFn, max_particles: int) -> np.ndarray:
    """One jet: 1..max_particles particles uniform in a square cone of half-width R in (η, φ) around
    the axis (φ unwrapped: jets straddle the seam), log10 pT in [-2, 5], all massless or massive."""
    k = draw(st.integers(1, max_particles))
    eta0, phi0, radius = draw(reals(-3.0, 3.0)), draw(AXIS_PHI), draw(reals(0.005, MAX_RADIUS))
    mass = MASS if draw(st.booleans()) else st.just(0.0)
    unit = reals(-1.0, 1.0)
    a = np.array(draw(st.lists(st.tuples(reals(-2.0, 5.0), unit, unit, mass), min_size=k, max_size=k)))
    return four_vectors(10.0 ** a[:, 0], eta0 + radius * a[:, 1], phi0 + radius * a[:, 2], a[:, 3])


def particle_fields(mask: np.ndarray, seed: int) -> dict[str, np.ndarray]:
    """JetClass-like per-particle fields, zero on padding (their values matter little to the kernels)."""
    rng = np.random.default_rng(seed)
    n, size = mask.shape
    m = mask.astype(np.float32)
    kind = rng.integers(0, len(PID_FLAGS) + 1, (n, size))  # the last kind: no flag set
    out = {"charge": rng.choice([-1.0, 0.0, 1.0], (n, size)).astype(np.float32) * m}
    for i, f in enumerate(PID_FLAGS):
        out[f] = (kind == i).astype(np.float32) * m
    for f in ("d0val", "dzval", "d0err", "dzerr"):  # heavy tails; errors partly beyond the [0, 1] clip
        x = rng.exponential(0.5, (n, size)) if f.endswith("err") else 0.1 * rng.standard_cauchy((n, size))
        out[f] = x.astype(np.float32) * m
    out["pid"] = (rng.choice([211, -211, 22, 130, 11, -13], (n, size)) * mask).astype(np.int32)
    return out


@st.composite
def jet_chunks(draw: st.DrawFn, max_jets: int = 4, max_particles: int = 12, extra_slots: int = 3,
               fields: bool = False, class_names: tuple[str, ...] | None = None) -> JetChunk:
    """1..max_jets jets as readers deliver them: pT-sorted, zero-padded (0..extra_slots slots beyond
    the longest jet), optionally labeled and with per-particle fields."""
    jets = draw(st.lists(jet_particles(max_particles), min_size=1, max_size=max_jets))
    n_slots = max(len(j) for j in jets) + draw(st.integers(0, extra_slots))
    labels = None
    if class_names is not None:
        labels = draw(st.lists(st.integers(0, len(class_names) - 1), min_size=len(jets), max_size=len(jets)))
    chunk = chunk_from_jets(jets, n_slots, labels, class_names or TOPTAG_CLASSES)
    if fields:
        chunk.particles = particle_fields(chunk.mask, draw(st.integers(0, 2**32 - 1)))
    return chunk


#: Always tried: one massless 99 TeV particle on the seam (φ = π), one 10 MeV pion, and a 99 TeV +
#: 10 MeV pair (pT ratio 1e7) with a slot of padding.
EXTREME = chunk_from_jets([four_vectors([1e6], [0.0], [PI], [0.0]),
                           four_vectors([0.01], [2.5], [-PI + 1e-3], [0.13957]),
                           four_vectors([1e6, 0.01], [-1.0, -1.2], [0.3, 0.5], [0.0, 0.0])], 3)
EXTREME.particles = particle_fields(EXTREME.mask, 0)


# -- helpers -------------------------------------------------------------------------------------------


def pad_chunk(chunk: JetChunk, extra: int) -> JetChunk:
    """The same jets with ``extra`` more (zero) padding slots."""
    def pad(a: np.ndarray) -> np.ndarray:
        return np.pad(a, [(0, 0), (0, extra)] + [(0, 0)] * (a.ndim - 2))

    return JetChunk(p4=pad(chunk.p4), mask=pad(chunk.mask), label=chunk.label, class_names=chunk.class_names,
                    particles={k: pad(v) for k, v in chunk.particles.items()}, jets=dict(chunk.jets))


def permute_real(chunk: JetChunk, rng: np.random.Generator) -> tuple[JetChunk, np.ndarray]:
    """Shuffle each jet's real particles among its real (leading) slots; padding stays last.
    Returns the chunk and ``perm`` (n, N) with ``new[:, i] = old[:, perm[:, i]]``."""
    n, size = chunk.mask.shape
    perm = np.tile(np.arange(size), (n, 1))
    for i, k in enumerate(chunk.n_particles):
        perm[i, :k] = rng.permutation(k)

    def take(a: np.ndarray) -> np.ndarray:
        return np.take_along_axis(a, perm.reshape(n, size, *([1] * (a.ndim - 2))), axis=1)

    fields = {k: take(v) for k, v in chunk.particles.items()}
    out = JetChunk(p4=take(chunk.p4), mask=take(chunk.mask), label=chunk.label, class_names=chunk.class_names)
    out.particles = fields
    return out, perm


def scatter_slots(p4: torch.Tensor, mask: torch.Tensor, g: torch.Generator):
    """A random permutation of all slots (real particles among padding). Returns p4, mask, perm."""
    perm = torch.argsort(torch.rand(mask.shape, generator=g), dim=1)
    return torch.gather(p4, 1, perm.unsqueeze(-1).expand(-1, -1, 4)), torch.gather(mask, 1, perm), perm


def wrapped(d):
    """An angle difference wrapped to [-π, π) (numpy or torch)."""
    return (d + PI) % (2 * PI) - PI


def scale_of(p4) -> float:
    """Largest |component| of a batch (GeV), at least 1: the scale of absolute tolerances on momenta."""
    return float(np.abs(np.asarray(p4, dtype=np.float64)).max(initial=1.0))


def tensors(chunk: JetChunk, dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.from_numpy(chunk.p4).to(dtype), torch.from_numpy(chunk.mask)


def jet_sum(p4: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B, 4) float64 sum of the real particles."""
    return (p4.double() * mask.unsqueeze(-1)).sum(dim=1)


def mass2(v: torch.Tensor) -> torch.Tensor:
    v = v.double()
    return v[..., 3] ** 2 - (v[..., :3] ** 2).sum(-1)


def pt_of(p4: torch.Tensor) -> torch.Tensor:
    """pT as the augmentations compute it (their sort key), in the tensor's dtype."""
    return torch.sqrt(p4[..., 0] * p4[..., 0] + p4[..., 1] * p4[..., 1])


def is_prefix(mask) -> bool:
    """Real particles fill the leading slots."""
    m = torch.as_tensor(mask)
    return bool(torch.all(m[:, :-1] | ~m[:, 1:]))


def assert_physical(p4: torch.Tensor, mask: torch.Tensor, rel: float) -> None:
    """Finite, zero on padding, E >= |p| (up to ``rel`` E of rounding) on real particles."""
    assert torch.isfinite(p4).all()
    assert torch.all(p4[~mask] == 0)
    q = p4.double()[mask]
    assert torch.all(q[:, 3] - q[:, :3].norm(dim=-1) >= -rel * q[:, 3])


# -- the strategy itself ---------------------------------------------------------------------------------


@PROPS
@given(chunk=jet_chunks(max_particles=16))
@example(chunk=EXTREME)
def test_strategy_draws_jets_the_validator_accepts(chunk):
    """What the other properties assume: every drawn jet is a valid, pT-sorted reader jet."""
    from hepfm.data.validate import check_chunk

    out, counts = check_chunk(chunk, None, skip_bad=True)
    assert counts == {}
    assert len(out) == len(chunk)
    assert is_prefix(chunk.mask)
    assert chunk.mask[:, 0].all()
    key = np.where(chunk.mask, pt2_f32(chunk.p4), -np.inf)
    assert np.all(key[:, :-1] >= key[:, 1:])


# -- feature sets (numpy and torch) ------------------------------------------------------------------------


@settings(PROPS, max_examples=50)
@given(chunk=jet_chunks(max_particles=16, fields=True), extra=st.integers(1, 6))
@example(chunk=EXTREME, extra=2)
def test_features_finite_zero_on_padding_and_independent_of_padding_length(chunk, extra):
    """Every feature set: finite, in its clip range, zero on padding, unchanged by more padding slots,
    and the loaders' ragged path gives the same rows."""
    mask = chunk.mask
    for name in SETS:
        fs = FEATURE_SETS.get(name)
        x = fs.compute(chunk)
        assert x.shape == (len(chunk), chunk.max_particles, fs.dim)
        assert x.dtype == np.float32
        assert np.isfinite(x).all(), name
        assert np.all(x[~mask] == 0), name
        for k, f in enumerate(fs.features):
            col = x[..., k][mask]
            if f.center is not None:
                assert np.all((col >= f.clip_min) & (col <= f.clip_max)), f.name
            elif f.quantity in ("phi", "dphi"):
                assert np.all((col >= -np.float32(PI)) & (col < np.float32(PI))), f.name
            if f.quantity == "dphi":  # the axis lies inside a cone of radius R: |Δφ| <= 2R, never ~2π
                assert np.abs(col).max() <= 2 * MAX_RADIUS + 1e-4, f.name
        wide = fs.compute(pad_chunk(chunk, extra))
        np.testing.assert_array_equal(wide[:, : chunk.max_particles], x, err_msg=name)
        assert np.all(wide[:, chunk.max_particles :] == 0)
        rag = fs.compute_ragged(chunk)  # the loaders' path: the same rows, without the padding
        np.testing.assert_array_equal(rag.x, x[mask], err_msg=name)
        np.testing.assert_array_equal(rag.p4, chunk.p4[mask])


@PROPS
@given(chunk=jet_chunks(max_particles=16, fields=True), seed=SEEDS)
def test_features_follow_a_permutation_of_the_particles(chunk, seed):
    """Reordering the real particles reorders their features (equivariance) and leaves the jet-level
    features unchanged (invariance, up to the float64 summation order)."""
    shuffled, perm = permute_real(chunk, np.random.default_rng(seed))
    for name in SETS:
        fs = FEATURE_SETS.get(name)
        x = fs.compute(chunk)
        np.testing.assert_allclose(fs.compute(shuffled), np.take_along_axis(x, perm[..., None], axis=1),
                                   rtol=1e-5, atol=1e-5, err_msg=name)
        np.testing.assert_allclose(fs.jet_features(shuffled), fs.jet_features(chunk), rtol=1e-6, atol=1e-6)


def rotate_azimuth(chunk: JetChunk, alpha: float, dtype=np.float32) -> JetChunk:
    """The jets rotated by ``alpha`` about the beam (computed in float64, stored as ``dtype``)."""
    p = chunk.p4.astype(np.float64)
    c, s = math.cos(alpha), math.sin(alpha)
    out = np.stack([c * p[..., 0] - s * p[..., 1], s * p[..., 0] + c * p[..., 1], p[..., 2], p[..., 3]], -1)
    return JetChunk(p4=out.astype(dtype) * chunk.mask[..., None], mask=chunk.mask)


@PROPS
@given(chunk=jet_chunks(max_particles=16), alpha=reals(-2 * PI, 2 * PI))
def test_features_under_azimuthal_rotation_and_eta_reflection(chunk, alpha):
    """ParT's ``kin`` inputs are relative to the jet axis: rotating the event about the beam (which
    carries jets across the φ = ±π seam) changes none of them beyond float32 rounding, and jetclr's
    raw φ moves by α (mod 2π). With ``flip_eta`` (Δη towards the jet's forward side), pz -> -pz
    changes no ``kin`` input."""
    kin, jc = FEATURE_SETS.get("kin"), FEATURE_SETS.get("jetclr")
    rot = rotate_azimuth(chunk, alpha)
    np.testing.assert_allclose(kin.compute(rot), kin.compute(chunk), rtol=1e-4, atol=2e-4)
    j, jr, m = jc.compute(chunk), jc.compute(rot), chunk.mask
    np.testing.assert_allclose(wrapped(jr[..., 1][m].astype(np.float64) - j[..., 1][m] - alpha), 0, atol=2e-4)
    np.testing.assert_allclose(jr[..., [0, 2, 3, 4, 5]], j[..., [0, 2, 3, 4, 5]], rtol=1e-4, atol=2e-4)

    assume(np.all(np.abs(kin.jet_features(chunk)[:, 1]) > 1e-6))  # sign(η_jet) is a convention at 0
    refl = JetChunk(p4=chunk.p4 * np.array([1, 1, -1, 1], np.float32), mask=chunk.mask)
    assert kin.flip_eta
    np.testing.assert_allclose(kin.compute(refl), kin.compute(chunk), rtol=1e-6, atol=1e-6)


@PROPS
@given(chunk=jet_chunks(max_particles=16, fields=True), seed=SEEDS, extra=st.integers(0, 4))
@example(chunk=EXTREME, seed=0, extra=1)
def test_torch_features_match_numpy_features(chunk, seed, extra):
    """The torch path (what augmented views are fed) is the same function of (p4, mask) as the numpy
    loader path, for every feature set, also with real particles scattered among padded slots."""
    p4, mask = tensors(pad_chunk(chunk, extra), torch.float32)
    p4s, masks, perm = scatter_slots(p4, mask, torch.Generator().manual_seed(seed))
    for name in SETS:
        fs = FEATURE_SETS.get(name)
        ref = torch.from_numpy(fs.compute(pad_chunk(chunk, extra)))
        ref = torch.gather(ref, 1, perm.unsqueeze(-1).expand(-1, -1, fs.dim))
        x = compute_features(fs, p4s, masks, source_x=ref).numpy()
        assert np.isfinite(x).all()
        assert np.all(x[~masks.numpy()] == 0)
        for k, f in enumerate(fs.features):
            a, b = x[..., k].astype(np.float64), ref[..., k].numpy().astype(np.float64)
            if f.name == "part_phi":  # raw azimuth: compared modulo 2π (the wrap to [-π, π) is a seam)
                np.testing.assert_allclose(wrapped(a - b), 0.0, atol=1e-4, err_msg=f"{name}: {f.name}")
            else:
                np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-4, err_msg=f"{name}: {f.name}")
    ref_jet = FEATURE_SETS.get("kin").jet_features(chunk).astype(np.float64)
    jet = jet_vector(p4s, masks).numpy().astype(np.float64)
    for k, key in enumerate(JET_FEATURES):
        if key == "phi":
            np.testing.assert_allclose(wrapped(jet[:, k] - ref_jet[:, k]), 0.0, atol=1e-5)
        elif key == "mass":  # sqrt of a difference of squares: absolute error ~ sqrt(eps) * E
            np.testing.assert_allclose(jet[:, k] ** 2, ref_jet[:, k] ** 2, rtol=1e-4,
                                       atol=1e-6 * scale_of(chunk.p4.sum(1)) ** 2)
        else:
            np.testing.assert_allclose(jet[:, k], ref_jet[:, k], rtol=1e-5, atol=1e-5, err_msg=key)


# -- pair features -----------------------------------------------------------------------------------------


@PROPS
@given(chunk=jet_chunks(max_particles=12), dtype=st.sampled_from([torch.float32, torch.float64]),
       alpha=reals(-2 * PI, 2 * PI))
@example(chunk=EXTREME, dtype=torch.float32, alpha=PI / 2)
def test_pair_features_finite_symmetric_zero_on_padding_and_rotation_invariant(chunk, dtype, alpha):
    p4, mask = tensors(chunk, dtype)
    out = pairwise_features(p4, mask)
    assert out.shape == (len(chunk), 4, chunk.max_particles, chunk.max_particles)
    assert out.dtype == dtype
    assert torch.isfinite(out).all()
    pair = mask[:, :, None] & mask[:, None, :]
    assert torch.all(out.masked_select(~pair[:, None]) == 0)
    ln_kt, ln_z, ln_delta, ln_m2 = out.double().unbind(1)
    # z and m² are symmetric functions computed symmetrically: bit-exact
    assert torch.equal(ln_z, ln_z.transpose(1, 2))
    assert torch.equal(ln_m2, ln_m2.transpose(1, 2))
    # Δφ_ij and Δφ_ji are wrapped separately: equal up to the rounding of φ itself (~ulp(π))
    tol = 1e-6 if dtype == torch.float32 else 1e-12
    d, kt = ln_delta.exp(), ln_kt.exp()
    torch.testing.assert_close(d, d.transpose(1, 2), rtol=tol, atol=tol)
    pt = pt_of(p4.double())
    ptmin = torch.minimum(pt[:, :, None], pt[:, None, :])
    torch.testing.assert_close(kt, kt.transpose(1, 2), rtol=tol, atol=float(tol * ptmin.max()))
    # z = min pT / (pT_i + pT_j) <= 1/2, equal to 1/2 for the self pair; |Δφ| <= π and |y| <= |η| <= 3.8
    assert torch.all(ln_z[pair] <= math.log(0.5) + 1e-6)
    diag = torch.diagonal(ln_z, dim1=1, dim2=2)[mask]
    torch.testing.assert_close(diag, torch.full_like(diag, math.log(0.5)), rtol=0, atol=1e-6)
    assert torch.all(d[pair] <= math.hypot(PI, 2 * (3.0 + MAX_RADIUS)) + 1e-3)
    # the channels hang together: ln kT = ln min pT + ln Δ where neither is clamped
    free = pair & (ln_delta > math.log(1e-8) + 1e-3) & (ln_kt > math.log(1e-8) + 1e-3)
    torch.testing.assert_close(ln_kt[free], (ptmin.log() + ln_delta)[free], rtol=0, atol=1e-4)
    # functions of Δy, wrapped Δφ, pT and m²: a rotation about the beam (carrying the φ = ±π seam
    # through the jet) changes none of them (float64, so that rounding stays far below the checks)
    ref = pairwise_features(p4.double(), mask).exp()
    rot = pairwise_features(torch.from_numpy(rotate_azimuth(chunk, alpha, np.float64).p4), mask).exp()
    for c, atol in enumerate((1e-9 * scale_of(chunk.p4), 1e-12, 1e-9)):  # kT, z, Δ
        torch.testing.assert_close(rot[:, c][pair], ref[:, c][pair], rtol=1e-9, atol=atol)
    e2 = (p4[..., 3].double()[:, :, None] + p4[..., 3].double()[:, None, :]) ** 2
    assert torch.all((rot[:, 3] - ref[:, 3]).abs()[pair] <= 1e-13 * e2[pair] + 1e-8)  # m²


@PROPS
@given(chunk=jet_chunks(max_particles=12), seed=SEEDS, extra=st.integers(0, 4),
       dtype=st.sampled_from([torch.float32, torch.float64]))
def test_pair_features_follow_slot_permutations_and_ignore_padding_content(chunk, seed, extra, dtype):
    """Pair features are an elementwise function of the two particles: permuting slots (padding
    scattered among real particles) permutes rows and columns bit-exactly, junk in padded slots
    changes nothing, and more padding slots leave the leading block unchanged."""
    p4, mask = tensors(pad_chunk(chunk, extra), dtype)
    out = pairwise_features(p4, mask)
    g = torch.Generator().manual_seed(seed)
    b, n = mask.shape
    p4s, masks, perm = scatter_slots(p4, mask, g)
    rows = torch.gather(out, 2, perm[:, None, :, None].expand(-1, 4, -1, n))
    want = torch.gather(rows, 3, perm[:, None, None, :].expand(-1, 4, n, -1))
    assert torch.equal(pairwise_features(p4s, masks), want)
    junk = 100.0 * torch.randn(b, n, 4, generator=g, dtype=torch.float64)
    junk[..., 3] = junk[..., :3].norm(dim=-1) + 1.0
    assert torch.equal(pairwise_features(torch.where(mask.unsqueeze(-1), p4, junk.to(dtype)), mask), out)
    m = chunk.max_particles
    assert torch.equal(out[:, :, :m, :m], pairwise_features(*tensors(chunk, dtype)))


# -- augmentations ---------------------------------------------------------------------------------------


@PROPS
@given(chunk=jet_chunks(max_particles=16), seed=SEEDS)
@example(chunk=EXTREME, seed=0)
def test_rotation_keeps_the_jet_and_each_particle_relative_to_the_axis(chunk, seed):
    """A rotation about the jet axis: the jet four-momentum, every particle's energy, |p|, mass and
    momentum component along the axis are kept; the particles and the padding stay where they were."""
    p4, mask = tensors(chunk)
    out = rotate(p4, mask, generator=torch.Generator().manual_seed(seed))
    assert out.parent is None
    assert torch.equal(out.mask, mask)
    assert_physical(out.p4, mask, 1e-12)
    scale = scale_of(chunk.p4)
    torch.testing.assert_close(jet_sum(out.p4, mask), jet_sum(p4, mask), rtol=1e-12, atol=1e-11 * scale)
    assert torch.equal(out.p4[..., 3], p4[..., 3])
    k = torch.nn.functional.normalize(jet_sum(p4, mask)[:, :3], dim=1).unsqueeze(1)
    v_in, v_out = p4[..., :3], out.p4[..., :3]
    torch.testing.assert_close(v_out.norm(dim=-1), v_in.norm(dim=-1), rtol=1e-12, atol=1e-11 * scale)
    torch.testing.assert_close((k * v_out).sum(-1), (k * v_in).sum(-1), rtol=1e-12, atol=1e-11 * scale)
    torch.testing.assert_close(mass2(out.p4)[mask], mass2(p4)[mask], rtol=1e-9, atol=1e-9 * scale**2)


@PROPS
@given(chunk=jet_chunks(max_particles=16), seed=SEEDS, width=reals(0.0, 2.0))
@example(chunk=EXTREME, seed=0, width=2.0)
def test_translation_is_a_bounded_boost_and_azimuthal_rotation(chunk, seed, width):
    """Jet mass and particle pT are kept and E >= |p| stays; every particle of a jet moves by the
    same Δy and Δφ, bounded by ``width`` times the jet's extent in η and in φ (relative to the axis,
    so a jet across the seam is not shifted by ~2π)."""
    p4, mask = tensors(chunk)
    out = translate(p4, mask, width=width, generator=torch.Generator().manual_seed(seed))
    assert out.parent is None
    assert torch.equal(out.mask, mask)
    assert_physical(out.p4, mask, 1e-12)
    scale = float(out.p4.abs().max())
    torch.testing.assert_close(mass2(jet_sum(out.p4, mask)), mass2(jet_sum(p4, mask)), rtol=1e-9,
                               atol=1e-10 * scale**2)
    torch.testing.assert_close(pt_of(out.p4), pt_of(p4), rtol=1e-12, atol=0.0)
    rap = [0.5 * torch.log((q[..., 3] + q[..., 2]) / (q[..., 3] - q[..., 2])) for q in (p4, out.p4)]
    dy = (rap[1] - rap[0]).masked_fill(~mask, 0)
    phi0, phi1 = torch.atan2(p4[..., 1], p4[..., 0]), torch.atan2(out.p4[..., 1], out.p4[..., 0])
    dphi = wrapped(phi1 - phi0).masked_fill(~mask, 0)
    torch.testing.assert_close(dy, dy[:, :1] * mask, rtol=0, atol=1e-8)  # one shift per jet
    torch.testing.assert_close(wrapped(dphi - dphi[:, :1]) * mask, torch.zeros_like(dphi), rtol=0, atol=1e-9)
    pt_in = np.hypot(chunk.p4[..., 0], chunk.p4[..., 1]).astype(np.float64)
    eta = np.arcsinh(chunk.p4[..., 2] / np.where(chunk.mask, pt_in, 1.0))
    axis = jet_sum(p4, mask).numpy()
    phi_rel = wrapped(phi0.numpy() - np.arctan2(axis[:, 1], axis[:, 0])[:, None])
    for i, m in enumerate(chunk.mask):
        assert abs(float(dy[i, 0])) <= width * np.ptp(eta[i][m]) * (1 + 1e-9) + 1e-7
        assert abs(float(dphi[i, 0])) <= width * np.ptp(phi_rel[i][m]) * (1 + 1e-9) + 1e-7


@PROPS
@given(chunk=jet_chunks(max_particles=16), seed=SEEDS, strength=reals(0.0, 0.5),
       pt_min=reals(0.01, 1.0), dtype=st.sampled_from([torch.float32, torch.float64]))
@example(chunk=EXTREME, seed=0, strength=0.5, pt_min=0.01, dtype=torch.float32)
def test_smearing_keeps_pt_and_mass_and_stays_physical(chunk, seed, strength, pt_min, dtype):
    p4, mask = tensors(chunk, dtype)
    out = smear(p4, mask, strength=strength, pt_min=pt_min, generator=torch.Generator().manual_seed(seed))
    assert out.parent is None
    assert torch.equal(out.mask, mask)
    rel = 1e-5 if dtype == torch.float32 else 1e-12
    assert_physical(out.p4, mask, rel)
    torch.testing.assert_close(pt_of(out.p4.double()), pt_of(p4.double()), rtol=rel, atol=0.0)
    # m² kept up to the rounding of E² (E is rebuilt as sqrt(pT² + pz² + m²))
    q, p = out.p4.double(), p4.double()
    tol = 4 * rel * torch.maximum(q[..., 3] ** 2, p[..., 3] ** 2)
    assert torch.all((mass2(q) - mass2(p).clamp(min=0)).abs()[mask] <= tol[mask] + 1e-12)


@PROPS
@given(chunk=jet_chunks(max_particles=12), seed=SEEDS, extra=st.integers(0, 5),
       fraction=st.sampled_from([0.0, 0.3, 1.0]), prob=st.sampled_from([0.5, 1.0]), scatter=st.booleans(),
       dtype=st.sampled_from([torch.float32, torch.float64]))
def test_collinear_split_conserves_each_parent_and_fills_free_slots(chunk, seed, extra, fraction, prob,
                                                                    scatter, dtype):
    p4, mask = tensors(chunk, dtype)
    g = torch.Generator().manual_seed(seed)
    if scatter:  # real particles anywhere (the functions never assume a prefix)
        p4, mask, _ = scatter_slots(p4, mask, g)
    out = collinear_split(p4, mask, fraction=fraction, extra_slots=extra, prob=prob, generator=g)
    b, n = mask.shape
    assert out.p4.shape == (b, n + extra, 4)
    assert out.mask.shape == (b, n + extra)
    assert_physical(out.p4, out.mask, 1e-6)
    mask_in = torch.nn.functional.pad(mask, (0, extra))
    assert torch.all(out.mask[mask_in])  # real particles stay real: children only go to free slots
    parent = out.parent
    assert parent.shape == out.mask.shape
    assert parent.min() >= 0
    assert parent.max() < n
    assert torch.all(torch.gather(mask, 1, parent)[out.mask])  # every particle comes from a real one
    assert torch.all(parent[mask_in] == torch.arange(n + extra).expand(b, -1)[mask_in])  # parents stay put
    child = out.mask & ~mask_in
    if fraction == 1.0 and prob == 1.0:  # every particle is a candidate: fill the free slots (JetCLR)
        assert torch.equal(child.sum(1), torch.minimum(mask.sum(1), (~mask_in).sum(1)))
    if fraction == 0.0:
        assert not child.any()
    # each parent has at most one child; the pieces are collinear fractions of it and add up to it
    assert torch.zeros(b, n, dtype=torch.long).scatter_add(1, parent * child, child.long()).max() <= 1
    scale = scale_of(chunk.p4)
    sums = torch.zeros(b, n, 4, dtype=torch.float64).scatter_add(
        1, parent.unsqueeze(-1).expand(-1, -1, 4), out.p4.double() * out.mask.unsqueeze(-1))
    torch.testing.assert_close(sums, p4.double() * mask.unsqueeze(-1), rtol=1e-6, atol=1e-6 * scale)
    par = torch.gather(p4.double(), 1, parent.unsqueeze(-1).expand(-1, -1, 4))
    frac = out.p4[..., 3].double() / par[..., 3]
    assert torch.all((frac[out.mask] > 0) & (frac[out.mask] <= 1 + 1e-6))
    torch.testing.assert_close((par * frac.unsqueeze(-1))[out.mask], out.p4.double()[out.mask], rtol=1e-5,
                               atol=1e-6 * scale)
    if not scatter:
        assert is_prefix(out.mask)  # a prefix mask stays one: children fill the first free slots


@PROPS
@given(chunk=jet_chunks(max_particles=16), seed=SEEDS, threshold=reals(0.0, 50.0),
       drop_prob=st.sampled_from([0.0, 0.5, 1.0]))
def test_drop_soft_keeps_hard_particles_and_repacks_in_order(chunk, seed, threshold, drop_prob):
    p4, mask = tensors(chunk)
    out = drop_soft(p4, mask, pt_threshold=threshold, drop_prob=drop_prob,
                    generator=torch.Generator().manual_seed(seed))
    assert is_prefix(out.mask)
    assert torch.all(out.mask.sum(1) >= 1)
    assert_physical(out.p4, out.mask, 0.0)
    pt = pt_of(p4)  # the function's own pT formula (ties matter)
    hard = mask & ((pt >= threshold) | (pt == pt.amax(1, keepdim=True)))
    kept = torch.zeros_like(mask).scatter(1, out.parent, out.mask)  # input slots that survived
    assert torch.all(kept[hard])
    assert torch.all(mask[kept])
    if drop_prob == 0.0:
        assert torch.equal(kept, mask)
    if drop_prob == 1.0:
        assert torch.equal(kept, hard)
    for i in range(len(chunk)):  # survivors keep their order and their four-momenta exactly
        src = out.parent[i][out.mask[i]]
        assert torch.all(src[1:] > src[:-1])
        assert torch.equal(out.p4[i][out.mask[i]], p4[i, src])


PIPELINES = {
    "jetclr": AugmentConfig(split_extra_slots=4, drop_soft=0.5),
    "symmetries": AugmentConfig(smear=0.0, split=0.0),
    "collinear": AugmentConfig(rotate=0.0, translate=0.0, smear=0.0, split_extra_slots=3),
}


@settings(PROPS, max_examples=30)
@given(chunk=jet_chunks(max_particles=12, fields=True), seed=SEEDS, which=st.sampled_from(sorted(PIPELINES)))
def test_augmentation_pipeline_layout_and_features(chunk, seed, which):
    """The pipeline's float32 output is in the loader's layout (prefix mask, pT-descending, zero
    padding), physical and finite; symmetry-only views keep the particle count and the jet mass,
    collinear-only views the jet four-momentum; the torch features of the view equal the numpy
    loader features of the same jets, with non-kinematic columns carried from each particle's parent."""
    p4, mask = tensors(chunk, torch.float32)
    out = Augmentation.from_config(PIPELINES[which])(p4, mask, torch.Generator().manual_seed(seed))
    assert out.p4.dtype == torch.float32
    assert is_prefix(out.mask)
    assert torch.all(out.mask.sum(1) >= 1)
    assert_physical(out.p4, out.mask, 1e-5)
    pt = pt_of(out.p4)
    assert torch.all((pt[:, :-1] >= pt[:, 1:]) | ~out.mask[:, 1:])
    assert torch.all(torch.gather(mask, 1, out.parent)[out.mask])  # every particle from a real one
    j_in, j_out = jet_sum(p4, mask), jet_sum(out.p4, out.mask)
    scale = scale_of(chunk.p4.sum(1))
    if which == "collinear":
        torch.testing.assert_close(j_out, j_in, rtol=1e-5, atol=1e-5 * scale)
    if which == "symmetries":  # rotation + boost: the mass is exact up to float32 rounding of E²
        assert torch.equal(out.mask.sum(1), mask.sum(1))
        torch.testing.assert_close(mass2(j_out), mass2(j_in), rtol=1e-4, atol=1e-5 * scale**2)
    view = JetChunk(p4=out.p4.numpy(), mask=out.mask.numpy())
    for name in ("kinpid", "jetclr"):
        fs = FEATURE_SETS.get(name)
        src = torch.from_numpy(fs.compute(chunk))
        x = compute_features(fs, out.p4, out.mask, source_x=src, parent=out.parent).numpy()
        assert np.isfinite(x).all()
        assert np.all(x[~view.mask] == 0)
        kin = kinematic_columns(fs)
        ref = FEATURE_SETS.get("kin" if name == "kinpid" else name).compute(view)
        for c, k in enumerate(kin):
            if fs.features[k].name == "part_phi":
                np.testing.assert_allclose(wrapped(x[..., k].astype(np.float64) - ref[..., c]), 0, atol=1e-4)
            else:
                np.testing.assert_allclose(x[..., k], ref[..., c], rtol=1e-5, atol=1e-4)
        for k in set(range(fs.dim)) - set(kin):  # charge, PID: the parent's value
            want = torch.gather(src[..., k], 1, out.parent).numpy()
            np.testing.assert_array_equal(x[..., k][view.mask], want[view.mask])


# -- subjets ---------------------------------------------------------------------------------------------


@settings(PROPS, max_examples=30)
@given(chunk=jet_chunks(max_particles=16), seed=SEEDS, scatter=st.booleans(), keep=st.integers(1, 4),
       algorithm=st.sampled_from(["antikt", "ca", "kt"]), radius=st.sampled_from([0.1, 0.2, 0.4]))
def test_subjets_partition_the_jet(chunk, seed, scatter, keep, algorithm, radius):
    """Every real particle is in exactly one non-empty subjet, padding in none (whatever it holds);
    subjets are the E-scheme sums of their particles, pT-ordered, adding up to the jet;
    ``max_subjets`` keeps the leading ones."""
    pytest.importorskip("fastjet")
    from hepfm.physics.subjets import find_subjets

    p4, mask = tensors(chunk, torch.float32)
    g = torch.Generator().manual_seed(seed)
    if scatter:
        p4, mask, _ = scatter_slots(p4, mask, g)
    s = find_subjets(p4, mask, radius=radius, algorithm=algorithm)
    n_sub = s.max_subjets
    assert torch.equal(s.index >= 0, mask)
    assert s.index.max() < n_sub
    assert torch.equal(s.count, s.mask.sum(1))
    assert torch.all((s.count >= 1) & (s.count <= mask.sum(1)))
    assert is_prefix(s.mask)
    one_hot = torch.nn.functional.one_hot(s.index.clamp(min=0), n_sub).double() * mask.unsqueeze(-1)
    assert torch.all(one_hot.sum(1)[s.mask] >= 1)
    assert torch.all(one_hot.sum(1)[~s.mask] == 0)
    scale = scale_of(chunk.p4)
    members = torch.einsum("bns,bnd->bsd", one_hot, p4.double())
    torch.testing.assert_close(s.p4.double(), members, rtol=1e-6, atol=1e-6 * scale)
    jet = jet_sum(p4, mask)
    torch.testing.assert_close(s.p4.double().sum(1), jet, rtol=1e-5, atol=1e-5 * scale)
    torch.testing.assert_close(s.jet_p4.double(), jet, rtol=1e-6, atol=1e-6 * scale)
    pt = pt_of(s.p4.double())  # ranked in float64, stored in float32: near-ties may swap by rounding
    assert torch.all((pt[:, :-1] >= pt[:, 1:] * (1 - 1e-6)) | ~s.mask[:, 1:])
    c = s.coordinates()
    assert torch.isfinite(c).all()
    assert torch.all(c[~s.mask] == 0)
    assert torch.all(c[..., 1].abs() <= PI)
    assert torch.all(c[..., 1].abs()[s.mask] <= 2 * MAX_RADIUS + 1e-4)

    junk = 100.0 * torch.randn(p4.shape, generator=g)
    junk[..., 3] = junk[..., :3].norm(dim=-1) + 1.0
    dirty = find_subjets(torch.where(mask.unsqueeze(-1), p4, junk), mask, radius=radius, algorithm=algorithm)
    for a, b in zip((s.index, s.p4, s.mask, s.count, s.jet_p4),
                    (dirty.index, dirty.p4, dirty.mask, dirty.count, dirty.jet_p4), strict=True):
        assert torch.equal(a, b)
    cut = find_subjets(p4, mask, radius=radius, algorithm=algorithm, max_subjets=keep)
    k = min(keep, n_sub)
    assert cut.max_subjets == k
    assert torch.equal(cut.count, s.count)
    assert torch.equal(cut.p4, s.p4[:, :k])
    assert torch.equal(cut.mask, s.mask[:, :k])
    assert torch.equal(cut.index, torch.where(s.index < k, s.index, -1))


# -- readers and writers ---------------------------------------------------------------------------------

FILE_FORMATS = {"hepfm": TOPTAG_CLASSES, "toptag-h5": TOPTAG_CLASSES, "jetclass-root": JETCLASS_CLASSES}
FIELDS_KEPT = {"hepfm": True, "toptag-h5": False, "jetclass-root": True}


@pytest.mark.parametrize("fmt", sorted(FILE_FORMATS))
def test_readers_round_trip_random_jets(fmt):
    """write_jets then the validating reader gives back the same jets bit for bit (float32 stored),
    the same labels, the per-particle fields the format keeps, and so the same features."""
    from hepfm.data.formats import open_source, write_jets

    @settings(PROPS, max_examples=8)
    @given(chunk=jet_chunks(max_jets=6, max_particles=20, fields=True, class_names=FILE_FORMATS[fmt]),
           labeled=st.booleans())
    @example(chunk=EXTREME, labeled=False)
    def check(chunk, labeled):
        if not labeled:
            chunk = JetChunk(p4=chunk.p4, mask=chunk.mask, particles=chunk.particles)
        with tempfile.TemporaryDirectory() as d:
            path = Path(d) / ("jets.root" if fmt == "jetclass-root" else "jets.h5")
            assert write_jets(path, [chunk], fmt, {"test": "properties"}) == len(chunk)
            src = open_source(path)  # validating reader: raises on any jet it finds bad
            assert src.format == fmt
            assert len(src) == len(chunk)
            assert src.has_labels == labeled
            back = src.read(0, len(chunk))
            assert src.bad_counts == {}
            src.close()
        n = min(back.max_particles, chunk.max_particles)  # compared over the common width
        assert back.n_particles.tolist() == chunk.n_particles.tolist()
        np.testing.assert_array_equal(back.mask[:, :n], chunk.mask[:, :n])
        np.testing.assert_array_equal(back.p4[:, :n], chunk.p4[:, :n])
        assert not back.mask[:, n:].any()
        assert np.all(back.p4[:, n:] == 0)
        if labeled:
            assert back.class_names == FILE_FORMATS[fmt]
            np.testing.assert_array_equal(back.label, chunk.label)
        else:
            assert back.label is None
        if FIELDS_KEPT[fmt]:
            for k in ("charge", *PID_FLAGS, "d0val", "d0err", "dzval", "dzerr", "pid"):
                np.testing.assert_array_equal(back.particles[k][:, :n].astype(np.float64),
                                              chunk.particles[k][:, :n].astype(np.float64), err_msg=k)
        fs = FEATURE_SETS.get("kin")
        np.testing.assert_array_equal(fs.compute(back)[:, :n], fs.compute(chunk)[:, :n])

    check()
