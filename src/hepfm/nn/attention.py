"""Multi-head attention on top of ``F.scaled_dot_product_attention``.

SDPA dispatches to fused kernels on GPUs (memory-efficient attention accepts the per-head
additive bias ParT needs) and to a plain implementation on CPUs, so one module serves every
backbone. Masks follow the batch contract: ``key_mask`` True = real particle (attend to it).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def attention_mask(
    key_mask: torch.Tensor | None, attn_bias: torch.Tensor | None, dtype: torch.dtype
) -> torch.Tensor | None:
    """Combine a key-padding mask and an additive per-head bias into one SDPA ``attn_mask``.

    A boolean mask alone is passed as bool (SDPA may then pick a faster kernel); with a bias the
    padded keys get ``-inf`` added.

    Shape:
        key_mask: (B, Nk) bool, True = attend. attn_bias: (B, H, Nq, Nk).
        returns: (B, 1, 1, Nk) bool, (B, H, Nq, Nk) float, or None.
    """
    if attn_bias is None:
        return None if key_mask is None else key_mask[:, None, None, :]
    bias = attn_bias.to(dtype)
    if key_mask is None:
        return bias
    return bias.masked_fill(~key_mask[:, None, None, :], float("-inf"))


class MultiheadAttention(nn.Module):
    """Self- or cross-attention with a packed QKV projection.

    The packed layout (``qkv.weight`` is (3D, D) with Q, K, V stacked) matches
    ``nn.MultiheadAttention.in_proj_weight`` and weaver-core's ``in_proj``, so converters copy the
    weights without reshuffling.
    """

    def __init__(self, dim: int, num_heads: int, dropout: float = 0.0, bias: bool = True) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embedding dim {dim} is not divisible by num_heads={num_heads}")
        self.dim = dim
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.dropout = dropout
        self.qkv = nn.Linear(dim, 3 * dim, bias=bias)
        self.proj = nn.Linear(dim, dim, bias=bias)

    def _split_heads(self, t: torch.Tensor) -> torch.Tensor:
        b, n, _ = t.shape
        return t.view(b, n, self.num_heads, self.head_dim).transpose(1, 2)  # (B, H, N, hd)

    def forward(
        self,
        x: torch.Tensor,
        context: torch.Tensor | None = None,
        key_mask: torch.Tensor | None = None,
        attn_bias: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Attend from ``x`` to ``context`` (to ``x`` itself when ``context`` is None).

        Shape:
            x: (B, Nq, D); context: (B, Nk, D); key_mask: (B, Nk) bool;
            attn_bias: (B, H, Nq, Nk) additive logits bias. returns: (B, Nq, D).
        """
        d = self.dim
        if context is None:
            q, k, v = self.qkv(x).split(d, dim=-1)  # 3 x (B, N, D)
        else:
            w, b = self.qkv.weight, self.qkv.bias
            q = F.linear(x, w[:d], None if b is None else b[:d])
            k, v = F.linear(context, w[d:], None if b is None else b[d:]).split(d, dim=-1)
        q, k, v = self._split_heads(q), self._split_heads(k), self._split_heads(v)
        mask = attention_mask(key_mask, attn_bias, q.dtype)
        p = self.dropout if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)  # (B, H, Nq, hd)
        out = out.transpose(1, 2).reshape(x.shape[0], x.shape[1], d)  # (B, Nq, D)
        return self.proj(out)
