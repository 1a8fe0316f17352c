"""Particle Flow Network (Deep Sets for jets).

Paper: P. T. Komiske, E. M. Metodiev, J. Thaler, "Energy Flow Networks: Deep Sets for Particle
Jets", JHEP 01 (2019) 121, arXiv:1810.05165.

A per-particle map Φ, a sum over particles (permutation invariant by construction, and the form
every symmetric function of a set can take, Zaheer et al. arXiv:1703.06114), then a jet-level map
F. The paper's PFN uses Φ widths (100, 100, 256) and F widths (100, 100, 100) with ReLU; it is the
cheapest baseline (4.6M FLOPs per jet in the ParT paper's table) and a useful lower bound for what a
pretrained backbone must beat.
"""

from __future__ import annotations

from dataclasses import dataclass

from hepfm.contracts import BackboneOutput, ParticleBatch
from hepfm.nn.backbone import Backbone
from hepfm.nn.blocks import mlp
from hepfm.nn.pooling import masked_sum


@dataclass
class PFNConfig:
    """PFN hyper-parameters; defaults are the paper's.

    Attributes:
        phi_dims: Φ widths; the last is the token (latent) dim.
        f_dims: F widths; the last is the width of ``pooled``.
        trim: drop padding slots that no jet uses before encoding.
    """

    phi_dims: tuple[int, ...] = (100, 100, 256)
    f_dims: tuple[int, ...] = (100, 100, 100)
    trim: bool = True


class ParticleFlowNetwork(Backbone):
    """tokens = Φ(particle) (B, N, phi_dims[-1]); pooled = F(Σ Φ) (B, f_dims[-1])."""

    def __init__(self, in_features: int, config: PFNConfig | None = None) -> None:
        cfg = config or PFNConfig()
        super().__init__(in_features, trim=cfg.trim)
        if not cfg.phi_dims or not cfg.f_dims:
            raise ValueError("PFN needs at least one Φ and one F layer")
        self.config = cfg
        self.embed_dim = cfg.phi_dims[-1]
        self.pooled_dim = cfg.f_dims[-1]
        self.phi = mlp(in_features, cfg.phi_dims)
        self.f = mlp(cfg.phi_dims[-1], cfg.f_dims)

    def encode(self, batch: ParticleBatch) -> BackboneOutput:
        mask = batch.mask
        tokens = self.phi(batch.x).masked_fill(~mask.unsqueeze(-1), 0.0)  # (B, N, latent)
        return BackboneOutput(tokens=tokens, mask=mask, pooled=self.f(masked_sum(tokens, mask)))
