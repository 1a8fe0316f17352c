"""The typed sections of a run configuration (besides ``train``, which is the engine's own).

Every workflow resolves its preset + overrides into these dataclasses through
:func:`hepfm.options.from_dict`, so an unknown key, a value of the wrong type or a value out of range
is refused with one line before any data is read or any model is built.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hepfm.errors import HepfmInputError
from hepfm.options import check_known, from_dict, require


@dataclass
class DataConfig:
    train: list[str] = field(default_factory=list)
    val: list[str] = field(default_factory=list)
    features: str = "kin"
    max_particles: int = 128
    batch_size: int = 128
    n_train: int | None = None
    n_val: int | None = None
    streaming: bool = False
    skip_bad: bool = False

    def __post_init__(self) -> None:
        from hepfm.data.features import FEATURE_SETS

        FEATURE_SETS.get(self.features)
        require(self.max_particles >= 1, "data.max_particles", "must be >= 1", self.max_particles)
        require(self.batch_size >= 1, "data.batch_size", "must be >= 1", self.batch_size)
        for key in ("n_train", "n_val"):
            value = getattr(self, key)
            require(value is None or value >= 1, f"data.{key}", "must be >= 1", value)


@dataclass
class ModelConfig:
    backbone: str = "part"
    head: str = "linear"
    backbone_options: dict[str, Any] = field(default_factory=dict)
    head_options: dict[str, Any] = field(default_factory=dict)


@dataclass
class HeadConfig:
    """The classification head a finetuning run puts on the pretrained backbone."""

    name: str = "linear"
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class FinetuneConfig:
    #: learning-rate multiplier of the pretrained backbone (``--mode finetune`` only); 0 freezes it in effect
    backbone_lr_scale: float = 1.0

    def __post_init__(self) -> None:
        require(
            self.backbone_lr_scale >= 0, "finetune.backbone_lr_scale", "must be >= 0", self.backbone_lr_scale
        )


@dataclass
class ObjectiveConfig:
    name: str = ""
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.name:
            raise HepfmInputError("no objective given (--objective NAME)")


def split_sections(d: dict[str, Any], allowed: tuple[str, ...]) -> dict[str, Any]:
    """The config's sections, refusing any section a workflow does not have."""
    check_known(d, allowed, "", what="config section")
    for name, value in d.items():
        if not isinstance(value, dict):
            raise HepfmInputError(f"config section {name!r} must be a mapping, got {value!r}")
    return d


def section(cls: type, d: dict[str, Any], name: str, defaults: dict[str, Any] | None = None) -> Any:
    """``from_dict`` of section ``name``; ``defaults`` are workflow defaults the user's values override."""
    return from_dict(cls, (defaults or {}) | d.get(name, {}), name)
