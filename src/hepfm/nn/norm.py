"""Batch normalisation that ignores padded particles.

``torch.nn.BatchNorm1d`` computes its training statistics over every element it sees, so the
zero-padded slots of a particle batch shift the mean and variance and a jet's output then depends
on how much padding its batch has. Masked statistics keep training-mode outputs padding invariant;
in eval mode the running statistics make the layer an affine map, identical to ``BatchNorm1d``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class MaskedBatchNorm(nn.BatchNorm1d):
    """Channel-last batch norm whose statistics use only the rows where ``mask`` is True.

    Keeps ``BatchNorm1d``'s parameter and buffer names (``weight``, ``bias``, ``running_mean``,
    ``running_var``, ``num_batches_tracked``) so state dicts of weaver-core's BatchNorm layers load
    unchanged.

    Shape:
        x: (..., C); mask: (...) bool, True = use this row (None: all rows).
        returns: (..., C), same dtype as ``x``. Rows outside the mask are normalised with the
        same statistics (finite, but meaningless).
    """

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        shape = x.shape
        x2 = x.reshape(-1, shape[-1])  # (M, C)
        use_batch_stats = self.training or not self.track_running_stats
        if not use_batch_stats or mask is None:
            momentum = 0.0 if self.momentum is None else self.momentum
            if self.training and self.track_running_stats and self.num_batches_tracked is not None:
                self.num_batches_tracked.add_(1)
            y = F.batch_norm(
                x2,
                self.running_mean,
                self.running_var,
                self.weight,
                self.bias,
                use_batch_stats,
                momentum,
                self.eps,
            )
            return y.reshape(shape)
        return self._masked_train(x2, mask.reshape(-1)).reshape(shape).to(x.dtype)

    def _masked_train(self, x2: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        # Statistics in fp32 even under autocast: variances of bf16 inputs lose too many bits.
        xf = x2.float()
        w = rows.to(xf.dtype).unsqueeze(-1)  # (M, 1)
        n = w.sum().clamp(min=1.0)
        mean = (xf * w).sum(0) / n  # (C,)
        var = ((xf - mean).square() * w).sum(0) / n  # biased, as BatchNorm normalises with
        if (self.track_running_stats and self.running_mean is not None and self.running_var is not None
                and self.num_batches_tracked is not None):
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                momentum = 0.1 if self.momentum is None else self.momentum
                unbiased = var * n / (n - 1).clamp(min=1.0)
                self.running_mean.lerp_(mean.to(self.running_mean.dtype), momentum)
                self.running_var.lerp_(unbiased.to(self.running_var.dtype), momentum)
        y = (xf - mean) * torch.rsqrt(var + self.eps)
        if self.affine:
            y = y * self.weight + self.bias
        return y
