"""The pretraining monitor: embedding probes that can tell a useful embedding from a useless one."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from hepfm.contracts import BackboneOutput, ParticleBatch
from hepfm.data.features import FEATURE_SETS
from hepfm.nn.testing import random_jets
from hepfm.training.monitor import EmbeddingProbe

KIN = FEATURE_SETS.get("kin")


class Multiplicity(nn.Module):
    """An embedding that knows the particle count (what the labels below are made of), plus noise dims."""

    def __init__(self, useful: bool) -> None:
        super().__init__()
        self.useful = useful
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, batch: ParticleBatch) -> BackboneOutput:
        n = batch.mask.sum(1, keepdim=True).float()
        noise = 10 * torch.sin(batch.x[:, :1, :].sum(-1) * 37.0)  # a deterministic function of the jet
        if self.useful:
            pooled = torch.cat([n, noise, n * 0.5 + noise], 1)
        else:  # every jet the same direction: collapsed
            pooled = torch.ones(len(n), 3) * self.scale
        return BackboneOutput(tokens=batch.x, mask=batch.mask, pooled=pooled)


def probe_batches() -> list[ParticleBatch]:
    out = []
    g = torch.Generator().manual_seed(0)
    for _ in range(4):
        b = random_jets(64, 30, KIN.dim, min_particles=2, generator=g)
        b.label = (b.mask.sum(1) > 16).long()  # the class is the multiplicity: a linear function of it
        out.append(b)
    return out


def test_a_useful_embedding_probes_well_and_a_collapsed_one_does_not():
    probe = EmbeddingProbe(probe_batches(), KIN, every=10)
    good = probe(Multiplicity(useful=True))
    bad = probe(Multiplicity(useful=False))
    assert good["probe_linear_auc"] > 0.95
    assert good["probe_knn_auc"] > 0.9
    assert bad["probe_linear_auc"] == pytest.approx(0.5, abs=0.1)
    assert bad["probe_mean_cosine"] == pytest.approx(1.0, abs=1e-5)  # J-JEPA's collapse check
    assert good["probe_mean_cosine"] < 0.99
    assert bad["probe_effective_rank"] < 1.5 < good["probe_effective_rank"]
    assert bad["probe_uniformity"] == pytest.approx(0.0, abs=1e-5)  # all points coincide
    assert good["probe_uniformity"] < -0.01


def test_the_monitor_leaves_the_backbone_mode_and_the_global_rng_alone():
    probe = EmbeddingProbe(probe_batches(), KIN, every=10)
    model = Multiplicity(useful=True).train()
    before = torch.get_rng_state()
    probe(model)
    assert torch.equal(before, torch.get_rng_state())
    assert model.training
    first = probe(model)
    assert probe(model) == first  # the same backbone gives the same numbers
