"""The one table from command-line flags to run-config keys (train, pretrain, finetune).

A flag such as ``--batch-size`` is a shorthand for ``-o data.batch_size=...``: it is declared,
documented and mapped here once, and each subcommand lists which flags it offers. The values then
enter the typed run configuration with every other override, so a flag is checked exactly like the
same key given in a preset or with ``-o``.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, replace
from typing import Any

from hepfm.training.config import apply_overrides


@dataclass(frozen=True)
class ConfigFlag:
    """``--flag`` -> ``key``. ``kind``: str, int, float, files (one or more, globs allowed) or switch.
    ``clears``: keys the flag sets to null, so that the budget a user names is the one that applies
    (``--steps N`` is exactly N steps, whatever epoch budget the preset has)."""

    flag: str
    key: str
    help: str | None = None
    kind: str = "str"
    required: bool = False
    clears: tuple[str, ...] = ()

    @property
    def dest(self) -> str:
        return self.flag.lstrip("-").replace("-", "_")


_KINDS: dict[str, dict[str, Any]] = {
    "str": {}, "int": {"type": int}, "float": {"type": float}, "files": {"nargs": "+"},
    "switch": {"action": "store_true"},
}

DATA = ConfigFlag("--data", "data.train", "training files (globs allowed)", "files", required=True)
VAL = ConfigFlag("--val", "data.val", "validation files (model selection only)", "files", required=True)
BACKBONE = ConfigFlag("--backbone", "model.backbone", "one of {backbones}")
FEATURES = ConfigFlag("--features", "data.features", "one of {features}")
STEPS = ConfigFlag("--steps", "train.max_steps", "train exactly this many optimizer steps (no epoch budget)",
                   "int", clears=("train.max_epochs",))
EPOCHS = ConfigFlag("--epochs", "train.max_epochs", "train this many passes over the training data (no step "
                    "budget)", "int", clears=("train.max_steps",))
BATCH_SIZE = ConfigFlag("--batch-size", "data.batch_size", None, "int")
LR = ConfigFlag("--lr", "train.optim.lr", None, "float")
MAX_PARTICLES = ConfigFlag(
    "--max-particles", "data.max_particles", "hardest constituents kept per jet", "int"
)
N_TRAIN = ConfigFlag("--n-train", "data.n_train", "use only the first N training jets", "int")
SEED = ConfigFlag("--seed", "train.seed", None, "int")
DEVICE = ConfigFlag("--device", "train.device", "auto, cpu, cuda, cuda:1")
STREAMING = ConfigFlag("--streaming", "data.streaming", "stream training data from disk (bigger than memory)",
                       "switch")
SKIP_BAD = ConfigFlag("--skip-bad", "data.skip_bad", "skip bad jets instead of stopping", "switch")
PHOTONS = ConfigFlag("--photons", "data.events.photons",
                     "events: keep photons as objects (NanoAOD; the other reading options and the event "
                     "selection are -o data.events.*, e.g. -o data.events.min_objects.lepton=1)",
                     "switch")
HEADS = "one of {heads}"

#: Subcommand -> the config flags it offers, in --help order.
FLAGS: dict[str, tuple[ConfigFlag, ...]] = {
    "train": (DATA, VAL, BACKBONE, ConfigFlag("--head", "model.head", HEADS), FEATURES, STEPS, EPOCHS,
              BATCH_SIZE, LR, MAX_PARTICLES, N_TRAIN, SEED, DEVICE, STREAMING, SKIP_BAD, PHOTONS),
    "pretrain": (ConfigFlag("--objective", "objective.name", "one of {objectives}", required=True),
                 DATA,
                 replace(VAL, help="validation files (selects the exported backbone on validation loss)",
                         required=False),
                 BACKBONE, FEATURES, STEPS, EPOCHS, BATCH_SIZE, LR, MAX_PARTICLES, N_TRAIN, SEED, DEVICE,
                 STREAMING, SKIP_BAD, PHOTONS,
                 ConfigFlag("--probe-data", "probe.data",
                            "labeled jets to probe the frozen embedding on while pretraining (linear, k-NN)",
                            "files"),
                 ConfigFlag("--probe-every", "probe.every",
                            "steps between probe evaluations (default: every train.eval_every)", "int")),
    "finetune": (replace(DATA, help="labeled training files (globs allowed)"), VAL,
                 ConfigFlag("--head", "head.name", HEADS), STEPS, EPOCHS, BATCH_SIZE, LR,
                 ConfigFlag("--backbone-lr-scale", "finetune.backbone_lr_scale",
                            "learning-rate multiplier of the pretrained backbone (--mode finetune)", "float"),
                 ConfigFlag("--layer-decay", "finetune.layer_decay",
                            "layer-wise learning-rate decay of the backbone, in (0, 1] (--mode finetune)",
                            "float"),
                 ConfigFlag("--probe-steps", "finetune.probe_steps",
                            "train the head alone on the frozen backbone for this many steps first "
                            "(--mode finetune)", "int"),
                 SEED, DEVICE, SKIP_BAD, PHOTONS),
}


def add_config_flags(p: argparse.ArgumentParser, command: str) -> None:
    """Add ``command``'s config flags and the generic ``-o KEY=VALUE`` override to its parser."""
    for f in FLAGS[command]:
        kwargs = dict(_KINDS[f.kind], help=f.help)
        if f.required:
            kwargs["required"] = True
        p.add_argument(f.flag, dest=f.dest, **kwargs)
    p.add_argument("-o", "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="dotted override of any config key, e.g. train.optim.name=ranger (repeatable)")


def config_delta(args: argparse.Namespace, command: str) -> dict[str, Any]:
    """The overrides ``args`` ask for: the flags given, then ``-o`` values (which win)."""
    items = []
    for f in FLAGS[command]:
        value = getattr(args, f.dest)
        if value is None or (f.kind == "switch" and not value):
            continue
        items += [f"{key}=null" for key in f.clears]
        items.append(f"{f.key}={json.dumps(value)}")
    return apply_overrides({}, items + list(args.overrides))
