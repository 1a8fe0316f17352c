"""``hepfm pretrain``: self-supervised (or supervised) pretraining of a backbone on many jets.

Labels in the data are ignored (withheld files work) unless the objective is ``supervised``. The run
directory holds what ``hepfm train`` writes plus ``backbone.safetensors``/``backbone.json``: the
exported backbone (selected on validation loss if ``--val`` is given, else the last) that
``hepfm finetune --pretrained RUN_DIR`` starts from.
"""

from __future__ import annotations

import itertools
import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any

from hepfm._version import __version__
from hepfm.configs import load_preset, merge_run_config
from hepfm.configs.sections import DataConfig, ModelConfig, ObjectiveConfig, section, split_sections
from hepfm.data.features import FEATURE_SETS
from hepfm.io import write_json_atomic
from hepfm.models import create_backbone
from hepfm.objectives.registry import create_objective, objective_needs_labels
from hepfm.training import checkpoint as ckpt
from hepfm.training.config import TrainConfig
from hepfm.training.engine import Trainer, seed_everything
from hepfm.workflows.data import open_data
from hepfm.workflows.provenance import resuming, run_directory, write_run_header

log = logging.getLogger(__name__)
PREPARE_JETS = 20_000  # jets shown to Objective.prepare (e.g. fitting an MPM codebook)


def resolve(
    preset: str, delta: dict[str, Any]
) -> tuple[DataConfig, ModelConfig, ObjectiveConfig, TrainConfig]:
    d = split_sections(
        merge_run_config(load_preset("pretrain", preset), delta), ("data", "model", "objective", "train")
    )
    return (section(DataConfig, d, "data"), section(ModelConfig, d, "model"),
            section(ObjectiveConfig, d, "objective"), TrainConfig.from_dict(d.get("train", {})))


def backbone_spec(model: ModelConfig, fs: Any, max_particles: int) -> dict[str, Any]:
    return {
        "hepfm_version": __version__,
        "backbone": {"name": model.backbone, "options": model.backbone_options, "in_features": fs.dim},
        "features": fs.to_dict(),
        "max_particles": max_particles,
    }


def pretrain(preset: str, delta: dict[str, Any], out: str | Path, *, restart: bool = False,
             progress: bool = True) -> dict[str, Any]:
    data, model, obj_cfg, tcfg = resolve(preset, delta)
    out = Path(out)
    with run_directory(out, restart=restart):
        seed_everything(tcfg.seed)  # before the objective is built: its initial weights are part of the run
        fs = FEATURE_SETS.get(data.features)
        needs_labels = objective_needs_labels(obj_cfg.name)
        d = open_data(data, fs, seed=tcfg.seed, labels="required" if needs_labels else "dropped",
                      num_workers=tcfg.num_workers)
        options = dict(obj_cfg.options)
        if needs_labels:
            options.setdefault("num_classes", len(d.class_names))
        bb_spec = backbone_spec(model, fs, data.max_particles)
        objective = create_objective(
            obj_cfg.name, lambda: create_backbone(model.backbone, fs.dim, **model.backbone_options), fs,
            options, max_particles=data.max_particles)
        if not resuming(out):  # data-dependent set-up (e.g. MPM's codebook); a resume restores it instead
            objective.prepare(itertools.islice(iter(d.train), max(1, PREPARE_JETS // data.batch_size)))

        spec = {"objective": obj_cfg.name, "objective_options": options, **bb_spec}
        resolved = {"data": asdict(data), "model": asdict(model),
                    "objective": {"name": obj_cfg.name, "options": options}, "train": tcfg.to_dict()}
        n_params = sum(p.numel() for p in objective.export_backbone().parameters())
        write_run_header(
            out, resolved, preset, d.train_sources, d.val_sources, n_backbone_parameters=n_params
        )
        trainer = Trainer(objective, tcfg, out, spec)
        res = trainer.fit(d.train, d.val, progress=progress)
        # export the selected backbone (best on validation loss, or the final one without --val)
        _, state, file = ckpt.read_weights(out / "best")
        ckpt.load_state_into(objective, state, file)
        ckpt.save_weights(
            out / "backbone", objective.export_backbone(), bb_spec | {"pretrained_with": obj_cfg.name}
        )
        summary = asdict(res) | {"run_dir": str(out), "n_backbone_parameters": n_params,
                                 "objective": obj_cfg.name}
        write_json_atomic(out / "train_summary.json", summary)
    return summary
