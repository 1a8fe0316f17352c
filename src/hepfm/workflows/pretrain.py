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

from hepfm import __version__
from hepfm.configs import load_preset, merge_run_config
from hepfm.configs.sections import DataConfig, ModelConfig, ObjectiveConfig, section, split_sections
from hepfm.data.features import FEATURE_SETS
from hepfm.data.formats import open_sources
from hepfm.data.loader import make_loader
from hepfm.errors import HepfmInputError
from hepfm.io import write_json_atomic
from hepfm.models import create_backbone
from hepfm.objectives.registry import create_objective
from hepfm.training import checkpoint as ckpt
from hepfm.training.config import TrainConfig
from hepfm.training.engine import Trainer, seed_everything
from hepfm.workflows.classify import _available_fields, _class_names
from hepfm.workflows.provenance import resuming, run_directory, write_run_header

log = logging.getLogger(__name__)
PREPARE_JETS = 20_000  # jets shown to Objective.prepare (e.g. fitting an MPM codebook)


def resolve(preset: str, delta: dict[str, Any]) -> tuple[DataConfig, ModelConfig, ObjectiveConfig, TrainConfig]:
    d = split_sections(merge_run_config(load_preset("pretrain", preset), delta), ("data", "model", "objective", "train"))
    return (section(DataConfig, d, "data"), section(ModelConfig, d, "model"), section(ObjectiveConfig, d, "objective"),
            TrainConfig.from_dict(d.get("train", {})))


def backbone_spec(model: ModelConfig, fs: Any, max_particles: int) -> dict[str, Any]:
    return {"hepfm_version": __version__, "backbone": {"name": model.backbone, "options": model.backbone_options,
                                                      "in_features": fs.dim},
            "features": fs.to_dict(), "max_particles": max_particles}


def pretrain(preset: str, delta: dict[str, Any], out: str | Path, *, restart: bool = False,
             progress: bool = True) -> dict[str, Any]:
    data, model, obj_cfg, tcfg = resolve(preset, delta)
    if not data.train:
        raise HepfmInputError("pretraining needs --data files")
    out = Path(out)
    with run_directory(out, restart=restart):
        seed_everything(tcfg.seed)  # before the objective is built: its initial weights are part of the run
        fs = FEATURE_SETS.get(data.features)
        supervised = obj_cfg.name == "supervised"
        srcs = open_sources(data.train, max_particles=data.max_particles, skip_bad=data.skip_bad)
        val_srcs = open_sources(data.val, max_particles=data.max_particles, skip_bad=data.skip_bad) if data.val else []
        for s in (*srcs, *val_srcs):
            fs.check_fields(_available_fields(s), s.path)
        options = dict(obj_cfg.options)
        if supervised:
            names = _class_names(srcs, "training")
            options.setdefault("num_classes", len(names))
        bb_spec = backbone_spec(model, fs, data.max_particles)
        objective = create_objective(
            obj_cfg.name, lambda: create_backbone(model.backbone, fs.dim, **model.backbone_options), fs, options)
        train_loader = make_loader(srcs, fs, data.batch_size, streaming=data.streaming, shuffle=True, seed=tcfg.seed,
                                   num_workers=tcfg.num_workers, max_particles=data.max_particles,
                                   n_jets=data.n_train, drop_last=True)
        val_loader = (make_loader(val_srcs, fs, data.batch_size, shuffle=False, max_particles=data.max_particles,
                                  n_jets=data.n_val, rank=0, world_size=1) if val_srcs else None)
        if not supervised:
            train_loader = _without_labels(train_loader)
            val_loader = _without_labels(val_loader) if val_loader is not None else None
        prepare = getattr(objective, "prepare", None)
        if callable(prepare) and not resuming(out):
            n_batches = max(1, PREPARE_JETS // data.batch_size)
            prepare(list(itertools.islice(iter(train_loader), n_batches)))

        spec = {"objective": obj_cfg.name, "objective_options": options, **bb_spec}
        resolved = {"data": asdict(data), "model": asdict(model), "objective": {"name": obj_cfg.name, "options": options},
                    "train": tcfg.to_dict()}
        n_params = sum(p.numel() for p in objective.export_backbone().parameters())
        write_run_header(out, resolved, preset, srcs, val_srcs, n_backbone_parameters=n_params)
        trainer = Trainer(objective, tcfg, out, spec)
        res = trainer.fit(train_loader, val_loader, progress=progress)
        # export the selected backbone (best on validation loss, or the final one without --val)
        _, state, file = ckpt.read_weights(out / "best")
        ckpt.load_state_into(objective, state, file)
        ckpt.save_weights(out / "backbone", objective.export_backbone(), bb_spec | {"pretrained_with": obj_cfg.name})
        summary = asdict(res) | {"run_dir": str(out), "n_backbone_parameters": n_params, "objective": obj_cfg.name}
        write_json_atomic(out / "train_summary.json", summary)
    return summary


class _without_labels:  # noqa: N801 - a thin loader wrapper
    """Drops labels so no self-supervised objective can use them by accident."""

    def __init__(self, loader: Any) -> None:
        self.loader = loader
        self.sampler = getattr(loader, "sampler", None)
        self.dataset = getattr(loader, "dataset", None)
        self.batch_size = getattr(loader, "batch_size", None)

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.loader, "set_epoch"):
            self.loader.set_epoch(epoch)

    def state_dict(self) -> dict:
        return self.loader.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.loader.load_state_dict(state)

    def __iter__(self):  # type: ignore[no-untyped-def]
        for batch in self.loader:
            batch.label = None
            yield batch
