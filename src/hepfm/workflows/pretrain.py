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

import torch

from hepfm._version import __version__
from hepfm.configs import load_preset, merge_run_config
from hepfm.configs.sections import DataConfig, ModelConfig, ObjectiveConfig, section, split_sections
from hepfm.data.features import FEATURE_SETS, FeatureSet
from hepfm.data.formats.nanoaod_events import EventOptions
from hepfm.errors import HepfmInputError
from hepfm.io import write_json_atomic
from hepfm.models import create_backbone
from hepfm.objectives.registry import create_objective, objective_needs_labels
from hepfm.training import checkpoint as ckpt
from hepfm.training.config import TrainConfig
from hepfm.training.engine import Trainer, seed_everything
from hepfm.training.monitor import EmbeddingProbe, ProbeConfig
from hepfm.workflows.data import class_names, evaluation_loader, input_spec, open_data, open_inputs
from hepfm.workflows.provenance import resuming, run_directory, write_run_header

log = logging.getLogger(__name__)
PREPARE_JETS = 20_000  # jets shown to Objective.prepare (e.g. fitting an MPM codebook)


def resolve(
    preset: str, delta: dict[str, Any]
) -> tuple[DataConfig, ModelConfig, ObjectiveConfig, TrainConfig, ProbeConfig]:
    d = split_sections(merge_run_config(load_preset("pretrain", preset), delta),
                       ("data", "model", "objective", "train", "probe"))
    return (section(DataConfig, d, "data"), section(ModelConfig, d, "model"),
            section(ObjectiveConfig, d, "objective"), TrainConfig.from_dict(d.get("train", {})),
            section(ProbeConfig, d, "probe"))


def open_probe(probe: ProbeConfig, fs: FeatureSet, max_particles: int, tcfg: TrainConfig,
               train_classes: tuple[str, ...] | None = None, events: EventOptions | None = None,
               ) -> EmbeddingProbe | None:
    """The pretraining monitor over ``probe.data`` (None without it): labeled files that share their
    classes, at least two of them among the jets read, and, for a supervised pretraining, the training
    classes. Events are read with the training data's ``events`` options."""
    if not probe.data:
        return None
    sources = open_inputs(probe.data, fs, max_particles, events=events)
    unlabeled = next((s for s in sources if not s.has_labels), None)
    if unlabeled is not None:
        raise HepfmInputError("--probe-data needs labeled jets, but the file has none", unlabeled.path)
    names = class_names(sources, "--probe-data")  # the files agree, or the odd one is named
    if train_classes is not None and names != tuple(train_classes):
        raise HepfmInputError(f"--probe-data classes {list(names)} differ from the training "
                              f"classes {list(train_classes)}", sources[0].path)
    loader, _ = evaluation_loader(probe.data, fs, max_particles, n_jets=probe.n_jets, events=events)
    with torch.random.fork_rng(devices=[]):  # iterating a DataLoader draws a seed: keep the run's own stream
        batches = list(loader)
    labels = {int(v) for b in batches if b.label is not None for v in b.label.unique()}
    if len(labels) < 2:
        raise HepfmInputError(f"--probe-data: the first {probe.n_jets} jets hold {len(labels)} class(es); a "
                              "probe needs at least two (mix the files, or raise probe.n_jets)",
                              sources[0].path)
    return EmbeddingProbe(batches, fs, every=probe.every or tcfg.eval_every, k=probe.k, seed=tcfg.seed)


def backbone_spec(model: ModelConfig, fs: Any, max_particles: int) -> dict[str, Any]:
    return {
        "hepfm_version": __version__,
        "backbone": {"name": model.backbone, "options": model.backbone_options, "in_features": fs.dim},
        "features": fs.to_dict(),
        "max_particles": max_particles,
    }


def pretrain(preset: str, delta: dict[str, Any], out: str | Path, *, restart: bool = False,
             progress: bool = True) -> dict[str, Any]:
    data, model, obj_cfg, tcfg, probe_cfg = resolve(preset, delta)
    out = Path(out)
    with run_directory(out, restart=restart):
        seed_everything(tcfg.seed)  # before the objective is built: its initial weights are part of the run
        fs = FEATURE_SETS.get(data.features)
        needs_labels = objective_needs_labels(obj_cfg.name, obj_cfg.options)
        d = open_data(data, fs, seed=tcfg.seed, labels="required" if needs_labels else "dropped",
                      num_workers=tcfg.num_workers)
        probe = open_probe(probe_cfg, fs, data.max_particles, tcfg, d.class_names if needs_labels else None,
                           data.events)
        options = dict(obj_cfg.options)
        if needs_labels:
            options.setdefault("num_classes", len(d.class_names))
        bb_spec = (backbone_spec(model, fs, data.max_particles)
                   | input_spec(d.kind, d.object_types, data.events))
        objective = create_objective(
            obj_cfg.name, lambda: create_backbone(model.backbone, fs.dim, **model.backbone_options), fs,
            options, max_particles=data.max_particles)
        if not resuming(out):  # data-dependent set-up (e.g. MPM's codebook); a resume restores it instead
            objective.prepare(itertools.islice(iter(d.train), max(1, PREPARE_JETS // data.batch_size)))

        spec = {"objective": obj_cfg.name, "objective_options": options, **bb_spec}
        resolved = {"data": asdict(data), "model": asdict(model),
                    "objective": {"name": obj_cfg.name, "options": options}, "train": tcfg.to_dict(),
                    "probe": asdict(probe_cfg)}
        n_params = sum(p.numel() for p in objective.export_backbone().parameters())
        write_run_header(
            out, resolved, preset, d.train_sources, d.val_sources, n_backbone_parameters=n_params
        )
        trainer = Trainer(objective, tcfg, out, spec, monitor=probe)
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
