"""JetCLR: contrastive pretraining on physics-augmented views of jets.

Dillon, Kasieczka, Olischlager, Plehn, Sorrenson, Vogel, "Symmetries, safety, and self-supervision",
SciPost Phys. 12, 188 (2022), arXiv:2108.04253; at JetClass scale (seed 000): Zhao, Mokhtar, Kansal,
Li, Duarte, arXiv:2408.09343.

Per step: two views of every jet are drawn (:mod:`hepfm.physics.augment`), their inputs recomputed from
the augmented four-vectors (:mod:`hepfm.physics.torch_features`), both views go through the backbone in
one pass, the jet embedding through a projection head, and NT-Xent pulls the two views of a jet
together and pushes other jets apart. As in JetCLR's code, the first view gets only the symmetries
(rotation, translation) and the second also the soft/collinear augmentations (``symmetric_views``
gives both the full pipeline, as SimCLR does). The projection head is JetCLR's "head layers": ReLU then
Linear per layer, width = the embedding width, two layers (``n_head_layers=2``, ``output_dim =
model_dim``); JetCLR evaluates the representation *before* them, so :meth:`JetCLR.export_backbone`
returns the backbone without the head. The temperature default is JetCLR's 0.1 (kept by seed 000's
code). Augmentations run outside autocast, in float32. In eval mode (validation) the views come from
a fixed-seed generator, so the validation loss is comparable between evaluations.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from hepfm.contracts import ParticleBatch
from hepfm.data.features import FeatureSet
from hepfm.errors import HepfmInputError
from hepfm.losses.contrastive import alignment, nt_xent, positive_similarity, uniformity
from hepfm.nn.backbone import Backbone
from hepfm.objectives.base import Objective, ObjectiveOutput, jet_embedding
from hepfm.objectives.registry import OBJECTIVES, BackboneFactory
from hepfm.options import from_dict
from hepfm.physics.augment import Augmentation, AugmentConfig
from hepfm.physics.torch_features import compute_features, jet_vector


@dataclass
class JetCLROptions:
    """Options of the ``jetclr`` objective (the YAML ``objective.options``).

    Attributes:
        temperature: NT-Xent τ (JetCLR: 0.1).
        projection_dims: widths of the head layers; None = two layers of the embedding width
            (JetCLR); () = no head, the loss acts on the backbone's embedding directly.
        symmetric_views: give both views the full pipeline (SimCLR) instead of symmetries-only for the
            first (JetCLR).
        augment: the augmentation settings (:class:`~hepfm.physics.augment.AugmentConfig`).
        eval_seed: seed of the augmentations in eval mode.
    """

    temperature: float = 0.1
    projection_dims: tuple[int, ...] | None = None
    symmetric_views: bool = False
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    eval_seed: int = 0

    def __post_init__(self) -> None:
        if not self.temperature > 0:
            raise HepfmInputError(f"jetclr temperature must be > 0, got {self.temperature!r}")
        if self.projection_dims is not None and any(int(d) < 1 for d in self.projection_dims):
            raise HepfmInputError(f"jetclr projection_dims must be positive, got {self.projection_dims!r}")

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> JetCLROptions:
        """From YAML options: unknown keys, wrong types and bad values are one-line user errors."""
        return from_dict(cls, d, "objective.options")


class ProjectionHead(nn.Sequential):
    """JetCLR's head layers: ``ReLU -> Linear`` per layer (the first ReLU acts on the pooled sum).

    Shape: (B, in_dim) -> (B, dims[-1]) (identity if ``dims`` is empty).
    """

    def __init__(self, in_dim: int, dims: tuple[int, ...]) -> None:
        layers: list[nn.Module] = []
        width = in_dim
        for d in dims:
            layers += [nn.ReLU(), nn.Linear(width, d)]
            width = d
        super().__init__(*layers)
        self.out_dim = width


def _pad_to(batch: ParticleBatch, n: int) -> ParticleBatch:
    extra = n - batch.mask.shape[1]
    if extra == 0:
        return batch
    return ParticleBatch(x=F.pad(batch.x, (0, 0, 0, extra)), mask=F.pad(batch.mask, (0, extra)),
                         p4=F.pad(batch.p4, (0, 0, 0, extra)), jet=batch.jet)


def concat_views(a: ParticleBatch, b: ParticleBatch) -> ParticleBatch:
    """Stack two views into one (2B, N) batch, padding the shorter (splitting may have added slots)."""
    n = max(a.mask.shape[1], b.mask.shape[1])
    a, b = _pad_to(a, n), _pad_to(b, n)
    jet = torch.cat([a.jet, b.jet]) if a.jet is not None and b.jet is not None else None
    return ParticleBatch(x=torch.cat([a.x, b.x]), mask=torch.cat([a.mask, b.mask]),
                         p4=torch.cat([a.p4, b.p4]), jet=jet)


class JetCLR(Objective):
    """Two augmented views -> backbone -> jet embedding -> projection head -> NT-Xent.

    Example:
        >>> obj = JetCLR(create_backbone("transformer-small", 7), FEATURE_SETS.get("kin"))
        >>> out = obj(batch)  # out.loss; out.logs: alignment, uniformity, pos_sim
    """

    name = "jetclr"

    def __init__(self, backbone: Backbone, feature_set: FeatureSet,
                 options: JetCLROptions | None = None) -> None:
        super().__init__()
        opts = options or JetCLROptions()
        if backbone.in_features != feature_set.dim:
            raise HepfmInputError(f"backbone takes {backbone.in_features} features per particle, but "
                                  f"feature set {feature_set.name!r} has {feature_set.dim}")
        self.backbone = backbone
        self.feature_set = feature_set
        self.options = opts
        width = backbone.pooled_dim or backbone.embed_dim
        dims = (width, width) if opts.projection_dims is None else opts.projection_dims
        self.projection = ProjectionHead(width, tuple(dims))
        self.view1 = Augmentation.from_config(opts.augment, symmetries_only=not opts.symmetric_views)
        self.view2 = Augmentation.from_config(opts.augment)

    def make_view(self, batch: ParticleBatch, aug: Augmentation,
                  generator: torch.Generator | None = None) -> ParticleBatch:
        """One augmented view with recomputed inputs. Shape: (B, N) -> (B, N') with N' >= N."""
        out = aug(batch.p4.float(), batch.mask, generator)
        x = compute_features(self.feature_set, out.p4, out.mask, source_x=batch.x, parent=out.parent)
        return ParticleBatch(x=x, mask=out.mask, p4=out.p4, jet=jet_vector(out.p4, out.mask))

    def views(self, batch: ParticleBatch) -> ParticleBatch:
        """Both views of every jet as one (2B, N') batch: rows [0, B) view 1, [B, 2B) view 2."""
        if batch.x.shape[-1] != self.feature_set.dim:
            raise HepfmInputError(f"jetclr was built for feature set {self.feature_set.name!r} "
                                  f"({self.feature_set.dim} features), but the batch has {batch.x.shape[-1]}")
        gen = None
        if not self.training:  # reproducible validation views
            gen = torch.Generator(device=batch.p4.device)
            gen.manual_seed(self.options.eval_seed)
        with torch.autocast(device_type=batch.p4.device.type, enabled=False):
            v1, v2 = self.make_view(batch, self.view1, gen), self.make_view(batch, self.view2, gen)
            return concat_views(v1, v2)

    def forward(self, batch: ParticleBatch) -> ObjectiveOutput:
        both = self.views(batch)
        h = jet_embedding(self.backbone(both))  # (2B, D)
        z1, z2 = self.projection(h).float().chunk(2)  # (B, D') each
        loss = nt_xent(z1, z2, self.options.temperature)
        with torch.no_grad():
            logs = {"alignment": alignment(z1, z2), "pos_sim": positive_similarity(z1, z2)}
            if z1.shape[0] > 1:
                logs["uniformity"] = 0.5 * (uniformity(z1) + uniformity(z2))
        return ObjectiveOutput(loss, logs)

    def collapsed(self, logs: dict[str, float]) -> str | None:
        # uniformity log E exp(-2|z_i - z_j|^2) -> 0 when every jet maps to the same point
        u = logs.get("uniformity")
        return (
            f"uniformity {u:.4f} (embeddings of all jets coincide)" if u is not None and u > -0.02 else None
        )

    def export_backbone(self) -> nn.Module:
        """The encoder alone: the projection head is discarded for finetuning, as in JetCLR/SimCLR."""
        return self.backbone


@OBJECTIVES.register("jetclr")
def build(backbone_factory: BackboneFactory, feature_set: FeatureSet, *, max_particles: int | None = None,
          **options: Any) -> JetCLR:
    """Registry builder: ``create_objective("jetclr", factory, feature_set, {"temperature": 0.1, ...})``."""
    return JetCLR(backbone_factory(), feature_set, JetCLROptions.from_dict(options))
