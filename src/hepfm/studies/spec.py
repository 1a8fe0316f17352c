"""A study declared as data: the grid of ``hepfm study run STUDY.yaml``.

Why a file and not flags: the seeds' results are grids (objective x pretraining-set size x task x
mode x N labels x seed), and a grid worth hours of compute should be written down, versioned and
re-run as is. The YAML is checked whole before anything runs: an unknown key, a missing file, a
label count larger than the data or a pretraining size larger than the pretraining set is refused
with one line naming the key or file.

Layout (every key but ``tasks`` has a default; relative paths are read from ``data_dir``, which is the
YAML file's folder unless given)::

    name: demo
    data_dir: data                  # where the relative file names below live
    seeds: [1, 2, 3]                # finetuning seeds (each pretraining runs once, with pretraining.seed)
    pretraining:
      data: [pretrain.h5]           # unlabeled jets (labels, if any, are ignored)
      val: [pretrain_val.h5]        # optional: selects the exported backbone on validation loss
      objectives: [jetclr, mpm]
      sizes: [2000, all]            # jets drawn from the pretraining files (the first N), or all of them
      preset: null                  # null: <objective>-cpu
      overrides: [train.max_steps=300]
      variants: {noaug: {objective.options.augment: {rotate: 0, flip: 0, boost: 0}}}  # side by side
      seed: 1
      diagnostics: {data: [val.h5], n_jets: 1000}   # embedding probes and maps (labeled jets)
    tasks:
      - {name: toptag, train: [train.h5], val: [val.h5], test: [test.h5], n_labels: [100, 1000]}
      - {name: cwola, kind: cwola, signal_fractions: [0.1, 0.3], train: ..., val: ..., test: ...,
         n_labels: [2000]}
    finetune: {modes: [finetune, frozen, scratch], heads: [linear], preset: cpu-small, overrides: [],
               recipes: {lpft: {finetune.probe_steps: 50}, lr0.1: [finetune.backbone_lr_scale=0.1]}}
    baselines: [bdt]                # gradient-boosted trees on high-level jet features, same N labels
    executor: {backend: local, workers: null}   # local process pool (null: one per core) or slurm

Cross-detector transfer and pileup shift are tasks whose files come from another ``hepfm generate
--detector`` / ``--pileup`` than the pretraining files; linear separability on the pretraining classes
is a task over the 10-class files with ``modes: [frozen]`` and a linear head.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from hepfm.configs import load_preset
from hepfm.errors import HepfmInputError
from hepfm.options import from_dict, require

TASK_KINDS = ("labeled", "cwola")
BASELINES = ("bdt",)
BACKENDS = ("local", "serial", "slurm")
STUDY_PRESETS = Path(__file__).resolve().parent.parent / "configs" / "study"


@dataclass
class Diagnostics:
    """Embedding diagnostics of each pretrained backbone (``hepfm embed`` on these labeled jets) and,
    with ``monitor``, the same jets probed during pretraining (``--probe-data``) from step 0, the random
    initialisation, on."""

    data: list[str] = field(default_factory=list)
    n_jets: int = 1000
    monitor: bool = True

    def __post_init__(self) -> None:
        require(self.n_jets >= 20, "pretraining.diagnostics.n_jets", "must be >= 20", self.n_jets)


@dataclass
class Pretraining:
    data: list[str] = field(default_factory=list)
    val: list[str] = field(default_factory=list)
    objectives: list[str] = field(default_factory=lambda: ["jetclr"])
    #: jets per pretraining run: an integer (the first N jets of the files) or "all"
    sizes: list[int | str] = field(default_factory=lambda: ["all"])
    preset: str | None = None
    overrides: list[str] = field(default_factory=list)
    #: each objective pretrained again under other settings, side by side (e.g. without augmentation):
    #: name -> overrides on top of ``overrides``; reported as ``<objective>+<name>``
    variants: dict[str, list[str]] = field(default_factory=dict)
    seed: int = 1
    diagnostics: Diagnostics = field(default_factory=Diagnostics)

    def __post_init__(self) -> None:
        from hepfm.io import check_folder_name

        for name, items in self.variants.items():
            check_folder_name(name, "pretraining.variants")
            require(isinstance(items, list) and all(isinstance(i, str) for i in items),
                    f"pretraining.variants.{name}", "must be a mapping or a list of KEY=VALUE overrides",
                    items)
        for size in self.sizes:
            require(size == "all" or (isinstance(size, int) and size >= 1), "pretraining.sizes",
                    "holds jet counts >= 1 or 'all'", size)
        require(self.seed >= 0, "pretraining.seed", "must be >= 0", self.seed)


@dataclass
class Task:
    name: str
    train: list[str] = field(default_factory=list)
    val: list[str] = field(default_factory=list)
    test: list[str] = field(default_factory=list)
    n_labels: list[int] = field(default_factory=lambda: [1000])
    kind: str = "labeled"
    #: cwola: fraction of signal jets in the mixed sample, one task per value
    signal_fractions: list[float] = field(default_factory=list)
    #: cwola: which class is the signal (the other is the background); the last class by default
    signal_class: str | None = None

    def __post_init__(self) -> None:
        where = f"tasks.{self.name}"
        require(self.kind in TASK_KINDS, f"{where}.kind", f"must be one of {', '.join(TASK_KINDS)}",
                self.kind)
        for key in ("train", "val", "test", "n_labels"):
            values = getattr(self, key)
            require(len(values) > 0, f"{where}.{key}", "needs at least one value", values)
        for n in self.n_labels:
            require(n >= 2, f"{where}.n_labels", "must be >= 2 (one jet per class at least)", n)
        if self.kind == "cwola":
            require(len(self.signal_fractions) > 0, f"{where}.signal_fractions", "needs at least one value",
                    self.signal_fractions)
        for x in self.signal_fractions:
            require(0 < x < 1, f"{where}.signal_fractions", "must lie in (0, 1)", x)


@dataclass
class Finetuning:
    modes: list[str] = field(default_factory=lambda: ["finetune", "frozen", "scratch"])
    heads: list[str] = field(default_factory=lambda: ["linear"])
    preset: str = "cpu-small"
    overrides: list[str] = field(default_factory=list)
    #: finetuning recipes compared side by side: name -> overrides on top of ``overrides``, applied to the
    #: ``finetune`` mode only (frozen and scratch runs have no backbone rate to vary); none: the preset's own
    recipes: dict[str, list[str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        from hepfm.heads import HEADS
        from hepfm.io import check_folder_name
        from hepfm.workflows.finetune import MODES

        for name, items in self.recipes.items():
            check_folder_name(name, "finetune.recipes")
            require(isinstance(items, list) and all(isinstance(i, str) for i in items),
                    f"finetune.recipes.{name}", "must be a mapping or a list of KEY=VALUE overrides", items)

        require(len(set(self.modes)) == len(self.modes), "finetune.modes", "must not repeat", self.modes)
        for mode in self.modes:
            require(mode in MODES, "finetune.modes", f"must be among {', '.join(MODES)}", mode)
        for head in self.heads:
            HEADS.get(head)
        require(len(self.heads) > 0, "finetune.heads", "needs at least one value", self.heads)


@dataclass
class Executor:
    backend: str = "local"
    #: parallel cells (local: processes; slurm: concurrent jobs); None = one per core (local), 8 (slurm)
    workers: int | None = None
    #: submitit options for the slurm backend (e.g. slurm_partition, gpus_per_node, timeout_min)
    slurm: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        require(self.backend in BACKENDS, "executor.backend", f"must be one of {', '.join(BACKENDS)}",
                self.backend)
        require(self.workers is None or self.workers >= 1, "executor.workers", "must be >= 1", self.workers)


@dataclass
class StudySpec:
    name: str = "study"
    data_dir: str = "."
    seeds: list[int] = field(default_factory=lambda: [1, 2, 3])
    pretraining: Pretraining = field(default_factory=Pretraining)
    tasks: list[Task] = field(default_factory=list)
    finetune: Finetuning = field(default_factory=Finetuning)
    baselines: list[str] = field(default_factory=lambda: ["bdt"])
    executor: Executor = field(default_factory=Executor)

    def __post_init__(self) -> None:
        require(len(self.seeds) > 0, "seeds", "needs at least one value", self.seeds)
        require(len(set(self.seeds)) == len(self.seeds), "seeds", "must not repeat", self.seeds)
        for seed in self.seeds:
            require(seed >= 0, "seeds", "must be >= 0", seed)
        require(len(self.tasks) > 0, "tasks", "needs at least one task", self.tasks)
        names = [t.name for t in self.tasks]
        require(len(set(names)) == len(names), "tasks", "need distinct names", names)
        for b in self.baselines:
            require(b in BASELINES, "baselines", f"must be among {', '.join(BASELINES)}", b)
        require(bool(self.finetune.modes or self.baselines), "finetune.modes",
                "and baselines are both empty: nothing to run", self.finetune.modes)
        if self.finetune.modes:  # scratch too: it re-initialises a pretrained run's architecture
            require(len(self.pretraining.data) > 0, "pretraining.data", "needs at least one file",
                    self.pretraining.data)
            require(len(self.pretraining.objectives) > 0, "pretraining.objectives",
                    "needs at least one value", self.pretraining.objectives)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def load_spec(source: str | Path, data_dir: str | Path | None = None) -> tuple[StudySpec, Path]:
    """The study in a YAML file (or a shipped preset's name) and the folder its relative paths live in.

    Files are resolved and checked here (a missing file is one line naming it); a glob pattern must
    match at least one file.
    """
    path = Path(source)
    if not path.exists() and (STUDY_PRESETS / f"{source}.yaml").exists():
        path = STUDY_PRESETS / f"{source}.yaml"
    if not path.exists():
        presets = ", ".join(sorted(p.stem for p in STUDY_PRESETS.glob("*.yaml")))
        raise HepfmInputError(f"no such study file or preset (presets: {presets})", source)
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise HepfmInputError(f"invalid YAML{where}: {getattr(err, 'problem', err)}", path) from None
    base = Path(data_dir) if data_dir is not None else None
    return spec_from_dict(raw, path, base), path


def spec_from_dict(raw: Any, path: Path, base: Path | None = None) -> StudySpec:
    """A checked study from the mapping ``raw`` read from ``path`` (named in errors); relative file names
    are read from ``base`` (default: ``path``'s folder joined with the study's ``data_dir``)."""
    if not isinstance(raw, dict):
        raise HepfmInputError("a study file holds a mapping of keys (name, pretraining, tasks, ...)", path)
    try:
        spec = from_dict(StudySpec, normalise(raw), "")
    except HepfmInputError as err:
        raise HepfmInputError(err.problem, path) from None
    return resolve_files(spec, base if base is not None else path.parent / spec.data_dir)


def normalise(raw: dict[str, Any]) -> dict[str, Any]:
    """The forms YAML makes natural: ``tasks`` as a mapping name -> task, and ``overrides`` as a mapping."""
    raw = dict(raw)
    tasks = raw.get("tasks")
    if isinstance(tasks, dict):
        raw["tasks"] = [{"name": k, **(v or {})} for k, v in tasks.items()]
    for section in ("pretraining", "finetune"):
        sec = raw.get(section)
        if isinstance(sec, dict) and isinstance(sec.get("overrides"), dict):
            raw[section] = sec | {"overrides": _override_list(sec["overrides"])}
    for section, key in (("finetune", "recipes"), ("pretraining", "variants")):
        sec = raw.get(section)
        if isinstance(sec, dict) and isinstance(sec.get(key), dict):
            raw[section] = sec | {key: {name: _override_list(v) if isinstance(v, dict) else v
                                        for name, v in sec[key].items()}}
    return raw


def _override_list(mapping: dict[str, Any]) -> list[str]:
    return [f"{k}={yaml.safe_dump(v, default_flow_style=True).strip()}" for k, v in mapping.items()]


def resolve_files(spec: StudySpec, base: Path) -> StudySpec:
    """Every file name made absolute against ``base`` and checked to exist (globs must match)."""
    from hepfm.data.formats import expand_patterns

    def resolve(patterns: list[str], key: str) -> list[str]:
        out: list[str] = []
        for pattern in patterns:
            text = os.path.expanduser(pattern)
            full = text if os.path.isabs(text) else str(base / text)
            try:
                paths = expand_patterns([full])
            except HepfmInputError as err:
                raise HepfmInputError(f"{key}: {err.problem}", full) from None
            for p in paths:
                if not p.is_file():
                    raise HepfmInputError(f"{key}: file not found", p)
            out.extend(str(p.resolve()) for p in paths)
        return out

    p = spec.pretraining
    p.data, p.val = resolve(p.data, "pretraining.data"), resolve(p.val, "pretraining.val")
    p.diagnostics.data = resolve(p.diagnostics.data, "pretraining.diagnostics.data")
    for t in spec.tasks:
        for key in ("train", "val", "test"):
            setattr(t, key, resolve(getattr(t, key), f"tasks.{t.name}.{key}"))
    return spec


def check_presets(spec: StudySpec) -> None:
    """Every pretraining and finetuning preset + overrides resolves (unknown keys, bad values)."""
    import json

    from hepfm.training.config import apply_overrides
    from hepfm.workflows.finetune import resolve as resolve_finetune
    from hepfm.workflows.pretrain import resolve as resolve_pretrain

    p = spec.pretraining
    for objective in p.objectives:
        preset = p.preset or f"{objective}-cpu"
        load_preset("pretrain", preset)
        for extra in [[], *p.variants.values()]:
            items = [f"data.train={json.dumps(p.data)}", f"objective.name={objective}", *p.overrides, *extra]
            resolve_pretrain(preset, apply_overrides({}, items))
    f = spec.finetune
    load_preset("finetune", f.preset)
    for extra in [[], *f.recipes.values()]:
        resolve_finetune(f.preset, apply_overrides({}, [*f.overrides, *extra]))
