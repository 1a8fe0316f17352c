"""Masked pooling over particles: padded slots never contribute."""

from __future__ import annotations

import torch


def masked_sum(tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Sum over real particles.

    Shape:
        tokens: (B, N, D); mask: (B, N) bool, True = real. returns: (B, D).
    """
    return (tokens * mask.unsqueeze(-1).to(tokens.dtype)).sum(dim=1)


def masked_mean(tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over real particles (an empty jet gives zeros, not NaN).

    Shape:
        tokens: (B, N, D); mask: (B, N) bool. returns: (B, D).
    """
    counts = mask.sum(dim=1, keepdim=True).clamp(min=1).to(tokens.dtype)  # (B, 1)
    return masked_sum(tokens, mask) / counts


def real_first(tokens: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Move real particles to the front, keeping their order, and zero the padded slots.

    Heads that read tokens by position (flatten) then see the same layout wherever the padding
    sat in the input.

    Shape:
        tokens: (B, N, D); mask: (B, N). returns: tokens (B, N, D), mask (B, N).
    """
    order = torch.argsort((~mask).to(torch.int8), dim=1, stable=True)  # (B, N), real first
    mask = torch.gather(mask, 1, order)
    tokens = torch.gather(tokens, 1, order.unsqueeze(-1).expand_as(tokens))
    return tokens.masked_fill(~mask.unsqueeze(-1), 0.0), mask
