"""Lorentz augmentations of whole events (seed 003, Kishimoto): the symmetries of a collision that a
classifier of events should not depend on, applied to every object of an event at once.

* :func:`rotate_azimuth` - a rotation about the beam axis by φ ~ U(0, 2π): pT, η, masses, ΔR and
  Δφ between objects are exact invariants.
* :func:`flip_z` - z → -z (η → -η) with probability ``prob``: the detector is forward-backward
  symmetric; pT, masses, ΔR are invariant.
* :func:`boost_z` - a boost along the beam axis by rapidity Δy ~ U(-w, w): the collision's centre of
  mass moves along z event by event. Invariant masses (of any set of objects), pT and rapidity
  differences are exact invariants; η differences and ΔR are exact for massless objects. Objects that
  are transverse by construction (the missing pT, at η = 0) are left alone with ``keep``.

Unlike :mod:`hepfm.physics.augment` (jets: rotations about the *jet* axis, translations by the jet's
extent), these act in the lab frame. Every function takes (p4 (B, N, 4), mask (B, N)) with padded
slots zero and returns the same shapes (objects keep their slots); randomness as there (an optional
``generator``, else torch's global RNG, which the engine seeds per step).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch

from hepfm.errors import HepfmInputError
from hepfm.options import from_dict


def _uniform(b: int, like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    return torch.rand((b,), generator=generator, device=like.device, dtype=like.dtype)


def rotate_azimuth(p4: torch.Tensor, mask: torch.Tensor, prob: float = 1.0,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """Rotate each event about the z axis by a uniform angle (events drawn with probability ``prob``)."""
    b = p4.shape[0]
    phi = 2 * math.pi * _uniform(b, p4, generator) * (_uniform(b, p4, generator) < prob)
    c, s = torch.cos(phi).view(-1, 1), torch.sin(phi).view(-1, 1)
    px, py = p4[..., 0], p4[..., 1]
    out = torch.stack([px * c - py * s, px * s + py * c, p4[..., 2], p4[..., 3]], dim=-1)
    return out * mask.unsqueeze(-1)


def flip_z(p4: torch.Tensor, mask: torch.Tensor, prob: float = 0.5,
           generator: torch.Generator | None = None) -> torch.Tensor:
    """Mirror each event in z (pz → -pz) with probability ``prob``."""
    sign = torch.where(_uniform(p4.shape[0], p4, generator) < prob, -1.0, 1.0).to(p4.dtype).view(-1, 1)
    return torch.stack([p4[..., 0], p4[..., 1], p4[..., 2] * sign, p4[..., 3]], dim=-1) * mask.unsqueeze(-1)


def boost_z(p4: torch.Tensor, mask: torch.Tensor, width: float = 0.5, prob: float = 1.0,
            keep: torch.Tensor | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """Boost each event along z by rapidity Δy ~ U(-width, width); ``keep`` (B, N) objects unchanged."""
    b = p4.shape[0]
    dy = width * (2 * _uniform(b, p4, generator) - 1) * (_uniform(b, p4, generator) < prob)
    ch, sh = torch.cosh(dy).view(-1, 1), torch.sinh(dy).view(-1, 1)
    pz, e = p4[..., 2], p4[..., 3]
    out = torch.stack([p4[..., 0], p4[..., 1], pz * ch + e * sh, e * ch + pz * sh], dim=-1)
    if keep is not None:
        out = torch.where(keep.unsqueeze(-1), p4, out)
    return out * mask.unsqueeze(-1)


@dataclass
class LorentzConfig:
    """Per-event probabilities of the three augmentations and the boost's rapidity half-width.

    Defaults: every event rotated in φ, half of them mirrored in z, none boosted (the seed names
    rotations, z flips and boosts; the boost is opt-in as its width is a choice of the data).
    """

    rotate: float = 1.0
    flip: float = 0.5
    boost: float = 0.0
    boost_width: float = 0.5

    def __post_init__(self) -> None:
        for name in ("rotate", "flip", "boost"):
            value = getattr(self, name)
            if not 0.0 <= float(value) <= 1.0:
                raise HepfmInputError(f"augment.{name} is a probability in [0, 1], got {value!r}")
        if self.boost_width < 0:
            raise HepfmInputError(f"augment.boost_width must be >= 0, got {self.boost_width!r}")

    @classmethod
    def from_dict(cls, d: dict[str, Any] | LorentzConfig | None) -> LorentzConfig:
        return from_dict(cls, d, "augment")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def active(self) -> bool:
        return self.rotate > 0 or self.flip > 0 or (self.boost > 0 and self.boost_width > 0)

    def __call__(self, p4: torch.Tensor, mask: torch.Tensor, keep: torch.Tensor | None = None,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        """Rotate, flip, then boost. Shape: (B, N, 4), (B, N) -> (B, N, 4)."""
        if self.rotate > 0:
            p4 = rotate_azimuth(p4, mask, self.rotate, generator)
        if self.flip > 0:
            p4 = flip_z(p4, mask, self.flip, generator)
        if self.boost > 0 and self.boost_width > 0:
            p4 = boost_z(p4, mask, self.boost_width, self.boost, keep, generator)
        return p4
