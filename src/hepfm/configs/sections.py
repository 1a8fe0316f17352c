"""The typed sections of a run configuration (besides ``train``, which is the engine's own).

Every workflow resolves its preset + overrides into these dataclasses through
:func:`hepfm.options.from_dict`, so an unknown key, a value of the wrong type or a value out of range
is refused with one line before any data is read or any model is built.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hepfm.configs import merge
from hepfm.data.formats.nanoaod_events import EventOptions
from hepfm.errors import HepfmInputError
from hepfm.options import check_known, from_dict, require


@dataclass
class DataConfig:
    """``events``: how events are read from NanoAOD (collections, cuts, the event selection); see
    :class:`~hepfm.data.formats.nanoaod_events.EventOptions`. Jets ignore it at its defaults and
    refuse anything else."""

    train: list[str] = field(default_factory=list)
    val: list[str] = field(default_factory=list)
    features: str = "kin"
    max_particles: int = 128
    batch_size: int = 128
    n_train: int | None = None
    n_val: int | None = None
    streaming: bool = False
    skip_bad: bool = False
    events: EventOptions = field(default_factory=EventOptions)

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
    """How ``--mode finetune`` trains the pretrained backbone; the head always trains at the full rate.

    Why these three: a pretrained backbone trained at the head's rate forgets what it learned before the
    new head is any good, most of all when the head starts random. Each knob limits that differently:
    a smaller backbone rate, smaller rates for the lower layers (which hold the most generic features),
    or a head trained alone first so that the first backbone gradients already point somewhere useful
    (linear-probe-then-finetune, Kumar et al. 2022, arXiv:2202.10054).
    """

    #: learning-rate multiplier of the pretrained backbone: one number, or a mapping from the objective the
    #: backbone was pretrained with (``pretrained_with`` in its backbone.json) to a number, ``default`` for
    #: the rest; 0 freezes the backbone in effect
    backbone_lr_scale: float | dict[str, float] = 1.0
    #: layer-wise learning-rate decay: block i of L (1-based) gets layer_decay ** (L + 1 - i) on top of
    #: the backbone multiplier, the input embedding layer_decay ** (L + 1); 1 turns it off
    layer_decay: float = 1.0
    #: linear-probe-then-finetune: the first probe_steps steps train the head alone on the frozen backbone
    probe_steps: int = 0
    #: the Lorentz augmentations of events (``hepfm.physics.lorentz.LorentzConfig`` options, e.g.
    #: ``{rotate: 1.0, flip: 0.5}``) applied to the labeled training events, in every mode; None (the
    #: default) = none: the seed augments in pretraining only. Checked by the finetune workflow.
    augment: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        key = "finetune.backbone_lr_scale"
        scales = self.backbone_lr_scale if isinstance(self.backbone_lr_scale, dict) else {"default":
                                                                                          self.backbone_lr_scale}
        # the keys are checked against the objective registry by the finetune workflow (a layer above)
        for name, value in scales.items():
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0
            require(ok, f"{key}.{name}" if isinstance(self.backbone_lr_scale, dict) else key,
                    "must be a number >= 0", value)
        require(0 < self.layer_decay <= 1, "finetune.layer_decay", "must be in (0, 1]", self.layer_decay)
        require(self.probe_steps >= 0, "finetune.probe_steps", "must be >= 0", self.probe_steps)

    def lr_scale_for(self, objective: str | None) -> float:
        """The backbone multiplier for a backbone pretrained with ``objective`` (None: not recorded)."""
        if not isinstance(self.backbone_lr_scale, dict):
            return float(self.backbone_lr_scale)
        scales = self.backbone_lr_scale
        return float(scales.get(objective or "default", scales.get("default", 1.0)))


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
    """``from_dict`` of section ``name``; ``defaults`` are workflow defaults the user's values override
    (key by key, nested mappings too: a default ``events.photons`` survives a user's ``events.jet``)."""
    return from_dict(cls, merge(defaults or {}, d.get(name, {})), name)
