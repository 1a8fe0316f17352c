"""Building blocks shared by backbones and heads: attention, blocks, masked norms and pooling."""

from __future__ import annotations

from hepfm.nn.attention import MultiheadAttention, attention_mask
from hepfm.nn.backbone import Backbone
from hepfm.nn.blocks import NormFormerBlock, PostNormBlock, activation, mlp
from hepfm.nn.geometry import eta_phi, relative_eta_phi, wrap_phi
from hepfm.nn.norm import MaskedBatchNorm
from hepfm.nn.pooling import masked_mean, masked_sum, real_first

__all__ = [
    "Backbone",
    "MaskedBatchNorm",
    "MultiheadAttention",
    "NormFormerBlock",
    "PostNormBlock",
    "activation",
    "attention_mask",
    "eta_phi",
    "masked_mean",
    "masked_sum",
    "mlp",
    "real_first",
    "relative_eta_phi",
    "wrap_phi",
]
