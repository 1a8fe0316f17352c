"""Building blocks shared by backbones and heads: attention, blocks, norms, pooling, subjet embeddings."""

from __future__ import annotations

from hepfm.nn.attention import MultiheadAttention, attention_mask
from hepfm.nn.backbone import Backbone
from hepfm.nn.blocks import NormFormerBlock, PostNormBlock, activation, mlp
from hepfm.nn.geometry import eta_phi, relative_eta_phi, wrap_phi
from hepfm.nn.norm import MaskedBatchNorm
from hepfm.nn.pooling import masked_mean, masked_sum, real_first
from hepfm.nn.subjets import (
    SUBJET_EMBEDDINGS,
    AttentionEmbedding,
    MeanMLPEmbedding,
    make_subjet_embedding,
    subjet_membership,
)

__all__ = [
    "SUBJET_EMBEDDINGS",
    "AttentionEmbedding",
    "Backbone",
    "MaskedBatchNorm",
    "MeanMLPEmbedding",
    "MultiheadAttention",
    "NormFormerBlock",
    "PostNormBlock",
    "activation",
    "attention_mask",
    "eta_phi",
    "make_subjet_embedding",
    "masked_mean",
    "masked_sum",
    "mlp",
    "real_first",
    "relative_eta_phi",
    "subjet_membership",
    "wrap_phi",
]
