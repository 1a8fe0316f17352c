"""Subjet Transformer (SjT): J-JEPA's subjet-level encoder.

Katel, Li, Zhao, Kansal, Mokhtar, Duarte, "Learning Symmetry-Independent Jet Representations via Jet
Joint Embedding Predictive Architecture", arXiv:2412.05333 (seed 001, the group's talk).

Where a particle backbone (ParT) lets every particle attend to every other, the SjT works on subjets:

(a) a per-particle MLP embeds each particle's features on its own (no interaction between particles);
(b) the subjet embedding layer (SEL, :mod:`hepfm.nn.subjets`) pools the particle embeddings of each
    anti-kT R = 0.2 subjet **independently** into one token ("each subjet creates its embedding
    independently"): ``mlp`` = mean + MLP, ``attention`` = a learned query attending to the subjet's
    particles (the talk's better one);
(c) an embedding of each subjet's coordinates (Δη, Δφ to the jet axis, log pT fraction) is added;
(d) NormFormer transformer blocks run over the (at most ``max_subjets``, pT-ordered) subjet tokens;
(e) an aggregation makes the jet embedding: ``class_attention`` (class-attention blocks with a class
    token, as in ParT), ``flatten`` (the ``max_subjets`` subjet tokens concatenated, padded subjets
    zero) or ``sum`` (masked sum); the talk compares the first two for finetuning.

As a :class:`~hepfm.nn.backbone.Backbone` it clusters the subjets itself (one FastJet call per batch,
on the CPU) and returns per-particle tokens: each particle gets its subjet's output token; padding and
particles of subjets beyond ``max_subjets`` get zeros. J-JEPA calls :meth:`SubjetTransformer.encode_subjets`
with the full jet's subjet index instead, so that its context and target encoders share one clustering.

The seed gives no encoder size; ``sjt`` is a moderate one (D = 256, 4 blocks). The group's code used a
far larger encoder (``configs/pretrain/jepa-paper.yaml`` quotes ViT-L-like 1024 wide, 24 deep):
override ``dim`` / ``num_layers`` to approach it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from hepfm.contracts import BackboneOutput, ParticleBatch
from hepfm.errors import HepfmInputError
from hepfm.nn.backbone import Backbone
from hepfm.nn.blocks import NormFormerBlock, vit_init_
from hepfm.nn.subjets import SUBJET_EMBEDDINGS, make_subjet_embedding, subjet_membership
from hepfm.physics.subjets import ALGORITHMS, Subjets, find_subjets

AGGREGATIONS = ("class_attention", "flatten", "sum")


@dataclass
class SubjetTransformerConfig:
    """SjT hyper-parameters; the subjet defaults are J-JEPA's (arXiv:2412.05333).

    Attributes:
        subjet_radius: subjet radius R (the talk: "cluster subjets with radius 0.2").
        max_subjets: leading-pT subjets kept per jet (their code's ``num_subjets`` = 20); the particles
            of softer subjets get zero tokens. Also fixes ``flatten``'s width.
        subjet_algorithm: ``antikt`` (J-JEPA), ``ca`` or ``kt``.
        embedding: the subjet embedding layer, ``attention`` (the talk's better one; "AE-SjT-T" in
            hepfm's reading) or ``mlp`` (mean + MLP; "SjT-T").
        dim: width D of particle embeddings, subjet tokens and (except ``flatten``) ``pooled``.
        num_layers: transformer blocks over subjet tokens.
        num_heads: attention heads (also those of the attention SEL).
        ffn_ratio: FFN width = ``ffn_ratio * dim``.
        dropout, attn_dropout, activation_dropout: in the subjet blocks only (ParT's values); the
            class-attention blocks use none, as in ParT.
        aggregation: how ``pooled`` is made from the subjet tokens: ``class_attention`` (D),
            ``flatten`` (``max_subjets * D``, padded subjets zero) or ``sum`` (D, masked sum).
        num_cls_layers: class-attention blocks (``class_attention`` only; ParT's 2).
        trim: drop padding slots that no jet uses before encoding.
    """

    subjet_radius: float = 0.2
    max_subjets: int = 20
    subjet_algorithm: str = "antikt"
    embedding: str = "attention"
    dim: int = 256
    num_layers: int = 4
    num_heads: int = 8
    ffn_ratio: int = 4
    dropout: float = 0.1
    attn_dropout: float = 0.1
    activation_dropout: float = 0.1
    aggregation: str = "class_attention"
    num_cls_layers: int = 2
    trim: bool = True

    def validate(self) -> None:
        """Raise :class:`HepfmInputError` naming the first bad option."""
        checks = (
            (self.subjet_radius > 0, "subjet_radius must be positive"),
            (self.max_subjets >= 1, "max_subjets must be >= 1"),
            (self.subjet_algorithm in ALGORITHMS, f"subjet_algorithm must be one of {list(ALGORITHMS)}"),
            (self.embedding in SUBJET_EMBEDDINGS, f"embedding must be one of {list(SUBJET_EMBEDDINGS)}"),
            (self.aggregation in AGGREGATIONS, f"aggregation must be one of {list(AGGREGATIONS)}"),
            (self.dim >= 1 and self.num_heads >= 1 and self.dim % self.num_heads == 0,
             "dim must be a positive multiple of num_heads"),
            (self.num_layers >= 1 and self.ffn_ratio >= 1, "num_layers and ffn_ratio must be >= 1"),
            (self.num_cls_layers >= 1 or self.aggregation != "class_attention",
             "num_cls_layers must be >= 1 for class_attention"),
        )
        for ok, problem in checks:
            if not ok:
                raise HepfmInputError(f"model.backbone_options: {problem}")


def subjets_from_index(p4: torch.Tensor, mask: torch.Tensor, index: torch.Tensor, n_subjets: int) -> Subjets:
    """:class:`Subjets` of a given particle -> subjet assignment (E-scheme sums; axis = all real particles).

    For callers of :meth:`SubjetTransformer.encode_subjets` that have an index but no clustering.
    Shape: p4 (B, N, 4), mask (B, N), index (B, N) with -1 = no subjet.
    """
    member = subjet_membership(index.masked_fill(~mask, -1), n_subjets)  # (B, S, N)
    sub_p4 = (member.double() @ p4.double()).to(p4.dtype)  # (B, S, 4)
    sub_mask = member.any(-1)
    jet_p4 = (p4 * mask.unsqueeze(-1).to(p4.dtype)).sum(1)  # (B, 4)
    return Subjets(index=index, p4=sub_p4, mask=sub_mask, count=sub_mask.sum(1), jet_p4=jet_p4)


class SubjetTransformer(Backbone):
    """SjT backbone: particle MLP -> per-subjet SEL -> + coordinates -> subjet blocks -> aggregation.

    Example:
        >>> from hepfm.models import create_backbone
        >>> model = create_backbone("sjt", in_features=7, aggregation="flatten")
        >>> out = model(batch)  # tokens (B, N, 256) per particle, pooled (B, 20 * 256)
        >>> tokens, subjet_mask, pooled = model.encode_subjets(batch, index, n_subjets)  # (B, S, 256)
    """

    uses_p4 = True

    def __init__(self, in_features: int, config: SubjetTransformerConfig | None = None) -> None:
        cfg = config or SubjetTransformerConfig()
        cfg.validate()
        super().__init__(in_features, trim=cfg.trim)
        self.config = cfg
        dim = cfg.dim
        self.embed_dim = dim
        self.pooled_dim = cfg.max_subjets * dim if cfg.aggregation == "flatten" else dim
        # Registered before ``blocks``: the input embeddings of layer-wise learning-rate decay (depth 0).
        self.particle_embed = nn.Sequential(nn.Linear(in_features, dim), nn.GELU(), nn.Linear(dim, dim))
        self.sel = make_subjet_embedding(cfg.embedding, dim, dim, cfg.num_heads)
        self.coord_embed = nn.Sequential(nn.Linear(3, dim), nn.GELU(), nn.Linear(dim, dim))
        self.blocks = nn.ModuleList(
            NormFormerBlock(dim, cfg.num_heads, cfg.ffn_ratio, dropout=cfg.dropout,
                            attn_dropout=cfg.attn_dropout, activation_dropout=cfg.activation_dropout)
            for _ in range(cfg.num_layers)
        )
        self.norm = nn.LayerNorm(dim)
        if cfg.aggregation == "class_attention":
            self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
            self.cls_blocks = nn.ModuleList(
                NormFormerBlock(dim, cfg.num_heads, cfg.ffn_ratio, dropout=0.0, attn_dropout=0.0,
                                activation_dropout=0.0)
                for _ in range(cfg.num_cls_layers)
            )
            self.cls_norm = nn.LayerNorm(dim)
        self._init_weights()

    def _init_weights(self) -> None:
        # ParT's init: Xavier per Q/K/V matrix, zero biases, residual outputs shrunk with depth.
        vit_init_(self, cast("Iterable[NormFormerBlock]", self.blocks))
        if hasattr(self, "cls_token"):
            nn.init.trunc_normal_(self.cls_token, std=0.02)

    def no_weight_decay(self) -> set[str]:
        names = {"cls_token"} if hasattr(self, "cls_token") else set()
        return names | {f"sel.{n}" for n in getattr(self.sel, "no_weight_decay", set)()}

    # -- the steps, public so that tests and J-JEPA can use them
    def find_subjets(self, batch: ParticleBatch) -> Subjets:
        """The jets' subjets with this model's clustering (FastJet, on the CPU)."""
        c = self.config
        return find_subjets(batch.p4, batch.mask, c.subjet_radius, c.max_subjets, c.subjet_algorithm)

    def embed_subjets(self, batch: ParticleBatch, index: torch.Tensor, n_subjets: int) -> torch.Tensor:
        """Steps (a) and (b): per-particle MLP, then each subjet's particles pooled on their own.

        Shape: index (B, N), the subjet of each particle (-1: none) -> (B, S, D) SEL tokens.
        """
        index = index.masked_fill(~batch.mask, -1)
        x = self.particle_embed(batch.x)  # (a) (B, N, D), each particle on its own
        x = x.masked_fill((index < 0).unsqueeze(-1), 0.0)  # padding and dropped subjets never enter
        return cast("torch.Tensor", self.sel(x, index, n_subjets))  # (b) (B, S, D)

    def encode_subjets(self, batch: ParticleBatch, index: torch.Tensor, n_subjets: int,
                       coords: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Encode the subjets given by ``index``: subjet tokens, their mask and the jet embedding.

        A subjet is real when at least one real particle has its index, so subjets whose particles
        were removed from ``batch`` (J-JEPA's targets) are simply absent. ``coords`` (B, S, 3) are the
        subjet coordinates of step (c); None computes them from ``batch.p4`` (the jet axis then being
        the sum of the batch's particles), J-JEPA passes the full jet's.

        Shape: index (B, N) -> tokens (B, S, D) zero at absent subjets, mask (B, S), pooled (B, D').
        """
        if n_subjets > self.config.max_subjets:
            raise ValueError(f"{n_subjets} subjets given; this SjT keeps at most {self.config.max_subjets}")
        index = index.masked_fill(~batch.mask, -1)
        subjet_mask = subjet_membership(index, n_subjets).any(-1)  # (B, S)
        pad = ~subjet_mask.unsqueeze(-1)
        x = self.embed_subjets(batch, index, n_subjets)  # (a), (b)
        if coords is None:
            coords = subjets_from_index(batch.p4, batch.mask, index, n_subjets).coordinates()
        x = (x + self.coord_embed(coords.to(x.dtype))).masked_fill(pad, 0.0)  # (c)
        # (d) a jet without subjets attends to its (zero) first slot, so its rows stay finite
        keys = subjet_mask.clone()
        keys[:, 0] |= ~subjet_mask.any(1)
        for blk in self.blocks:
            x = blk(x, keys)
        x = self.norm(x).masked_fill(pad, 0.0)
        return x, subjet_mask, self.aggregate(x, subjet_mask)  # (e)

    def aggregate(self, tokens: torch.Tensor, subjet_mask: torch.Tensor) -> torch.Tensor:
        """Step (e): the jet embedding. Shape: tokens (B, S, D) zero at padded subjets -> (B, D')."""
        agg = self.config.aggregation
        if agg == "sum":
            return tokens.sum(1)
        if agg == "flatten":
            return F.pad(tokens, (0, 0, 0, self.config.max_subjets - tokens.shape[1])).flatten(1)
        cls = self.cls_token.expand(tokens.shape[0], -1, -1)  # (B, 1, D)
        for blk in cast("Iterable[NormFormerBlock]", self.cls_blocks):
            cls = blk.forward_cls(cls, tokens, subjet_mask)
        return cast("torch.Tensor", self.cls_norm(cls.squeeze(1)))

    def encode(self, batch: ParticleBatch) -> BackboneOutput:
        subjets = self.find_subjets(batch)
        index = subjets.index  # (B, N), -1 at padding and softer subjets
        tokens, _, pooled = self.encode_subjets(batch, index, subjets.max_subjets, subjets.coordinates())
        gather = index.clamp(min=0).unsqueeze(-1).expand(-1, -1, tokens.shape[-1])
        per_particle = torch.gather(tokens, 1, gather).masked_fill((index < 0).unsqueeze(-1), 0.0)
        return BackboneOutput(tokens=per_particle, mask=batch.mask, pooled=pooled)
