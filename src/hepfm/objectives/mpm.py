"""Masked particle modelling (MPM): recover masked particles of a jet from the visible ones.

Paper: T. Golling, L. Heinrich, M. Kagan, S. Klein, M. Leigh, R. Osadchy, J. Raine, "Masked particle
modeling on sets: towards self-supervised high energy physics foundation models", arXiv:2401.13537.
MPM is BERT for sets: hide a fraction of a jet's particles behind a learned mask vector, encode the
jet with the backbone, and predict what was hidden. The target is either the masked particle's
discrete token (``target: tokens``; here a k-means codebook, :mod:`hepfm.objectives.tokenize`) or
its standardised features (``target: regression``, the paper's continuous variant).

A jet has no natural order, so all mask vectors look alike to a permutation-equivariant backbone.
The talk (seed 004) compares three answers, by linear-probe accuracy on JetClass:

* ``none``: no order information; the prediction is a set prediction, 54.1%;
* ``input``: a pT-rank embedding is added to the backbone's input, 53.4% (it overfits);
* ``head``: only the prediction head sees the pT ranks, so the backbone stays permutation
  equivariant. This is the best, 56.8%, and the default here.

Defaults follow the authors' code (rodem-hep/mpm, ``configs/model/knn_mpm.yaml`` and
``positional_encoder/trans_encoder.yaml``): 30% of each jet masked (``max_mask: 0.3``), 512 k-means
tokens, and a small transformer as the head (2 layers, 8 heads).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from hepfm.contracts import BackboneOutput, ParticleBatch
from hepfm.data.features import FeatureSet
from hepfm.errors import HepfmInputError
from hepfm.nn.backbone import Backbone
from hepfm.nn.blocks import NormFormerBlock
from hepfm.objectives.base import Objective, ObjectiveOutput
from hepfm.objectives.registry import OBJECTIVES, BackboneFactory
from hepfm.objectives.tokenize import KMeansCodebook
from hepfm.options import from_dict

ORDERINGS = ("none", "input", "head")
#: What the MPM paper tokenises: each particle's (Δη, Δφ, log pT), as named in the ``kin`` feature set.
PAPER_TOKEN_FEATURES = ("part_deta", "part_dphi", "part_pt_log")
TARGETS = ("tokens", "regression")


@dataclass
class MPMConfig:
    """MPM options (the ``objective.options`` of a pretrain preset).

    Attributes:
        mask_fraction: share of each jet's real particles to mask. The paper uses 0.3.
        target: ``tokens`` (cross-entropy on k-means tokens) or ``regression`` (features).
        codebook_size: K, the number of k-means tokens. The paper's codebook has 512 entries.
        codebook_particles: at most this many particles, drawn at random, are used to fit the
            codebook in :meth:`MaskedParticleModelling.prepare`.
        codebook_iters, codebook_seed: Lloyd iterations and the seed; the fit is deterministic.
        ordering: ``none``, ``input`` or ``head`` (see the module docstring). The ``input`` rank
            embedding belongs to the objective, not the backbone, so the exported backbone is
            finetuned without the order information it was pretrained with.
        max_rank: size of the pT-rank embedding tables; ranks beyond it share the last entry.
            ``None`` (the default): the data's particle cap, which the builder receives.
        head_dim, head_layers, head_heads, head_dropout: the prediction head, a small transformer
            over the backbone tokens (``head_layers: 0`` gives a per-particle MLP).
        regression_loss: ``mse`` or ``l1`` (``target: regression`` only).
        token_features: the input features the codebook tokenises (names of the feature set's
            columns); None: all of them. The paper tokenises (Δη, Δφ, log pT), which is
            ``PAPER_TOKEN_FEATURES`` in the ``kin`` feature set. The head still sees every feature.
    """

    mask_fraction: float = 0.3
    target: str = "tokens"
    codebook_size: int = 512
    codebook_particles: int = 100_000
    codebook_iters: int = 30
    codebook_seed: int = 0
    ordering: str = "head"
    max_rank: int | None = None
    head_dim: int = 128
    head_layers: int = 2
    head_heads: int = 8
    head_dropout: float = 0.0
    regression_loss: str = "mse"
    token_features: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        checks = {
            "mask_fraction must be in (0, 1)": 0.0 < self.mask_fraction < 1.0,
            f"target must be one of {TARGETS}": self.target in TARGETS,
            f"ordering must be one of {ORDERINGS}": self.ordering in ORDERINGS,
            "regression_loss must be mse or l1": self.regression_loss in ("mse", "l1"),
            "head_dim must be divisible by head_heads": (
                self.head_heads > 0 and self.head_dim % self.head_heads == 0),
            "max_rank must be >= 1": self.max_rank is None or self.max_rank >= 1,
            "head_layers must be >= 0": self.head_layers >= 0,
        }
        bad = [msg for msg, ok in checks.items() if not ok]
        if bad:
            raise HepfmInputError(f"mpm: {'; '.join(bad)} (got {asdict(self)})")


def sample_mask(mask: torch.Tensor, fraction: float) -> torch.Tensor:
    """Choose the particles to hide, uniformly among each jet's real ones (torch's global RNG).

    A jet with n real particles gets round(fraction * n) masked, at least one and, when n > 1, at
    most n - 1, so every jet has a target and keeps some context. Padding is never chosen. (The
    authors' code floors instead, which leaves jets with fewer than 4 particles unmasked.)

    Shape: mask (B, N) bool, True = real -> (B, N) bool, True = masked.
    """
    n = mask.sum(1)  # (B,)
    k = torch.floor(fraction * n + 0.5).clamp(min=1)
    k = torch.minimum(k, (n - 1).clamp(min=1)) * (n > 0)  # (B,)
    scores = torch.rand(mask.shape, device=mask.device).masked_fill(~mask, 2.0)  # padding sorts last
    return (_rank(scores, descending=False) < k.unsqueeze(1)) & mask


def pt_rank(p4: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Each particle's pT rank within its jet (0 = leading); padded slots rank after the real ones.

    Computed from the four-momenta, so it does not assume the loader sorted the particles.

    Shape: p4 (B, N, 4), mask (B, N) -> (B, N) int64.
    """
    pt = torch.hypot(p4[..., 0], p4[..., 1]).float().masked_fill(~mask, -1.0)
    return _rank(pt, descending=True)


def _rank(values: torch.Tensor, descending: bool) -> torch.Tensor:
    """Position of every entry in its row's sorted order. Shape: (B, N) -> (B, N) int64."""
    order = torch.argsort(values, dim=1, descending=descending, stable=True)  # (B, N)
    positions = torch.arange(values.shape[1], device=values.device).expand_as(order)
    return torch.empty_like(order).scatter_(1, order, positions)


def _max_rank(cfg: MPMConfig) -> int:
    if cfg.max_rank is None:
        raise HepfmInputError("mpm: max_rank must be set (the registry builder takes it from the data's "
                              "particle cap)")
    return cfg.max_rank


class PredictionHead(nn.Module):
    """Predicts each masked particle's target from the backbone tokens.

    A small transformer over all of the jet's tokens, so a masked particle's prediction can use
    its visible neighbours. With ``ordering: head`` a pT-rank embedding is added to every token
    first: the only place where order enters, as in the paper's best variant (the authors' head
    adds a learned position encoding to the backbone outputs, then runs a 2-layer transformer).
    """

    def __init__(self, in_dim: int, out_dim: int, cfg: MPMConfig) -> None:
        super().__init__()
        h = cfg.head_dim
        self.proj = nn.Linear(in_dim, h)
        self.rank_embed = nn.Embedding(_max_rank(cfg), h) if cfg.ordering == "head" else None
        p = cfg.head_dropout
        self.blocks = nn.ModuleList(
            NormFormerBlock(h, cfg.head_heads, ffn_ratio=2, dropout=p, attn_dropout=p, activation_dropout=p)
            for _ in range(cfg.head_layers))
        self.out = nn.Sequential(nn.LayerNorm(h), nn.Linear(h, h), nn.GELU(), nn.Linear(h, out_dim))
        if self.rank_embed is not None:
            nn.init.trunc_normal_(self.rank_embed.weight, std=0.02)

    def forward(self, out: BackboneOutput, selected: torch.Tensor, rank: torch.Tensor) -> torch.Tensor:
        """Shape: out.tokens (B, N, D), selected (B, N) bool, rank (B, N) -> (M, out_dim).

        M = selected.sum(), in the row-major order of ``selected``.
        """
        h = self.proj(out.tokens)  # (B, N, H)
        if self.rank_embed is not None:
            h = h + self.rank_embed(rank)
        for blk in self.blocks:
            h = blk(h, out.mask)  # attends to real particles only
        return self.out(h[selected])  # (M, out_dim)


class MaskedParticleModelling(Objective):
    """MPM (arXiv:2401.13537): mask particles, predict their tokens or features.

    **Leak-free masking.** The backbone must learn nothing about a masked particle's content:

    * its features ``x`` are replaced by a learned mask vector (F values, as in the paper);
    * its four-momentum is set to zero. Backbones that read ``p4`` (ParT's pair features) then get
      the same, finite values for every masked particle (ln kT = ln z = ln eps, and Δ and m² of the
      pair depend only on the visible partner). The particle stays a token (its ``mask`` entry
      stays True), so the backbone still sees *how many* particles were masked, as in BERT;
    * the jet-level vector ``batch.jet`` (which sums over all particles) is dropped.

    ``tests/test_mpm.py`` checks that changing a masked particle's true ``x`` and ``p4`` leaves the
    backbone's output unchanged. One leak stays, and it comes with the features, not with this
    objective: relative features of the *visible* particles (log pT/pT_jet, Δη, ΔR in ``kin``) are
    computed against the full jet, masked particles included. The paper's Δη/Δφ inputs share it.

    **The ``prepare`` hook.** ``Objective.prepare(batches)`` is optional. The pretrain workflow
    calls it once before training, on a sample of training batches, if the objective defines it.
    Here it fits the k-means codebook (``target: tokens``) on the real particles of those batches;
    for ``target: regression`` it does nothing. It also does nothing if the codebook is already
    fitted (e.g. loaded from a checkpoint), unless ``force=True``. The codebook is a buffer, so it
    is saved in every checkpoint.

    Example:
        >>> obj = MaskedParticleModelling(create_backbone("part-small", 7), 7, MPMConfig(max_rank=128))
        >>> obj.prepare(sample_batches)  # fits the 512-token codebook
        >>> out = obj(batch)             # out.loss; out.logs["token_accuracy"]
    """

    name = "mpm"

    def __init__(self, backbone: Backbone, in_features: int, config: MPMConfig | None = None,
                 token_columns: tuple[int, ...] | None = None) -> None:
        super().__init__()
        cfg = config or MPMConfig()
        #: the columns of ``batch.x`` the codebook reads (None: all)
        self.token_columns = list(token_columns) if token_columns is not None else None
        self.max_rank = _max_rank(cfg)
        self.config = cfg
        self.backbone = backbone
        self.in_features = in_features
        self.mask_token = nn.Parameter(torch.zeros(in_features))
        nn.init.trunc_normal_(self.mask_token, std=0.02)
        self.input_rank = nn.Embedding(self.max_rank, in_features) if cfg.ordering == "input" else None
        if self.input_rank is not None:
            nn.init.trunc_normal_(self.input_rank.weight, std=0.02)
        tokens = cfg.target == "tokens"
        n_token = len(self.token_columns) if self.token_columns is not None else in_features
        self.codebook = KMeansCodebook(cfg.codebook_size, n_token) if tokens else None
        out_dim = cfg.codebook_size if tokens else in_features
        self.head = PredictionHead(backbone.embed_dim, out_dim, cfg)
        self._codebook_checked = False

    # -- data-dependent setup
    @torch.no_grad()
    def prepare(self, batches: Iterable[ParticleBatch], force: bool = False) -> None:
        """Fit the token codebook on the real particles of ``batches`` (no-op for regression)."""
        if self.codebook is None or (bool(self.codebook.fitted) and not force):
            return
        rows = [self._tokenised(b.x[b.mask]).to(self.codebook.centres.device) for b in batches]
        if not rows:
            raise HepfmInputError("mpm: prepare() got no batches to fit the token codebook on")
        self.fit_codebook(torch.cat(rows))

    @torch.no_grad()
    def fit_codebook(self, sample_x: torch.Tensor) -> None:
        """Fit the codebook on real particles' features, at most ``codebook_particles`` of them.

        Shape: sample_x (M, F), standardised like ``batch.x``, padding excluded.
        """
        if self.codebook is None:
            raise HepfmInputError("mpm: target 'regression' has no codebook to fit")
        cfg = self.config
        x = sample_x.to(self.codebook.centres.device)
        if x.shape[0] > cfg.codebook_particles:
            g = torch.Generator().manual_seed(cfg.codebook_seed)
            x = x[torch.randperm(x.shape[0], generator=g)[: cfg.codebook_particles].to(x.device)]
        self.codebook.fit(x, seed=cfg.codebook_seed, iters=cfg.codebook_iters)

    # -- the objective
    def corrupt(self, batch: ParticleBatch, selected: torch.Tensor, rank: torch.Tensor) -> ParticleBatch:
        """The batch the backbone sees: masked particles carry no content (see the class docstring).

        Shape: selected (B, N) bool; rank (B, N) int64.
        """
        sel = selected.unsqueeze(-1)  # (B, N, 1)
        x = torch.where(sel, self.mask_token.to(batch.x.dtype), batch.x)  # (B, N, F)
        if self.input_rank is not None:
            pos = self.input_rank(rank.clamp(max=self.max_rank - 1))  # (B, N, F)
            x = x + pos.to(x.dtype) * batch.mask.unsqueeze(-1)  # padding stays zero
        p4 = batch.p4.masked_fill(sel, 0.0)
        return ParticleBatch(x=x, mask=batch.mask, p4=p4, jet=None, label=None)

    def encode_masked(
        self, batch: ParticleBatch, selected: torch.Tensor
    ) -> tuple[BackboneOutput, torch.Tensor]:
        """Backbone output on the corrupted batch, and the pT ranks (B, N) used for ordering."""
        rank = pt_rank(batch.p4, batch.mask).clamp(max=self.max_rank - 1)
        return self.backbone(self.corrupt(batch, selected, rank)), rank

    def forward(self, batch: ParticleBatch) -> ObjectiveOutput:
        selected = sample_mask(batch.mask, self.config.mask_fraction)  # (B, N)
        out, rank = self.encode_masked(batch, selected)
        pred = self.head(out, selected, rank)  # (M, K) logits or (M, F) features
        truth = batch.x[selected]  # (M, F) the hidden features
        logs = {"masked_fraction": selected.sum() / batch.mask.sum().clamp(min=1)}
        if self.codebook is not None:
            self._check_codebook()
            target = self.codebook.encode(self._tokenised(truth))  # (M,)
            loss = F.cross_entropy(pred.float(), target)
            with torch.no_grad():
                logs["token_accuracy"] = (pred.argmax(1) == target).float().mean()
                top5 = pred.topk(min(5, pred.shape[1]), dim=1).indices
                logs["token_top5"] = (top5 == target.unsqueeze(1)).any(1).float().mean()
        else:
            err = pred.float() - truth.float()  # (M, F)
            loss = err.square().mean() if self.config.regression_loss == "mse" else err.abs().mean()
            logs["feature_mse"] = err.detach().square().mean()
            logs["feature_mae"] = err.detach().abs().mean()
        return ObjectiveOutput(loss, logs)

    def _tokenised(self, x: torch.Tensor) -> torch.Tensor:
        """The columns of particle features (M, F) that the codebook reads."""
        return x if self.token_columns is None else x[:, self.token_columns]

    def _check_codebook(self) -> None:
        # read once (a host sync), not every step
        if not self._codebook_checked:
            if self.codebook is not None and not bool(self.codebook.fitted):
                raise HepfmInputError(
                    "mpm with target 'tokens' needs its codebook: call objective.prepare(batches) before "
                    "training (the pretrain workflow does), or load a checkpoint")
            self._codebook_checked = True

    def no_weight_decay(self) -> set[str]:
        own = {"mask_token", "input_rank.weight", "head.rank_embed.weight"}
        names = {n for n, _ in self.named_parameters()}
        return super().no_weight_decay() | (own & names)


@OBJECTIVES.register("mpm")
def build(
    backbone_factory: BackboneFactory,
    feature_set: FeatureSet,
    *,
    max_particles: int | None = None,
    **options: Any,
) -> MaskedParticleModelling:
    """The registry builder: ``create_objective("mpm", factory, feature_set, options, max_particles=N)``."""
    config = from_dict(MPMConfig, options, "objective.options")
    if config.max_rank is None:  # derived once, from the data's particle cap
        if max_particles is None:
            raise HepfmInputError("mpm: objective.options.max_rank is not set and no particle cap was given")
        config = replace(config, max_rank=max_particles)
    backbone = backbone_factory()
    if backbone.in_features != feature_set.dim:
        raise HepfmInputError(
            f"mpm: the backbone takes {backbone.in_features} features, feature set "
            f"{feature_set.name!r} has {feature_set.dim}")
    columns = None
    if config.token_features is not None:
        names = list(feature_set.names)
        missing = [n for n in config.token_features if n not in names]
        if missing or not config.token_features:
            raise HepfmInputError(f"mpm: objective.options.token_features {list(config.token_features)} must "
                                  f"name columns of feature set {feature_set.name!r}: {', '.join(names)}")
        columns = tuple(names.index(n) for n in config.token_features)
    return MaskedParticleModelling(backbone, feature_set.dim, config, columns)
