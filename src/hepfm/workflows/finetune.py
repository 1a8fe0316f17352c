"""``hepfm finetune``: few-label training starting from a pretrained backbone, or the fair baselines.

Modes:
  * ``finetune``: pretrained backbone + new head, both trained (backbone LR x ``backbone_lr_scale``);
  * ``frozen``: pretrained backbone fixed, only the head trains (``--head linear`` = a linear probe);
  * ``scratch``: the same architecture re-initialised (the fair baseline at the same N labels).
The N labeled jets are drawn reproducibly and class-balanced from the training files; model
selection uses the validation files only. The result is a classifier run that ``hepfm evaluate``
and ``hepfm.load`` understand.
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

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
from hepfm.data.formats import ArraySource, open_sources
from hepfm.data.jets import JetChunk
from hepfm.data.loader import make_loader
from hepfm.errors import HepfmInputError
from hepfm.io import write_json_atomic
from hepfm.training import checkpoint as ckpt
from hepfm.training.config import TrainConfig
from hepfm.training.engine import Trainer, seed_everything
from hepfm.workflows.classify import (
    _available_fields,
    _check_val_classes,
    _class_names,
    build_classifier,
    check_train_classes,
    model_spec,
    validation_metrics,
)
from hepfm.workflows.provenance import run_directory, write_run_header

log = logging.getLogger(__name__)
MODES = ("finetune", "frozen", "scratch")
READ_CHUNK = 50_000


def balanced_subset(sources: list[Any], n_labels: int, seed: int) -> tuple[JetChunk, dict[str, int]]:
    """``n_labels`` jets, as equal per class as the data allow, drawn with ``seed`` (reads labels in chunks)."""
    labels = []
    for s in sources:
        for start in range(0, len(s), READ_CHUNK):
            labels.append(s.read(start, min(start + READ_CHUNK, len(s)), fields=(), jet_fields=()).label)
    y = np.concatenate(labels)
    total = len(y)
    if n_labels > total:
        raise HepfmInputError(f"--n-labels {n_labels} is larger than the {total} labeled jets available",
                              sources[0].path)
    classes = np.unique(y)
    rng = np.random.default_rng(seed)
    per_class = {int(c): rng.permutation(np.flatnonzero(y == c)) for c in classes}
    quota = {c: 0 for c in per_class}
    left = n_labels
    while left > 0:  # fill classes round-robin so small classes are not over-asked
        open_classes = [c for c in per_class if quota[c] < len(per_class[c])]
        for c in open_classes[:left]:
            quota[c] += 1
            left -= 1
    chosen = np.sort(np.concatenate([per_class[c][: quota[c]] for c in per_class]))
    chunks, offset = [], 0
    for s in sources:
        mine = chosen[(chosen >= offset) & (chosen < offset + len(s))] - offset
        for start in range(0, len(s), READ_CHUNK):
            rows = mine[(mine >= start) & (mine < start + READ_CHUNK)] - start
            if len(rows):
                chunks.append(s.read(start, min(start + READ_CHUNK, len(s))).take(rows))
        offset += len(s)
    subset = JetChunk.concat(chunks)
    subset = subset.take(rng.permutation(len(subset)))
    names = sources[0].class_names
    return subset, {names[c]: int(quota[c]) for c in per_class}


def resolve(preset: str, delta: dict[str, Any], bb_spec: dict[str, Any]
            ) -> tuple[DataConfig, HeadConfig, FinetuneConfig, TrainConfig]:
    """The finetune preset + overrides, typed; data defaults (particle cap, features) come from the backbone."""
    d = split_sections(merge(load_preset("finetune", preset), delta), ("data", "head", "finetune", "train"))
    data = section(DataConfig, d, "data", defaults={
        "max_particles": bb_spec["max_particles"], "features": bb_spec["features"]["name"], "batch_size": 64})
    if data.features != bb_spec["features"]["name"]:
        raise HepfmInputError(f"data.features: the pretrained backbone takes {bb_spec['features']['name']!r} "
                              f"features, not {data.features!r}")
    return data, section(HeadConfig, d, "head"), section(FinetuneConfig, d, "finetune"), \
        TrainConfig.from_dict(d.get("train", {}))


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
        train_src = open_sources(data.train, max_particles=data.max_particles, skip_bad=data.skip_bad)
        val_src = open_sources(data.val, max_particles=data.max_particles, skip_bad=data.skip_bad)
        class_names = _class_names(train_src, "training")
        if _class_names(val_src, "validation") != class_names:
            raise HepfmInputError("validation classes differ from the training classes", val_src[0].path)
        for s in (*train_src, *val_src):
            try:
                fs.check_fields(_available_fields(s), s.path)
            except HepfmInputError as err:
                raise HepfmInputError(f"the pretrained backbone ({bb_file}) was trained on feature set "
                                      f"{fs.name!r}, which this data cannot provide: {err.problem}", s.path) from None
        if n_labels is not None:
            if n_labels < len(class_names):
                raise HepfmInputError(f"--n-labels {n_labels} is fewer than the {len(class_names)} classes "
                                      f"({', '.join(class_names)}): every class needs at least one label")
            subset, per_class = balanced_subset(train_src, n_labels, tcfg.seed)
            train_sources: list[Any] = [ArraySource(subset, path=f"{train_src[0].path}[{n_labels} labels]")]
        else:
            train_sources, per_class = train_src, {}
        check_train_classes(train_sources, None)
        train_loader = make_loader(train_sources, fs, data.batch_size, shuffle=True, seed=tcfg.seed,
                                   max_particles=data.max_particles,
                                   drop_last=len(train_sources[0]) > data.batch_size if n_labels else True)
        val_loader = make_loader(val_src, fs, data.batch_size, shuffle=False, max_particles=data.max_particles,
                                 n_jets=data.n_val, rank=0, world_size=1)
        _check_val_classes(val_loader, len(class_names), val_src[0].path)

        mcfg = ModelConfig(backbone=bb_spec["backbone"]["name"], head=head.name,
                           backbone_options=bb_spec["backbone"].get("options", {}), head_options=head.options)
        spec = model_spec(mcfg, fs, class_names, data.max_particles) | {
            "finetune": {"mode": mode, "pretrained": str(bb_file), "n_labels": n_labels, "per_class": per_class}}
        objective = build_classifier(spec, freeze_backbone=mode == "frozen",
                                     backbone_lr_scale=ft.backbone_lr_scale if mode == "finetune" else 1.0)
        if mode != "scratch":
            ckpt.load_state_into(objective.backbone, bb_state, bb_file)

        resolved = {"pretrained": str(bb_file), "mode": mode, "n_labels": n_labels, "data": asdict(data),
                    "head": asdict(head), "finetune": asdict(ft), "train": tcfg.to_dict()}
        write_run_header(out, resolved, preset, train_src, val_src, pretrained_spec=bb_spec, per_class=per_class)
        res = Trainer(objective, tcfg, out, spec, validation_metrics(class_names)).fit(
            train_loader, val_loader, progress=progress)
        summary = asdict(res) | {"run_dir": str(out), "mode": mode, "n_labels": n_labels, "per_class": per_class}
        write_json_atomic(out / "train_summary.json", summary)
    return summary
