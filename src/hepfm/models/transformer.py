"""Plain transformer encoder, the JetCLR backbone.

Papers: B. M. Dillon, G. Kasieczka, H. Olischlager, T. Plehn, P. Sorrenson, L. Vogel, "Symmetries,
safety, and self-supervision", SciPost Phys. 12, 188 (2022), arXiv:2108.04253 (JetCLR); and
Y. Zhao, F. Mokhtar, R. Kansal, H. Li, J. Duarte, "Large-scale pretraining and finetuning for
efficient jet classification in particle physics", arXiv:2408.09343 (seed 000: JetCLR pretrained on
JetClass).

A linear particle embedding, post-LN encoder layers without positional encoding (so the tokens are
permutation equivariant), a masked sum over particles and a small ReLU MLP ("head layers") that
gives the representation. Seed 000's table 2: model, feed-forward and output dims 1024, 4 heads,
2 head layers; the layer count (blank in the table) is JetCLR's 4, and the dropout is JetCLR's 0.1.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from hepfm.contracts import BackboneOutput, ParticleBatch
from hepfm.nn.backbone import Backbone
from hepfm.nn.blocks import PostNormBlock
from hepfm.nn.pooling import masked_mean, masked_sum


@dataclass
class TransformerConfig:
    """Transformer hyper-parameters; defaults are seed 000's (JetCLR on JetClass).

    Attributes:
        model_dim: token width D.
        num_heads, ffn_dim, num_layers, dropout: encoder layers (post-LN, ReLU).
        output_dim: width of the head layers, i.e. of ``pooled``.
        num_head_layers: ``ReLU -> Linear`` layers after pooling (0: pooled is the raw sum).
        pooling: ``sum`` (JetCLR; it counts particles, which carries information) or ``mean``.
        trim: drop padding slots that no jet uses before encoding.
    """

    model_dim: int = 1024
    num_heads: int = 4
    ffn_dim: int = 1024
    num_layers: int = 4
    dropout: float = 0.1
    output_dim: int = 1024
    num_head_layers: int = 2
    pooling: str = "sum"
    trim: bool = True


class Transformer(Backbone):
    """JetCLR's encoder: tokens (B, N, model_dim), pooled (B, output_dim)."""

    def __init__(self, in_features: int, config: TransformerConfig | None = None) -> None:
        cfg = config or TransformerConfig()
        super().__init__(in_features, trim=cfg.trim)
        if cfg.pooling not in ("sum", "mean"):
            raise ValueError(f"pooling must be 'sum' or 'mean', got {cfg.pooling!r}")
        self.config = cfg
        self.embed_dim = cfg.model_dim
        self.embedding = nn.Linear(in_features, cfg.model_dim)
        self.blocks = nn.ModuleList(
            PostNormBlock(cfg.model_dim, cfg.num_heads, cfg.ffn_dim, dropout=cfg.dropout)
            for _ in range(cfg.num_layers)
        )
        # JetCLR applies ReLU *before* each head Linear, including the first (on the pooled sum).
        head: list[nn.Module] = []
        width = cfg.model_dim
        for _ in range(cfg.num_head_layers):
            head += [nn.ReLU(), nn.Linear(width, cfg.output_dim)]
            width = cfg.output_dim
        self.head = nn.Sequential(*head)
        self.pooled_dim = width

    def encode(self, batch: ParticleBatch) -> BackboneOutput:
        mask = batch.mask
        x = self.embedding(batch.x)  # (B, N, D)
        for blk in self.blocks:
            x = blk(x, mask)  # padded tokens are never attended to, so they need no reset
        x = x.masked_fill(~mask.unsqueeze(-1), 0.0)
        pool = masked_sum if self.config.pooling == "sum" else masked_mean
        return BackboneOutput(tokens=x, mask=mask, pooled=self.head(pool(x, mask)))
