"""Supervised classification: backbone + head + cross-entropy.

The same objective trains taggers from scratch, finetunes pretrained backbones (with a learning-rate
multiplier on the backbone) and, with a labeled source such as JetClass, serves as supervised
pretraining (as ParT-f.t. and the Vigl/Hartman/Heinrich analysis backbone do).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from hepfm.contracts import ParticleBatch
from hepfm.errors import HepfmInputError
from hepfm.heads import Head
from hepfm.nn.backbone import Backbone
from hepfm.objectives.base import Objective, ObjectiveOutput


class Supervised(Objective):
    """Cross-entropy on the head's logits.

    Example:
        >>> obj = Supervised(create_backbone("part", 7), create_head_for("linear", bb, 2))
        >>> out = obj(batch)  # out.loss, out.logits (B, 2)
    """

    name = "supervised"

    def __init__(self, backbone: Backbone, head: Head, *, label_smoothing: float = 0.0,
                 backbone_lr_scale: float = 1.0, layer_decay: float = 1.0, probe_steps: int = 0,
                 freeze_backbone: bool = False,
                 augment: Callable[[ParticleBatch], ParticleBatch] | None = None) -> None:
        """``augment``: applied to training batches only (e.g. the Lorentz augmentations of events,
        :class:`~hepfm.objectives.events.EventAugmentation`); validation and inference see the data as is."""
        super().__init__()
        self.augment = augment
        self.backbone = backbone
        self.head = head
        self.label_smoothing = label_smoothing
        self.backbone_lr_scale = backbone_lr_scale
        self.layer_decay = layer_decay
        self.probe_steps = probe_steps
        self.freeze_backbone = freeze_backbone
        self.probing = probe_steps > 0  # linear-probe-then-finetune: head alone until probe_steps
        if freeze_backbone:
            self.backbone.requires_grad_(False)

    def train(self, mode: bool = True) -> Supervised:
        super().train(mode)
        if self.freeze_backbone or self.probing:  # a fixed feature extractor: no dropout noise
            self.backbone.eval()
        return self

    def on_step_start(self, step: int, total_steps: int) -> None:
        probing = step < self.probe_steps
        if probing != self.probing:
            self.probing = probing
            self.train(self.training)

    def logits(self, batch: ParticleBatch) -> torch.Tensor:
        if self.probing:  # no graph through the backbone: its parameters get no gradient, so no update
            with torch.no_grad():
                features = self.backbone(batch)
            return self.head(features)
        return self.head(self.backbone(batch))

    def forward(self, batch: ParticleBatch) -> ObjectiveOutput:
        if batch.label is None:
            raise HepfmInputError("supervised training needs labels, but the data has none")
        label = batch.label
        if self.training and self.augment is not None:
            batch = self.augment(batch)
        logits = self.logits(batch)
        loss = F.cross_entropy(logits.float(), label, label_smoothing=self.label_smoothing)
        acc = (logits.argmax(1) == label).float().mean()
        return ObjectiveOutput(loss, {"accuracy": acc}, logits)

    def param_groups_lr_scale(self) -> dict[str, float]:
        """The backbone's multiplier, times layer_decay ** (top - depth) per parameter when decay is on."""
        if self.layer_decay == 1.0:
            return {"backbone.": self.backbone_lr_scale} if self.backbone_lr_scale != 1.0 else {}
        depths, top = self.backbone.parameter_depths()
        return {f"backbone.{name}": self.backbone_lr_scale * self.layer_decay ** (top - depth)
                for name, depth in depths.items()}
