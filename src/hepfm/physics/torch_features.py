"""A :class:`~hepfm.data.features.FeatureSet`'s inputs recomputed in torch from (p4, mask).

Augmentations (:mod:`hepfm.physics.augment`) change four-vectors on the training device, so the
backbone's inputs must be rebuilt there, and must be *the same function* of the four-vectors as the
loader's numpy features, or pretraining and finetuning would see different inputs. This module
mirrors :mod:`hepfm.data.features` formula by formula: float32 per-particle quantities; the jet axis,
pT and energy from the float64 four-vector sum of the real particles; Δφ from one atan2 in the jet's
transverse frame, wrapped to [-π, π); Δη multiplied by sign(η_jet) when the set has ``flip_eta``
(ParT's convention); logs floored at the smallest float32; then weaver's ``clip((q - center) *
scale)`` (no transformation where ``center`` is None). Padded slots are zero.

Kinematic features (those needing no per-particle field: ``Feature.requires == ()``) are recomputed.
The others (charge, PID flags, impact parameters) cannot change under a kinematic augmentation, so
their already-standardised columns are copied from the source batch, from each particle's parent
slot (the ``parent`` map an augmentation returns; a split particle's children inherit its charge).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from hepfm.data.features import JET_FEATURES, Feature, FeatureSet
from hepfm.errors import HepfmInputError

_TINY = float(np.finfo(np.float32).tiny)
_PI = float(np.float32(np.pi))


def is_kinematic(feature: Feature) -> bool:
    """True if the feature is a function of the four-vectors alone."""
    return not feature.requires


def kinematic_columns(feature_set: FeatureSet) -> list[int]:
    """Indices of the feature set's kinematic columns."""
    return [i for i, f in enumerate(feature_set.features) if is_kinematic(f)]


def _atan2(y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """atan2 in [-π, π), as :func:`hepfm.data.features._atan2`."""
    a = torch.atan2(y, x)
    return torch.where(a >= _PI, a - 2 * _PI, a)


def jet_kinematics(p4: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
    """Jet pt, eta, phi, energy, mass (float64) of the real particles' four-vector sum.

    Shape: p4 (B, N, 4), mask (B, N) -> each (B,).
    """
    s = (p4.double() * mask.unsqueeze(-1)).sum(dim=1)  # (B, 4)
    px, py, pz, e = s.unbind(-1)
    pt = torch.hypot(px, py)
    eta = torch.asinh(torch.where(pt > 0, pz / torch.where(pt > 0, pt, 1.0), 0.0))
    mass = torch.sqrt((e**2 - px**2 - py**2 - pz**2).clamp(min=0.0))
    return {"pt": pt, "eta": eta, "phi": torch.atan2(py, px), "energy": e, "mass": mass}


def jet_vector(p4: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``ParticleBatch.jet``: (B, 5) float32 in :data:`~hepfm.data.features.JET_FEATURES` order."""
    jk = jet_kinematics(p4, mask)
    return torch.stack([jk[k] for k in JET_FEATURES], dim=1).float()


class _Particles:
    """Lazily computed float32 per-particle quantities, (B, N) each; jet ones broadcast as (B, 1)."""

    def __init__(self, p4: torch.Tensor, mask: torch.Tensor, flip_eta: bool) -> None:
        self.p4, self.mask, self.flip_eta = p4.float(), mask, flip_eta
        self.px, self.py, self.pz, self.e = self.p4.unbind(-1)
        self._cache: dict[str, torch.Tensor] = {}
        jk = jet_kinematics(p4, mask)
        self.jet = {
            "eta": jk["eta"].float(),
            "log_pt": torch.log(jk["pt"].clamp(min=_TINY)).float(),
            "log_e": torch.log(jk["energy"].clamp(min=_TINY)).float(),
            "cos_phi": torch.cos(jk["phi"]).float(),
            "sin_phi": torch.sin(jk["phi"]).float(),
        }
        self.jet = {k: v.unsqueeze(1) for k, v in self.jet.items()}

    def get(self, name: str) -> torch.Tensor:
        if name not in self._cache:
            fn = _QUANTITIES.get(name)
            if fn is None:
                raise HepfmInputError(f"kinematic quantity {name!r} has no torch implementation")
            self._cache[name] = fn(self)
        return self._cache[name]


def _eta(p: _Particles) -> torch.Tensor:
    pt, apz = p.get("pt"), p.pz.abs()
    safe = torch.where(pt > 0, pt, 1.0)
    eta = torch.copysign(torch.log((torch.sqrt(pt * pt + p.pz * p.pz) + apz) / safe), p.pz)
    return torch.where(pt > 0, eta, 0.0)


def _deta(p: _Particles) -> torch.Tensor:
    d = p.get("eta") - p.jet["eta"]
    return d * torch.where(p.jet["eta"] < 0, -1.0, 1.0) if p.flip_eta else d


def _dphi(p: _Particles) -> torch.Tensor:
    c, s = p.jet["cos_phi"], p.jet["sin_phi"]
    return _atan2(p.py * c - p.px * s, p.px * c + p.py * s)


def _log(x: torch.Tensor) -> torch.Tensor:
    return torch.log(x.clamp(min=_TINY))


_QUANTITIES: dict[str, Callable[[_Particles], torch.Tensor]] = {
    "pt": lambda p: torch.sqrt(p.px * p.px + p.py * p.py),
    "energy": lambda p: p.e,
    "eta": _eta,
    "phi": lambda p: _atan2(p.py, p.px),
    "pt_log": lambda p: _log(p.get("pt")),
    "e_log": lambda p: _log(p.e),
    "logptrel": lambda p: p.get("pt_log") - p.jet["log_pt"],
    "logerel": lambda p: p.get("e_log") - p.jet["log_e"],
    "deta": _deta,
    "dphi": _dphi,
    "deltaR": lambda p: torch.sqrt(p.get("deta").square() + p.get("dphi").square()),
}


def _standardise(q: torch.Tensor, f: Feature) -> torch.Tensor:
    if f.center is None:
        return q
    return ((q - f.center) * f.scale).clamp(f.clip_min, f.clip_max)


def compute_features(
    feature_set: FeatureSet,
    p4: torch.Tensor,
    mask: torch.Tensor,
    *,
    source_x: torch.Tensor | None = None,
    parent: torch.Tensor | None = None,
) -> torch.Tensor:
    """The feature set's standardised inputs for (possibly augmented) jets.

    Args:
        feature_set: the loader's feature set.
        p4, mask: the jets (B, N, 4), (B, N).
        source_x: (B, N_src, F) features of the jets the augmentation started from; needed only if the
            set has non-kinematic columns, which are copied from it.
        parent: (B, N) source slot of each slot (``Augmented.parent``); None means slot i <- slot i.

    Returns:
        (B, N, F) float32, zero at padded slots.
    """
    ctx = _Particles(p4, mask, feature_set.flip_eta)
    cols: list[torch.Tensor] = []
    for k, f in enumerate(feature_set.features):
        if is_kinematic(f):
            cols.append(_standardise(ctx.get(f.quantity), f))
            continue
        if source_x is None:
            raise HepfmInputError(
                f"feature {f.name!r} of set {feature_set.name!r} is not kinematic: pass source_x (and parent)"
            )
        col = source_x[..., k].float()
        cols.append(col if parent is None else torch.gather(col, 1, parent))
    x = torch.stack(cols, dim=-1)  # (B, N, F)
    return torch.where(mask.unsqueeze(-1), x, 0.0)
