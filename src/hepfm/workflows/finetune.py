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

Events (seed 003): a backbone pretrained on events (``masked-object``) is finetuned on labeled events
the same way; only the backbone (embedding + encoder) is transferred, the classifier is always new.
The data must be what the backbone was trained on (jets or events, and no object type its
pretraining events never held: :func:`~hepfm.workflows.data.check_input`), in every mode, so that the
modes of a comparison see the same data. Events are read with the pretraining's object options
(``data.events`` photons, taus, cuts) unless overridden; the event selection is the task's own.
Without ``--preset``, a backbone trained on events finetunes with ``events-cpu`` (the seed's SGD +
cosine), any other with ``cpu-small``.
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
from hepfm.data.jets import OBJECT_TYPES
from hepfm.errors import HepfmInputError
from hepfm.io import write_json_atomic
from hepfm.objectives.events import EventAugmentation
from hepfm.objectives.registry import objective_names
from hepfm.options import check_known
from hepfm.physics.lorentz import LorentzConfig
from hepfm.training import checkpoint as ckpt
from hepfm.training.config import TrainConfig
from hepfm.training.engine import Trainer, seed_everything
from hepfm.workflows.classify import build_classifier, model_spec, validation_metrics
from hepfm.workflows.data import ModelInput, input_spec, open_data, reading_of
from hepfm.workflows.provenance import run_directory, write_run_header

log = logging.getLogger(__name__)
MODES = ("finetune", "frozen", "scratch", "random")
#: Modes that start from the pretrained weights (the others re-initialise the architecture).
PRETRAINED = ("finetune", "frozen")
#: The preset used without ``--preset``, by what the backbone was trained on.
DEFAULT_PRESETS = {"jets": "cpu-small", "events": "events-cpu"}


def default_preset(bb_spec: dict[str, Any], origin: Any = "") -> str:
    """``events-cpu`` for a backbone trained on events (the seed's SGD + cosine), else ``cpu-small``."""
    return DEFAULT_PRESETS[ModelInput.of_spec(bb_spec, origin).kind]


def resolve(preset: str, delta: dict[str, Any], bb_spec: dict[str, Any] | None = None
            ) -> tuple[DataConfig, HeadConfig, FinetuneConfig, TrainConfig]:
    """The finetune preset + overrides, typed; data defaults (particle cap, features, how events are
    read apart from their selection) come from the backbone. Without ``bb_spec`` (a study checking its
    grid before anything is pretrained) every value is still checked, against the generic data defaults."""
    d = split_sections(merge(load_preset("finetune", preset), delta), ("data", "head", "finetune", "train"))
    defaults: dict[str, Any] = {"batch_size": 64}
    if bb_spec is not None:
        defaults |= {"max_particles": bb_spec["max_particles"], "features": bb_spec["features"]["name"]}
        objects = {k: v for k, v in asdict(reading_of(bb_spec)).items() if k != "min_objects"}
        defaults["events"] = objects  # how objects are chosen; the event selection is the task's own
    data = section(DataConfig, d, "data", defaults=defaults)
    ft = section(FinetuneConfig, d, "finetune")
    if ft.augment is not None:
        LorentzConfig.from_dict(ft.augment)  # checked here, applied by the workflow
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


def finetune(pretrained: str | Path | None, preset: str | None, delta: dict[str, Any], out: str | Path, *,
             mode: str, n_labels: int | None, restart: bool = False, progress: bool = True) -> dict[str, Any]:
    """Train a classifier from a pretrained backbone (or its baselines); ``preset`` None picks
    :func:`default_preset`. Returns the fit summary."""
    if mode not in MODES:
        raise HepfmInputError(f"--mode must be one of {', '.join(MODES)}, got {mode!r}")
    if n_labels is not None and n_labels < 1:
        raise HepfmInputError(f"--n-labels must be >= 1, got {n_labels}")
    if pretrained is None:
        raise HepfmInputError("--pretrained RUN_DIR is required (scratch re-initialises its architecture)")
    bb_spec, bb_state, bb_file = ckpt.read_weights(Path(pretrained) / "backbone" if Path(pretrained).is_dir()
                                                   else pretrained)
    preset = preset or default_preset(bb_spec, bb_file)
    data, head, ft, tcfg = resolve(preset, delta, bb_spec)
    if not data.train or not data.val:
        raise HepfmInputError("finetuning needs --data (labeled training files) and --val (validation files)")
    fs = FeatureSet.from_dict(bb_spec["features"])
    pretrained_on = ModelInput.of_spec(bb_spec, bb_file)
    out = Path(out)
    with run_directory(out, restart=restart):
        seed_everything(tcfg.seed)  # before the head (and the scratch backbone) are built
        d = open_data(data, fs, seed=tcfg.seed, labels="required", num_workers=tcfg.num_workers,
                      n_labels=n_labels, features_origin=str(bb_file), expect=pretrained_on)
        class_names, per_class = d.class_names, d.per_class
        augment = None
        if ft.augment is not None:
            if d.kind != "events":
                raise HepfmInputError("finetune.augment: the Lorentz augmentations are for events, but the "
                                      "training files hold jets", d.train_sources[0].path)
            augment = EventAugmentation(LorentzConfig.from_dict(ft.augment), fs, "finetune.augment")
        # the classifier's object types: its training events', and the backbone's where it is kept
        types = tuple(t for t in OBJECT_TYPES if t in d.object_types
                      or (mode in PRETRAINED and t in (pretrained_on.object_types or ())))

        mcfg = ModelConfig(backbone=bb_spec["backbone"]["name"], head=head.name,
                           backbone_options=bb_spec["backbone"].get("options", {}), head_options=head.options)
        trained_on = input_spec(d.kind, types, data.events)
        spec = model_spec(mcfg, fs, class_names, data.max_particles, trained_on) | {
            "finetune": {"mode": mode, "pretrained": str(bb_file), "n_labels": n_labels,
                         "per_class": per_class}}
        knobs = protocol(ft, mode, bb_spec)
        objective = build_classifier(spec, freeze_backbone=mode in ("frozen", "random"), augment=augment,
                                     **knobs)
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
