"""Learning-rate schedules as multipliers of each group's base learning rate."""

from __future__ import annotations

import math
from collections.abc import Callable

from hepfm.registry import Registry
from hepfm.training.config import ScheduleConfig

Schedule = Callable[[int], float]


def _warmup(step: int, warmup: int) -> float:
    return min(1.0, (step + 1) / warmup) if warmup > 0 else 1.0


def cosine(cfg: ScheduleConfig, total: int) -> Schedule:
    def f(step: int) -> float:
        if step < cfg.warmup_steps:
            return _warmup(step, cfg.warmup_steps)
        t = min(1.0, (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps))
        return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t))

    return f


def constant(cfg: ScheduleConfig, total: int) -> Schedule:
    return lambda step: _warmup(step, cfg.warmup_steps)


def flat_anneal(cfg: ScheduleConfig, total: int) -> Schedule:
    """Flat, then exponential decay to ``min_lr_ratio`` (weaver's ``flat+decay`` used for ParT)."""
    start = int(cfg.anneal_start * total)

    def f(step: int) -> float:
        if step < cfg.warmup_steps:
            return _warmup(step, cfg.warmup_steps)
        if step < start:
            return 1.0
        return cfg.min_lr_ratio ** ((step - start) / max(1, total - start))

    return f


SCHEDULES: Registry[Callable[[ScheduleConfig, int], Schedule]] = Registry("schedule")
SCHEDULES.add("cosine", cosine)
SCHEDULES.add("constant", constant)
SCHEDULES.add("flat-anneal", flat_anneal)
