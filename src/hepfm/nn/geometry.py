"""Kinematic coordinates computed inside models from the batch four-vectors.

Every backbone takes the same ``ParticleBatch``; a model that needs angular coordinates (ParticleNet's
first k-NN graph) derives them from ``p4`` rather than asking the data pipeline for a second input.
"""

from __future__ import annotations

import math

import torch

_EPS = 1e-8


def eta_phi(p4: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Pseudorapidity and azimuth of four-vectors (px, py, pz, E).

    Shape:
        p4: (..., 4). returns: eta (...), phi (...).
    """
    px, py, pz = p4[..., 0], p4[..., 1], p4[..., 2]
    pt = torch.sqrt((px.square() + py.square()).clamp(min=_EPS))
    return torch.asinh(pz / pt), torch.atan2(py, px)


def wrap_phi(dphi: torch.Tensor) -> torch.Tensor:
    """Map an azimuthal difference into [-pi, pi)."""
    return torch.remainder(dphi + math.pi, 2 * math.pi) - math.pi


def relative_eta_phi(p4: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(Δη, Δφ) of each particle to the jet axis, the sum of the real particles' four-vectors.

    This is what ParT's data config calls ``pf_points`` (``part_deta``, ``part_dphi``). Computed in
    fp32 because η of a bf16 momentum is too coarse for neighbour finding.

    Shape:
        p4: (B, N, 4); mask: (B, N) bool. returns: (B, N, 2), zero at padded slots.
    """
    p4 = p4.float() * mask.unsqueeze(-1)
    jet = p4.sum(dim=1)  # (B, 4)
    eta, phi = eta_phi(p4)
    jet_eta, jet_phi = eta_phi(jet)
    deta = eta - jet_eta.unsqueeze(1)
    dphi = wrap_phi(phi - jet_phi.unsqueeze(1))
    return torch.stack((deta, dphi), dim=-1).masked_fill(~mask.unsqueeze(-1), 0.0)
