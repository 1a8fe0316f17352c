"""J-JEPA: predict the representations of hidden subjets from the rest of the jet (``jepa``).

Katel, Li, Zhao, Kansal, Mokhtar, Duarte, "Learning Symmetry-Independent Jet Representations via Jet
Joint Embedding Predictive Architecture", arXiv:2412.05333 (seed 001, the group's talk), after I-JEPA
(Assran et al., arXiv:2301.08243). It learns without augmentations ("augmentation free to minimize
bias") by predicting in representation space, not input space.

Two variants, chosen by the backbone:

* **subjet-level J-JEPA (the seed's SjT)**, with the ``sjt`` backbones
  (:class:`~hepfm.models.subjet_transformer.SubjetTransformer`): the encoder embeds every subjet on
  its own (per-particle MLP + subjet embedding layer, SEL), then a transformer runs over the subjet
  tokens; its output subjet tokens are the representations and there is no extra SEL on top.
* **particle-level J-JEPA (hepfm's own)**, with any particle backbone (ParT, transformer, ...): the
  backbone runs over the particles, then an SEL owned by the objective pools its tokens per subjet.

The seed compares "SjT-T" and "AE-SjT-T" without defining "AE". **Our interpretation** (not stated in
the seed): both are SjT encoders with a transformer ("-T") predictor; SjT-T uses the MLP SEL
(``model.backbone_options.embedding=mlp``) and AE-SjT-T the attention-embedding SEL
(``embedding=attention``, the default). The talk's finetuning aggregations "Flatten" and "Cls Attn" are
the SjT's ``aggregation`` (``flatten`` / ``class_attention``).

The steps (where the SjT differs, they say so):

1. **Subjets.** Each jet's constituents are clustered into anti-kT R = 0.2 subjets (talk: "cluster
   subjets with radius 0.2"), pT-ordered, the leading ``max_subjets`` = 20 kept (their code's
   ``num_subjets``); particles of softer subjets stay visible context but are never targets.
   One vectorised FastJet call per batch on the CPU (:mod:`hepfm.physics.subjets`).
2. **Context / target split.** Per jet, ``round(target_fraction * n)`` (their ``trgt_ratio`` = 0.3,
   i.e. ``context_scale`` = 0.7) or ``n_targets`` of its n subjets are drawn at random, at least one
   and at most n - 1. Only real subjets can be targets: the talk found padded targets to cause
   collapse. Randomness uses torch's global RNG (the engine seeds it per step); validation uses a
   fixed generator so validation losses are comparable between evaluations.
3. **Context encoder** = the backbone on the jet *without* the target particles: they are gathered
   out of the batch (not merely masked), so no backbone, ParT's pair features included, can see them.
   Particle-level: its particle tokens are pooled per context subjet by the **subjet embedding layer**
   (SEL: ``mlp`` = mean + MLP, or ``attention`` = a learned query attending to the subjet's particles;
   the talk found attention better). SjT: the SjT's ``encode_subjets`` with the context's subjet
   index, so the target subjets are simply absent from its tokens; their subjet coordinates are the
   full jet's. The particles' features stay those of the full jet (Δη, Δφ to its axis, pT
   fractions): the same frame as the target coordinates the predictor is given anyway.
4. **Target encoder** = an EMA copy of the encoder (backbone + SEL, or the SjT), no gradients, dropout
   off, applied to the full jet; its subjet representation per target subjet, layer-normalised without
   affine parameters (I-JEPA), is the regression target.
5. **Predictor**: a narrow transformer (bottleneck ``predictor_dim``, default half the subjet width,
   as their 512-of-1024 predictor) over [context jet embedding, context subjet tokens + their
   coordinates, one mask-token query per target + the target's coordinates (Δη, Δφ to the jet axis,
   log pT fraction)]. Coordinates reach both sides, the variant the talk found best. The jet embedding
   is the backbone's pooled output on the context (SjT: its aggregation of the context subjets).
   Loss: MSE (their code) or smooth L1 (I-JEPA) between predictions and targets.

With an SjT the objective's ``subjet_radius``, ``max_subjets`` and ``subjet_algorithm`` must equal the
backbone's (a mismatch is refused rather than silently resolved: the finetuned SjT clusters with its
own settings, so pretraining must use the same), and its SEL is the backbone's ``embedding``.

Collapse guards from the talk: targets only from non-empty subjets, attention SEL, a small predictor
width, normalised inputs (hepfm's standardised features) and the EMA target (momentum 0.996 -> 1,
cosine, in ``on_step_end``). Diagnostics logged every step: ``cos_sim_flat``, the talk's check as it
defines it: the mean pairwise cosine similarity of 128 jets' flattened subjet representations (the
target encoder's, padded subjets zero; 0.457 after their pretraining, 1 = collapsed); ``cos_sim``, the
same over the context encoder's pooled jet embeddings; and ``pred_std`` / ``target_std``, the
per-dimension standard deviations of predictions and targets over the batch's target subjets
(0 = collapsed).

Jets with fewer than ``min_subjets`` subjets (2: those that cannot be split; the seed keeps only jets
with more than 10, ``min_subjets: 11``) are dropped from the batch and counted in the
``unusable_jets`` log. With the default, a batch with no usable jet raises
:class:`~hepfm.errors.HepfmInputError` (the data cannot be split). With a stricter selection a batch
that no jet passes gives a zero loss (``skipped_batches``; the optimizer still applies its momentum),
so that a rare selection does not end a long run; ``prepare`` refuses, before the first step, a
selection that none of the data's first jets pass.

Exported backbone: the EMA **target** encoder by default (``export: target``): the talk finetunes
"the target encoder" and I-JEPA evaluates it; it has seen whole jets during pretraining, as it will
when finetuned. ``export: context`` gives the context encoder instead. The jet embedding enters the
predictor so that the backbone's own pooling (ParT's class-attention blocks) is trained too.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from hepfm.contracts import BackboneOutput, ParticleBatch
from hepfm.errors import HepfmInputError
from hepfm.losses.contrastive import mean_pairwise_cosine
from hepfm.models.subjet_transformer import SubjetTransformer
from hepfm.nn.backbone import Backbone
from hepfm.nn.blocks import NormFormerBlock
from hepfm.nn.subjets import SUBJET_EMBEDDINGS, make_subjet_embedding
from hepfm.objectives.base import Objective, ObjectiveOutput, jet_embedding
from hepfm.objectives.ema import MOMENTUM_SCHEDULES, ema_update_, make_target, momentum_at
from hepfm.objectives.registry import OBJECTIVES, BackboneFactory
from hepfm.options import from_dict
from hepfm.physics.subjets import ALGORITHMS, Subjets, find_subjets

#: Jets in the seed's collapse check (mean pairwise cosine of flattened subjet representations).
COLLAPSE_JETS = 128
#: Batches of the data :meth:`JEPA.prepare` looks at for a jet that passes the subjet selection.
SELECTION_CHECK_BATCHES = 8
LOSSES = ("mse", "smooth_l1")


@dataclass
class JEPAOptions:
    """Options of the ``jepa`` objective (the ``objective.options`` section of a config).

    Attributes:
        target_fraction: fraction of a jet's subjets that become targets (their ``trgt_ratio``).
        n_targets: a fixed number of targets per jet instead (None: use ``target_fraction``).
        subjet_radius, subjet_algorithm: the subjet clustering (anti-kT R = 0.2 as in J-JEPA).
        max_subjets: leading-pT subjets kept per jet (J-JEPA: 20). With an SjT backbone these three must
            equal the backbone's (a mismatch is refused: the SjT would otherwise see other subjets
            when finetuned than during pretraining).
        subjet_embedding: ``attention`` or ``mlp`` subjet embedding layer (None: ``attention``). With an
            SjT backbone its own ``embedding`` is the SEL; a value given here must agree with it.
        subjet_dim: width of subjet representations (None: the backbone's token width; an SjT's
            must be its ``dim``).
        predictor_depth, predictor_dim, predictor_heads: the predictor transformer; ``predictor_dim``
            None = half of ``subjet_dim`` (the bottleneck, a collapse guard).
        ema_start, ema_end, ema_schedule: target-encoder momentum over training.
        loss: ``mse`` (J-JEPA) or ``smooth_l1`` (I-JEPA).
        export: which encoder finetuning starts from, ``target`` (EMA) or ``context``.
        min_subjets: jets with fewer subjets are left out of the loss (2: every jet that can be split;
            the seed's selection, "jets with more than 10 subjets", is 11).
    """

    target_fraction: float = 0.3
    n_targets: int | None = None
    subjet_radius: float = 0.2
    subjet_algorithm: str = "antikt"
    max_subjets: int = 20
    subjet_embedding: str | None = None
    subjet_dim: int | None = None
    predictor_depth: int = 2
    predictor_dim: int | None = None
    predictor_heads: int = 4
    ema_start: float = 0.996
    ema_end: float = 1.0
    ema_schedule: str = "cosine"
    loss: str = "mse"
    export: str = "target"
    min_subjets: int = 2

    @classmethod
    def from_dict(cls, options: dict[str, Any]) -> JEPAOptions:
        opts = from_dict(cls, options, "objective.options")
        opts.validate()
        return opts

    def validate(self) -> None:
        """Raise :class:`HepfmInputError` naming the first bad option."""
        checks = (
            (0.0 < self.target_fraction < 1.0, "target_fraction must be in (0, 1)"),
            (self.n_targets is None or self.n_targets >= 1, "n_targets must be >= 1"),
            (self.subjet_radius > 0, "subjet_radius must be positive"),
            (self.subjet_algorithm in ALGORITHMS, f"subjet_algorithm must be one of {list(ALGORITHMS)}"),
            (self.max_subjets >= 2, "max_subjets must be >= 2 (a context and a target)"),
            (self.subjet_embedding is None or self.subjet_embedding in SUBJET_EMBEDDINGS,
             f"subjet_embedding must be one of {SUBJET_EMBEDDINGS}"),
            (self.predictor_depth >= 1 and self.predictor_heads >= 1, "predictor_depth/heads must be >= 1"),
            (self.predictor_dim is None or self.predictor_dim % self.predictor_heads == 0,
             "predictor_dim must be a multiple of predictor_heads"),
            (self.subjet_dim is None or self.subjet_dim >= 1, "subjet_dim must be >= 1"),
            (0.0 <= self.ema_start <= self.ema_end <= 1.0, "need 0 <= ema_start <= ema_end <= 1"),
            (self.ema_schedule in MOMENTUM_SCHEDULES, f"ema_schedule must be one of {MOMENTUM_SCHEDULES}"),
            (self.loss in LOSSES, f"loss must be one of {LOSSES}"),
            (self.export in ("target", "context"), "export must be 'target' or 'context'"),
            (2 <= self.min_subjets <= self.max_subjets, "min_subjets must be >= 2 and <= max_subjets"),
        )
        for ok, problem in checks:
            if not ok:
                raise HepfmInputError(f"objective jepa: {problem}")


def check_sjt_options(opts: JEPAOptions, backbone: SubjetTransformer) -> None:
    """Refuse objective options that contradict the SjT's: both must see the same subjets and SEL."""
    cfg = backbone.config
    pairs = (("subjet_radius", opts.subjet_radius, "subjet_radius", cfg.subjet_radius),
             ("max_subjets", opts.max_subjets, "max_subjets", cfg.max_subjets),
             ("subjet_algorithm", opts.subjet_algorithm, "subjet_algorithm", cfg.subjet_algorithm),
             ("subjet_embedding", opts.subjet_embedding or cfg.embedding, "embedding", cfg.embedding),
             ("subjet_dim", opts.subjet_dim or cfg.dim, "dim", cfg.dim))
    for ours, value, theirs, expected in pairs:
        if value != expected:
            raise HepfmInputError(
                f"objective jepa: objective.options.{ours}={value} contradicts the sjt backbone's "
                f"model.backbone_options.{theirs}={expected}; set them equal (or leave {ours} unset)"
                if ours in ("subjet_embedding", "subjet_dim") else
                f"objective jepa: objective.options.{ours}={value} differs from the sjt backbone's "
                f"model.backbone_options.{theirs}={expected}; set both to the same value")


# --- encoders -------------------------------------------------------------------------------------

class SubjetEncoder(nn.Module):
    """Particle-level J-JEPA's encoder: a particle backbone + a subjet embedding layer on its tokens."""

    def __init__(self, backbone: Backbone, sel: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.sel = sel

    def forward(self, batch: ParticleBatch, index: torch.Tensor, n_subjets: int, coords: torch.Tensor
                ) -> tuple[BackboneOutput, torch.Tensor]:
        """Shape: index (B, N) subjet per particle -> (backbone output, subjet tokens (B, S, Ds)).

        ``coords`` is unused: the particle backbone sees the particles' own coordinates.
        """
        del coords
        out = self.backbone(batch)
        return out, self.sel(out.tokens, index, n_subjets)


class SjTEncoder(nn.Module):
    """Subjet-level J-JEPA's encoder: the SjT itself, its output subjet tokens the representations."""

    def __init__(self, backbone: SubjetTransformer) -> None:
        super().__init__()
        self.backbone = backbone

    def forward(self, batch: ParticleBatch, index: torch.Tensor, n_subjets: int, coords: torch.Tensor
                ) -> tuple[BackboneOutput, torch.Tensor]:
        """Shape: index (B, N), coords (B, S, 3) -> (subjet-level output, subjet tokens (B, S, D)).

        The output is over *subjets*: tokens (B, S, D), mask (B, S) the subjets present in ``batch``,
        pooled the SjT's jet embedding. ``coords`` are the full jet's (the targets' frame).
        """
        batch = self.backbone.trimmed(batch)  # the context's freed slots sit at the end
        index = index[:, : batch.mask.shape[1]]
        tokens, mask, pooled = self.backbone.encode_subjets(batch, index, n_subjets, coords)
        return BackboneOutput(tokens=tokens, mask=mask, pooled=pooled), tokens


# --- predictor ------------------------------------------------------------------------------------

class Predictor(nn.Module):
    """A narrow transformer that predicts target-subjet representations from the context.

    Tokens: [jet embedding, context subjets + coordinates, mask token + target coordinates], the
    I-JEPA predictor layout with J-JEPA's subjet coordinates as positions.
    """

    def __init__(self, jet_dim: int, subjet_dim: int, width: int, depth: int, num_heads: int) -> None:
        super().__init__()
        self.jet_proj = nn.Linear(jet_dim, width)
        self.context_proj = nn.Linear(subjet_dim, width)
        self.coord_embed = nn.Sequential(nn.Linear(3, width), nn.GELU(), nn.Linear(width, width))
        self.mask_token = nn.Parameter(torch.zeros(1, 1, width))
        nn.init.trunc_normal_(self.mask_token, std=0.02)
        self.blocks = nn.ModuleList(
            NormFormerBlock(width, num_heads, dropout=0.0, attn_dropout=0.0, activation_dropout=0.0)
            for _ in range(depth)
        )
        self.norm = nn.LayerNorm(width)
        self.out = nn.Linear(width, subjet_dim)

    def no_weight_decay(self) -> set[str]:
        return {"mask_token"}

    def forward(self, jet: torch.Tensor, context: torch.Tensor, context_mask: torch.Tensor,
                coords: torch.Tensor, target_mask: torch.Tensor) -> torch.Tensor:
        """Shape: jet (B, Dj); context (B, S, Ds); masks (B, S); coords (B, S, 3) -> (B, S, Ds).

        Row s of the output is the prediction for subjet s (meaningful where ``target_mask``).
        """
        b, s, _ = context.shape
        pos = self.coord_embed(coords.to(context.dtype))  # (B, S, W)
        tokens = torch.cat((self.jet_proj(jet).unsqueeze(1), self.context_proj(context) + pos,
                            self.mask_token.expand(b, s, -1) + pos), dim=1)  # (B, 1 + 2S, W)
        keys = torch.cat((context_mask.new_ones(b, 1), context_mask, target_mask), dim=1)  # (B, 1 + 2S)
        for blk in self.blocks:
            tokens = blk(tokens, keys)
        return self.out(self.norm(tokens[:, 1 + s:]))


# --- helpers --------------------------------------------------------------------------------------

def take_jets(batch: ParticleBatch, keep: torch.Tensor) -> ParticleBatch:
    """The jets of ``batch`` selected by ``keep`` ((B,) bool)."""
    return ParticleBatch(batch.x[keep], batch.mask[keep], batch.p4[keep],
                         None if batch.jet is None else batch.jet[keep],
                         None if batch.label is None else batch.label[keep])


def without_particles(batch: ParticleBatch, visible: torch.Tensor, index: torch.Tensor
                      ) -> tuple[ParticleBatch, torch.Tensor]:
    """The batch with only ``visible`` particles, gathered to the front; hidden ones are gone.

    Gathering (rather than masking) guarantees that no backbone reads the hidden particles, and lets
    the backbone trim the freed slots. Shape: visible (B, N) bool, index (B, N) -> index (B, N).
    """
    order = torch.argsort((~visible).to(torch.int8), dim=1, stable=True)  # (B, N): visible first
    vis = torch.gather(visible, 1, order)

    def gather(t: torch.Tensor) -> torch.Tensor:  # (B, N, F) -> (B, N, F), zero at hidden slots
        return torch.gather(t, 1, order.unsqueeze(-1).expand_as(t)).masked_fill(~vis.unsqueeze(-1), 0.0)

    ctx = ParticleBatch(gather(batch.x), vis, gather(batch.p4), batch.jet, None)
    return ctx, torch.gather(index, 1, order).masked_fill(~vis, -1)


class JEPA(Objective):
    """J-JEPA on a hepfm backbone (module docstring for the design).

    Example:
        >>> obj = create_objective("jepa", lambda: create_backbone("part-small", 7), FEATURE_SETS.get("kin"))
        >>> out = obj(batch)  # out.loss, out.logs["cos_sim"], ...
        >>> obj.on_step_end(step, total_steps)  # EMA update of the target encoder
    """

    name = "jepa"

    def __init__(self, backbone: Backbone, target_backbone: Backbone | None = None,
                 options: JEPAOptions | None = None) -> None:
        super().__init__()
        opts = options or JEPAOptions()
        opts.validate()
        self.options = opts
        dim = backbone.embed_dim
        sub_dim = opts.subjet_dim or dim
        half = (sub_dim // 2) // opts.predictor_heads * opts.predictor_heads  # bottleneck, multiple of heads
        width = opts.predictor_dim or max(opts.predictor_heads, half)
        #: subjet-level J-JEPA (the seed's SjT) rather than particle-level (hepfm's own)
        self.subjet_level = isinstance(backbone, SubjetTransformer)
        sel = opts.subjet_embedding or "attention"

        def encoder(bb: Backbone) -> SubjetEncoder | SjTEncoder:
            if self.subjet_level:
                if not isinstance(bb, SubjetTransformer):
                    raise TypeError("the target backbone of an SjT context encoder must be an SjT too")
                return SjTEncoder(bb)
            return SubjetEncoder(bb, make_subjet_embedding(sel, dim, sub_dim))

        if isinstance(backbone, SubjetTransformer):  # self.subjet_level, spelled so that mypy narrows
            check_sjt_options(opts, backbone)
        self.context = encoder(backbone)
        # the EMA copy of the encoder (backbone + SEL, or the SjT)
        factory = None if target_backbone is None else partial(encoder, target_backbone)
        self.target = make_target(self.context, factory)
        self.predictor = Predictor(backbone.pooled_dim or dim, sub_dim, width, opts.predictor_depth,
                                   opts.predictor_heads)

    @property
    def backbone(self) -> Backbone:
        """The context encoder's backbone (the one that receives gradients)."""
        return self.context.backbone

    # -- the steps of forward, public so that tests and notebooks can inspect them
    def find_subjets(self, batch: ParticleBatch) -> Subjets:
        o = self.options
        return find_subjets(batch.p4, batch.mask, o.subjet_radius, o.max_subjets, o.subjet_algorithm)

    def sample_targets(self, subjet_mask: torch.Tensor,
                       generator: torch.Generator | None = None) -> torch.Tensor:
        """(B, S) bool target subjets: k random real subjets per jet, 1 <= k <= n - 1.

        Shape: subjet_mask (B, S) bool with n = subjet_mask.sum(1) >= 2 for every jet.
        """
        n = subjet_mask.sum(1)  # (B,)
        if self.options.n_targets is not None:
            k = torch.full_like(n, self.options.n_targets)
        else:
            k = torch.round(n.float() * self.options.target_fraction).long()
        k = torch.minimum(k.clamp(min=1), n - 1)
        scores = torch.rand(subjet_mask.shape, generator=generator, device=subjet_mask.device)
        rank = scores.masked_fill(~subjet_mask, 2.0).argsort(1).argsort(1)  # (B, S), real subjets first
        return (rank < k.unsqueeze(1)) & subjet_mask

    def encode_context(self, batch: ParticleBatch, subjets: Subjets, targets: torch.Tensor
                       ) -> tuple[BackboneOutput, torch.Tensor]:
        """Context encoder on the jet minus its target subjets' particles.

        Shape: targets (B, S) bool -> (backbone output on the visible particles, subjet tokens (B, S, Ds)).
        """
        idx = subjets.index
        hidden = torch.gather(targets, 1, idx.clamp(min=0)) & (idx >= 0)  # (B, N) particle in a target
        ctx, ctx_index = without_particles(batch, batch.mask & ~hidden, idx)
        return self.context(ctx, ctx_index, subjets.max_subjets, subjets.coordinates())

    @torch.no_grad()
    def encode_targets(self, batch: ParticleBatch, subjets: Subjets) -> torch.Tensor:
        """(B, S, Ds) layer-normalised target-encoder representations of every subjet of the full jet."""
        _, reps = self.target(batch, subjets.index, subjets.max_subjets, subjets.coordinates())
        return F.layer_norm(reps.float(), reps.shape[-1:])

    def _usable(self, batch: ParticleBatch, subjets: Subjets) -> tuple[ParticleBatch, Subjets, int]:
        usable = subjets.mask.sum(1) >= self.options.min_subjets  # (B,)
        n_bad = len(batch) - int(usable.sum())
        if n_bad == len(batch) and self.options.min_subjets <= 2:
            raise HepfmInputError(self._none_usable(len(batch), int(subjets.mask.sum(1).max())))
        if n_bad:
            return take_jets(batch, usable), subjets.take(usable), n_bad
        return batch, subjets, 0

    def _none_usable(self, n_jets: int, most: int) -> str:
        o = self.options
        if o.min_subjets > 2:
            return (f"objective.options.min_subjets={o.min_subjets} leaves no jets: none of {n_jets} jets "
                    f"has that many R={o.subjet_radius} subjets (at most {most}); lower min_subjets")
        return (f"jepa needs at least 2 subjets (R={o.subjet_radius}) per jet to split into context and "
                f"targets, but none of the {n_jets} jets has more than one (jets with too few particles?); "
                "use a different objective (e.g. mpm or jetclr) or a smaller subjet_radius")

    def prepare(self, batches: Iterable[ParticleBatch]) -> None:
        """Refuse, before the first step, a subjet selection that the data's first jets never pass."""
        n_jets, most = 0, 0
        for batch in itertools.islice(batches, SELECTION_CHECK_BATCHES):
            counts = self.find_subjets(batch).mask.sum(1)
            if bool((counts >= self.options.min_subjets).any()):
                return
            n_jets, most = n_jets + len(batch), max(most, int(counts.max()))
        if n_jets:
            raise HepfmInputError(self._none_usable(n_jets, most))

    def forward(self, batch: ParticleBatch) -> ObjectiveOutput:
        n_jets = len(batch)
        batch, subjets, n_bad = self._usable(batch, self.find_subjets(batch))
        if n_bad == n_jets:  # a selective min_subjets that no jet of this batch passes: nothing to learn
            zero = sum((p.sum() * 0.0 for p in self.parameters() if p.requires_grad), torch.zeros(()))
            return ObjectiveOutput(zero, {"unusable_jets": torch.tensor(float(n_bad)),
                                          "skipped_batches": torch.tensor(1.0)})
        gen = None
        if not self.training:  # the same splits at every evaluation: comparable validation losses
            gen = torch.Generator(device=batch.mask.device).manual_seed(0)
        targets = self.sample_targets(subjets.mask, gen)  # (B, S)
        ctx_out, ctx_reps = self.encode_context(batch, subjets, targets)
        target_reps = self.encode_targets(batch, subjets)  # (B, S, Ds)
        jet = jet_embedding(ctx_out)
        pred = self.predictor(jet, ctx_reps, subjets.mask & ~targets, subjets.coordinates(), targets)
        p, t = pred[targets].float(), target_reps[targets]  # (T, Ds): all target subjets of the batch
        loss = F.mse_loss(p, t) if self.options.loss == "mse" else F.smooth_l1_loss(p, t)
        with torch.no_grad():
            # the seed's collapse check: 128 jets' subjet representations, flattened (padded subjets 0)
            flat = (target_reps * subjets.mask.unsqueeze(-1))[:COLLAPSE_JETS].flatten(1)
            logs = {
                "cos_sim": mean_pairwise_cosine(jet.detach()),
                "cos_sim_flat": mean_pairwise_cosine(flat),
                "pred_std": p.detach().std(0).mean() if len(p) > 1 else p.new_zeros(()),
                "target_std": t.std(0).mean() if len(t) > 1 else t.new_zeros(()),
                "targets_per_jet": targets.sum(1).float().mean(),
                "unusable_jets": torch.tensor(float(n_bad), device=loss.device),
            }
        return ObjectiveOutput(loss, logs)

    # -- the rest of the Objective contract
    def collapsed(self, logs: dict[str, float]) -> str | None:
        # identical jet embeddings for all jets: the seed's collapse signature
        for key, what in (("cos_sim", "jet embeddings"),
                          ("cos_sim_flat", "flattened subjet representations")):
            cos = logs.get(key)
            if cos is not None and cos > 0.995:
                return f"mean pairwise cosine similarity of {what} is {cos:.4f}"
        return None

    def on_step_end(self, step: int, total_steps: int) -> None:
        """EMA update of the target encoder (momentum from ``ema_start`` to ``ema_end``)."""
        o = self.options
        momentum = momentum_at(step, total_steps, o.ema_start, o.ema_end, o.ema_schedule)
        ema_update_(self.target, self.context, momentum)

    def train(self, mode: bool = True) -> JEPA:
        super().train(mode)
        self.target.eval()  # no dropout noise in the regression targets
        return self

    def export_backbone(self) -> Backbone:
        """The EMA target backbone (default, as the talk and I-JEPA) or the context backbone.

        The target is returned as a trainable copy (``requires_grad`` on), ready for finetuning.
        """
        if self.options.export == "context":
            return self.context.backbone
        import copy

        return copy.deepcopy(self.target.backbone).requires_grad_(True).train()


@OBJECTIVES.register("jepa")
def build_jepa(backbone_factory: BackboneFactory, feature_set: Any, *, max_particles: int | None = None,
               **options: Any) -> JEPA:
    """``jepa`` from a backbone factory (called twice: context and EMA target) and its options.

    ``feature_set`` is unused: J-JEPA needs no augmentations, and both encoders read the batch's features.
    """
    del feature_set
    return JEPA(backbone_factory(), backbone_factory(), JEPAOptions.from_dict(options))
