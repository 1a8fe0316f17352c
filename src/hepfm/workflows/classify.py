"""Supervised tagging: ``hepfm train`` and ``hepfm evaluate``, and rebuilding classifiers (``hepfm.load``).

A run directory holds: ``config.yaml`` (the resolved config), ``provenance.json`` (versions, command,
data files), ``metrics.jsonl``/``metrics.csv``, ``checkpoints/last.pt`` (exact resume),
``best.safetensors`` + ``best.json`` (the model selected on validation, with everything needed to
rebuild it), and ``eval/<test>/metrics.json`` + plots from ``hepfm evaluate``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hepfm._version import __version__
from hepfm.configs import load_preset, merge_run_config
from hepfm.configs.sections import DataConfig, ModelConfig, section, split_sections
from hepfm.data.features import FEATURE_SETS, FeatureSet
from hepfm.errors import HepfmInputError
from hepfm.evaluation.metrics import classification_metrics, softmax
from hepfm.heads import create_head_for
from hepfm.io import check_folder_name, write_json_atomic
from hepfm.models import create_backbone
from hepfm.objectives.supervised import Supervised
from hepfm.training import checkpoint as ckpt
from hepfm.training.config import TrainConfig
from hepfm.training.engine import Trainer, seed_everything
from hepfm.workflows.data import ModelInput, evaluation_loader, input_spec, open_data, reading_of
from hepfm.workflows.provenance import data_provenance, run_directory, write_run_header

log = logging.getLogger(__name__)


def resolve_config(preset: str, delta: dict[str, Any]) -> tuple[DataConfig, ModelConfig, TrainConfig]:
    d = split_sections(merge_run_config(load_preset("train", preset), delta), ("data", "model", "train"))
    return (section(DataConfig, d, "data"), section(ModelConfig, d, "model"),
            TrainConfig.from_dict(d.get("train", {})))


# -- models from specs
def model_spec(
    model: ModelConfig, features: FeatureSet, class_names: tuple[str, ...], max_particles: int,
    trained_on: dict[str, Any] | None = None,
) -> dict:
    """A classifier's spec; ``trained_on`` is :func:`~hepfm.workflows.data.input_spec` of its data."""
    return (trained_on or {}) | {
        "hepfm_version": __version__,
        "objective": "supervised",
        "backbone": {"name": model.backbone, "options": model.backbone_options, "in_features": features.dim},
        "head": {"name": model.head, "options": model.head_options, "num_classes": len(class_names)},
        "features": features.to_dict(),
        "class_names": list(class_names),
        "max_particles": max_particles,
    }


def build_classifier(spec: dict[str, Any], **objective_kw: Any) -> Supervised:
    bb = spec["backbone"]
    backbone = create_backbone(bb["name"], bb["in_features"], **bb.get("options", {}))
    hd = spec["head"]
    head = create_head_for(hd["name"], backbone, hd["num_classes"], **hd.get("options", {}))
    return Supervised(backbone, head, **objective_kw)


def load(path: str | Path) -> tuple[Supervised, dict[str, Any]]:
    """Rebuild a trained classifier (in eval mode) and its spec from a run directory or weights file."""
    spec, state, file = ckpt.read_weights(path)
    if spec.get("objective") != "supervised":
        raise HepfmInputError(f"not a classifier checkpoint (objective {spec.get('objective')!r})", file)
    model = build_classifier(spec)
    ckpt.load_state_into(model, state, file)
    return model.eval(), spec


# -- training
def validation_metrics(class_names: tuple[str, ...]) -> Callable[[np.ndarray, np.ndarray], dict[str, float]]:
    """The engine's validation hook for classifiers: the scalar tagging metrics (``val_auc`` etc.)."""

    def metrics_fn(logits: np.ndarray, labels: np.ndarray) -> dict[str, float]:
        m = classification_metrics(logits, labels, class_names)
        return {k: v for k, v in m.items() if isinstance(v, float)}

    return metrics_fn


def train(preset: str, delta: dict[str, Any], out: str | Path, *, resume: bool = True, restart: bool = False,
          progress: bool = True) -> dict[str, Any]:
    """Train a supervised tagger; returns the fit summary. Re-running into the same ``out`` resumes
    (with the same settings and data only); ``restart`` discards the previous run first."""
    data, model, tcfg = resolve_config(preset, delta)
    if not data.train or not data.val:
        raise HepfmInputError("training needs --data (training files) and --val (validation files)")
    out = Path(out)
    with run_directory(out, restart=restart):
        seed_everything(tcfg.seed)  # before the model is built: its initial weights are part of the run
        fs = FEATURE_SETS.get(data.features)
        d = open_data(data, fs, seed=tcfg.seed, labels="required", num_workers=tcfg.num_workers)
        class_names = d.class_names

        spec = model_spec(model, fs, class_names, data.max_particles,
                          input_spec(d.kind, d.object_types, data.events))
        objective = build_classifier(spec)
        resolved = {"data": asdict(data), "model": asdict(model), "train": tcfg.to_dict()}
        write_run_header(out, resolved, preset, d.train_sources, d.val_sources,
                         n_parameters=sum(p.numel() for p in objective.parameters()))
        trainer = Trainer(objective, tcfg, out, spec, validation_metrics(class_names))
        res = trainer.fit(d.train, d.val, resume=resume, progress=progress)
        summary = asdict(res) | {
            "run_dir": str(out),
            "n_parameters": sum(p.numel() for p in objective.parameters()),
        }
        write_json_atomic(out / "train_summary.json", summary)
    return summary


# -- evaluation
@torch.no_grad()
def predict(model: Supervised, spec: dict[str, Any], patterns: list[str], batch_size: int = 256,
            skip_bad: bool = False, device: str = "cpu", origin: Any = "") -> tuple[np.ndarray, np.ndarray,
                                                                                    list[Any]]:
    """Logits and labels of every jet (or event) in ``patterns`` with the checkpoint's own feature set,
    events read as its training events were; data it was not trained on is refused (``origin`` names
    the checkpoint in that message)."""
    loader, sources = evaluation_loader(patterns, FeatureSet.from_dict(spec["features"]),
                                        spec["max_particles"], batch_size=batch_size, skip_bad=skip_bad,
                                        class_names=tuple(spec["class_names"]), events=reading_of(spec),
                                        expect=ModelInput.of_spec(spec, origin))
    model = model.to(device).eval()
    logits, labels = [], []
    for batch in loader:
        logits.append(model.logits(batch.to(device)).float().cpu().numpy())
        labels.append(batch.label.numpy())
    if not logits:
        raise HepfmInputError("the test data is empty", sources[0].path)
    return np.concatenate(logits), np.concatenate(labels), sources


def evaluate(run_dir: str | Path, patterns: list[str], *, name: str | None = None, batch_size: int = 256,
             skip_bad: bool = False, plots: bool = True) -> dict[str, Any]:
    """Metrics (accuracy, auc, rej30, rej50, n_jets) of a run's best model on test files, plus plots."""
    run_dir = Path(run_dir)
    if name is not None:
        check_folder_name(name, "--name")
    model, spec = load(run_dir)
    logits, labels, sources = predict(model, spec, patterns, batch_size, skip_bad, origin=run_dir)
    class_names = tuple(spec["class_names"])
    try:
        metrics = classification_metrics(logits, labels, class_names)
    except HepfmInputError as err:  # e.g. test data with one class: name the data
        raise HepfmInputError(err.problem, ", ".join(str(s.path) for s in sources)) from None
    name = name or Path(sources[0].path).stem
    out = (run_dir if run_dir.is_dir() else run_dir.parent) / "eval" / name
    metrics |= {"checkpoint_step": spec.get("step"), "data": data_provenance(sources)}
    write_json_atomic(out / "metrics.json", metrics)
    if plots:
        from hepfm.evaluation.plots import roc_plot, score_histogram

        probs = softmax(logits)
        if len(class_names) == 2:
            curves = {f"{class_names[1]} vs {class_names[0]}": (probs[:, 1], labels == 1)}
            score_histogram(out / "scores.png", probs[:, 1], labels, class_names, f"p({class_names[1]})")
        else:
            curves = {f"{c} vs rest": (probs[:, i], labels == i) for i, c in enumerate(class_names)
                      if 0 < (labels == i).sum() < len(labels)}
            score_histogram(out / "scores.png", probs.max(1), labels, class_names, "max class probability")
        roc_plot(out / "roc.png", curves, title=f"{spec['backbone']['name']} on {name}")
    return metrics | {"out": str(out), "input_kind": ModelInput.of_spec(spec, run_dir).kind}
