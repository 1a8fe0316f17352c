"""Transformer blocks and MLPs shared by the backbones and heads."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import torch
from torch import nn

from hepfm.nn.attention import MultiheadAttention

_ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU}


def activation(name: str) -> nn.Module:
    """An activation module by name (``relu``, ``gelu``, ``silu``)."""
    try:
        return _ACTIVATIONS[name]()
    except KeyError:
        raise ValueError(f"unknown activation {name!r} (known: {', '.join(_ACTIVATIONS)})") from None


def mlp(
    in_dim: int,
    dims: Sequence[int],
    act: str = "relu",
    dropout: float = 0.0,
    final_activation: bool = True,
) -> nn.Sequential:
    """``Linear -> act -> Dropout`` per entry of ``dims``.

    With ``final_activation=False`` the last Linear is left bare (a logits or projection layer).
    """
    layers: list[nn.Module] = []
    for i, d in enumerate(dims):
        layers.append(nn.Linear(in_dim, d))
        if final_activation or i < len(dims) - 1:
            layers.append(activation(act))
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
        in_dim = d
    return nn.Sequential(*layers)


class NormFormerBlock(nn.Module):
    """ParT's transformer block: pre-LN plus NormFormer's extra norms and scales.

    NormFormer (Shleifer et al., arXiv:2110.09456) adds a LayerNorm after attention, a LayerNorm
    inside the FFN, learnable per-head scales and a learnable residual scale; ParT
    (arXiv:2202.03772) uses it because it trains stably without warm-up. As in weaver-core, the
    head scale multiplies the *projected* attention output in ``head_dim`` chunks, and only the FFN
    residual is scaled. The same block serves as a CaiT-style class-attention block
    (:meth:`forward_cls`).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        ffn_ratio: int = 4,
        dropout: float = 0.1,
        attn_dropout: float = 0.1,
        activation_dropout: float = 0.1,
        act: str = "gelu",
    ) -> None:
        super().__init__()
        hidden = dim * ffn_ratio
        self.num_heads = num_heads
        self.norm_attn_in = nn.LayerNorm(dim)
        self.attn = MultiheadAttention(dim, num_heads, dropout=attn_dropout)
        self.head_scale = nn.Parameter(torch.ones(num_heads))
        self.norm_attn_out = nn.LayerNorm(dim)
        self.norm_ffn_in = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, hidden)
        self.act = activation(act)
        self.act_dropout = nn.Dropout(activation_dropout)
        self.norm_ffn_mid = nn.LayerNorm(hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.resid_scale = nn.Parameter(torch.ones(dim))
        self.dropout = nn.Dropout(dropout)

    def _finish_attn(self, h: torch.Tensor) -> torch.Tensor:
        b, n, d = h.shape
        h = h.view(b, n, self.num_heads, d // self.num_heads) * self.head_scale[:, None]
        return self.dropout(self.norm_attn_out(h.reshape(b, n, d)))  # (B, N, D)

    def _ffn(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act_dropout(self.act(self.fc1(self.norm_ffn_in(x))))
        h = self.dropout(self.fc2(self.norm_ffn_mid(h)))
        return self.resid_scale * x + h

    def forward(
        self, x: torch.Tensor, key_mask: torch.Tensor | None, attn_bias: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Self-attention over particles with an optional per-head pair bias.

        Shape:
            x: (B, N, D); key_mask: (B, N) bool, True = real (None: already folded into
            ``attn_bias`` as -inf, see :func:`~hepfm.nn.attention.attention_mask`);
            attn_bias: (B, H, N, N).
        """
        h = self.attn(self.norm_attn_in(x), key_mask=key_mask, attn_bias=attn_bias)
        return self._ffn(x + self._finish_attn(h))

    def forward_cls(self, cls: torch.Tensor, x: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
        """Class attention (CaiT, arXiv:2103.17239): only the class token is updated.

        The keys are the normalised [class token, particles]; the query is the *un-normalised*
        class token, as in weaver-core, which the checkpoint parity depends on.

        Shape:
            cls: (B, 1, D); x: (B, N, D); key_mask: (B, N) bool. returns: (B, 1, D).
        """
        u = self.norm_attn_in(torch.cat((cls, x), dim=1))  # (B, 1+N, D)
        keys = torch.cat((key_mask.new_ones(key_mask.shape[0], 1), key_mask), dim=1)  # (B, 1+N)
        h = self.attn(cls, context=u, key_mask=keys)
        return self._ffn(cls + self._finish_attn(h))


class PostNormBlock(nn.Module):
    """The original post-LN encoder layer (Vaswani et al., arXiv:1706.03762).

    Same computation as ``nn.TransformerEncoderLayer`` with its defaults (ReLU, dropout in
    attention, FFN and both residual branches), written on our SDPA attention.
    """

    def __init__(
        self, dim: int, num_heads: int, ffn_dim: int, dropout: float = 0.1, act: str = "relu"
    ) -> None:
        super().__init__()
        self.attn = MultiheadAttention(dim, num_heads, dropout=dropout)
        self.norm1 = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, ffn_dim)
        self.act = activation(act)
        self.fc2 = nn.Linear(ffn_dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)
        self.dropout_ffn = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
        """Shape: x (B, N, D); key_mask (B, N) bool, True = real. returns (B, N, D)."""
        x = self.norm1(x + self.dropout(self.attn(x, key_mask=key_mask)))
        h = self.fc2(self.dropout_ffn(self.act(self.fc1(x))))
        return self.norm2(x + self.dropout(h))


def vit_init_(model: nn.Module, blocks: Iterable[NormFormerBlock], skip: str = "") -> None:
    """MoCo-v3/BEiT-style ViT init (what ParT trains from), in place: Xavier per Q/K/V matrix and zero
    biases for every Linear (except under the ``skip`` prefix), and each block's residual-branch outputs
    shrunk by sqrt(2 depth), so that early training stays near the identity."""
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) and not (skip and name.startswith(skip)):
            fan_out = module.weight.shape[0] // (3 if name.endswith("attn.qkv") else 1)
            bound = math.sqrt(6.0 / (fan_out + module.weight.shape[1]))
            nn.init.uniform_(module.weight, -bound, bound)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
    with torch.no_grad():
        for depth, blk in enumerate(blocks, start=1):
            blk.attn.proj.weight.div_(math.sqrt(2.0 * depth))
            blk.fc2.weight.div_(math.sqrt(2.0 * depth))
