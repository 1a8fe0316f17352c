"""Backbones: particle-set encoders ``ParticleBatch -> BackboneOutput``, chosen by registry name.

Each family has a config dataclass whose defaults are its paper's settings; a registered name is a
family plus a config (a *preset*). ``-small`` presets are for CPU tests and quick experiments.

| name                   | family                 | paper                          |
| ---------------------- | ---------------------- | ------------------------------ |
| ``part``               | ParticleTransformer    | arXiv:2202.03772 (2.1M params) |
| ``transformer``        | Transformer (JetCLR)   | arXiv:2108.04253, seed 000     |
| ``particle_net``       | ParticleNet            | arXiv:1902.08570               |
| ``particle_net-lite``  | ParticleNet-Lite       | arXiv:1902.08570               |
| ``pfn``                | ParticleFlowNetwork    | arXiv:1810.05165               |
| ``sjt``                | SubjetTransformer      | arXiv:2412.05333, seed 001     |
| ``event-transformer``  | Transformer (events)   | Kishimoto, seed 003 (~11M)     |

Example:
    >>> from hepfm.models import create_backbone
    >>> model = create_backbone("part", in_features=7, num_layers=6)
    >>> out = model(batch)  # BackboneOutput(tokens (B, N, 128), mask, pooled (B, 128))
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from hepfm.models.particle_net import ParticleNet, ParticleNetConfig
from hepfm.models.particle_transformer import (
    ParticleTransformer,
    ParticleTransformerConfig,
    WeaverClassifier,
    load_weaver_state_dict,
)
from hepfm.models.pfn import ParticleFlowNetwork, PFNConfig
from hepfm.models.subjet_transformer import SubjetTransformer, SubjetTransformerConfig
from hepfm.models.transformer import Transformer, TransformerConfig
from hepfm.nn.backbone import Backbone
from hepfm.options import check_known
from hepfm.registry import Registry


@dataclass(frozen=True)
class BackbonePreset:
    """A registered backbone: the class, its config and a one-line description."""

    family: type[Backbone]
    config: Any
    description: str


BACKBONES: Registry[BackbonePreset] = Registry("backbone")


def _add(name: str, family: type[Backbone], config: Any, description: str) -> None:
    BACKBONES.add(name, BackbonePreset(family, config, description))


_add("part", ParticleTransformer, ParticleTransformerConfig(), "ParT, paper size (2.1M params)")
_add(
    "part-small",
    ParticleTransformer,
    ParticleTransformerConfig(
        embed_dims=(32, 64, 32), pair_embed_dims=(16, 16), num_heads=4, num_layers=2, num_cls_layers=1
    ),
    "ParT for CPU tests (2 blocks, D=32)",
)
_add("transformer", Transformer, TransformerConfig(), "JetCLR transformer, seed 000 size (D=1024)")
_add(
    "transformer-small",
    Transformer,
    TransformerConfig(model_dim=128, ffn_dim=256, output_dim=128),
    "JetCLR transformer for CPU (D=128, 4 layers)",
)
# The event transformers end at the encoder (no head layers after pooling): the seed transfers the
# embedding and the encoder and trains every classifier layer afresh, and masked-object pretraining
# reads the tokens, so layers after the pooling would be exported untrained.
_add(
    "event-transformer",
    Transformer,
    TransformerConfig(model_dim=384, num_heads=8, ffn_dim=1536, num_layers=6, output_dim=384,
                      num_head_layers=0, pooling="mean"),
    "event transformer over objects, seed 003 size (~11M params)",
)
_add(
    "event-transformer-small",
    Transformer,
    TransformerConfig(model_dim=64, num_heads=4, ffn_dim=128, num_layers=2, output_dim=64,
                      num_head_layers=0, pooling="mean"),
    "event transformer for CPU (D=64, 2 layers)",
)
_add("particle_net", ParticleNet, ParticleNetConfig(), "ParticleNet, paper size")
_add(
    "particle_net-lite",
    ParticleNet,
    ParticleNetConfig(conv_params=((7, (32, 32, 32)), (7, (64, 64, 64)))),
    "ParticleNet-Lite, paper size",
)
_add(
    "particle_net-small",
    ParticleNet,
    ParticleNetConfig(conv_params=((8, (16, 16)), (8, (32, 32)))),
    "ParticleNet for CPU tests (k=8, 2 blocks)",
)
_add("pfn", ParticleFlowNetwork, PFNConfig(), "Particle Flow Network, paper size")
_add(
    "pfn-small",
    ParticleFlowNetwork,
    PFNConfig(phi_dims=(32, 32, 64), f_dims=(32, 32)),
    "Particle Flow Network for CPU tests",
)
_add(
    "sjt",
    SubjetTransformer,
    SubjetTransformerConfig(),
    "J-JEPA's Subjet Transformer: attention SEL, D=256, 4 blocks, class attention",
)
_add(
    "sjt-small",
    SubjetTransformer,
    SubjetTransformerConfig(dim=64, num_layers=2, num_heads=4, num_cls_layers=1),
    "Subjet Transformer for CPU tests (D=64, 2 blocks)",
)


def _as_tuples(value: Any) -> Any:
    # YAML and JSON give lists; configs use tuples so they stay hashable and compare equal.
    return tuple(_as_tuples(v) for v in value) if isinstance(value, (list, tuple)) else value


def backbone_config(name: str, **overrides: Any) -> Any:
    """The config dataclass of preset ``name`` with ``overrides`` applied.

    Raises:
        HepfmInputError: unknown preset or option.
    """
    preset = BACKBONES.get(name)
    check_known(overrides, [f.name for f in dataclasses.fields(preset.config)], "model.backbone_options")
    return dataclasses.replace(preset.config, **{k: _as_tuples(v) for k, v in overrides.items()})


def create_backbone(name: str, in_features: int, **overrides: Any) -> Backbone:
    """Build the registered backbone ``name`` for ``in_features`` input features per particle.

    Args:
        name: a key of :data:`BACKBONES` (``part``, ``part-small``, ``transformer``, ...).
        in_features: F of ``batch.x`` (7 for ParT's ``kin`` inputs, 17 for ``full``).
        **overrides: fields of the family's config dataclass, e.g. ``num_layers=6``.

    Raises:
        HepfmInputError: unknown preset or option.
    """
    model = BACKBONES.get(name).family(in_features, backbone_config(name, **overrides))
    model.preset = name
    return model


__all__ = [
    "BACKBONES",
    "Backbone",
    "BackbonePreset",
    "PFNConfig",
    "ParticleFlowNetwork",
    "ParticleNet",
    "ParticleNetConfig",
    "ParticleTransformer",
    "ParticleTransformerConfig",
    "SubjetTransformer",
    "SubjetTransformerConfig",
    "Transformer",
    "TransformerConfig",
    "WeaverClassifier",
    "backbone_config",
    "create_backbone",
    "load_weaver_state_dict",
]
