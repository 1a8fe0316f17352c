"""Supervised classification: backbone + head + cross-entropy.

The same objective trains taggers from scratch, finetunes pretrained backbones (with a learning-rate
multiplier on the backbone) and, with a labeled source such as JetClass, serves as supervised
pretraining (as ParT-f.t. and the Vigl/Hartman/Heinrich analysis backbone do).
"""

from __future__ import annotations

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
                 backbone_lr_scale: float = 1.0, freeze_backbone: bool = False) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.label_smoothing = label_smoothing
        self.backbone_lr_scale = backbone_lr_scale
        self.freeze_backbone = freeze_backbone
        if freeze_backbone:
            self.backbone.requires_grad_(False)

    def train(self, mode: bool = True) -> Supervised:
        super().train(mode)
        if self.freeze_backbone:  # a frozen backbone is a fixed feature extractor: no dropout noise
            self.backbone.eval()
        return self

    def logits(self, batch: ParticleBatch) -> torch.Tensor:
        return self.head(self.backbone(batch))

    def forward(self, batch: ParticleBatch) -> ObjectiveOutput:
        if batch.label is None:
            raise HepfmInputError("supervised training needs labels, but the data has none")
        logits = self.logits(batch)
        loss = F.cross_entropy(logits.float(), batch.label, label_smoothing=self.label_smoothing)
        acc = (logits.argmax(1) == batch.label).float().mean()
        return ObjectiveOutput(loss, {"accuracy": acc}, logits)

    def param_groups_lr_scale(self) -> dict[str, float]:
        return {"backbone.": self.backbone_lr_scale} if self.backbone_lr_scale != 1.0 else {}
