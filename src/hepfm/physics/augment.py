"""Physics augmentations of jets for contrastive pretraining, vectorised in torch on the batch's device.

JetCLR (Dillon, Kasieczka, Olischlager, Plehn, Sorrenson, Vogel, "Symmetries, safety, and
self-supervision", arXiv:2108.04253) builds positive pairs from the jet's *symmetries* (rotations
about the jet axis, translations in η-φ) and from *soft and collinear* changes that IRC-safe physics
cannot see (pT-dependent angular smearing of soft particles, collinear splittings). Seed 000 (Zhao
et al., arXiv:2408.09343) re-uses exactly these for JetCLR on JetClass. The originals (bmdillon/JetCLR
``jet_augs.py``; JavierZhao/JetCLR ``jet_augs_gpu.py``) act on (pT, η, φ) arrays with per-jet Python
loops for the splitting; here every augmentation acts on four-vectors, for the whole batch at once:

* :func:`rotate` - a 3D rotation by a random angle about the jet's momentum axis. The jet
  four-momentum (so jet pT, η, φ, mass) and each particle's momentum transverse to the axis are
  exact invariants. (JetCLR rotates in the (η, φ) plane about the origin, its jets being centred;
  the JetClass fork keeps raw η, φ and so rotates about the *detector* origin, not the jet.)
* :func:`translate` - a longitudinal boost (rapidity shift Δy) and an azimuthal rotation (Δφ),
  both drawn per jet as ``width`` times the jet's extent in η / φ, as JetCLR's ``translate_jets``
  (whose extent wrongly includes the zero padding). A boost is the exact Lorentz form of an η
  shift: jet mass, particle pT, pairwise Δy and Δφ are exact invariants; pairwise Δη is exact
  for massless particles.
* :func:`smear` - each particle's η and φ move by N(0, σ²), σ = ``strength`` / max(pT, ``pt_min``)
  (JetCLR's ``distort_jets``); pT and mass are kept, soft particles move most.
* :func:`collinear_split` - a random subset of particles is split into two collinear ones sharing
  the four-momentum as (z p, (1 - z) p), z ~ U(0, 1), filling free padding slots (JetCLR's
  ``collinear_fill_jets``, applied twice). The jet four-momentum and every IRC-safe observable are
  unchanged; splits never land on real particles (the fork's small-jet bug).
* :func:`drop_soft` - removes particles below a pT threshold at random (an IR-motivated extra, off
  in the JetCLR recipe).

Layout: every function takes and returns (p4 (B, N, 4), mask (B, N)) with padded slots all-zero.
Real particles may sit in any slots (the functions never assume a prefix); :func:`collinear_split`
appends children in the first free slots, so particles are no longer pT-ordered after it, and
:func:`drop_soft` re-packs real particles to the front keeping their order. The :class:`Augmentation`
pipeline ends with :func:`sort_by_pt` (rotations change particle pT too), so its output follows the
loader's convention (pT-descending, real particles first). Functions that create or move particles
return ``parent`` (B, N_out) int64: the input slot each output slot's particle comes from (defined,
and in range, at every slot; meaningful where ``mask``), so non-kinematic features (charge, PID,
impact parameters) can be carried over (:mod:`hepfm.physics.torch_features`).

Randomness: every draw takes an optional ``generator`` and otherwise uses torch's global RNG, which
the training engine seeds per step, so augmentations are reproducible and exactly resumable.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from functools import partial
from typing import Any, NamedTuple

import torch

from hepfm.errors import HepfmInputError
from hepfm.options import from_dict


class Augmented(NamedTuple):
    """An augmented batch.

    Shape:
        p4: (B, N', 4) (px, py, pz, E), zero at padded slots.
        mask: (B, N') bool, True = real particle.
        parent: (B, N') int64 input slot of each output slot, or None when slot i is input slot i.
    """

    p4: torch.Tensor
    mask: torch.Tensor
    parent: torch.Tensor | None = None


Step = Callable[[torch.Tensor, torch.Tensor, "torch.Generator | None"], Augmented]


# -- helpers -------------------------------------------------------------------------------------------


def _rand(shape: Sequence[int], like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    return torch.rand(tuple(shape), generator=generator, device=like.device, dtype=like.dtype)


def _randn(shape: Sequence[int], like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    return torch.randn(tuple(shape), generator=generator, device=like.device, dtype=like.dtype)


def _gate(prob: float, like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """(B,) bool: which jets an augmentation with per-jet probability ``prob`` applies to."""
    b = like.shape[0]
    if prob >= 1.0:
        return torch.ones(b, dtype=torch.bool, device=like.device)
    return _rand((b,), like, generator) < prob


def _pt(p4: torch.Tensor) -> torch.Tensor:
    """(B, N) transverse momentum (sqrt of squares: several times faster than torch.hypot on CPU)."""
    return torch.sqrt(p4[..., 0] * p4[..., 0] + p4[..., 1] * p4[..., 1])


def _pt_eta_phi(p4: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-particle pT, pseudorapidity, azimuth (zero-safe: η = 0 where pT = 0). Shape: (B, N) each."""
    px, py, pz = p4[..., 0], p4[..., 1], p4[..., 2]
    pt = _pt(p4)
    safe = pt.clamp(min=torch.finfo(p4.dtype).tiny)
    eta = torch.where(pt > 0, torch.asinh(pz / safe), torch.zeros_like(pt))
    return pt, eta, torch.atan2(py, px)


def _masked_extent(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B,) max - min of ``values`` (B, N) over real particles; 0 for empty jets."""
    big = torch.finfo(values.dtype).max
    hi = torch.where(mask, values, -big).amax(dim=1)
    lo = torch.where(mask, values, big).amin(dim=1)
    return torch.where(mask.any(dim=1), hi - lo, torch.zeros_like(hi))


def _wrap(phi: torch.Tensor) -> torch.Tensor:
    return torch.remainder(phi + math.pi, 2 * math.pi) - math.pi


def _gather(t: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """t (B, N, ...) gathered along dim 1 with index (B, M) -> (B, M, ...)."""
    if t.ndim == 2:
        return torch.gather(t, 1, index)
    return torch.gather(t, 1, index.unsqueeze(-1).expand(*index.shape, t.shape[-1]))


def compose_parents(first: torch.Tensor | None, second: torch.Tensor | None) -> torch.Tensor | None:
    """Parent map of applying ``first`` then ``second`` (each (B, N_k) or None = identity)."""
    if first is None:
        return second
    if second is None:
        return first
    return torch.gather(first, 1, second)


# -- the augmentations ---------------------------------------------------------------------------------


def rotate(p4: torch.Tensor, mask: torch.Tensor, prob: float = 1.0,
           generator: torch.Generator | None = None) -> Augmented:
    """Rotate every particle by a uniform random angle about its jet's three-momentum axis.

    Rodrigues' formula v' = v cos θ + (k × v) sin θ + k (k·v)(1 - cos θ) with k the unit jet axis;
    energies are unchanged. Jets with zero total momentum are left alone.
    """
    axis = (p4[..., :3] * mask.unsqueeze(-1)).sum(dim=1)  # (B, 3)
    norm = torch.linalg.vector_norm(axis, dim=-1, keepdim=True)
    k = (axis / norm.clamp(min=torch.finfo(p4.dtype).tiny)).unsqueeze(1)  # (B, 1, 3)
    theta = 2 * math.pi * _rand((p4.shape[0],), p4, generator) * _gate(prob, p4, generator)
    theta = torch.where(norm.squeeze(-1) > 0, theta, torch.zeros_like(theta))
    cos, sin = torch.cos(theta).view(-1, 1, 1), torch.sin(theta).view(-1, 1, 1)
    v = p4[..., :3]  # (B, N, 3)
    kv = (k * v).sum(dim=-1, keepdim=True)  # (B, N, 1)
    v_rot = v * cos + torch.linalg.cross(k.expand_as(v), v, dim=-1) * sin + k * kv * (1 - cos)
    return Augmented(torch.cat([v_rot, p4[..., 3:]], dim=-1), mask)


def translate(p4: torch.Tensor, mask: torch.Tensor, width: float = 1.0, prob: float = 1.0,
              generator: torch.Generator | None = None) -> Augmented:
    """Shift a jet in rapidity and azimuth: Δy, Δφ ~ U(-w·extent, +w·extent) per jet.

    The extents are the jet's real-particle spread in η and in φ relative to its axis (JetCLR's
    "peak to peak" width, padding excluded). Δy is applied as a boost along the beam, Δφ as a rotation
    about it, so the transformation is a Lorentz transformation and the jet mass is exact. Energies
    are recomputed from the boosted momenta and each particle's mass: in float32 the boosted E and |p|
    of a light particle come from differences of large products and can round to E < |p|.
    """
    b = p4.shape[0]
    _pt, eta, phi = _pt_eta_phi(p4)
    jet = (p4 * mask.unsqueeze(-1)).sum(dim=1)  # (B, 4)
    dphi_axis = _wrap(phi - torch.atan2(jet[:, 1], jet[:, 0]).unsqueeze(1))
    gate = _gate(prob, p4, generator).to(p4.dtype)
    dy = width * _masked_extent(eta, mask) * (2 * _rand((b,), p4, generator) - 1) * gate
    dphi = width * _masked_extent(dphi_axis, mask) * (2 * _rand((b,), p4, generator) - 1) * gate
    ch, sh = torch.cosh(dy).unsqueeze(1), torch.sinh(dy).unsqueeze(1)  # (B, 1)
    c, s = torch.cos(dphi).unsqueeze(1), torch.sin(dphi).unsqueeze(1)
    px, py, pz, e = p4.unbind(-1)
    m2 = (e * e - px * px - py * py - pz * pz).clamp(min=0)
    px2, py2, pz2 = px * c - py * s, px * s + py * c, pz * ch + e * sh
    e2 = torch.sqrt(px2 * px2 + py2 * py2 + pz2 * pz2 + m2)
    return Augmented(torch.stack([px2, py2, pz2, e2], dim=-1), mask)


def smear(p4: torch.Tensor, mask: torch.Tensor, strength: float = 0.1, pt_min: float = 0.1, prob: float = 1.0,
          generator: torch.Generator | None = None) -> Augmented:
    """Move each particle in η and φ by Gaussians of width ``strength / max(pT, pt_min)`` (pT in GeV).

    Soft particles, whose directions IRC-safe observables barely weigh, move most; hard ones hardly
    at all. Each particle keeps its pT and mass.
    """
    pt, eta, phi = _pt_eta_phi(p4)
    m2 = (p4[..., 3] ** 2 - pt**2 - p4[..., 2] ** 2).clamp(min=0)
    sigma = strength / pt.clamp(min=pt_min) * _gate(prob, p4, generator).to(p4.dtype).unsqueeze(1)  # (B, N)
    eta = eta + sigma * _randn(pt.shape, p4, generator)
    phi = phi + sigma * _randn(pt.shape, p4, generator)
    pz = pt * torch.sinh(eta)
    e = torch.sqrt(pt**2 + pz**2 + m2)
    out = torch.stack([pt * torch.cos(phi), pt * torch.sin(phi), pz, e], dim=-1)
    return Augmented(torch.where(mask.unsqueeze(-1), out, torch.zeros_like(out)), mask)


def collinear_split(p4: torch.Tensor, mask: torch.Tensor, fraction: float = 1.0, extra_slots: int = 0,
                    prob: float = 1.0, generator: torch.Generator | None = None) -> Augmented:
    """Split random particles p into collinear pairs (z p, (1 - z) p), z ~ U(0, 1), into free slots.

    Each real particle is a candidate with probability ``fraction``; as many candidates as there are
    free slots are split, chosen uniformly (``fraction=1`` is JetCLR's "fill the padding"). Children
    go to the free slots in slot order. ``extra_slots`` appends that many padding slots first, so
    jets that fill N can still split.

    Shape: p4 (B, N, 4), mask (B, N) -> (B, N + extra_slots, ...); parent (B, N + extra_slots).
    """
    if extra_slots > 0:
        p4 = torch.nn.functional.pad(p4, (0, 0, 0, extra_slots))
        mask = torch.nn.functional.pad(mask, (0, extra_slots))
    b, n = mask.shape
    slots = torch.arange(n, device=mask.device).expand(b, n)
    u = _rand((b, n), p4, generator)
    cand = mask & (u < fraction) & _gate(prob, p4, generator).unsqueeze(1)
    # candidates in random order first (their u is uniform), the rest after
    order = torch.argsort(torch.where(cand, u, 2.0), dim=1)  # (B, N) parent slot by split rank
    n_split = torch.minimum(cand.sum(1), (~mask).sum(1)).unsqueeze(1)  # (B, 1)
    split = torch.zeros_like(mask).scatter(1, order, slots < n_split)  # (B, N) parents that split
    free_rank = torch.cumsum((~mask).long(), dim=1) - 1  # rank of each free slot among free slots
    child = ~mask & (free_rank < n_split)  # (B, N) slots that receive a child
    child_parent = torch.gather(order, 1, free_rank.clamp(min=0, max=n - 1))
    parent = torch.where(child, child_parent, slots)
    parent = torch.where(parent < n - extra_slots, parent, torch.zeros_like(parent))
    z = _rand((b, n), p4, generator)
    keep = torch.where(split, z, torch.ones_like(z))  # the parent keeps z p
    out = p4 * keep.unsqueeze(-1)
    child_p4 = _gather(p4, child_parent) * (1 - _gather(z, child_parent)).unsqueeze(-1)
    out = torch.where(child.unsqueeze(-1), child_p4, out)
    return Augmented(out, mask | child, parent)


def compact(p4: torch.Tensor, mask: torch.Tensor) -> Augmented:
    """Move real particles to the front of each jet, keeping their order (padded slots zeroed)."""
    order = torch.argsort((~mask).to(torch.int8), dim=1, stable=True)  # (B, N)
    new_mask = torch.gather(mask, 1, order)
    out = _gather(p4, order) * new_mask.unsqueeze(-1)
    return Augmented(out, new_mask, order)


def drop_soft(p4: torch.Tensor, mask: torch.Tensor, pt_threshold: float = 1.0, drop_prob: float = 0.5,
              prob: float = 1.0, generator: torch.Generator | None = None) -> Augmented:
    """Remove each particle softer than ``pt_threshold`` (GeV) with probability ``drop_prob``.

    IR safety means such particles carry little information; the hardest particle always stays.
    The survivors are re-packed to the front, in their original order.
    """
    pt = _pt(p4)
    hardest = pt >= torch.where(mask, pt, -1.0).amax(dim=1, keepdim=True)
    drop = (mask & (pt < pt_threshold) & ~hardest & (_rand(pt.shape, p4, generator) < drop_prob)
            & _gate(prob, p4, generator).unsqueeze(1))
    keep = mask & ~drop
    return compact(p4 * keep.unsqueeze(-1), keep)


def sort_by_pt(p4: torch.Tensor, mask: torch.Tensor) -> Augmented:
    """Order each jet's particles by decreasing pT, padded slots last (the loader's convention)."""
    pt = _pt(p4)
    order = torch.argsort(torch.where(mask, pt, -1.0), dim=1, descending=True, stable=True)
    return Augmented(_gather(p4, order), torch.gather(mask, 1, order), order)


# -- the pipeline --------------------------------------------------------------------------------------


@dataclass
class AugmentConfig:
    """Probabilities (per jet) and parameters of the JetCLR pipeline; defaults are JetCLR's.

    Defaults follow the original code's settings (bmdillon/JetCLR ``extargs.py``, kept by the JetClass
    fork's argparse defaults): rotations on; translations with width 1.0 (``trsw``); smearing with
    strength 0.1 GeV (``ptst``) and pT clip 0.1 GeV (``ptcm``); collinear filling applied twice
    (``cf``). Soft-particle dropping is not part of JetCLR and is off.

    Attributes:
        rotate: probability of a random rotation about the jet axis.
        translate, translate_width: probability and width (in units of the jet's extent) of the
            η-φ translation.
        smear, smear_strength, smear_pt_min: probability, σ·pT in GeV, and the pT floor in GeV of the
            angular smearing.
        split, split_passes, split_fraction, split_extra_slots: probability of collinear splitting,
            number of passes, per-particle candidate probability per pass, padding slots appended
            before the first pass.
        drop_soft, drop_soft_pt, drop_soft_prob: probability of soft dropping, its pT threshold in
            GeV, and the per-particle drop probability below it.
        sort: end with a pT sort, padded slots last (the loader's layout).
    """

    rotate: float = 1.0
    translate: float = 1.0
    translate_width: float = 1.0
    smear: float = 1.0
    smear_strength: float = 0.1
    smear_pt_min: float = 0.1
    split: float = 1.0
    split_passes: int = 2
    split_fraction: float = 1.0
    split_extra_slots: int = 0
    drop_soft: float = 0.0
    drop_soft_pt: float = 1.0
    drop_soft_prob: float = 0.5
    sort: bool = True

    def __post_init__(self) -> None:
        probs = ("rotate", "translate", "smear", "split", "split_fraction", "drop_soft", "drop_soft_prob")
        for name in probs:
            if not 0.0 <= float(getattr(self, name)) <= 1.0:
                value = getattr(self, name)
                raise HepfmInputError(f"augment.{name} is a probability in [0, 1], got {value!r}")
        if self.split_passes < 0 or self.split_extra_slots < 0:
            raise HepfmInputError("augment.split_passes and augment.split_extra_slots must be >= 0")

    @classmethod
    def from_dict(cls, d: dict[str, Any] | AugmentConfig | None) -> AugmentConfig:
        """From a YAML mapping; unknown keys and values of the wrong type are a user error."""
        return from_dict(cls, d, "augment")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Augmentation:
    """An ordered pipeline of augmentation steps, each ``(p4, mask, generator) -> Augmented``.

    ``Augmentation.from_config(cfg)`` gives JetCLR's order: soft dropping, rotation, collinear
    splitting, smearing, translation, then (``sort``) a pT sort.
    ``symmetries_only=True`` keeps just rotation and translation (JetCLR's first view).

    Example:
        >>> aug = Augmentation.from_config(AugmentConfig(smear=0.5))
        >>> out = aug(batch.p4, batch.mask)  # Augmented(p4, mask, parent)
    """

    def __init__(self, steps: Sequence[Step], sort: bool = True) -> None:
        self.steps = list(steps)
        self.sort = sort

    @classmethod
    def from_config(cls, cfg: AugmentConfig, symmetries_only: bool = False) -> Augmentation:
        steps: list[Step] = []
        full = not symmetries_only
        if full and cfg.drop_soft > 0:
            steps.append(partial(_kw(drop_soft), pt_threshold=cfg.drop_soft_pt, drop_prob=cfg.drop_soft_prob,
                                 prob=cfg.drop_soft))
        if cfg.rotate > 0:
            steps.append(partial(_kw(rotate), prob=cfg.rotate))
        if full and cfg.split > 0:
            for i in range(cfg.split_passes):
                steps.append(partial(_kw(collinear_split), fraction=cfg.split_fraction, prob=cfg.split,
                                     extra_slots=cfg.split_extra_slots if i == 0 else 0))
        if full and cfg.smear > 0 and cfg.smear_strength > 0:
            steps.append(partial(_kw(smear), strength=cfg.smear_strength, pt_min=cfg.smear_pt_min,
                                 prob=cfg.smear))
        if cfg.translate > 0 and cfg.translate_width > 0:
            steps.append(partial(_kw(translate), width=cfg.translate_width, prob=cfg.translate))
        return cls(steps, sort=cfg.sort)

    def __call__(self, p4: torch.Tensor, mask: torch.Tensor,
                 generator: torch.Generator | None = None) -> Augmented:
        """Shape: p4 (B, N, 4), mask (B, N) -> Augmented with N' >= N slots."""
        parent: torch.Tensor | None = None
        for step in self.steps:
            p4, mask, step_parent = step(p4, mask, generator)
            parent = compose_parents(parent, step_parent)
        if self.sort and self.steps:
            p4, mask, order = sort_by_pt(p4, mask)
            parent = compose_parents(parent, order)
        return Augmented(p4, mask, parent)


def _kw(fn: Callable[..., Augmented]) -> Callable[..., Augmented]:
    """Adapt ``fn(p4, mask, ..., generator=)`` to the positional step signature."""

    def step(p4: torch.Tensor, mask: torch.Tensor, generator: torch.Generator | None, **kw: Any) -> Augmented:
        return fn(p4, mask, generator=generator, **kw)

    step.__name__ = fn.__name__
    return step
