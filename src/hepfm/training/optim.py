"""Optimizers and parameter groups.

Biases, normalisation weights and tokens (``no_weight_decay``) get no weight decay; parameters under
prefixes named by ``Objective.param_groups_lr_scale`` get a learning-rate multiplier (a pretrained
backbone finetuned more gently than a fresh head).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable

import torch
from torch import nn

from hepfm.errors import HepfmInputError
from hepfm.registry import Registry
from hepfm.training.config import OptimConfig


def param_groups(
    model: nn.Module, cfg: OptimConfig, no_decay: set[str], lr_scale: dict[str, float]
) -> list[dict]:
    groups: dict[tuple[float, float], list[nn.Parameter]] = defaultdict(list)
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        wd = 0.0 if (p.ndim <= 1 or name in no_decay or name.endswith(".bias")) else cfg.weight_decay
        scale = lr_scale.get(name)  # a parameter's own name first (layer decay), then the first prefix
        if scale is None:
            scale = next((s for prefix, s in lr_scale.items() if name.startswith(prefix)), 1.0)
        groups[(wd, scale)].append(p)
    return [
        {"params": ps, "weight_decay": wd, "lr": cfg.lr * scale, "lr_scale": scale}
        for (wd, scale), ps in sorted(groups.items())
    ]


class Lookahead(torch.optim.Optimizer):
    """Lookahead (Zhang et al. 2019, arXiv:1907.08610) around any inner optimizer: every ``k`` steps
    the slow weights move ``alpha`` of the way to the fast ones and the fast ones are reset to them.
    With RAdam inside this is "Ranger", ParT's optimizer."""

    def __init__(self, inner: torch.optim.Optimizer, k: int = 6, alpha: float = 0.5) -> None:
        self.inner = inner
        self.k, self.alpha = k, alpha
        self._count = 0
        self._slow = [[p.detach().clone() for p in g["params"]] for g in self.param_groups]

    # Delegated, not copied: inner.load_state_dict replaces its param_groups and state objects.
    @property
    def param_groups(self) -> list[dict]:  # type: ignore[override]
        return self.inner.param_groups

    @property
    def state(self) -> dict:  # type: ignore[override]
        return self.inner.state

    @property
    def defaults(self) -> dict:  # type: ignore[override]
        return self.inner.defaults

    @torch.no_grad()
    def step(self, closure: Callable | None = None):
        loss = self.inner.step(closure)
        self._count += 1
        if self._count % self.k == 0:
            for group, slow in zip(self.param_groups, self._slow, strict=True):
                for p, s in zip(group["params"], slow, strict=True):
                    s.add_(p.detach() - s, alpha=self.alpha)
                    p.copy_(s)
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.inner.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict:
        return {"inner": self.inner.state_dict(), "slow": self._slow, "count": self._count}

    def load_state_dict(self, state: dict) -> None:
        self.inner.load_state_dict(state["inner"])
        self._slow = [
            [s.to(p.device) for s, p in zip(ss, g["params"], strict=True)]
            for ss, g in zip(state["slow"], self.param_groups, strict=True)
        ]
        self._count = state["count"]


OPTIMIZERS: Registry[Callable[[list[dict], OptimConfig], torch.optim.Optimizer]] = Registry("optimizer")
OPTIMIZERS.add("adamw", lambda g, c: torch.optim.AdamW(g, lr=c.lr, betas=c.betas, eps=c.eps))
OPTIMIZERS.add("adam", lambda g, c: torch.optim.Adam(g, lr=c.lr, betas=c.betas, eps=c.eps))
OPTIMIZERS.add(
    "radam", lambda g, c: torch.optim.RAdam(g, lr=c.lr, betas=c.betas, eps=c.eps, decoupled_weight_decay=True)
)
OPTIMIZERS.add("sgd", lambda g, c: torch.optim.SGD(g, lr=c.lr, momentum=c.momentum, nesterov=c.nesterov))
OPTIMIZERS.add(
    "ranger",
    lambda g, c: Lookahead(
        torch.optim.RAdam(g, lr=c.lr, betas=c.betas, eps=c.eps, decoupled_weight_decay=True),
        k=c.lookahead_k, alpha=c.lookahead_alpha,
    ),
)


def build_optimizer(
    model: nn.Module, cfg: OptimConfig, no_decay: set[str], lr_scale: dict[str, float]
) -> torch.optim.Optimizer:
    groups = param_groups(model, cfg, no_decay, lr_scale)
    if not groups:
        raise HepfmInputError("the model has no trainable parameters")
    return OPTIMIZERS.get(cfg.name)(groups, cfg)
