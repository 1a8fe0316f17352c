"""Masked object-type prediction: the self-supervised task of Kishimoto's event-level model (seed 003).

Design. An event is a set of reconstructed objects (``nanoaod-events`` and the ``objects`` feature
set). In each event one object of a predictable type (lepton, tau, b-jet, light jet or MET) is
replaced by a *dummy*: a learned input vector, with its four-vector hidden (zero, as MPM hides
masked particles, so pair features of ParT-like backbones carry nothing of it either). The
backbone encodes the event, and a small head predicts from the dummy's output token what type of
object was replaced. To answer, the model must learn how objects go together in events (a lepton
and MET from a W, b-jets beside them), which is what an event classifier needs.

The seed names Lorentz transformations as augmentations of pretraining: with ``augment`` active,
every training event is first rotated in φ, mirrored in z and/or boosted along z
(:mod:`hepfm.physics.lorentz`; the MET stays transverse), and the kinematic inputs are recomputed
from the new four-vectors (:class:`~hepfm.objectives.events.EventAugmentation`, which a classifier
uses too when asked); charge and type columns are kept.

Targets come from the batch itself: the type one-hot columns of the ``objects`` feature set
(``obj_is_<type>``), so nothing beyond the features travels with a batch. Objects of other types
(photons, when read) stay visible and are never chosen. After pretraining, finetuning transfers
the embedding and the encoder (``export_backbone``: the backbone alone; the prediction head and the
dummy stay here) and trains a fresh classifier, the seed's protocol.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from hepfm.contracts import ParticleBatch
from hepfm.data.features import FeatureSet
from hepfm.data.jets import OBJECT_TYPES
from hepfm.errors import HepfmInputError
from hepfm.nn.backbone import Backbone
from hepfm.objectives.base import Objective, ObjectiveOutput
from hepfm.objectives.events import EventAugmentation, object_types
from hepfm.objectives.registry import OBJECTIVES, BackboneFactory
from hepfm.options import from_dict
from hepfm.physics.lorentz import LorentzConfig

#: The seed's replaceable objects: leptons, taus, b-jets, light jets, MET.
SEED_TYPES = ("electron", "muon", "tau", "bjet", "jet", "met")


@dataclass
class MaskedObjectConfig:
    """Options of ``masked-object`` (``objective.options``).

    Attributes:
        types: the object types that can be replaced and are predicted (classes of the head).
        head_dim: hidden width of the prediction head (an MLP on the dummy's token).
        augment: the Lorentz augmentations (:class:`~hepfm.physics.lorentz.LorentzConfig`), applied
            to training batches only; ``{rotate: 0, flip: 0}`` turns them off.
    """

    types: tuple[str, ...] = SEED_TYPES
    head_dim: int = 128
    augment: LorentzConfig = field(default_factory=LorentzConfig)

    def __post_init__(self) -> None:
        if isinstance(self.augment, dict):
            self.augment = LorentzConfig.from_dict(self.augment)
        unknown = [t for t in self.types if t not in OBJECT_TYPES]
        if unknown or len(self.types) < 2:
            raise HepfmInputError(f"masked-object: types must be at least two of {OBJECT_TYPES}, got "
                                  f"{list(self.types)}")
        if self.head_dim < 1:
            raise HepfmInputError(f"masked-object: head_dim must be >= 1, got {self.head_dim}")


def pick_one(eligible: torch.Tensor) -> torch.Tensor:
    """One slot per row, uniformly among the eligible ones (none in rows without any).

    Shape: eligible (B, N) bool -> (B, N) bool with at most one True per row.
    """
    scores = torch.rand(eligible.shape, device=eligible.device).masked_fill(~eligible, -1.0)
    best = scores.argmax(dim=1, keepdim=True)
    return torch.zeros_like(eligible).scatter_(1, best, True) & eligible


class MaskedObjectType(Objective):
    """Replace one object per event by a learned dummy and predict its type (see the module docstring).

    Example:
        >>> obj = MaskedObjectType(create_backbone("event-transformer-small", 12), get_feature_set("objects"))
        >>> out = obj(batch)  # out.loss; out.logs["type_accuracy"]
    """

    name = "masked-object"
    target_of_type: torch.Tensor  # (len(OBJECT_TYPES),) buffer: the head's class of each type, -1 = none

    def __init__(self, backbone: Backbone, feature_set: FeatureSet, config: MaskedObjectConfig | None = None
                 ) -> None:
        super().__init__()
        cfg = config or MaskedObjectConfig()
        self.augment = EventAugmentation(cfg.augment, feature_set, "masked-object")
        self.config = cfg
        self.feature_set = feature_set
        self.backbone = backbone
        #: the feature columns of the one-hot type, in OBJECT_TYPES order
        self.type_columns = self.augment.columns
        #: OBJECT_TYPES index -> class of the head (-1: never replaced)
        target = torch.full((len(OBJECT_TYPES),), -1, dtype=torch.long)
        for k, t in enumerate(cfg.types):
            target[OBJECT_TYPES.index(t)] = k
        self.register_buffer("target_of_type", target, persistent=False)
        self.dummy = nn.Parameter(torch.zeros(feature_set.dim))
        nn.init.trunc_normal_(self.dummy, std=0.02)
        width = backbone.embed_dim
        self.head = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, cfg.head_dim), nn.GELU(),
                                  nn.Linear(cfg.head_dim, len(cfg.types)))

    def object_types(self, batch: ParticleBatch) -> torch.Tensor:
        """(B, N) int64 index into OBJECT_TYPES of every slot (padding: whatever its zero row gives)."""
        return object_types(batch, self.type_columns)

    def augmented(self, batch: ParticleBatch) -> ParticleBatch:
        """The batch after the Lorentz augmentations, inputs recomputed (MET kept transverse)."""
        out = self.augment(batch)
        return ParticleBatch(x=out.x, mask=out.mask, p4=out.p4, jet=None, label=None)

    def forward(self, batch: ParticleBatch) -> ObjectiveOutput:
        # 1. augment (training only)
        if self.training and self.config.augment.active:
            batch = self.augmented(batch)
        # 2. choose one replaceable object per event; its class is the target
        cls = self.target_of_type[self.object_types(batch)]  # (B, N), -1 = not replaceable
        chosen = pick_one(batch.mask & (cls >= 0))  # (B, N)
        # 3. replace it by the dummy: learned inputs, four-vector hidden
        sel = chosen.unsqueeze(-1)
        x = torch.where(sel, self.dummy.to(batch.x.dtype), batch.x)
        p4 = batch.p4.masked_fill(sel, 0.0)
        out = self.backbone(ParticleBatch(x=x, mask=batch.mask, p4=p4, jet=None, label=None))
        # 4. predict its type from the dummy's token
        logits = self.head(out.tokens[chosen])  # (M, T), M = events with a replaceable object
        target = cls[chosen]
        if target.numel() == 0:  # no event of the batch has a replaceable object
            zero = logits.sum() * 0.0
            return ObjectiveOutput(zero, {"type_accuracy": zero.detach()})
        loss = F.cross_entropy(logits.float(), target)
        with torch.no_grad():
            accuracy = (logits.argmax(1) == target).float().mean()
        return ObjectiveOutput(loss, {"type_accuracy": accuracy})

    def no_weight_decay(self) -> set[str]:
        return super().no_weight_decay() | {"dummy"}


@OBJECTIVES.register("masked-object")
def build(backbone_factory: BackboneFactory, feature_set: FeatureSet, *, max_particles: int | None = None,
          **options: Any) -> MaskedObjectType:
    """The registry builder (``max_particles`` is not needed: one object per event is replaced)."""
    config = from_dict(MaskedObjectConfig, options, "objective.options")
    backbone = backbone_factory()
    if backbone.in_features != feature_set.dim:
        raise HepfmInputError(f"masked-object: the backbone takes {backbone.in_features} features, feature "
                              f"set {feature_set.name!r} has {feature_set.dim}")
    return MaskedObjectType(backbone, feature_set, config)


build.input_kind = "events"  # type: ignore[attr-defined]
