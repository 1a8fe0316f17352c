"""The pretraining monitor: how useful the backbone's embedding is, every K steps, on a few labeled jets.

Why: a pretraining loss that goes down says nothing about whether the representation helps a tagger
(JetCLR's authors trained a linear classifier on the frozen embedding every 10 epochs for this reason).
Every K steps the monitor embeds a small labeled set with the frozen backbone and logs, as ``probe_*``
metrics beside the losses:

* a logistic-regression probe and a k-NN classifier, trained on one fixed half and scored on the other
  (AUC, one-vs-rest macro for more than two classes, and accuracy);
* effective rank, and the collapse check as J-JEPA defines it: the mean pairwise cosine similarity
  of 128 jets' embeddings;
* alignment and uniformity (Wang & Isola 2020) of the L2-normalised embedding, with JetCLR's
  augmentations as the positive pairs, whatever the objective.

The first evaluation, at step 0, is the control every probe table needs: the same backbone at its
random initialisation, frozen, with the same probes. Random features with a linear probe can be strong;
an SSL embedding that does not beat them has learned nothing a tagger can use.

The monitor reads no global RNG (its augmentation has its own generator, the probes their own seeds),
so a monitored run trains exactly as an unmonitored one.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from hepfm.contracts import ParticleBatch
from hepfm.data.features import FeatureSet
from hepfm.evaluation.representation import effective_rank, probe_metrics
from hepfm.options import require

#: Jets in J-JEPA's collapse check (mean pairwise cosine similarity of this many embeddings).
COLLAPSE_JETS = 128


@dataclass
class ProbeConfig:
    """The ``probe`` section of a pretraining config (``--probe-data``, ``--probe-every``)."""

    data: list[str] = field(default_factory=list)  # labeled jets; empty: no monitor
    n_jets: int = 2000  # read from the files (half fit the probes, half score them)
    every: int = 0  # steps between evaluations; 0: every train.eval_every steps
    k: int = 10  # neighbours of the k-NN classifier

    def __post_init__(self) -> None:
        require(self.n_jets >= 20, "probe.n_jets", "must be >= 20", self.n_jets)
        require(self.every >= 0, "probe.every", "must be >= 0 (0: every train.eval_every steps)", self.every)
        require(self.k >= 1, "probe.k", "must be >= 1", self.k)


class EmbeddingProbe:
    """Callable on a backbone: ``probe(backbone) -> {"probe_linear_auc": ..., ...}``."""

    def __init__(self, batches: list[ParticleBatch], feature_set: FeatureSet, every: int, k: int = 10,
                 seed: int = 0) -> None:
        from hepfm.physics.augment import Augmentation, AugmentConfig

        self.batches = batches
        self.labels = torch.cat([b.label for b in batches if b.label is not None]).numpy()
        self.feature_set = feature_set
        self.every = every
        self.k = k
        self.seed = seed
        self.augment = Augmentation.from_config(AugmentConfig())

    @torch.no_grad()
    def __call__(self, backbone: nn.Module) -> dict[str, float]:
        from hepfm.losses.contrastive import alignment, mean_pairwise_cosine, uniformity
        from hepfm.objectives.base import jet_embedding

        was_training = backbone.training
        backbone.eval()
        device = next(backbone.parameters()).device
        try:
            emb, aligned = [], []
            gen = torch.Generator(device=device).manual_seed(self.seed)
            for batch in self.batches:
                batch = batch.to(device)
                z = jet_embedding(backbone(batch)).float()
                z_view = jet_embedding(backbone(self._view(batch, gen))).float()
                emb.append(z.cpu())
                aligned.append(alignment(z, z_view).cpu() * len(z))
        finally:
            backbone.train(was_training)
        all_emb = torch.cat(emb)
        probes = probe_metrics(all_emb.numpy(), self.labels, self.seed, self.k)
        metrics = {f"probe_{short}_{what}": probes[f"{name}_{what}"]
                   for short, name in (("linear", "linear_probe"), ("knn", "knn"))
                   for what in ("accuracy", "auc")}
        metrics["probe_alignment"] = float(torch.stack(aligned).sum()) / len(all_emb)
        metrics["probe_uniformity"] = float(uniformity(all_emb[:1000]))
        metrics["probe_mean_cosine"] = float(mean_pairwise_cosine(all_emb[:COLLAPSE_JETS]))
        metrics["probe_effective_rank"] = effective_rank(all_emb.numpy())
        return metrics

    def _view(self, batch: ParticleBatch, gen: torch.Generator) -> ParticleBatch:
        from hepfm.physics.torch_features import compute_features, jet_vector

        out = self.augment(batch.p4.float(), batch.mask, gen)
        x = compute_features(self.feature_set, out.p4, out.mask, source_x=batch.x, parent=out.parent)
        return ParticleBatch(x=x, mask=out.mask, p4=out.p4, jet=jet_vector(out.p4, out.mask))
