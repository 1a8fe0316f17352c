"""Objective registry: ``hepfm pretrain --objective NAME`` builds objectives by name.

A builder takes a zero-argument backbone factory (objectives that need two encoders, e.g. an EMA
target, call it twice), the feature set the data uses (augmentations recompute features), the
keyword ``max_particles`` (the data's particle cap, for what is sized by it; builders that need
nothing from it ignore it) and the objective's options; it returns an
:class:`~hepfm.objectives.base.Objective` whose ``export_backbone()`` is what finetuning starts from.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from hepfm.data.features import FeatureSet
from hepfm.nn.backbone import Backbone
from hepfm.objectives.base import Objective
from hepfm.registry import Registry

BackboneFactory = Callable[[], Backbone]
ObjectiveBuilder = Callable[..., Objective]

OBJECTIVES: Registry[ObjectiveBuilder] = Registry("objective")

#: modules that register objectives when imported
OBJECTIVE_MODULES = ("jetclr", "mpm", "jepa", "supervised_pretrain", "composite", "masked_object")


def _import_all() -> None:
    for mod in OBJECTIVE_MODULES:
        try:
            importlib.import_module(f"hepfm.objectives.{mod}")
        except ModuleNotFoundError as err:
            if err.name != f"hepfm.objectives.{mod}":
                raise


def create_objective(name: str, backbone_factory: BackboneFactory, feature_set: FeatureSet,
                     options: dict[str, Any] | None = None, *, max_particles: int | None = None) -> Objective:
    """Build objective ``name``; ``max_particles`` (the data's particle cap) sizes what depends on it
    (MPM's pT-rank tables), so the user never repeats it in the objective's options."""
    _import_all()
    return OBJECTIVES.get(name)(backbone_factory, feature_set, max_particles=max_particles, **(options or {}))


def objective_needs_labels(name: str, options: dict[str, Any] | None = None) -> bool:
    """Whether the objective trains on labels: its builder is marked ``needs_labels = True`` (or, where
    that depends on the options, as a composite's does, its ``labels_needed(options)`` says so) and takes
    ``num_classes``. Workflows drop labels for every other objective, so none can use them by accident."""
    _import_all()
    builder = OBJECTIVES.get(name)
    depends = getattr(builder, "labels_needed", None)
    if callable(depends):
        return bool(depends(options or {}))
    return bool(getattr(builder, "needs_labels", False))


def objective_input(name: str) -> str:
    """What the objective trains on: ``jets`` (sets of particles), or ``events`` (sets of reconstructed
    objects with their types, feature set ``objects``), as its builder's ``input_kind`` says."""
    _import_all()
    return str(getattr(OBJECTIVES.get(name), "input_kind", "jets"))


def objective_names() -> list[str]:
    _import_all()
    return OBJECTIVES.names()
