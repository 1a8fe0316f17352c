"""ParticleNet: dynamic graph CNN on the particle cloud.

Paper: H. Qu, L. Gouskos, "ParticleNet: Jet Tagging via Particle Clouds", Phys. Rev. D 101, 056019
(2020), arXiv:1902.08570.

Each EdgeConv block (DGCNN, Wang et al. arXiv:1801.07829) builds a k-nearest-neighbour graph,
applies an MLP to every edge (x_i, x_j - x_i), averages over the k neighbours and adds a shortcut.
The first graph lives in (Δη, Δφ) to the jet axis, the later ones in the learned feature space, so
the graph adapts to the task. Paper settings: k = 16, channels (64,64,64), (128,128,128),
(256,256,256), global average pooling; the classifier (FC 256 + dropout 0.1) is our ``mlp`` head.

The (Δη, Δφ) coordinates come from ``batch.p4`` (relative to the sum of the real four-vectors),
so ParticleNet takes the same batch as every other backbone. Padded particles are never neighbours
and the neighbour mean runs over real neighbours only; for jets with fewer than k+1 particles that
differs from weaver-core, which averages in far-away padded points.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import pairwise

import torch
from torch import nn

from hepfm.contracts import BackboneOutput, ParticleBatch
from hepfm.nn.backbone import Backbone
from hepfm.nn.geometry import relative_eta_phi
from hepfm.nn.norm import MaskedBatchNorm
from hepfm.nn.pooling import masked_mean

ConvParams = tuple[tuple[int, tuple[int, ...]], ...]


@dataclass
class ParticleNetConfig:
    """ParticleNet hyper-parameters; defaults are the paper's.

    Attributes:
        conv_params: ``(k, channels)`` per EdgeConv block.
        use_input_norm: batch norm of the input features (weaver's ``use_fts_bn``).
        use_fusion: concatenate all blocks' outputs and mix them with a point-wise layer
            (weaver-core option, off in the paper and in the JetClass config).
        trim: drop padding slots that no jet uses before encoding.
    """

    conv_params: ConvParams = ((16, (64, 64, 64)), (16, (128, 128, 128)), (16, (256, 256, 256)))
    use_input_norm: bool = True
    use_fusion: bool = False
    trim: bool = True


@torch.no_grad()
def knn(points: torch.Tensor, mask: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The k nearest real neighbours of every point, excluding itself.

    Shape:
        points: (B, N, C); mask: (B, N) bool.
        returns: idx (B, N, k') and valid (B, N, k') bool, k' = min(k, N - 1); ``valid`` is False
        where a jet has fewer than k' other real particles.
    """
    pts = points.float()
    sq = pts.square().sum(-1)  # (B, N)
    dist = sq.unsqueeze(2) + sq.unsqueeze(1) - 2.0 * pts @ pts.transpose(1, 2)  # (B, N, N)
    dist = dist.clamp(min=0.0).masked_fill(~mask.unsqueeze(1), float("inf"))
    dist.diagonal(dim1=1, dim2=2).fill_(-1.0)  # self comes first and is dropped below
    k_eff = min(k, points.shape[1] - 1)
    nearest, idx = dist.topk(k_eff + 1, dim=-1, largest=False)  # (B, N, k'+1)
    return idx[..., 1:], torch.isfinite(nearest[..., 1:])


def gather_neighbours(feats: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Shape: feats (B, N, C), idx (B, N, k) -> (B, N, k, C)."""
    b, n, c = feats.shape
    base = torch.arange(b, device=feats.device).view(b, 1, 1) * n
    flat = feats.reshape(b * n, c)  # (B*N, C)
    return flat[(idx + base).reshape(-1)].view(b, n, idx.shape[-1], c)


class EdgeConvBlock(nn.Module):
    """EdgeConv with mean aggregation and a shortcut, as in the paper's Fig. 2."""

    def __init__(self, k: int, in_dim: int, dims: tuple[int, ...]) -> None:
        super().__init__()
        self.k = k
        widths = (2 * in_dim, *dims)
        self.linears = nn.ModuleList(nn.Linear(a, b, bias=False) for a, b in pairwise(widths))
        self.norms = nn.ModuleList(MaskedBatchNorm(w) for w in dims)
        self.shortcut = None if in_dim == dims[-1] else nn.Linear(in_dim, dims[-1], bias=False)
        self.shortcut_norm = None if self.shortcut is None else MaskedBatchNorm(dims[-1])
        self.act = nn.ReLU()

    def forward(self, points: torch.Tensor, feats: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Shape: points (B, N, P), feats (B, N, C), mask (B, N) -> (B, N, C'), zero at padding."""
        idx, valid = knn(points, mask, self.k)  # (B, N, k)
        nbrs = gather_neighbours(feats, idx)  # (B, N, k, C)
        centre = feats.unsqueeze(2).expand_as(nbrs)
        edges = torch.cat((centre, nbrs - centre), dim=-1)  # (B, N, k, 2C)
        edge_mask = valid & mask.unsqueeze(-1)
        for linear, norm in zip(self.linears, self.norms, strict=True):
            edges = self.act(norm(linear(edges), edge_mask))
        w = valid.unsqueeze(-1).to(edges.dtype)  # (B, N, k, 1)
        agg = (edges * w).sum(2) / w.sum(2).clamp(min=1.0)  # (B, N, C')
        short = feats
        if self.shortcut is not None and self.shortcut_norm is not None:  # both or neither
            short = self.shortcut_norm(self.shortcut(feats), mask)
        return self.act(agg + short).masked_fill(~mask.unsqueeze(-1), 0.0)


class ParticleNet(Backbone):
    """ParticleNet backbone: tokens = last block's point features, pooled = their masked mean."""

    uses_p4 = True

    def __init__(self, in_features: int, config: ParticleNetConfig | None = None) -> None:
        cfg = config or ParticleNetConfig()
        super().__init__(in_features, trim=cfg.trim)
        if not cfg.conv_params:
            raise ValueError("ParticleNet needs at least one EdgeConv block")
        self.config = cfg
        self.input_norm = MaskedBatchNorm(in_features) if cfg.use_input_norm else None
        self.edge_convs = nn.ModuleList()
        in_dim = in_features
        for k, dims in cfg.conv_params:
            self.edge_convs.append(EdgeConvBlock(k, in_dim, tuple(dims)))
            in_dim = dims[-1]
        self.fusion: nn.Module | None = None
        if cfg.use_fusion:
            total = sum(dims[-1] for _, dims in cfg.conv_params)
            out = min(max((total // 128) * 128, 128), 1024)
            self.fusion = nn.Linear(total, out, bias=False)
            self.fusion_norm = MaskedBatchNorm(out)
            in_dim = out
        self.embed_dim = self.pooled_dim = in_dim

    def encode(self, batch: ParticleBatch) -> BackboneOutput:
        mask = batch.mask
        pad = ~mask.unsqueeze(-1)  # (B, N, 1)
        feats = batch.x if self.input_norm is None else self.input_norm(batch.x, mask)
        feats = feats.masked_fill(pad, 0.0)
        points = relative_eta_phi(batch.p4, mask)  # (B, N, 2): the first graph is angular
        outputs = []
        for i, conv in enumerate(self.edge_convs):
            feats = conv(points if i == 0 else feats, feats, mask)
            outputs.append(feats)
        if self.fusion is not None:
            fused = torch.relu(self.fusion_norm(self.fusion(torch.cat(outputs, dim=-1)), mask))
            feats = fused.masked_fill(pad, 0.0)
        return BackboneOutput(tokens=feats, mask=mask, pooled=masked_mean(feats, mask))
