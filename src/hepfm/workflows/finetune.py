"""``hepfm finetune``: few-label training starting from a pretrained backbone, or the fair baselines.

Modes:
  * ``finetune``: pretrained backbone + new head, both trained under the ``finetune`` section's protocol
    (backbone LR multiplier per pretraining objective, layer-wise decay, head-only probe steps first);
  * ``frozen``: pretrained backbone fixed, only the head trains (``--head linear`` = a linear probe);
  * ``scratch``: the same architecture re-initialised (the fair baseline at the same N labels);
  * ``random``: the same architecture at its random initialisation, frozen, only the head trains: the
    control a frozen probe must beat (random features with a linear probe can be strong).
The N labeled jets are drawn reproducibly and class-balanced from the training files; model
selection uses the validation files only. The result is a classifier run that ``hepfm evaluate``
and ``hepfm.load`` understand.
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any

from hepfm.configs import load_preset, merge
from hepfm.configs.sections import (
    DataConfig,
    FinetuneConfig,
    HeadConfig,
    ModelConfig,
    section,
    split_sections,
)
from hepfm.data.features import FeatureSet
from hepfm.errors import HepfmInputError
from hepfm.io import write_json_atomic
from hepfm.objectives.registry import objective_names
from hepfm.options import check_known
from hepfm.training import checkpoint as ckpt
from hepfm.training.config import TrainConfig
from hepfm.training.engine import Trainer, seed_everything
from hepfm.workflows.classify import build_classifier, model_spec, validation_metrics
from hepfm.workflows.data import open_data
from hepfm.workflows.provenance import run_directory, write_run_header

log = logging.getLogger(__name__)
MODES = ("finetune", "frozen", "scratch", "random")
#: Modes that start from the pretrained weights (the others re-initialise the architecture).
PRETRAINED = ("finetune", "frozen")


def resolve(preset: str, delta: dict[str, Any], bb_spec: dict[str, Any] | None = None
            ) -> tuple[DataConfig, HeadConfig, FinetuneConfig, TrainConfig]:
    """The finetune preset + overrides, typed; data defaults (particle cap, features) come from the
    backbone. Without ``bb_spec`` (a study checking its grid before anything is pretrained) every
    value is still checked, against the generic data defaults."""
    d = split_sections(merge(load_preset("finetune", preset), delta), ("data", "head", "finetune", "train"))
    defaults: dict[str, Any] = {"batch_size": 64}
    if bb_spec is not None:
        defaults |= {"max_particles": bb_spec["max_particles"], "features": bb_spec["features"]["name"]}
    data = section(DataConfig, d, "data", defaults=defaults)
    ft = section(FinetuneConfig, d, "finetune")
    if isinstance(ft.backbone_lr_scale, dict):
        check_known(ft.backbone_lr_scale, ("default", *objective_names()), "finetune.backbone_lr_scale",
                    what="objective")
    if bb_spec is not None and data.features != bb_spec["features"]["name"]:
        raise HepfmInputError(f"data.features: the pretrained backbone takes {bb_spec['features']['name']!r} "
                              f"features, not {data.features!r}")
    return data, section(HeadConfig, d, "head"), ft, TrainConfig.from_dict(d.get("train", {}))


def protocol(ft: FinetuneConfig, mode: str, bb_spec: dict[str, Any]) -> dict[str, Any]:
    """The finetuning knobs a mode uses: all of them for ``finetune``, with the backbone multiplier of the
    objective the backbone was pretrained with; none for ``frozen`` (no backbone update) and ``scratch``
    and ``random`` (nothing to keep: the same architecture re-initialised)."""
    if mode != "finetune":
        return {"backbone_lr_scale": 1.0, "layer_decay": 1.0, "probe_steps": 0}
    return {"backbone_lr_scale": ft.lr_scale_for(bb_spec.get("pretrained_with")),
            "layer_decay": ft.layer_decay, "probe_steps": ft.probe_steps}


def finetune(pretrained: str | Path | None, preset: str, delta: dict[str, Any], out: str | Path, *,
             mode: str, n_labels: int | None, restart: bool = False, progress: bool = True) -> dict[str, Any]:
    if mode not in MODES:
        raise HepfmInputError(f"--mode must be one of {', '.join(MODES)}, got {mode!r}")
    if n_labels is not None and n_labels < 1:
        raise HepfmInputError(f"--n-labels must be >= 1, got {n_labels}")
    if pretrained is None:
        raise HepfmInputError("--pretrained RUN_DIR is required (scratch re-initialises its architecture)")
    bb_spec, bb_state, bb_file = ckpt.read_weights(Path(pretrained) / "backbone" if Path(pretrained).is_dir()
                                                   else pretrained)
    data, head, ft, tcfg = resolve(preset, delta, bb_spec)
    if not data.train or not data.val:
        raise HepfmInputError("finetuning needs --data (labeled training files) and --val (validation files)")
    fs = FeatureSet.from_dict(bb_spec["features"])
    out = Path(out)
    with run_directory(out, restart=restart):
        seed_everything(tcfg.seed)  # before the head (and the scratch backbone) are built
        d = open_data(data, fs, seed=tcfg.seed, labels="required", num_workers=tcfg.num_workers,
                      n_labels=n_labels, features_origin=str(bb_file))
        class_names, per_class = d.class_names, d.per_class

        mcfg = ModelConfig(backbone=bb_spec["backbone"]["name"], head=head.name,
                           backbone_options=bb_spec["backbone"].get("options", {}), head_options=head.options)
        spec = model_spec(mcfg, fs, class_names, data.max_particles) | {
            "finetune": {"mode": mode, "pretrained": str(bb_file), "n_labels": n_labels,
                         "per_class": per_class}}
        knobs = protocol(ft, mode, bb_spec)
        objective = build_classifier(spec, freeze_backbone=mode in ("frozen", "random"), **knobs)
        if mode in PRETRAINED:
            ckpt.load_state_into(objective.backbone, bb_state, bb_file)

        resolved = {"pretrained": str(bb_file), "mode": mode, "n_labels": n_labels, "data": asdict(data),
                    "head": asdict(head), "finetune": asdict(ft), "protocol": knobs, "train": tcfg.to_dict()}
        write_run_header(out, resolved, preset, d.train_sources, d.val_sources, pretrained_spec=bb_spec,
                         per_class=per_class)
        res = Trainer(objective, tcfg, out, spec, validation_metrics(class_names)).fit(
            d.train, d.val, progress=progress
        )
        summary = asdict(res) | {"run_dir": str(out), "mode": mode, "n_labels": n_labels,
                                 "per_class": per_class}
        write_json_atomic(out / "train_summary.json", summary)
    return summary
