"""``supervised`` as a pretraining objective: train backbone + linear head on a labeled source (e.g.
JetClass-like 10 classes) and export the backbone for finetuning on another task, as ParT-f.t.
(arXiv:2202.03772) and the Vigl/Hartman/Heinrich analysis backbone (arXiv:2401.13536) do."""

from __future__ import annotations

from typing import Any

from hepfm.data.features import FeatureSet
from hepfm.errors import HepfmInputError
from hepfm.heads import create_head_for
from hepfm.objectives.registry import OBJECTIVES, BackboneFactory
from hepfm.objectives.supervised import Supervised


@OBJECTIVES.register("supervised")
def build(backbone_factory: BackboneFactory, feature_set: FeatureSet, *, max_particles: int | None = None,
          num_classes: int | None = None, head: str = "linear", head_options: dict[str, Any] | None = None,
          label_smoothing: float = 0.0) -> Supervised:
    if not num_classes or num_classes < 2:
        raise HepfmInputError("supervised pretraining needs labeled data with at least two classes")
    backbone = backbone_factory()
    return Supervised(backbone, create_head_for(head, backbone, num_classes, **(head_options or {})),
                      label_smoothing=label_smoothing)


build.needs_labels = True  # type: ignore[attr-defined]
