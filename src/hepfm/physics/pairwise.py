"""ParT's pairwise interaction features, batched in torch.

For particles i, j (Qu, Li, Qian, "Particle Transformer for Jet Tagging", arXiv:2202.03772, Eq. 3):

* Δ = sqrt((y_i - y_j)² + (φ_i - φ_j)²), with **rapidity** y (not η) and Δφ wrapped to [-π, π);
* kT = min(pT_i, pT_j) · Δ;
* z = min(pT_i, pT_j) / (pT_i + pT_j);
* m² = (E_i + E_j)² - |p_i + p_j|².

Each is clamped at ``eps`` (1e-8) before the log. The semantics (and the channel order ln kT, ln z,
ln Δ, ln m²) are those of ``pairwise_lv_fts(..., num_outputs=4)`` in weaver-core's
``ParticleTransformer.py``, re-implemented here for the (B, N, 4) layout of
:class:`~hepfm.contracts.ParticleBatch`:

* y = ½ ln(1 + 2 pz / max(E - pz, 1e-20)), as weaver; the argument of that log is additionally
  floored at 1e-20 so that an unphysical four-vector (E < |pz| from float rounding) gives a large
  finite rapidity instead of NaN;
* pT is not clamped; z divides by max(pT_i + pT_j, eps);
* the self pair (i = i) is computed as weaver does (ParT keeps it: ``remove_self_pair=False``):
  ln Δ = ln kT = ln eps, ln z = ln ½, ln m² = ln(4 m_i²) (clamped);
* pairs with a padded particle are set to 0 (weaver leaves whatever the padded four-vectors give
  and relies on the attention mask; zeros are easier to test and to reason about).
"""

from __future__ import annotations

import math

import torch

#: Channel names of :func:`pairwise_features`, in output order (weaver's order).
PAIR_FEATURES = ("ln_kt", "ln_z", "ln_delta", "ln_m2")


def pairwise_features(p4: torch.Tensor, mask: torch.Tensor | None = None, eps: float = 1e-8) -> torch.Tensor:
    """The 4 ParT pair features for every pair of particles in a batch.

    Args:
        p4: (px, py, pz, E) four-vectors.
        mask: True = real particle; None = all real.
        eps: clamp before each log.

    Shape:
        p4: (B, N, 4); mask: (B, N) bool.
        returns: (B, P=4, N, N), channels in :data:`PAIR_FEATURES` order, symmetric in (i, j),
        zero where particle i or particle j is padding. Computed in p4's dtype (float32 or wider);
        half-precision inputs are computed in float32 and cast back.
    """
    if p4.ndim != 3 or p4.shape[-1] != 4:
        raise ValueError(f"p4 must be (B, N, 4), got {tuple(p4.shape)}")
    dtype = p4.dtype
    v = p4.float() if dtype in (torch.float16, torch.bfloat16) else p4
    px, py, pz, e = v.unbind(-1)  # each (B, N)

    pt = torch.sqrt(px * px + py * py)
    rap = 0.5 * torch.log((1 + 2 * pz / (e - pz).clamp(min=1e-20)).clamp(min=1e-20))
    phi = torch.atan2(py, px)

    # (B, N, 1) against (B, 1, N) -> (B, N, N)
    dphi = torch.remainder(phi[:, :, None] - phi[:, None, :] + math.pi, 2 * math.pi) - math.pi
    drap = rap[:, :, None] - rap[:, None, :]
    delta = torch.sqrt(drap * drap + dphi * dphi)
    ln_delta = torch.log(delta.clamp(min=eps))

    pti, ptj = pt[:, :, None], pt[:, None, :]
    ptmin = torch.minimum(pti, ptj)
    ln_kt = torch.log((ptmin * delta).clamp(min=eps))
    ln_z = torch.log((ptmin / (pti + ptj).clamp(min=eps)).clamp(min=eps))

    # m² of the pair: (E_i + E_j)² - |p_i + p_j|², from (B, N, 1, 4) + (B, 1, N, 4)
    s = v[:, :, None, :] + v[:, None, :, :]
    m2 = s[..., 3] * s[..., 3] - (s[..., :3] * s[..., :3]).sum(-1)
    ln_m2 = torch.log(m2.clamp(min=eps))

    out = torch.stack([ln_kt, ln_z, ln_delta, ln_m2], dim=1)  # (B, 4, N, N)
    if mask is not None:
        pair = mask[:, :, None] & mask[:, None, :]  # (B, N, N)
        out = out.masked_fill(~pair[:, None], 0.0)
    return out.to(dtype)
