"""The base class of every backbone: batch checks and padding trimming in one place.

Subclasses implement :meth:`Backbone.encode`; :meth:`Backbone.forward` validates the
``ParticleBatch`` against the model, drops padding slots that no jet in the batch uses (the
batch is usually padded to a fixed N such as 128 while most jets are shorter), runs ``encode`` and
pads the tokens back, so callers always get ``(B, N, D)`` for the N they passed in.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from hepfm.contracts import BackboneOutput, ParticleBatch

#: Attribute names of the ``nn.ModuleList`` that holds a backbone's repeated layers, in order of preference.
LAYER_STACKS = ("blocks", "edge_convs", "layers")


def used_length(mask: torch.Tensor) -> int:
    """1 + the index of the last slot that holds a real particle in any jet (at least 1).

    Shape:
        mask: (B, N) bool.
    """
    n = mask.shape[1]
    positions = torch.arange(1, n + 1, device=mask.device)
    return max(int((mask * positions).amax()), 1) if mask.numel() else n


def slice_batch(batch: ParticleBatch, length: int) -> ParticleBatch:
    """The first ``length`` particle slots of every jet."""
    return ParticleBatch(
        x=batch.x[:, :length],
        mask=batch.mask[:, :length],
        p4=batch.p4[:, :length],
        jet=batch.jet,
        label=batch.label,
    )


class Backbone(nn.Module):
    """A particle-set encoder: ``ParticleBatch -> BackboneOutput``.

    Attributes:
        in_features: F, the number of per-particle input features ``batch.x`` must have.
        embed_dim: D of ``tokens``.
        pooled_dim: D of ``pooled`` or None if the backbone does not pool.
        uses_p4: whether ``batch.p4`` is read (pair features, angular coordinates).
        trim: drop padding slots unused by every jet before encoding (exact; off under
            ``torch.compile`` so shapes stay static).
        config: the family's config dataclass (save it with checkpoints).
        preset: the registry name it was created from (set by ``create_backbone``).
    """

    in_features: int
    embed_dim: int
    pooled_dim: int | None
    uses_p4: bool = False
    config: Any = None
    preset: str | None = None

    def __init__(self, in_features: int, trim: bool = True) -> None:
        super().__init__()
        if in_features < 1:
            raise ValueError(f"in_features must be >= 1, got {in_features}")
        self.in_features = in_features
        self.trim = trim

    def encode(self, batch: ParticleBatch) -> BackboneOutput:
        """Encode a validated batch; implemented by each backbone."""
        raise NotImplementedError

    def no_weight_decay(self) -> set[str]:
        """Parameter names to exclude from weight decay (class tokens and similar)."""
        return set()

    def parameter_depths(self) -> tuple[dict[str, int], int]:
        """(parameter name -> depth, top depth) for layer-wise learning-rate decay.

        Entry i of the backbone's stack of layers (the first of ``LAYER_STACKS`` it has) is depth i + 1;
        modules registered before the stack (input embeddings) are depth 0; everything else (parameters
        of the backbone itself such as class tokens, class-attention blocks, final norms and head
        layers, all read after the stack) is the top depth L + 1. A backbone without a stack puts
        every parameter at the top, so layer decay leaves it alone.
        """
        children = [name for name, _ in self.named_children()]
        stack = next((name for name in LAYER_STACKS if isinstance(getattr(self, name, None), nn.ModuleList)),
                     None)
        n_layers = len(getattr(self, stack)) if stack else 0
        below = set(children[: children.index(stack)]) if stack else set()
        depths = {}
        for name, _ in self.named_parameters():
            first, _, rest = name.partition(".")
            if first == stack:
                depths[name] = int(rest.partition(".")[0]) + 1
            else:
                depths[name] = 0 if first in below else n_layers + 1
        return depths, n_layers + 1

    def check_batch(self, batch: ParticleBatch) -> None:
        """Raise ValueError with the expected and actual shapes if ``batch`` does not fit."""
        name = type(self).__name__
        x, mask = batch.x, batch.mask
        if x.ndim != 3 or x.shape[-1] != self.in_features:
            raise ValueError(
                f"{name} was built for {self.in_features} input features per particle, "
                f"but batch.x has shape {tuple(x.shape)} (expected (B, N, {self.in_features}))"
            )
        if mask.shape != x.shape[:2] or mask.dtype != torch.bool:
            raise ValueError(
                f"{name}: batch.mask must be bool of shape {tuple(x.shape[:2])}, "
                f"got {mask.dtype} {tuple(mask.shape)}"
            )
        if self.uses_p4 and (batch.p4 is None or batch.p4.shape != (*x.shape[:2], 4)):
            got = None if batch.p4 is None else tuple(batch.p4.shape)
            raise ValueError(f"{name} needs batch.p4 of shape {(*x.shape[:2], 4)}, got {got}")

    def trimmed(self, batch: ParticleBatch) -> ParticleBatch:
        """``batch`` checked and, with ``trim``, without the trailing padding slots no jet uses."""
        self.check_batch(batch)
        if self.trim and not torch.compiler.is_compiling():
            length = used_length(batch.mask)
            if length < batch.mask.shape[1]:
                return slice_batch(batch, length)
        return batch

    def forward(self, batch: ParticleBatch) -> BackboneOutput:
        """Shape: batch.x (B, N, F) -> tokens (B, N, D), mask (B, N), pooled (B, D') or None."""
        n = batch.mask.shape[1]
        short = self.trimmed(batch)
        length = short.mask.shape[1]
        if length < n:
            out = self.encode(short)
            tokens = F.pad(out.tokens, (0, 0, 0, n - length))  # (B, N, D), zeros appended
            return BackboneOutput(tokens=tokens, mask=batch.mask, pooled=out.pooled)
        return self.encode(batch)
