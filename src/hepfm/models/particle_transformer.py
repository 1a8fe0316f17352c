"""Particle Transformer (ParT).

Paper: H. Qu, C. Li, S. Qian, "Particle Transformer for Jet Tagging", ICML 2022, arXiv:2202.03772.

ParT is a transformer over the particles of a jet whose attention logits get a per-head bias
computed from pairwise kinematics (ln kT, ln z, ln Δ, ln m²): physics-motivated interactions that
let 2M parameters reach JetClass's best accuracy. Eight NormFormer particle-attention blocks are
followed by two CaiT class-attention blocks whose class token is the jet embedding.

The defaults of :class:`ParticleTransformerConfig` are the paper's (weaver-core's
``example_ParticleTransformer.py``); :func:`load_weaver_state_dict` loads weaver-core checkpoints
such as the published ``ParT_kin.pt`` and is verified output-for-output in
``tests/test_part_parity.py``.

Deliberate differences from weaver-core, none of which change eval-mode outputs: batch-norm
statistics in training skip padded particles (weaver's input batch norm counts padded zeros), and
the returned tokens are zero at padded slots.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from itertools import pairwise
from typing import Any, cast

import torch
from torch import nn

from hepfm.contracts import BackboneOutput, ParticleBatch
from hepfm.nn.attention import attention_mask
from hepfm.nn.backbone import Backbone
from hepfm.nn.blocks import NormFormerBlock, vit_init_
from hepfm.nn.norm import MaskedBatchNorm
from hepfm.physics.pairwise import pairwise_features

NUM_PAIR_FEATURES = 4  # ln kT, ln z, ln Δ, ln m²: hepfm.physics.pairwise


@dataclass
class ParticleTransformerConfig:
    """ParT hyper-parameters; defaults are the paper's.

    Attributes:
        embed_dims: widths of the per-particle embedding MLP; the last is the token dim D.
        pair_embed_dims: widths of the pair-feature MLP before its final ``num_heads`` layer.
        num_heads: attention heads (one bias channel per head).
        num_layers: particle-attention blocks.
        num_cls_layers: class-attention blocks (their class token is ``pooled``).
        ffn_ratio: FFN width = ``ffn_ratio * D`` (512 at the paper size).
        dropout, attn_dropout, activation_dropout: particle blocks only; the class-attention
            blocks use none, as in the paper's config.
        use_pair_output_activation: GELU after the last pair layer (the paper's config sets
            weaver's ``use_pre_activation_pair=False``, i.e. the bias is GELU-activated).
        use_sparse_pairs: embed only real pairs (i >= j) instead of all N(N+1)/2; faster on padded
            batches, but data-dependent shapes, so it is skipped under ``torch.compile``.
        trim: drop padding slots that no jet uses before encoding.
    """

    embed_dims: tuple[int, ...] = (128, 512, 128)
    pair_embed_dims: tuple[int, ...] = (64, 64, 64)
    num_heads: int = 8
    num_layers: int = 8
    num_cls_layers: int = 2
    ffn_ratio: int = 4
    dropout: float = 0.1
    attn_dropout: float = 0.1
    activation_dropout: float = 0.1
    use_pair_output_activation: bool = True
    use_sparse_pairs: bool = True
    trim: bool = True


class ParticleEmbed(nn.Module):
    """Batch norm of the raw features, then ``LayerNorm -> Linear -> GELU`` per width."""

    def __init__(self, in_features: int, dims: tuple[int, ...]) -> None:
        super().__init__()
        self.input_norm = MaskedBatchNorm(in_features)
        widths = (in_features, *dims)
        self.norms = nn.ModuleList(nn.LayerNorm(w) for w in widths[:-1])
        self.linears = nn.ModuleList(nn.Linear(a, b) for a, b in pairwise(widths))
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Shape: x (B, N, F), mask (B, N) -> (B, N, D), zero at padded slots."""
        x = self.input_norm(x, mask)
        for norm, linear in zip(self.norms, self.linears, strict=True):
            x = self.act(linear(norm(x)))
        return x.masked_fill(~mask.unsqueeze(-1), 0.0)


class PairEmbed(nn.Module):
    """Pair features -> per-head attention bias via a point-wise MLP with batch norm.

    The features are symmetric in (i, j), so only pairs with i >= j are embedded and the result is
    mirrored, as in weaver-core.
    """

    def __init__(
        self, dims: tuple[int, ...], num_heads: int, use_output_activation: bool, use_sparse: bool
    ) -> None:
        super().__init__()
        widths = (NUM_PAIR_FEATURES, *dims, num_heads)
        self.input_norm = MaskedBatchNorm(NUM_PAIR_FEATURES)
        self.linears = nn.ModuleList(nn.Linear(a, b) for a, b in pairwise(widths))
        self.norms = nn.ModuleList(MaskedBatchNorm(w) for w in widths[1:])
        self.act = nn.GELU()
        self.use_output_activation = use_output_activation
        self.use_sparse = use_sparse
        self.num_heads = num_heads

    def _mlp(self, u: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
        u = self.input_norm(u, valid)
        last = len(self.linears) - 1
        for i, (linear, norm) in enumerate(zip(self.linears, self.norms, strict=True)):
            u = norm(linear(u), valid)
            if i < last or self.use_output_activation:
                u = self.act(u)
        return u

    def forward(self, p4: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Shape: p4 (B, N, 4), mask (B, N) -> bias (B, H, N, N)."""
        b, n = mask.shape
        feats = pairwise_features(p4, mask).to(p4.dtype)  # (B, 4, N, N)
        pair_mask = mask.unsqueeze(2) & mask.unsqueeze(1)  # (B, N, N)
        if self.use_sparse and not torch.compiler.is_compiling():
            lower = torch.ones(n, n, dtype=torch.bool, device=mask.device).tril()
            bi, i, j = (pair_mask & lower).nonzero(as_tuple=True)
            emb = self._mlp(feats.permute(0, 2, 3, 1)[bi, i, j], None)  # (M, H), real pairs only
            bias = emb.new_zeros(b, n, n, self.num_heads)  # (B, N, N, H)
            bias[bi, i, j] = emb
            bias[bi, j, i] = emb
        else:
            i, j = torch.tril_indices(n, n, device=mask.device)
            feats = feats.masked_fill(~pair_mask.unsqueeze(1), 0.0)  # padded pairs: finite
            emb = self._mlp(feats[:, :, i, j].transpose(1, 2), pair_mask[:, i, j])  # (B, P, H)
            bias = emb.new_zeros(b, n, n, self.num_heads)  # (B, N, N, H)
            bias[:, i, j] = emb
            bias[:, j, i] = emb
        return bias.permute(0, 3, 1, 2).contiguous()  # (B, H, N, N)


class ParticleTransformer(Backbone):
    """ParT backbone: tokens after the particle blocks, pooled = normed class token.

    Example:
        >>> from hepfm.models import create_backbone
        >>> model = create_backbone("part", in_features=7)
        >>> out = model(batch)  # tokens (B, N, 128), pooled (B, 128)
    """

    uses_p4 = True

    def __init__(self, in_features: int, config: ParticleTransformerConfig | None = None) -> None:
        cfg = config or ParticleTransformerConfig()
        super().__init__(in_features, trim=cfg.trim)
        self.config = cfg
        dim = cfg.embed_dims[-1]
        self.embed_dim = self.pooled_dim = dim
        self.embed = ParticleEmbed(in_features, cfg.embed_dims)
        self.pair_embed = PairEmbed(
            cfg.pair_embed_dims, cfg.num_heads, cfg.use_pair_output_activation, cfg.use_sparse_pairs
        )
        block: dict[str, Any] = {"dim": dim, "num_heads": cfg.num_heads, "ffn_ratio": cfg.ffn_ratio}
        drops: dict[str, Any] = {
            "dropout": cfg.dropout,
            "attn_dropout": cfg.attn_dropout,
            "activation_dropout": cfg.activation_dropout,
        }
        no_drop: dict[str, Any] = dict.fromkeys(drops, 0.0)
        self.blocks = nn.ModuleList(NormFormerBlock(**block, **drops) for _ in range(cfg.num_layers))
        self.cls_blocks = nn.ModuleList(
            NormFormerBlock(**block, **no_drop) for _ in range(cfg.num_cls_layers)
        )
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.norm = nn.LayerNorm(dim)
        self._init_weights()

    def _init_weights(self) -> None:
        # MoCo-v3/BEiT-style ViT init (what ParT trains from): Xavier per Q/K/V matrix, zero biases,
        # and residual-branch outputs shrunk with depth so early training stays near identity.
        vit_init_(self, cast("Iterable[NormFormerBlock]", self.blocks), skip="pair_embed")
        nn.init.trunc_normal_(self.cls_token, std=0.02)

    def no_weight_decay(self) -> set[str]:
        return {"cls_token"}

    def encode(self, batch: ParticleBatch) -> BackboneOutput:
        mask = batch.mask
        x = self.embed(batch.x, mask)  # (B, N, D)
        # Pair bias and key padding merged once, not per block: (B, H, N, N), -inf at padded keys.
        bias = attention_mask(mask, self.pair_embed(batch.p4, mask), x.dtype)
        for blk in self.blocks:
            # Padded tokens are updated too but are never attended to, so they cannot leak into
            # real ones (they stay finite: their inputs are zero and their pair biases finite).
            x = blk(x, None, bias)
        x = x.masked_fill(~mask.unsqueeze(-1), 0.0)
        cls = self.cls_token.expand(x.shape[0], -1, -1)  # (B, 1, D)
        for blk in cast("Iterable[NormFormerBlock]", self.cls_blocks):
            cls = blk.forward_cls(cls, x, mask)
        return BackboneOutput(tokens=x, mask=mask, pooled=self.norm(cls.squeeze(1)))


# --- weaver-core checkpoint conversion ------------------------------------------------------------

_BLOCK_RENAMES = (
    (r"\.pre_attn_norm\.", ".norm_attn_in."),
    (r"\.attn\.in_proj[._](weight|bias)$", r".attn.qkv.\1"),
    (r"\.attn\.out_proj\.", ".attn.proj."),
    (r"\.post_attn_norm\.", ".norm_attn_out."),
    (r"\.pre_fc_norm\.", ".norm_ffn_in."),
    (r"\.post_fc_norm\.", ".norm_ffn_mid."),
    (r"\.c_attn$", ".head_scale"),
    (r"\.w_resid$", ".resid_scale"),
)


def _rename_weaver_key(key: str) -> str | None:
    """Our parameter name for a weaver-core ``ParticleTransformer`` key (None: not ours)."""
    if key.startswith("embed.input_bn."):
        return "embed.input_norm." + key[len("embed.input_bn.") :]
    if m := re.fullmatch(r"embed\.embed\.(\d+)\.(\w+)", key):
        idx, leaf = int(m[1]), m[2]  # Sequential(LayerNorm, Linear, GELU) * len(embed_dims)
        kind = {0: "norms", 1: "linears"}.get(idx % 3)
        return f"embed.{kind}.{idx // 3}.{leaf}" if kind else None
    if m := re.fullmatch(r"pair_embed\.embed\.(\d+)\.(\w+)", key):
        idx, leaf = int(m[1]), m[2]  # BatchNorm, then Sequential(Conv1d, BatchNorm, GELU) * layers
        if idx == 0:
            return f"pair_embed.input_norm.{leaf}"
        kind = {0: "linears", 1: "norms"}.get((idx - 1) % 3)
        return f"pair_embed.{kind}.{(idx - 1) // 3}.{leaf}" if kind else None
    if key.startswith(("blocks.", "cls_blocks.")):
        for pattern, repl in _BLOCK_RENAMES:
            key = re.sub(pattern, repl, key)
        return key
    return key if key in ("cls_token", "norm.weight", "norm.bias") else None


class WeaverClassifier(nn.Module):
    """weaver-core's final classifier (``fc`` with ``fc_params=[]``): one Linear on ``pooled``.

    Maps a :class:`~hepfm.contracts.BackboneOutput` to logits (B, K), as a ``linear`` head does on a
    pooling backbone, and has the same state-dict keys (``fc.weight``, ``fc.bias``), so
    ``LinearHead(D, K).load_state_dict(classifier.state_dict())`` turns it into one. Built here, not
    as a :class:`hepfm.heads.LinearHead`, because heads sit above models.
    """

    def __init__(self, in_dim: int, num_classes: int) -> None:
        super().__init__()
        self.fc = nn.Linear(in_dim, num_classes)

    def forward(self, out: BackboneOutput) -> torch.Tensor:
        """Shape: returns (B, K)."""
        if out.pooled is None:
            raise ValueError("WeaverClassifier reads the pooled class token; the backbone returned none")
        return self.fc(out.pooled)


def load_weaver_state_dict(
    model: ParticleTransformer, state_dict: Mapping[str, torch.Tensor]
) -> WeaverClassifier | None:
    """Load a weaver-core ``ParticleTransformer`` state dict into ``model``.

    Accepts the keys of weaver-core >= 0.4 (``attn.in_proj.weight``) and of older versions built on
    ``nn.MultiheadAttention`` (``attn.in_proj_weight``), with or without the ``mod.`` prefix of the
    ParT repository's wrapper (the published ``ParT_{kin,kinpid,full}.pt``) or DDP's ``module.``.
    ``model`` must be built with the checkpoint's hyper-parameters and input feature count.

    Returns:
        The checkpoint's final classifier (weaver's ``fc``, a single Linear when ``fc_params=[]``)
        as a :class:`WeaverClassifier` on ``pooled``, or None when the checkpoint has no classifier.

    Raises:
        ValueError: keys that do not map (another weaver variant: ``version>1``, ``fc_params``,
            extra pair inputs) or shapes that differ from ``model``'s.
    """
    ours: dict[str, torch.Tensor] = {}
    fc: dict[str, torch.Tensor] = {}
    unknown: list[str] = []
    for key, value in state_dict.items():
        key = re.sub(r"^(module\.)?(mod\.)?", "", key)
        if key.startswith("fc."):
            fc[key[len("fc.") :]] = value
            continue
        name = _rename_weaver_key(key)
        if name is None:
            unknown.append(key)
            continue
        ours[name] = value.squeeze(-1) if name.startswith("pair_embed.linears.") else value
    if unknown or set(fc) - {"0.weight", "0.bias"}:
        extra = unknown + [f"fc.{k}" for k in fc if not k.startswith("0.")]
        raise ValueError(f"unsupported weaver-core ParticleTransformer keys: {sorted(extra)[:8]}")
    try:
        model.load_state_dict(ours, strict=True)
    except RuntimeError as err:
        raise ValueError(f"weaver state dict does not fit this ParticleTransformer: {err}") from None
    if not fc:
        return None
    weight = fc["0.weight"]
    head = WeaverClassifier(weight.shape[1], weight.shape[0])
    head.fc.load_state_dict({"weight": weight, "bias": fc["0.bias"]})
    return head
