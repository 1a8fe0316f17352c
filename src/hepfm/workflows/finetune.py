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
from hepfm.data.features import FeatureSet
from hepfm.data.formats import ArraySource, open_sources
from hepfm.data.jets import JetChunk
from hepfm.data.loader import make_loader
from hepfm.errors import HepfmInputError
from hepfm.io import write_json_atomic
from hepfm.training import checkpoint as ckpt
from hepfm.training.config import TrainConfig
from hepfm.training.engine import Trainer
from hepfm.workflows.classify import (
    ModelConfig,
    _available_fields,
    _check_val_classes,
    _class_names,
    build_classifier,
    model_spec,
    validation_metrics,
)
from hepfm.workflows.provenance import write_run_header

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


def finetune(pretrained: str | Path | None, preset: str, delta: dict[str, Any], out: str | Path, *,
             mode: str, n_labels: int | None, progress: bool = True) -> dict[str, Any]:
    if mode not in MODES:
        raise HepfmInputError(f"--mode must be one of {', '.join(MODES)}, got {mode!r}")
    d = merge(load_preset("finetune", preset), delta)
    unknown = set(d) - {"data", "head", "finetune", "train"}
    if unknown:
        raise HepfmInputError(f"unknown config section(s): {', '.join(sorted(unknown))}")
    data, head = d.get("data", {}), d.get("head", {"name": "linear"})
    out = Path(out)
    if pretrained is None:
        raise HepfmInputError("--pretrained RUN_DIR is required (scratch re-initialises its architecture)")
    bb_spec, bb_state, bb_file = ckpt.read_weights(Path(pretrained) / "backbone" if Path(pretrained).is_dir()
                                                   else pretrained)
    fs = FeatureSet.from_dict(bb_spec["features"])
    max_particles = int(data.get("max_particles", bb_spec["max_particles"]))
    batch_size = int(data.get("batch_size", 64))
    tcfg = TrainConfig.from_dict(d.get("train", {}) | {"batch_size": batch_size, "max_particles": max_particles})

    train_src = open_sources(data["train"], max_particles=max_particles, skip_bad=data.get("skip_bad", False))
    val_src = open_sources(data["val"], max_particles=max_particles, skip_bad=data.get("skip_bad", False))
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
        subset, per_class = balanced_subset(train_src, n_labels, tcfg.seed)
        train_sources: list[Any] = [ArraySource(subset, path=f"{train_src[0].path}[{n_labels} labels]")]
    else:
        train_sources, per_class = train_src, {}
    train_loader = make_loader(train_sources, fs, batch_size, shuffle=True, seed=tcfg.seed, max_particles=max_particles,
                               drop_last=len(train_sources[0]) > batch_size if n_labels else True)
    val_loader = make_loader(val_src, fs, batch_size, shuffle=False, max_particles=max_particles,
                             n_jets=data.get("n_val"), rank=0, world_size=1)
    _check_val_classes(val_loader, len(class_names), val_src[0].path)

    mcfg = ModelConfig(backbone=bb_spec["backbone"]["name"], head=head.get("name", "linear"),
                       backbone_options=bb_spec["backbone"].get("options", {}), head_options=head.get("options", {}))
    spec = model_spec(mcfg, fs, class_names, max_particles) | {
        "finetune": {"mode": mode, "pretrained": str(bb_file), "n_labels": n_labels, "per_class": per_class}}
    ft = d.get("finetune", {})
    objective = build_classifier(spec, freeze_backbone=mode == "frozen",
                                 backbone_lr_scale=float(ft.get("backbone_lr_scale", 1.0)) if mode == "finetune" else 1.0)
    if mode != "scratch":
        ckpt.load_state_into(objective.backbone, bb_state, bb_file)

    resolved = {"pretrained": str(bb_file), "mode": mode, "n_labels": n_labels, **d, "train": tcfg.to_dict()}
    write_run_header(out, resolved, preset, train_src, val_src, pretrained_spec=bb_spec, per_class=per_class)
    res = Trainer(objective, tcfg, out, spec, validation_metrics(class_names)).fit(
        train_loader, val_loader, progress=progress)
    summary = asdict(res) | {"run_dir": str(out), "mode": mode, "n_labels": n_labels, "per_class": per_class}
    write_json_atomic(out / "train_summary.json", summary)
    return summary
