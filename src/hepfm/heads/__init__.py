"""Task heads: ``BackboneOutput -> logits (B, K)``.

Pooling belongs to the head, so a linear probe on mean-pooled tokens, ParT's class attention and
J-JEPA's flatten aggregation are all heads that sit on any backbone.

Heads that read a jet embedding (``linear``, ``mlp``) use ``out.pooled`` when the backbone pools
and the masked mean of the tokens otherwise; the others (``mean``, ``class-attention``,
``flatten``) always read the tokens. Build a head for a given backbone with
:func:`create_head_for`, which passes both the token and the pooled width.

Example:
    >>> from hepfm.heads import create_head_for
    >>> head = create_head_for("linear", backbone, num_classes=2)
    >>> logits = head(backbone(batch))  # (B, 2)
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable
from typing import Any, cast

import torch
from torch import nn

from hepfm.contracts import BackboneOutput
from hepfm.nn.backbone import Backbone
from hepfm.nn.blocks import NormFormerBlock, mlp
from hepfm.nn.pooling import masked_mean, real_first
from hepfm.options import check_known
from hepfm.registry import Registry


class Head(nn.Module):
    """Base class. Constructors take ``(embed_dim, num_classes, *, pooled_dim=None, ...)``.

    Args:
        embed_dim: D of the backbone's tokens.
        num_classes: K.
        pooled_dim: D of the backbone's ``pooled`` output (None when it does not pool); heads
            that only read tokens ignore it.
    """

    def forward(self, out: BackboneOutput) -> torch.Tensor:  # pragma: no cover - interface
        raise NotImplementedError


HEADS: Registry[type[Head]] = Registry("head")


def _check_width(t: torch.Tensor, expected: int, what: str, head: str) -> None:
    if t.shape[-1] != expected:
        raise ValueError(
            f"{head} head was built for {expected}-dim input but the backbone's {what} is "
            f"{t.shape[-1]}-dim; build it with create_head_for(name, backbone, num_classes)"
        )


class _EmbeddingHead(Head):
    """Reads ``pooled`` when present, else the masked token mean."""

    def __init__(self, embed_dim: int, pooled_dim: int | None) -> None:
        super().__init__()
        self.embed_dim = embed_dim
        self.pooled_dim = pooled_dim

    def embedding(self, out: BackboneOutput) -> torch.Tensor:
        """Shape: returns (B, pooled_dim) or (B, embed_dim)."""
        name = type(self).__name__
        if out.pooled is not None:
            _check_width(out.pooled, self.pooled_dim or self.embed_dim, "pooled output", name)
            return out.pooled
        _check_width(out.tokens, self.embed_dim, "token embedding", name)
        return masked_mean(out.tokens, out.mask)


@HEADS.register("linear")
class LinearHead(_EmbeddingHead):
    """One Linear on the jet embedding: the linear probe, and the finetuning head of seed 000."""

    def __init__(self, embed_dim: int, num_classes: int, *, pooled_dim: int | None = None) -> None:
        super().__init__(embed_dim, pooled_dim)
        self.fc = nn.Linear(pooled_dim or embed_dim, num_classes)

    def forward(self, out: BackboneOutput) -> torch.Tensor:
        """Shape: returns (B, K)."""
        return self.fc(self.embedding(out))


@HEADS.register("mlp")
class MLPHead(_EmbeddingHead):
    """``Linear -> act -> Dropout`` per hidden width, then a Linear to K.

    The default (256, dropout 0.1, ReLU) is ParticleNet's classifier (arXiv:1902.08570).
    """

    def __init__(
        self,
        embed_dim: int,
        num_classes: int,
        *,
        pooled_dim: int | None = None,
        hidden_dims: tuple[int, ...] = (256,),
        dropout: float = 0.1,
        act: str = "relu",
    ) -> None:
        super().__init__(embed_dim, pooled_dim)
        in_dim = pooled_dim or embed_dim
        self.hidden = mlp(in_dim, hidden_dims, act=act, dropout=dropout)
        self.fc = nn.Linear(hidden_dims[-1] if hidden_dims else in_dim, num_classes)

    def forward(self, out: BackboneOutput) -> torch.Tensor:
        """Shape: returns (B, K)."""
        return self.fc(self.hidden(self.embedding(out)))


@HEADS.register("mean")
class MeanHead(Head):
    """Masked mean of the tokens, then a Linear; ignores the backbone's own pooling."""

    def __init__(self, embed_dim: int, num_classes: int, *, pooled_dim: int | None = None) -> None:
        super().__init__()
        self.embed_dim = embed_dim
        self.fc = nn.Linear(embed_dim, num_classes)

    def forward(self, out: BackboneOutput) -> torch.Tensor:
        """Shape: returns (B, K)."""
        _check_width(out.tokens, self.embed_dim, "token embedding", "mean")
        return self.fc(masked_mean(out.tokens, out.mask))


@HEADS.register("class-attention")
class ClassAttentionHead(Head):
    """ParT-style pooling (arXiv:2202.03772): a class token attends over the tokens.

    CaiT class-attention blocks (arXiv:2103.17239) update only the class token; a LayerNorm and a
    Linear then give the logits. Equivalent to ParT's own ``cls_blocks`` + ``norm`` + ``fc``.
    """

    def __init__(
        self,
        embed_dim: int,
        num_classes: int,
        *,
        pooled_dim: int | None = None,
        num_heads: int = 8,
        num_blocks: int = 2,
        ffn_ratio: int = 4,
    ) -> None:
        super().__init__()
        self.embed_dim = embed_dim
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        self.blocks = nn.ModuleList(
            NormFormerBlock(
                embed_dim, num_heads, ffn_ratio, dropout=0.0, attn_dropout=0.0, activation_dropout=0.0
            )
            for _ in range(num_blocks)
        )
        self.norm = nn.LayerNorm(embed_dim)
        self.fc = nn.Linear(embed_dim, num_classes)

    def no_weight_decay(self) -> set[str]:
        return {"cls_token"}

    def forward(self, out: BackboneOutput) -> torch.Tensor:
        """Shape: returns (B, K)."""
        _check_width(out.tokens, self.embed_dim, "token embedding", "class-attention")
        cls = self.cls_token.expand(out.tokens.shape[0], -1, -1)  # (B, 1, D)
        for blk in cast("Iterable[NormFormerBlock]", self.blocks):
            cls = blk.forward_cls(cls, out.tokens, out.mask)
        return self.fc(self.norm(cls.squeeze(1)))


@HEADS.register("flatten")
class FlattenHead(Head):
    """J-JEPA's flatten aggregation (arXiv:2412.05333): a Linear on ``n_tokens`` concatenated tokens.

    Real tokens are moved to the front in their input order (pT order for our data), then the
    sequence is cut or zero-padded to ``n_tokens``. Not permutation invariant, by design: the
    position of a token carries its pT rank.
    """

    def __init__(
        self, embed_dim: int, num_classes: int, *, pooled_dim: int | None = None, n_tokens: int = 128
    ) -> None:
        super().__init__()
        self.embed_dim = embed_dim
        self.n_tokens = n_tokens
        self.fc = nn.Linear(n_tokens * embed_dim, num_classes)

    def forward(self, out: BackboneOutput) -> torch.Tensor:
        """Shape: tokens (B, N, D) -> (B, n_tokens, D) -> (B, n_tokens * D) -> (B, K)."""
        _check_width(out.tokens, self.embed_dim, "token embedding", "flatten")
        tokens, _ = real_first(out.tokens, out.mask)
        n = tokens.shape[1]
        if n >= self.n_tokens:
            tokens = tokens[:, : self.n_tokens]
        else:
            tokens = nn.functional.pad(tokens, (0, 0, 0, self.n_tokens - n))
        return self.fc(tokens.flatten(1))  # (B, n_tokens * D) -> (B, K)


def create_head(name: str, embed_dim: int, num_classes: int, **kw: Any) -> Head:
    """Build a registered head.

    Args:
        name: a key of :data:`HEADS` (``linear``, ``mlp``, ``mean``, ``class-attention``, ``flatten``).
        embed_dim: D of the backbone's tokens.
        num_classes: K.
        **kw: head options, e.g. ``pooled_dim``, ``hidden_dims`` (mlp), ``n_tokens`` (flatten).

    Raises:
        HepfmInputError: unknown head name or option.
    """
    cls = HEADS.get(name)
    params = inspect.signature(cls.__init__).parameters
    check_known(kw, [p for p in params if p not in ("self", "embed_dim", "num_classes")], "head.options")
    return cls(embed_dim, num_classes, **kw)


def create_head_for(name: str, backbone: Backbone, num_classes: int, **kw: Any) -> Head:
    """Build a head that fits ``backbone``'s token and pooled widths."""
    return create_head(name, backbone.embed_dim, num_classes, pooled_dim=backbone.pooled_dim, **kw)


__all__ = [
    "HEADS",
    "ClassAttentionHead",
    "FlattenHead",
    "Head",
    "LinearHead",
    "MLPHead",
    "MeanHead",
    "create_head",
    "create_head_for",
]
