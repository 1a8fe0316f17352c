"""``composite``: one backbone trained on a weighted sum of objectives, declared in the config.

Why: objectives learn different things (masked modelling the particle-level structure, contrastive
learning invariances, supervision the classes), and a 2026 comparison of jet pretraining objectives
found masked modelling plus supervision the strongest at few labels. A composite needs no loop of its
own: each part is the registered objective, built around the one shared backbone, and the engine sees
one objective whose loss is sum_i w_i L_i.

    objective:
      name: composite
      options:
        parts:
          - {name: mpm, weight: 1.0, options: {mask_fraction: 0.3}}
          - {name: supervised, weight: 0.5}

Every part gets the same batch. A part that builds a second encoder (J-JEPA's EMA target) gets its own
copy; the one it trains is the shared backbone, which is what finetuning starts from (for a J-JEPA
part that is its context encoder, not the EMA target J-JEPA alone exports). Parts log under
their name (``mpm_loss``, ``supervised_accuracy``, ...). The composite needs labels when a part does.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, cast

import torch
from torch import nn

from hepfm.contracts import ParticleBatch
from hepfm.data.features import FeatureSet
from hepfm.errors import HepfmInputError
from hepfm.nn.backbone import Backbone
from hepfm.objectives.base import Objective, ObjectiveOutput
from hepfm.objectives.registry import OBJECTIVES, BackboneFactory, create_objective, objective_needs_labels
from hepfm.options import from_dict, require


@dataclass
class Part:
    name: str
    weight: float = 1.0
    options: dict[str, Any] = field(default_factory=dict)


def parse_parts(parts: Any) -> list[Part]:
    """The ``parts`` option, checked: a non-empty list of registered objectives (not composites, each
    once) with weights > 0."""
    if not isinstance(parts, list) or not parts:
        raise HepfmInputError("objective.options.parts must be a non-empty list of {name, weight, options}")
    out = []
    for i, raw in enumerate(parts):
        where = f"objective.options.parts[{i}]"
        if not isinstance(raw, dict):
            raise HepfmInputError(f"{where} must be a mapping with name, weight and options, got {raw!r}")
        part = from_dict(Part, raw, where)
        known = [n for n in OBJECTIVES.names() if n != "composite"]
        if part.name not in known:
            close = difflib.get_close_matches(part.name, known, n=1)
            hint = f"; did you mean {close[0]}?" if close else f" (objectives: {', '.join(known)})"
            raise HepfmInputError(f"{where}.name: unknown objective {part.name!r}{hint}")
        require(part.weight > 0, f"{where}.weight", "must be > 0", part.weight)
        out.append(part)
    names = [p.name for p in out]
    require(len(set(names)) == len(names), "objective.options.parts", "must name each objective once", names)
    return out


class Composite(Objective):
    """sum_i w_i L_i over parts that share ``backbone``."""

    name = "composite"

    def __init__(self, backbone: Backbone, parts: dict[str, Objective], weights: dict[str, float]) -> None:
        super().__init__()
        self.backbone = backbone
        self.parts = nn.ModuleDict(parts)
        self.weights = dict(weights)
        for name, part in parts.items():
            if getattr(part, "backbone", None) is not backbone:
                raise ValueError(f"composite part {name!r} does not train the shared backbone")

    def _each(self) -> list[tuple[str, Objective]]:
        return [(name, cast(Objective, part)) for name, part in self.parts.items()]

    def forward(self, batch: ParticleBatch) -> ObjectiveOutput:
        loss = torch.zeros((), device=batch.x.device)
        logs: dict[str, torch.Tensor] = {}
        logits = None
        for name, part in self._each():
            out = part(batch)
            loss = loss + self.weights[name] * out.loss.float()
            logs[f"{name}_loss"] = out.loss.detach()
            logs |= {f"{name}_{k}": v for k, v in out.logs.items()}
            logits = out.logits if out.logits is not None else logits
        return ObjectiveOutput(loss, logs, logits)

    def prepare(self, batches: Iterable[ParticleBatch]) -> None:
        cached = list(batches)  # every part may read the lazy iterable
        for _, part in self._each():
            part.prepare(iter(cached))

    def on_step_start(self, step: int, total_steps: int) -> None:
        for _, part in self._each():
            part.on_step_start(step, total_steps)

    def on_step_end(self, step: int, total_steps: int) -> None:
        for _, part in self._each():
            part.on_step_end(step, total_steps)

    def collapsed(self, logs: dict[str, float]) -> str | None:
        for name, part in self._each():
            own = {k[len(name) + 1 :]: v for k, v in logs.items() if k.startswith(f"{name}_")}
            reason = part.collapsed(own)
            if reason:
                return f"{name}: {reason}"
        return None

    def param_groups_lr_scale(self) -> dict[str, float]:
        return {f"parts.{name}.{prefix}": s for name, part in self._each()
                for prefix, s in part.param_groups_lr_scale().items()}

    def export_backbone(self) -> nn.Module:
        return self.backbone


def _sharing(shared: Backbone, factory: BackboneFactory) -> BackboneFactory:
    """A part's backbone factory: the shared backbone first, fresh ones after (an EMA target's)."""
    calls = 0

    def make() -> Backbone:
        nonlocal calls
        calls += 1
        return shared if calls == 1 else factory()

    return make


@OBJECTIVES.register("composite")
def build(backbone_factory: BackboneFactory, feature_set: FeatureSet, *, max_particles: int | None = None,
          parts: Any = None, num_classes: int | None = None) -> Composite:
    declared = parse_parts(parts)
    shared = backbone_factory()
    built: dict[str, Objective] = {}
    for part in declared:
        options = dict(part.options)
        if objective_needs_labels(part.name):
            options.setdefault("num_classes", num_classes)
        built[part.name] = create_objective(part.name, _sharing(shared, backbone_factory), feature_set,
                                            options, max_particles=max_particles)
    return Composite(shared, built, {p.name: p.weight for p in declared})


def _labels_needed(options: dict[str, Any]) -> bool:
    return any(objective_needs_labels(p.name) for p in parse_parts(options.get("parts")))


build.labels_needed = _labels_needed  # type: ignore[attr-defined]
