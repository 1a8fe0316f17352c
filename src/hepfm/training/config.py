"""Typed training configuration with paper-sensible defaults; YAML presets are small deltas on it."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from hepfm.errors import HepfmInputError


@dataclass
class OptimConfig:
    name: str = "adamw"  # adamw | adam | radam | ranger (RAdam + Lookahead, ParT's choice)
    lr: float = 1e-3
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8  # JetCLR at scale used Adam eps 1e-4 with AMP
    lookahead_k: int = 6
    lookahead_alpha: float = 0.5
    backbone_lr_scale: float = 1.0  # finetuning: learning-rate multiplier of pretrained parameters


@dataclass
class ScheduleConfig:
    name: str = "cosine"  # cosine | constant | flat-anneal (ParT: flat, then exponential decay)
    warmup_steps: int = 0
    min_lr_ratio: float = 0.01
    anneal_start: float = 0.7  # flat-anneal: fraction of steps before decay


@dataclass
class TrainConfig:
    """Everything the engine needs; saved resolved beside every run."""

    seed: int = 1
    max_steps: int = 1000
    batch_size: int = 128
    grad_accum: int = 1
    clip_grad: float = 1.0  # 0 disables
    amp: str = "auto"  # auto (bf16 on CUDA, off on CPU) | bf16 | fp16 (with grad scaling) | none
    compile: bool = False
    device: str = "auto"
    eval_every: int = 200
    ckpt_every: int = 200
    log_every: int = 20
    early_stop_patience: int = 0  # evaluations without improvement; 0 disables
    monitor: str = "val_loss"  # metric that selects the best checkpoint (on validation only)
    monitor_mode: str = "min"
    collapse_patience: int = 3  # log intervals in a row with a collapsed representation before stopping
    num_workers: int = 0
    max_particles: int = 128
    tensorboard: bool = False
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        return _from_dict(cls, d, "train")


def _from_dict(cls: type, d: dict[str, Any], where: str) -> Any:
    known = {f.name: f for f in fields(cls)}
    unknown = set(d) - set(known)
    if unknown:
        raise HepfmInputError(f"unknown {where} option(s): {', '.join(sorted(unknown))}")
    kwargs = {}
    for name, value in d.items():
        default = getattr(cls(), name) if name in ("optim", "schedule") else None
        if default is not None and isinstance(value, dict):
            value = _from_dict(type(default), value, f"{where}.{name}")
        elif name == "betas":
            value = tuple(float(v) for v in value)
        else:
            value = _coerce(value, known[name].type, f"{where}.{name}")
        kwargs[name] = value
    return cls(**kwargs)


def _coerce(value: Any, type_name: Any, key: str) -> Any:
    """Numbers may arrive as strings (YAML 1.1 reads 1e-3 as a string) or ints where floats are meant."""
    t = str(type_name)
    try:
        if t == "float" and not isinstance(value, bool):
            return float(value)
        if t == "int" and not isinstance(value, bool):
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value)
        if t == "bool" and not isinstance(value, bool):
            raise ValueError
    except (TypeError, ValueError):
        raise HepfmInputError(f"{key}: expected {t}, got {value!r}") from None
    return value


def parse_value(raw: str) -> Any:
    """A command-line value: JSON first (numbers like 3e-3, lists), else YAML (bare words)."""
    import json

    import yaml

    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return yaml.safe_load(raw)


def apply_overrides(d: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply dotted ``key=value`` overrides (values parsed as YAML) to a nested dict."""
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep:
            raise HepfmInputError(f"override {item!r} is not KEY=VALUE")
        node = d
        parts = key.strip().split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise HepfmInputError(f"override {item!r}: {p} is not a section")
        node[parts[-1]] = parse_value(raw)
    return d
