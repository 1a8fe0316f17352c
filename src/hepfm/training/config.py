"""Typed training configuration with paper-sensible defaults; YAML presets are small deltas on it."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from hepfm.errors import HepfmInputError
from hepfm.options import from_dict, require

AMP_MODES = ("auto", "bf16", "fp16", "none")
MONITOR_MODES = ("min", "max")


@dataclass
class OptimConfig:
    name: str = "adamw"  # adamw | adam | radam | ranger (RAdam + Lookahead, ParT's choice) | sgd (seed 003's)
    lr: float = 1e-3
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8  # JetCLR at scale used Adam eps 1e-4 with AMP
    lookahead_k: int = 6
    lookahead_alpha: float = 0.5
    momentum: float = 0.9  # sgd only (with the cosine schedule: seed 003's SGD + CosineAnnealingLR)
    nesterov: bool = False

    def __post_init__(self) -> None:
        from hepfm.training.optim import OPTIMIZERS  # the registry is the list of names (lazy: it imports us)

        OPTIMIZERS.get(self.name)
        require(self.lr > 0, "train.optim.lr", "must be > 0", self.lr)
        require(self.weight_decay >= 0, "train.optim.weight_decay", "must be >= 0", self.weight_decay)
        require(all(0 <= b < 1 for b in self.betas), "train.optim.betas", "must be two numbers in [0, 1)",
                self.betas)
        require(self.eps > 0, "train.optim.eps", "must be > 0", self.eps)
        require(self.lookahead_k >= 1, "train.optim.lookahead_k", "must be >= 1", self.lookahead_k)
        require(0 < self.lookahead_alpha <= 1, "train.optim.lookahead_alpha", "must be in (0, 1]",
                self.lookahead_alpha)
        require(0 <= self.momentum < 1, "train.optim.momentum", "must be in [0, 1)", self.momentum)
        require(not self.nesterov or self.momentum > 0, "train.optim.nesterov", "needs momentum > 0",
                self.nesterov)


@dataclass
class ScheduleConfig:
    name: str = "cosine"  # cosine | constant | flat-anneal (ParT: flat, then exponential decay)
    warmup_steps: int = 0
    min_lr_ratio: float = 0.01
    anneal_start: float = 0.7  # flat-anneal: fraction of steps before decay

    def __post_init__(self) -> None:
        from hepfm.training.schedules import SCHEDULES

        SCHEDULES.get(self.name)
        require(self.warmup_steps >= 0, "train.schedule.warmup_steps", "must be >= 0", self.warmup_steps)
        require(
            0 <= self.min_lr_ratio <= 1, "train.schedule.min_lr_ratio", "must be in [0, 1]", self.min_lr_ratio
        )
        require(
            0 <= self.anneal_start <= 1, "train.schedule.anneal_start", "must be in [0, 1]", self.anneal_start
        )


@dataclass
class TrainConfig:
    """Everything the engine needs; saved resolved beside every run. Values are checked on entry."""

    seed: int = 1
    # Budget: training stops at the first of max_steps optimizer steps, max_epochs passes over the training
    # loader (max_epochs x len(loader) // grad_accum steps) and max_minutes of wall time. The learning-rate
    # schedule is spread over the smaller step budget. max_steps null leaves the epochs to set it.
    max_steps: int | None = 1000
    max_epochs: int | None = None
    max_minutes: float | None = None  # wall-clock guard per invocation; a re-run resumes where it stopped
    grad_accum: int = 1
    clip_grad: float = 1.0  # 0 disables
    amp: str = "auto"  # auto (bf16 on CUDA, off on CPU) | bf16 | fp16 (with grad scaling) | none
    compile: bool = False
    deterministic: bool = False  # deterministic GPU kernels (slower); CPU runs are reproducible without it
    device: str = "auto"
    eval_every: int = 200
    ckpt_every: int = 200
    log_every: int = 20
    early_stop_patience: int = 0  # evaluations without improvement; 0 disables
    monitor: str = "val_loss"  # metric that selects the best checkpoint (on validation only)
    monitor_mode: str = "min"
    collapse_patience: int = 3  # log intervals in a row with a collapsed representation before stopping
    num_workers: int = 0
    tensorboard: bool = False
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)

    def __post_init__(self) -> None:
        require(0 <= self.seed < 2**63, "train.seed", "must be a non-negative integer", self.seed)
        for key in ("grad_accum", "eval_every", "ckpt_every", "log_every", "collapse_patience"):
            require(getattr(self, key) >= 1, f"train.{key}", "must be >= 1", getattr(self, key))
        for key in ("max_steps", "max_epochs"):
            value = getattr(self, key)
            require(value is None or value >= 1, f"train.{key}", "must be >= 1 (or null for no limit)", value)
        require(self.max_steps is not None or self.max_epochs is not None, "train.max_steps",
                "may be null only with train.max_epochs set (training needs a budget)", self.max_steps)
        require(self.max_minutes is None or self.max_minutes > 0, "train.max_minutes",
                "must be > 0 (or null)", self.max_minutes)
        for key in ("early_stop_patience", "num_workers"):
            require(getattr(self, key) >= 0, f"train.{key}", "must be >= 0", getattr(self, key))
        require(self.clip_grad >= 0, "train.clip_grad", "must be >= 0 (0 disables clipping)", self.clip_grad)
        require(self.amp in AMP_MODES, "train.amp", f"must be one of {', '.join(AMP_MODES)}", self.amp)
        require(
            self.monitor_mode in MONITOR_MODES, "train.monitor_mode", "must be min or max", self.monitor_mode
        )
        check_device(self.device)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        return from_dict(cls, d, "train")


def check_device(name: str) -> None:
    """Refuse a device torch cannot parse or this machine does not have, where the value enters."""
    import torch

    if name == "auto":
        return
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError):
        raise HepfmInputError(f"train.device must be auto, cpu, cuda or cuda:N, got {name!r}") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise HepfmInputError(
                f"train.device {name!r}: no CUDA GPU is available on this machine (use cpu or auto)"
            )
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise HepfmInputError(
                f"train.device {name!r}: this machine has {torch.cuda.device_count()} GPU(s)"
            )
    elif dev.type == "mps":
        if not torch.backends.mps.is_available():
            raise HepfmInputError(f"train.device {name!r}: MPS is not available on this machine")
    elif dev.type != "cpu":
        raise HepfmInputError(f"train.device must be auto, cpu, cuda or cuda:N, got {name!r}")


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
