"""Random but physically shaped particle batches for model tests and benchmarks.

Not a physics generator: jets are collimated sprays of massless particles around a random axis,
with a steeply falling pT spectrum, pT-ordered and zero-padded to a fixed length, which is enough to
exercise pair features, k-NN graphs and padding the way real jets do.
"""

from __future__ import annotations

import math

import torch

from hepfm.contracts import ParticleBatch

#: ParT's ``kin`` inputs: (name, subtract, multiply) from its JetClass data config.
KIN_FEATURES = (
    ("part_pt_log", 1.7, 0.7),
    ("part_e_log", 2.0, 0.7),
    ("part_logptrel", -4.7, 0.7),
    ("part_logerel", -4.7, 0.7),
    ("part_deltaR", 0.2, 4.0),
    ("part_deta", 0.0, 1.0),
    ("part_dphi", 0.0, 1.0),
)


def _kinematics(
    n: torch.Tensor, max_particles: int, g: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    b = n.shape[0]
    mask = torch.arange(max_particles).unsqueeze(0) < n.unsqueeze(1)  # (B, N)
    frac = torch.log(torch.rand(b, max_particles, generator=g).clamp(min=1e-6)).square()  # falling
    frac = torch.sort(frac * mask, dim=1, descending=True).values
    frac = frac / frac.sum(1, keepdim=True)
    jet_pt = 500.0 + 500.0 * torch.rand(b, 1, generator=g)
    pt = (0.5 + (jet_pt - 0.5 * n.unsqueeze(1)) * frac) * mask  # (B, N), >= 0.5 GeV like PF candidates
    width = 0.05 + 0.15 * torch.rand(b, 1, generator=g)
    deta = width * torch.randn(b, max_particles, generator=g)
    dphi = width * torch.randn(b, max_particles, generator=g)
    return mask, pt, deta, dphi


def random_jets(
    batch_size: int,
    max_particles: int,
    in_features: int = 7,
    min_particles: int = 3,
    generator: torch.Generator | None = None,
    with_labels: int = 0,
) -> ParticleBatch:
    """A padded batch of toy jets with ParT-``kin``-like standardised features.

    Args:
        batch_size: B.
        max_particles: N; each jet gets a multiplicity in [min_particles, N], so most are padded.
        in_features: F; the first min(F, 7) columns are :data:`KIN_FEATURES`, the rest N(0, 1).
        min_particles: the smallest multiplicity.
        generator: for reproducible batches.
        with_labels: number of classes for random labels (0: no labels).

    Shape:
        x (B, N, F), mask (B, N), p4 (B, N, 4) as (px, py, pz, E), all zero at padded slots.
    """
    g = generator if generator is not None else torch.Generator().manual_seed(0)
    n = torch.randint(min(min_particles, max_particles), max_particles + 1, (batch_size,), generator=g)
    mask, pt, deta, dphi = _kinematics(n, max_particles, g)
    jet_eta = 4.0 * torch.rand(batch_size, 1, generator=g) - 2.0
    jet_phi = (2.0 * torch.rand(batch_size, 1, generator=g) - 1.0) * math.pi
    eta, phi = jet_eta + deta, jet_phi + dphi
    energy = pt * torch.cosh(eta)
    p4 = torch.stack((pt * torch.cos(phi), pt * torch.sin(phi), pt * torch.sinh(eta), energy), -1)
    p4 = p4 * mask.unsqueeze(-1)
    safe_pt, safe_e = pt.clamp(min=1e-6), energy.clamp(min=1e-6)
    raw = (
        torch.log(safe_pt),
        torch.log(safe_e),
        torch.log(safe_pt / pt.sum(1, keepdim=True)),
        torch.log(safe_e / energy.sum(1, keepdim=True)),
        torch.hypot(deta, dphi),
        deta,
        dphi,
    )
    cols = [(r - sub) * mul for r, (_, sub, mul) in zip(raw, KIN_FEATURES[: len(raw)], strict=True)][
        :in_features
    ]
    extra = torch.randn(batch_size, max_particles, max(in_features - 7, 0), generator=g)
    x = torch.cat((torch.stack(cols, -1), extra), -1) * mask.unsqueeze(-1)  # (B, N, F)
    label = torch.randint(with_labels, (batch_size,), generator=g) if with_labels else None
    return ParticleBatch(x=x, mask=mask, p4=p4, label=label)


def shuffle_slots(batch: ParticleBatch, generator: torch.Generator) -> tuple[ParticleBatch, torch.Tensor]:
    """Permute every jet's particle slots (real and padded) independently.

    Returns the permuted batch and ``perm`` with ``new[b, i] = old[b, perm[b, i]]``; padding then
    sits between real particles, which exposes models that assume trailing padding.

    Shape:
        perm: (B, N) int64.
    """
    b, n = batch.mask.shape
    perm = torch.argsort(torch.rand(b, n, generator=generator), dim=1)

    def take(t: torch.Tensor) -> torch.Tensor:
        index = perm.view(b, n, *([1] * (t.ndim - 2))).expand_as(t)
        return torch.gather(t, 1, index)

    return ParticleBatch(
        x=take(batch.x), mask=take(batch.mask), p4=take(batch.p4), jet=batch.jet, label=batch.label
    ), perm


def scramble_padding(batch: ParticleBatch, generator: torch.Generator, extra: int = 0) -> ParticleBatch:
    """Put large random values into the padded slots and append ``extra`` such slots.

    A backbone is padding invariant if its outputs at real particles (and its pooled output) do
    not change under this transformation.
    """
    b, n, f = batch.x.shape
    pad = ~batch.mask.unsqueeze(-1)
    x = torch.where(pad, 100.0 * torch.randn(b, n, f, generator=generator), batch.x)
    junk_p4 = 100.0 * torch.randn(b, n, 4, generator=generator)
    junk_p4[..., 3] = junk_p4[..., :3].norm(dim=-1) + 1.0  # a valid four-vector, just not real
    p4 = torch.where(pad, junk_p4, batch.p4)
    if extra:
        x = torch.cat((x, 100.0 * torch.randn(b, extra, f, generator=generator)), dim=1)
        tail = 100.0 * torch.randn(b, extra, 4, generator=generator)
        tail[..., 3] = tail[..., :3].norm(dim=-1) + 1.0
        p4 = torch.cat((p4, tail), dim=1)
    mask = torch.cat((batch.mask, batch.mask.new_zeros(b, extra)), dim=1)
    return ParticleBatch(x=x, mask=mask, p4=p4, jet=batch.jet, label=batch.label)
