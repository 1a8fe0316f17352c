"""The objective contract shared by supervised training and every self-supervised method.

An objective is an ``nn.Module`` whose ``forward(batch)`` returns an :class:`ObjectiveOutput` with a
scalar ``loss`` (and tensors to log). The training engine calls only ``forward``, ``on_step_end``
(EMA teachers, schedules) and, at validation, ``validation_outputs``; it never branches on the method.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from hepfm.contracts import ParticleBatch


@dataclass
class ObjectiveOutput:
    """Shape: loss (); logs: name -> () tensors (read asynchronously); logits (B, K) or None."""

    loss: torch.Tensor
    logs: dict[str, torch.Tensor] = field(default_factory=dict)
    logits: torch.Tensor | None = None


class Objective(nn.Module):
    """Base class. Subclasses implement ``forward``; the rest has sensible defaults."""

    #: registry name, recorded in checkpoints
    name: str = "objective"

    def forward(self, batch: ParticleBatch) -> ObjectiveOutput:  # pragma: no cover - abstract
        raise NotImplementedError

    def on_step_end(self, step: int, total_steps: int) -> None:
        """Called after every optimizer step (e.g. to update an EMA target encoder)."""

    def trainable_modules(self) -> list[nn.Module]:
        """The parts that receive gradients (what DDP wraps); frozen teachers are left out."""
        return [self]

    def no_weight_decay(self) -> set[str]:
        """Parameter names excluded from weight decay, besides biases and norms (e.g. class tokens)."""
        names: set[str] = set()
        for mod_name, mod in self.named_modules():
            fn = getattr(mod, "no_weight_decay", None)
            if mod is not self and callable(fn):
                names |= {f"{mod_name}.{n}" if mod_name else n for n in fn()}
        return names

    def param_groups_lr_scale(self) -> dict[str, float]:
        """Parameter-name prefix -> learning-rate multiplier (e.g. a pretrained backbone's 0.1)."""
        return {}
