"""A k-means codebook that turns particle features into discrete tokens.

Masked particle modelling (Golling et al., arXiv:2401.13537) predicts a *discrete* token for each
masked particle. The paper's main tokeniser is a VQ-VAE, trained in a separate stage. Its k-means
variant has no such stage: fit a codebook once on a sample of training particles, then label each
particle with its nearest centre. The authors' talk calls this "simple and easy to set up" (seed
004), and their code fits 512 centres with k-means on a sample of batches before training
(rodem-hep/mpm ``configs/model/knn_mpm.yaml``). That is what this module provides.

The implementation is plain torch: k-means++ seeding (Arthur & Vassilvitskii, SODA 2007), then
Lloyd iterations. It runs on whatever device the sample is on. Distances are computed in chunks, so
memory stays O(chunk x K). A seeded CPU generator makes the fit deterministic, and empty clusters
are re-seeded deterministically at the points farthest from their centres.
"""

from __future__ import annotations

import torch
from torch import nn

from hepfm.errors import HepfmInputError

#: rows per distance block: (CHUNK, K) float32 stays ~130 MB at K=512
CHUNK = 65_536
#: k-means++ seeds on at most this many rows per centre (at least 10k rows)
SEED_ROWS_PER_CENTRE = 32


def nearest_centre(x: torch.Tensor, centres: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The index of the nearest centre for every row, and the squared distance to it.

    Shape:
        x: (M, F); centres: (K, F). returns: ids (M,) int64, d2 (M,) float32.
    """
    c = centres.float()
    c2 = c.square().sum(1)  # (K,)
    ids, d2 = [], []
    for block in x.float().split(CHUNK):
        # |x - c|^2 = |x|^2 - 2 x.c + |c|^2, and |x|^2 does not change which centre is nearest
        best = torch.addmm(c2, block, c.T, alpha=-2.0).min(1)  # over (m, K)
        ids.append(best.indices)
        d2.append((best.values + block.square().sum(1)).clamp(min=0.0))  # rounding can go below 0
    return torch.cat(ids), torch.cat(d2)


def _weighted_pick(weights: torch.Tensor, g: torch.Generator) -> int:
    """Draw one index with probability proportional to ``weights`` (uniform if they are all zero)."""
    cdf = weights.double().cumsum(0)
    total = float(cdf[-1])
    u = float(torch.rand((), generator=g, dtype=torch.float64))
    if total <= 0.0:
        return int(u * weights.numel())
    return min(int(torch.searchsorted(cdf, torch.tensor([u * total], dtype=cdf.dtype, device=cdf.device))),
               weights.numel() - 1)


def kmeans_plus_plus(x: torch.Tensor, k: int, g: torch.Generator) -> torch.Tensor:
    """k-means++ seeding: each new centre is drawn with probability proportional to d^2.

    Shape: x (M, F) -> (K, F).
    """
    first = int(torch.randint(x.shape[0], (), generator=g))
    centres = x.new_empty(k, x.shape[1])
    centres[0] = x[first]
    d2 = (x - x[first]).square().sum(1)  # (M,), distance to the nearest chosen centre
    for i in range(1, k):
        centres[i] = x[_weighted_pick(d2, g)]
        d2 = torch.minimum(d2, (x - centres[i]).square().sum(1))
    return centres


def kmeans(x: torch.Tensor, k: int, *, iters: int = 30, tol: float = 1e-5, seed: int = 0) -> torch.Tensor:
    """Fit ``k`` centres to the rows of ``x`` (k-means++ seeding on a subsample, then Lloyd iterations).

    Stops when the centres move less than ``tol`` times the data's total variance (squared).

    Shape: x (M, F) -> (K, F) float32 on x's device.

    Raises:
        HepfmInputError: fewer rows than centres, or non-finite values.
    """
    if x.ndim != 2 or x.shape[0] < k:
        raise HepfmInputError(f"k-means needs at least {k} particles to fit {k} centres, got {x.shape[0]}")
    x = x.float()
    if not bool(torch.isfinite(x).all()):
        raise HepfmInputError("k-means: the particle features contain NaN or inf")
    g = torch.Generator().manual_seed(seed)
    # Seeding is sequential in k, so it runs on a subsample; Lloyd's iterations then use every row.
    n_seed = min(x.shape[0], max(SEED_ROWS_PER_CENTRE * k, 10_000))
    rows = torch.randperm(x.shape[0], generator=g)[:n_seed].to(x.device)
    centres = kmeans_plus_plus(x[rows], k, g)
    scale = float(x.var(0, unbiased=False).sum()) + 1e-12
    for _ in range(iters):
        ids, d2 = nearest_centre(x, centres)
        counts = torch.bincount(ids, minlength=k)  # (K,)
        sums = torch.zeros_like(centres).index_add_(0, ids, x)  # (K, F)
        new = sums / counts.clamp(min=1).unsqueeze(1)
        empty = (counts == 0).nonzero().squeeze(1)
        if empty.numel():  # re-seed empty clusters at the worst-fitted points
            new[empty] = x[d2.topk(empty.numel()).indices]
        shift = float((new - centres).square().sum())
        centres = new
        if shift <= tol * scale:
            break
    return centres


class KMeansCodebook(nn.Module):
    """K centres in standardised feature space; a particle's token is its nearest centre.

    The centres are a buffer (saved in checkpoints, never trained), so a pretraining run and its
    checkpoint always agree on what each token means.

    Example:
        >>> book = KMeansCodebook(512, 7)
        >>> book.fit(sample_x)           # (M, 7) real particles
        >>> ids = book.encode(batch.x)   # (B, N) int64
    """

    centres: torch.Tensor
    fitted: torch.Tensor

    def __init__(self, size: int, in_features: int) -> None:
        super().__init__()
        if size < 2:
            raise HepfmInputError(f"codebook_size must be >= 2, got {size}")
        self.size = size
        self.in_features = in_features
        self.register_buffer("centres", torch.zeros(size, in_features))
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))

    @torch.no_grad()
    def fit(self, sample_x: torch.Tensor, *, seed: int = 0, iters: int = 30) -> None:
        """Fit the centres on ``sample_x`` (M, F): real particles only, already standardised."""
        if sample_x.ndim != 2 or sample_x.shape[1] != self.in_features:
            raise HepfmInputError(
                f"codebook expects (M, {self.in_features}) particle features, got {tuple(sample_x.shape)}")
        centres = kmeans(sample_x, self.size, iters=iters, seed=seed)
        self.centres.copy_(centres.to(self.centres))
        self.fitted.fill_(True)

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Token ids of the nearest centres. Shape: x (..., F) -> (...) int64."""
        ids, _ = nearest_centre(x.reshape(-1, x.shape[-1]), self.centres)
        return ids.reshape(x.shape[:-1])

    def decode(self, ids: torch.Tensor) -> torch.Tensor:
        """The centres of token ids. Shape: ids (...) -> (..., F)."""
        return self.centres[ids]
