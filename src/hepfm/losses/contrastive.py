"""Contrastive losses and the representation diagnostics of Wang & Isola.

* NT-Xent, the normalised-temperature cross entropy of SimCLR (Chen, Kornblith, Norouzi, Hinton,
  arXiv:2002.05709) as JetCLR uses it (Dillon et al., arXiv:2108.04253): for 2B normalised
  embeddings, each one's positive is the other view of its jet and the 2B - 2 others are negatives.
* alignment and uniformity (Wang & Isola, "Understanding contrastive representation learning through
  alignment and uniformity on the hypersphere", arXiv:2005.10242), which JetCLR logs to follow
  training: alignment = E ||z1 - z2||^α over positive pairs (lower: views agree), uniformity =
  log E exp(-t ||z - z'||²) over all pairs of one view (lower: embeddings spread over the sphere).

All functions normalise their inputs themselves and compute in float32 (safe under autocast).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    """NT-Xent loss, averaged over the 2B anchors.

    ℓ_i = -log( exp(s(i, p(i)) / τ) / Σ_{k ≠ i} exp(s(i, k) / τ) ), s = cosine similarity, p(i) the
    other view of jet i, k over all 2B embeddings but i itself (the positive included, as SimCLR).

    Shape: z1, z2 (B, D) the two views' embeddings, row i of each from the same jet -> ().
    """
    if z1.shape != z2.shape or z1.ndim != 2:
        shapes = f"{tuple(z1.shape)}, {tuple(z2.shape)}"
        raise ValueError(f"nt_xent needs two (B, D) tensors of one shape, got {shapes}")
    b = z1.shape[0]
    z = F.normalize(torch.cat([z1, z2]).float(), dim=1)  # (2B, D)
    logits = z @ z.T / temperature  # (2B, 2B)
    self_mask = torch.eye(2 * b, dtype=torch.bool, device=z.device)
    logits = logits.masked_fill(self_mask, float("-inf"))
    targets = torch.arange(2 * b, device=z.device).roll(b)  # i <-> i + B
    return F.cross_entropy(logits, targets)


def alignment(z1: torch.Tensor, z2: torch.Tensor, alpha: float = 2.0) -> torch.Tensor:
    """E ||ẑ1 - ẑ2||^α over positive pairs (ẑ normalised). Shape: (B, D), (B, D) -> ()."""
    d = F.normalize(z1.float(), dim=1) - F.normalize(z2.float(), dim=1)
    return d.norm(dim=1).pow(alpha).mean()


def uniformity(z: torch.Tensor, t: float = 2.0) -> torch.Tensor:
    """log E_{i<j} exp(-t ||ẑ_i - ẑ_j||²) (ẑ normalised). Shape: (B, D) with B >= 2 -> ()."""
    zn = F.normalize(z.float(), dim=1)
    sq = torch.pdist(zn, p=2).pow(2)  # (B (B - 1) / 2,)
    return torch.logsumexp(-t * sq, dim=0) - math.log(sq.numel())


def mean_pairwise_cosine(z: torch.Tensor) -> torch.Tensor:
    """Mean cosine similarity over pairs of distinct rows (J-JEPA's collapse check; 1 = collapsed).

    Shape: z (B, D) -> (). One row gives 1.
    """
    b = z.shape[0]
    if b < 2:
        return z.new_ones(())
    zn = F.normalize(z.float(), dim=1)
    gram = zn @ zn.T  # (B, B)
    return (gram.sum() - gram.diagonal().sum()) / (b * (b - 1))


def positive_similarity(z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
    """Mean cosine similarity of the positive pairs. Shape: (B, D), (B, D) -> ()."""
    return F.cosine_similarity(z1.float(), z2.float(), dim=1).mean()
