"""The tensor contracts between data, backbones, heads and objectives.

One batch layout everywhere: ``x`` (B, N, F) particle features, ``mask`` (B, N) bool with
**True = real particle**, ``p4`` (B, N, 4) as (px, py, pz, E) for pair features and augmentations.
Backbones that need PyTorch's ``key_padding_mask`` convention (True = ignore) convert internally.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import torch


@dataclass
class ParticleBatch:
    """A padded batch of jets.

    Shape:
        x: (B, N, F) standardised particle features; zero at padded slots.
        mask: (B, N) bool, True = real particle.
        p4: (B, N, 4) (px, py, pz, E) in GeV; zero at padded slots.
        jet: (B, J) jet-level quantities (pt, eta, phi, energy, mass), or None.
        label: (B,) int64 class index, or None for unlabeled data.
    """

    x: torch.Tensor
    mask: torch.Tensor
    p4: torch.Tensor
    jet: torch.Tensor | None = None
    label: torch.Tensor | None = None

    def to(self, device: torch.device | str, non_blocking: bool = False) -> ParticleBatch:
        moved = {
            f.name: (v.to(device, non_blocking=non_blocking) if isinstance(v, torch.Tensor) else v)
            for f in fields(self)
            for v in [getattr(self, f.name)]
        }
        return ParticleBatch(**moved)

    def pin_memory(self) -> ParticleBatch:
        return replace(self, **{
            f.name: getattr(self, f.name).pin_memory()
            for f in fields(self)
            if isinstance(getattr(self, f.name), torch.Tensor)
        })

    def __len__(self) -> int:
        return self.x.shape[0]


@dataclass
class BackboneOutput:
    """What every backbone returns.

    Shape:
        tokens: (B, N, D) per-particle embeddings (zero or arbitrary at padded slots).
        mask: (B, N) bool, True = real particle (the same as the input mask unless the backbone
            changes the token set).
        pooled: (B, D) jet embedding, or None if the backbone has no pooling of its own.
    """

    tokens: torch.Tensor
    mask: torch.Tensor
    pooled: torch.Tensor | None = None
