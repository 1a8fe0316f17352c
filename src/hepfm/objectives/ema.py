"""Exponential-moving-average (EMA) target encoders, shared by JEPA-style objectives.

The target encoder of I-JEPA (Assran et al., arXiv:2301.08243) and J-JEPA (arXiv:2412.05333) gets no
gradients; after every optimizer step its weights move towards the online (context) encoder's,
``target <- m * target + (1 - m) * online``, with the momentum ``m`` raised over training from about
0.996 towards 1 (BYOL's cosine schedule, arXiv:2006.07733; I-JEPA ramps linearly). The slowly moving
target is one of J-JEPA's guards against representation collapse.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TypeVar

import torch
from torch import nn

MOMENTUM_SCHEDULES = ("cosine", "linear", "constant")

M = TypeVar("M", bound=nn.Module)


def momentum_at(step: int, total_steps: int, start: float, end: float, schedule: str = "cosine") -> float:
    """The EMA momentum after optimizer step ``step`` (0-based) of ``total_steps``.

    ``cosine``: ``end - (end - start) * (1 + cos(pi * t)) / 2`` with t = step / total_steps (BYOL);
    ``linear``: ``start + (end - start) * t`` (I-JEPA); ``constant``: ``start``.
    """
    t = min(max(step / max(total_steps, 1), 0.0), 1.0)
    if schedule == "cosine":
        return end - (end - start) * (1.0 + math.cos(math.pi * t)) / 2.0
    if schedule == "linear":
        return start + (end - start) * t
    if schedule == "constant":
        return start
    raise ValueError(f"unknown momentum schedule {schedule!r} (known: {', '.join(MOMENTUM_SCHEDULES)})")


def make_target(online: M, factory: Callable[[], M] | None = None) -> M:
    """A frozen copy of ``online`` (built by ``factory`` if given, else deep-copied) in eval mode.

    Eval mode: the target's dropout is off, so its outputs, the regression targets, are not noisy.
    """
    if factory is None:
        import copy

        target = copy.deepcopy(online)
    else:
        target = factory()
        target.load_state_dict(online.state_dict())
    return target.requires_grad_(False).eval()


@torch.no_grad()
def ema_update_(target: nn.Module, online: nn.Module, momentum: float) -> None:
    """In place: ``target = momentum * target + (1 - momentum) * online`` for every parameter.

    Buffers (batch-norm running statistics) are copied, not averaged: they are already running means.
    """
    t_params: list[torch.Tensor] = list(target.parameters())
    o_params = [p.detach() for p in online.parameters()]
    if len(t_params) != len(o_params):
        raise ValueError("EMA target and online module have different parameters")
    if t_params:
        torch._foreach_lerp_(t_params, o_params, 1.0 - momentum)
    for tb, ob in zip(target.buffers(), online.buffers(), strict=True):
        tb.copy_(ob)
