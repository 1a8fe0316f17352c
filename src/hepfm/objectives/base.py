"""The objective contract shared by supervised training and every self-supervised method.

An objective is an ``nn.Module`` whose ``forward(batch)`` returns an :class:`ObjectiveOutput` with a
scalar ``loss`` (and tensors to log). The training engine calls only ``forward`` (training and
validation), ``on_step_start`` / ``on_step_end`` (phases, EMA teachers, schedules), ``collapsed`` and
the optimizer hooks; the pretrain workflow calls ``prepare`` once before training. Neither branches on
the method.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
from torch import nn

from hepfm.contracts import BackboneOutput, ParticleBatch


def jet_embedding(out: BackboneOutput) -> torch.Tensor:
    """(B, D) jet embedding: the backbone's own pooling if it has one, else the masked token mean."""
    if out.pooled is not None:
        return out.pooled
    m = out.mask.unsqueeze(-1).to(out.tokens.dtype)
    return (out.tokens * m).sum(1) / m.sum(1).clamp(min=1.0)


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

    def on_step_start(self, step: int, total_steps: int) -> None:
        """Called before every optimizer step's forward passes, on a resume too (e.g. to end a phase)."""

    def on_step_end(self, step: int, total_steps: int) -> None:
        """Called after every optimizer step (e.g. to update an EMA target encoder)."""

    def prepare(self, batches: Iterable[ParticleBatch]) -> None:
        """Data-dependent set-up before the first step (e.g. MPM fits its token codebook); default none.

        ``batches`` is lazy: an objective that needs no data costs no reading. Not called on a resume,
        which restores the prepared state from the checkpoint.
        """

    def no_weight_decay(self) -> set[str]:
        """Parameter names excluded from weight decay, besides biases and norms (e.g. class tokens)."""
        names: set[str] = set()
        for mod_name, mod in self.named_modules():
            fn = getattr(mod, "no_weight_decay", None)
            if mod is not self and callable(fn):
                names |= {f"{mod_name}.{n}" if mod_name else n for n in fn()}
        return names

    def collapsed(self, logs: dict[str, float]) -> str | None:
        """A reason string if the averaged training logs show a collapsed representation, else None.

        The engine stops with a clear error after ``collapse_patience`` such log intervals in a row,
        keeping the last checkpoint written before the collapse.
        """
        return None

    def export_backbone(self) -> nn.Module:
        """The backbone that finetuning starts from (default: the ``backbone`` attribute)."""
        backbone = getattr(self, "backbone", None)
        if backbone is None:
            raise NotImplementedError(f"{type(self).__name__} must define export_backbone()")
        return backbone

    def param_groups_lr_scale(self) -> dict[str, float]:
        """Parameter-name prefix -> learning-rate multiplier (e.g. a pretrained backbone's 0.1)."""
        return {}
